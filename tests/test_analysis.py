"The analysis scripts' helpers: matching and PCK on hand-made persons (keypoints_pck.py); weight hashes and verdicts (determinism_probe.py); same-results tables (same_results_on_cpu.py); the other-machine head comparison (unihead_1x_other_machine.py)."
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from unified_vision.core import ConfigError
from unified_vision.heads.unihead import unihead

_spec = importlib.util.spec_from_file_location("keypoints_pck", Path(__file__).parents[1] / "analysis" / "keypoints_pck.py")
pckmod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pckmod)


def person(image_id, box, kpts):
    k = np.c_[np.asarray(kpts, float), np.full(len(kpts), 2.0)]
    return {"image_id": image_id, "bbox": list(box), "keypoints": k.ravel().tolist()}


def test_match_takes_the_best_scoring_overlap_once_per_prediction():
    gts = [person(1, (0, 0, 10, 20), [[5, 5]]), person(1, (1, 0, 10, 20), [[5, 5]]), person(2, (0, 0, 10, 20), [[5, 5]])]
    low = {"image_id": 1, "bbox": [0, 0, 10, 20], "score": 0.2, "keypoints": [0, 0, 1]}
    high = {"image_id": 1, "bbox": [0, 1, 10, 20], "score": 0.9, "keypoints": [0, 0, 1]}
    far = {"image_id": 2, "bbox": [50, 50, 10, 20], "score": 1.0, "keypoints": [0, 0, 1]}
    m = pckmod.match_people(gts, [low, high, far])
    assert m[0] is high and m[1] is low and m[2] is None      # the second person gets what the first left


def test_pck_counts_visible_keypoints_within_alpha_of_the_longer_side():
    g = person(1, (0, 0, 10, 20), [[0, 0], [10, 10]])
    g["keypoints"][5] = 0.0                                      # second keypoint not labelled: not counted
    near = np.array([[3.9, 0, 1], [100, 100, 1]])               # 3.9 px off; longer side 20
    assert pckmod.pck([g], [near], 0.2) == 1.0                   # within 4 px
    assert pckmod.pck([g], [near], 0.1) == 0.0                   # not within 2 px
    assert pckmod.pck([g, g], [near, None], 0.2) == pytest.approx(0.5)   # an unmatched person misses its keypoints


def test_layout_in_box_inverts_the_mean_layout_convention():
    layout = np.array([[0.0, -0.5], [0.25, 0.5]])                # relative to the box centre, in box widths/heights
    np.testing.assert_allclose(pckmod.layout_in_box(layout, (10, 20, 8, 40))[:, :2], [[14, 20], [16, 60]])


_spec = importlib.util.spec_from_file_location("determinism_probe", Path(__file__).parents[1] / "analysis" / "determinism_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_weights_hash_sees_one_changed_bit():
    import torch
    a = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)}
    b = {k: v.clone() for k, v in a.items()}
    assert probe.weights_hash(a) == probe.weights_hash(b)
    b["w"][1, 2] = torch.nextafter(b["w"][1, 2], torch.tensor(10.0))          # one ulp
    assert probe.weights_hash(a) != probe.weights_hash(b)


def test_probe_verdict_per_setting():
    def record(family, model, hashes):
        return {"date": "2026-12-02", "iterations": 30, "repeatable": True,
                "cpu": {"model name": "X", "cpu family": family, "model": model, "extensions": ["avx2"]},
                "variants": {n: {"hash": h * 16, "seconds": 1.0} for n, h in zip(probe.VARIANTS, hashes)}}
    one = probe.render([record("25", "17", "abcde")])
    assert one.count("only one CPU model so far") == len(probe.VARIANTS)
    two = probe.render([record("25", "17", "abcde"), record("25", "1", "xbxyz")])
    assert "`default` (no switch): 2 record(s), 2 CPU model(s): 2 different results" in two
    assert "`avx2` (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_CBWR=AVX2): 2 record(s), 2 CPU model(s): the same weights on every CPU model" in two


def test_probe_compares_records_of_the_same_experiment_only():
    def record(family, hashes, experiment=None):
        r = {"date": "2026-12-03", "iterations": 30, "repeatable": True,
             "cpu": {"model name": "X", "cpu family": family, "model": "1", "extensions": ["avx2"]},
             "variants": {n: {"hash": h * 16, "seconds": 1.0} for n, h in zip(probe.VARIANTS, hashes)}}
        return r if experiment is None else {**r, "experiment": experiment}
    text = probe.render([record("25", "abc"), record("26", "abc"), record("26", "xyz", "baseline_faster_rcnn")])
    assert "| pretrain | 30 |" in text and "| baseline_faster_rcnn | 30 |" in text   # old records: the pretraining
    assert "- pretrain, 30 iterations, `default` (no switch): 2 record(s), 2 CPU model(s): the same weights" in text
    assert "- baseline_faster_rcnn, 30 iterations, `default` (no switch): 1 record(s), 1 CPU model(s): only one CPU model" in text


def test_probe_renders_records_taken_before_a_setting_existed():
    new = {"date": "2026-12-05", "iterations": 30, "repeatable": True,
           "cpu": {"model name": "X", "cpu family": "6", "model": "167", "extensions": ["avx2"]},
           "variants": {n: {"hash": "a" * 64, "seconds": 1.0} for n in probe.VARIANTS}}
    old = {**new, "cpu": {**new["cpu"], "cpu family": "25"}, "variants": {n: new["variants"][n] for n in ("default", "avx2", "compatible")}}
    text = probe.render([old, new])
    assert "| – |" in text                                                 # the old record has no cell for the new settings
    assert "`compatible` (ATEN_CPU_CAPABILITY=default, ONEDNN_MAX_CPU_ISA=SSE41, MKL_CBWR=COMPATIBLE): 2 record(s), 2 CPU model(s): the same" in text
    assert "`mkl_compatible` (MKL_CBWR=COMPATIBLE): 1 record(s), 1 CPU model(s): only one CPU model so far" in text


_gap_spec = importlib.util.spec_from_file_location("unihead_ap50_gap", Path(__file__).parents[1] / "analysis" / "unihead_ap50_gap.py")
gapmod = importlib.util.module_from_spec(_gap_spec)
_gap_spec.loader.exec_module(gapmod)


def test_false_positive_kinds_on_hand_made_detections():
    from pycocotools.coco import COCO
    coco = COCO()
    coco.dataset = {"images": [{"id": 1, "width": 100, "height": 100}], "categories": [{"id": 1}, {"id": 2}],
                    "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 20, 20], "area": 400, "iscrowd": 0},
                                    {"id": 2, "image_id": 1, "category_id": 1, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0},
                                    {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 60, 20, 20], "area": 400, "iscrowd": 0}]}
    coco.createIndex()
    det = lambda box, score, cat=1: {"image_id": 1, "category_id": cat, "bbox": box, "score": score}
    dets = [det([0, 0, 20, 20], 0.9),           # true positive (object 1)
            det([1, 0, 20, 20], 0.8),           # duplicate of object 1
            det([0, 0, 10, 10], 0.7),           # loose (IoU 0.25) on object 1, already found
            det([50, 50, 10, 10], 0.6),         # loose on object 2, not found
            det([0, 60, 20, 20], 0.5),          # class 1 on the class-2 object: wrong class
            det([90, 0, 10, 10], 0.4)]          # background
    kinds = gapmod.false_positive_kinds(coco, dets, [1])
    assert kinds == {"true positive": 1, "duplicate": 1, "loose, object found": 1, "loose, object missed": 1,
                     "wrong class": 1, "background": 1}
    assert gapmod.false_positive_kinds(coco, dets, [1], top=2) == {**dict.fromkeys(kinds, 0), "true positive": 1, "duplicate": 1}


def test_without_iou_drops_the_output_and_restores_the_head():
    import torch

    class Head(torch.nn.Module):
        def forward(self, x):
            return {"cls_logits": x, "iou": x}

    class Stage:
        head = Head()

    class Model:
        stages = [Stage()]

    model = Model()
    with gapmod._without_iou(model):
        assert set(model.stages[0].head(torch.zeros(1))) == {"cls_logits"}
    assert set(model.stages[0].head(torch.zeros(1))) == {"cls_logits", "iou"}


def test_same_results_verdict_and_training_time_columns():
    spec = importlib.util.spec_from_file_location("same_results", Path(__file__).parents[1] / "analysis" / "same_results_on_cpu.py")
    same = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(same)
    run = {"weights": "abc", "losses": [1.0, 0.5], "metrics": {"AP": 0.1}, "profile": "mini", "train_seconds": 200.0}
    faster = dict(run, train_seconds=150.0)
    text = same.compare({"x": run}, {"x": faster}, "torchvision's kernel", "ours")
    assert "Verdict: **identical**" in text and "`mini` experiment" in text
    assert "| x | abc | abc | same | same | same | 200.0 | 150.0 | 0.75x |" in text
    old_record = {k: v for k, v in run.items() if k not in ("profile", "train_seconds")}   # written before the fields
    text = same.compare({"x": old_record}, {"x": dict(run, losses=[1.0, 0.6])}, "a", "b")
    assert "Verdict: **NOT identical**" in text and "| same | **different** | same | - | - | - |" in text


def test_same_results_settings_change_existing_keys_or_head_options():
    spec = importlib.util.spec_from_file_location("same_results", Path(__file__).parents[1] / "analysis" / "same_results_on_cpu.py")
    same = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(same)
    cfg = {"experiment": "uni", "heads": {"unihead": {"dim": 64, "cls_input": "token"}}, "seed": 0}
    wide = same.apply_settings(cfg, ["heads.unihead.dim=128", "heads.unihead.cls_input=all"])
    assert wide["heads"]["unihead"] == {"dim": 128, "cls_input": "all"} and cfg["heads"]["unihead"]["dim"] == 64   # a copy
    for bad, says in (("seedd=1", "no key 'seedd'"), ("seed.x=1", "'seed' is not a mapping"),
                      ("heads.unihead.dim", "write KEY=VALUE")):
        with pytest.raises(SystemExit, match=says):
            same.apply_settings(cfg, [bad])
    mean = same.apply_settings({"experiment": "uni", "heads": {"unihead": {"dim": 64}}}, ["heads.unihead.cls_input=mean"])
    assert mean["heads"]["unihead"] == {"dim": 64, "cls_input": "mean"}   # a head option left at the code's default
    with pytest.raises(ConfigError, match="cls_inputt"):                  # ... which the head's builder checks
        unihead("roi", **{"cls_inputt": "mean"})
    with pytest.raises(SystemExit, match="--set needs --tag"):
        same.run(["uni"], settings=("heads.unihead.dim=128",))
    hist = same.loss_history([{"iteration": 20, "loss": 1.0, "loss_cls": 0.6, "lr": 0.1}, {"iteration": 40, "loss": 0.8, "loss_cls": 0.5, "lr": 0.1}])
    assert hist == {"step": [20, 40], "loss": [1.0, 0.8], "loss_cls": [0.6, 0.5]}


def test_same_results_run_reads_backbones_it_kept(tmp_path):
    spec = importlib.util.spec_from_file_location("same_results", Path(__file__).parents[1] / "analysis" / "same_results_on_cpu.py")
    same = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(same)
    assert same._kept_checkpoint("runs/cls_resnext/model.pt", None) == "runs/cls_resnext/model.pt"
    assert same._kept_checkpoint("runs/cls_resnext/model.pt", tmp_path) == "runs/cls_resnext/model.pt"   # none kept: the pipeline's
    (tmp_path / "cls_resnext").mkdir()
    (tmp_path / "cls_resnext" / "model.pt").write_bytes(b"kept")
    assert same._kept_checkpoint("runs/cls_resnext/model.pt", tmp_path) == str(tmp_path / "cls_resnext" / "model.pt")
    assert same._kept_checkpoint(False, tmp_path) is False and same._kept_checkpoint("/abs/model.pt", tmp_path) == "/abs/model.pt"


def test_other_machine_comparison_collects_and_renders_the_gaps(tmp_path):
    spec = importlib.util.spec_from_file_location("other_machine", Path(__file__).parents[1] / "analysis" / "unihead_1x_other_machine.py")
    om = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(om)
    ap = {"2-fc head": [0.10, 0.12, 0.14], "UniHead, class token (paper)": [0.05, 0.06, 0.07],
          "UniHead, class FC on all tokens (released code)": [0.10, 0.11, 0.12]}
    runs = {n: {"metrics": {"bbox_AP": v, "bbox_AP50": 2 * v, "bbox_AP75": v / 2}, "profile": "mini", "train_seconds": 100.0,
                "weights": "w", "losses": [1.0]} for row, vals in ap.items() for n, v in zip(om.ROWS[row], vals)}
    for name, v in {"uni_faster_rcnn_zero_init": 0.04, "baseline_faster_rcnn_2x": 0.20, "uni_faster_rcnn_2x": 0.15}.items():
        runs[name] = {"metrics": {"bbox_AP": v, "bbox_AP50": 2 * v, "bbox_AP75": v / 2}, "profile": "mini"}
    for name, v in {"uni_seg": 0.03, "uni_seg_zero_init": 0.02, "uni_seg_seed1": 0.05}.items():   # mask AP, not box AP
        runs[name] = {"metrics": {"bbox_AP": 0.5, "bbox_AP50": 0.5, "bbox_AP75": 0.5, "segm_AP": v, "segm_AP50": 3 * v,
                                  "segm_AP75": v / 3}, "profile": "mini"}
    for name, v in {"uni_faster_rcnn_l1": 0.05, "uni_faster_rcnn_l1_seed1": 0.07, "uni_faster_rcnn_l2": 0.08,
                    "uni_faster_rcnn_l2_seed1": 0.09}.items():                      # an ablation, two seeds here
        runs[name] = {"metrics": {"bbox_AP": v, "bbox_AP50": 2 * v, "bbox_AP75": v / 2}, "profile": "mini"}
    runs["uni_atss"] = dict(runs["uni_faster_rcnn"])
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    pretrain = tmp_path / "model.pt"
    pretrain.write_bytes(b"checkpoint")
    record = om.collect([tmp_path / "runs.json"], pretrain)
    assert set(record["runs"]) == ({n for names in om.ROWS.values() for n in names} | set(om.SINGLE.values())
                                   | {"uni_seg_seed1", "uni_faster_rcnn_l1_seed1", "uni_faster_rcnn_l2_seed1"}) & set(runs)  # uni_atss: not a row
    assert record["runs"]["uni_faster_rcnn"]["AP"] == 0.05 and record["pretrain_md5"] == hashlib.md5(b"checkpoint").hexdigest()
    seeds_rows = {n for names in om.ROWS.values() for n in names}
    committed = {n: dict(r) for n, r in record["runs"].items() if "_seed" not in n or n in seeds_rows}   # one-seed rows: seed 0
    committed["uni_faster_rcnn_seed2"] = dict(committed["uni_faster_rcnn_seed2"], AP=0.09)
    text = om.render(record, committed)
    assert "| 2-fc head | 12.0 ± 2.0 | 24.0 ± 4.0 | 6.0 ± 1.0 | 12.0 ± 2.0 |" in text
    assert "| UniHead, class token (paper) | 6.7 ± 2.1 |" in text and "6.0 ± 1.0 | 12.0 ± 2.0 | 3.0 ± 0.5 | 100 |" in text
    assert "| UniHead, class token (paper) − 2-fc head | -5.3 |" in text and "| -6.0 | [" in text
    committed["uni_faster_rcnn_zero_init"] = dict(committed["uni_faster_rcnn_zero_init"], AP=0.03)
    text = om.render(record, committed)
    assert "| UniHead, zero initialisation (Table 3) | 3.0 (1 run) | 8.0 (1 run) | 2.0 (1 run) | 4.0 (1 run) |" in text
    assert "| UniHead, zero initialisation (Table 3) − UniHead, class token (paper) | -3.7 | -2.0 |" in text
    assert "| UniHead, class token, 2x schedule − 2-fc head, 2x schedule | -5.0 | -5.0 |" in text
    assert record["runs"]["uni_seg"] == {"AP": 0.03, "AP50": 0.09, "AP75": 0.01, "train_seconds": None, "weights": None}
    assert "| Segmentation, zero initialisation (Table 3; mask AP) − Segmentation, task-aware initialisation (Tables 3, 9; mask AP) | -1.0 | -2.0 |" in text
    assert "AdamW |" not in text                                                # no run of it here: no row, no difference
    l1, l2 = [5.0, 7.0], [8.0, 9.0]                                              # Welch's test where both sides have 2+ runs here
    from unified_vision.engine.tables import welch_gap
    g = welch_gap(l1, l2)
    assert (f"| UniHead, L = 2 (Table 5) − UniHead, L = 1 (Table 5) | +3.0 | +2.5 | [{g['ci'][0]:.1f}, {g['ci'][1]:.1f}] | "
            f"{g['p']:.3f} |") in text
    assert "(Table 3) − UniHead, class token (paper) | -3.7 | -2.0 | – | – |" in text          # one run here: no test
    assert "K = 8 (Table 4) |" not in text
    committed["uni_seg"] = dict(committed["uni_seg"], dagger=True)               # the tables mark this committed run
    text = om.render(record, committed)
    assert "| Segmentation, task-aware initialisation (Tables 3, 9; mask AP) | 3.0 (1 run) † | 9.0 (1 run) |" in text
    assert "| 1.0 (1 run) | 4.0 ± 1.4 (2 runs) | 12.0 ± 4.2 (2 runs) |" in text                 # seeds 0 and 1 there
    assert "| Segmentation, zero initialisation (Table 3; mask AP) | 2.0 (1 run) | " in text
    del record["runs"]["uni_faster_rcnn_2x"]                                     # a row not trained here is left out
    text = om.render(record, committed)
    assert "UniHead, class token, 2x schedule |" not in text and "2-fc head, 2x schedule | " in text
    later = dict(record, runs={"uni_faster_rcnn_2x": {"AP": 0.16}, "uni_faster_rcnn": {"AP": 0.08}})
    merged = om.merge(record, later)
    assert merged["runs"]["uni_faster_rcnn_2x"] == {"AP": 0.16} and merged["runs"]["uni_faster_rcnn"] == {"AP": 0.08}
    assert merged["runs"]["baseline_faster_rcnn"] == record["runs"]["baseline_faster_rcnn"]
    with pytest.raises(ValueError, match="pretrain md5 .* record of their own"):          # another checkpoint: another sample
        om.merge(record, dict(later, pretrain_md5="b365" + "0" * 28), "runs.json")
    elsewhere = om.merge(record, dict(later, cpu=dict(record["cpu"], model="1"), date="2026-12-06"))   # same checkpoint
    assert elsewhere["cpu"] == record["cpu"] and elsewhere["runs"]["uni_faster_rcnn_2x"] == {"AP": 0.16}
    assert elsewhere["more_cpus"] == [{"cpu": dict(record["cpu"], model="1"), "runs": ["uni_faster_rcnn", "uni_faster_rcnn_2x"],
                                       "same_weights": [], "date": "2026-12-06"}]
    assert "2 of the runs (uni_faster_rcnn, uni_faster_rcnn_2x; 2026-12-06) ran on model 1" in om.render(elsewhere, committed)
    weighed = dict(record, runs={"baseline_faster_rcnn": dict(record["runs"]["baseline_faster_rcnn"], weights="aaaa")})
    assert om.merge(weighed, weighed)["runs"] == weighed["runs"]                      # the same weights again: fine
    again = om.merge(weighed, dict(weighed, cpu=dict(record["cpu"], model="1"), date="2026-12-06"))
    assert again["more_cpus"][0]["same_weights"] == ["baseline_faster_rcnn"]
    assert "trained baseline_faster_rcnn again to the record's weights, bit for bit." in om.render(again, committed)
    with pytest.raises(ValueError, match="baseline_faster_rcnn trained again gives weights bbbb, the record's are aaaa"):
        om.merge(weighed, dict(weighed, runs={"baseline_faster_rcnn": {"weights": "bbbb"}}, cpu=dict(record["cpu"], model="1")))
    runs["baseline_faster_rcnn"]["profile"] = "smoke"
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    with pytest.raises(ValueError, match="--profile mini"):
        om.collect([tmp_path / "runs.json"], pretrain)


def test_other_machine_comparison_reads_pose_rows_by_pck_and_table6_by_box_ap(tmp_path):
    spec = importlib.util.spec_from_file_location("other_machine", Path(__file__).parents[1] / "analysis" / "unihead_1x_other_machine.py")
    om = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(om)
    box = lambda v: {"bbox_AP": v, "bbox_AP50": 2 * v, "bbox_AP75": v / 2}
    pose = lambda v: {"keypoints_AP": 0.0, "keypoints_AP50": 0.0, "keypoints_AP75": 0.0,        # OKS: ~0 at mini's sizes
                      "keypoints_PCK05": v / 4, "keypoints_PCK10": v, "keypoints_PCK20": 2 * v}
    runs = {n: {"metrics": box(v), "profile": "mini"} for n, v in
            {"baseline_faster_rcnn": 0.12, "baseline_faster_rcnn_seed1": 0.14, "hd_faster_rcnn": 0.10, "hd_faster_rcnn_seed1": 0.11,
             "uni_faster_rcnn_no_token": 0.06}.items()}
    runs.update({n: {"metrics": pose(v), "profile": "mini"} for n, v in
                 {"uni_keypoints": 0.06, "uni_keypoints_seed1": 0.08, "uni_keypoints_no_token": 0.05,
                  "uni_keypoints_no_token_seed1": 0.04, "uni_keypoints_zero_init": 0.08}.items()})
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "model.pt").write_bytes(b"checkpoint")
    record = om.collect([tmp_path / "runs.json"], tmp_path / "model.pt")
    assert record["runs"]["uni_keypoints_seed1"] == {"PCK10": 0.08, "PCK05": 0.02, "PCK20": 0.16, "train_seconds": None, "weights": None}
    assert record["runs"]["hd_faster_rcnn"]["AP"] == 0.10 and "PCK10" not in record["runs"]["hd_faster_rcnn"]
    committed = {n: dict(r) for n, r in record["runs"].items() if "_seed" not in n or n.startswith("baseline_faster_rcnn")}
    committed["uni_keypoints_zero_init"] = dict(committed["uni_keypoints_zero_init"], PCK10=0.09)
    text = om.render(record, committed)
    pck_header = "| row | committed PCK@0.1 | PCK@0.05 | PCK@0.2 | other machine PCK@0.1 | PCK@0.05 | PCK@0.2 |"
    pose_row = "| Pose, task token, task-aware initialisation (Tables 2, 3, 9; PCK@0.1) | 6.0 (1 run) | 1.5 (1 run) | 12.0 (1 run) | 7.0 ± 1.4 (2 runs) |"
    assert pck_header in text and pose_row in text and text.index(pck_header) < text.index(pose_row)
    assert "| HD, sibling 2-fc stacks (Table 6) | 10.0 (1 run) | 20.0 (1 run) | 5.0 (1 run) | 10.5 ± 0.7 (2 runs) |" in text
    from unified_vision.engine.tables import welch_gap
    g = welch_gap([6.0, 8.0], [5.0, 4.0])                                        # pose: Welch on PCK@0.1, two runs each side
    assert (f"| Pose without task token (Table 2; PCK@0.1) − Pose, task token, task-aware initialisation (Tables 2, 3, 9; "
            f"PCK@0.1) | -1.0 | -2.5 | [{g['ci'][0]:.1f}, {g['ci'][1]:.1f}] | {g['p']:.3f} |") in text
    assert "| Pose, zero initialisation (Table 3; PCK@0.1) − Pose, task token, task-aware initialisation (Tables 2, 3, 9; PCK@0.1) | +3.0 | +1.0 | – | – |" in text
    assert "| HD, sibling 2-fc stacks (Table 6) − 2-fc head | -3.0 | -2.5 | " in text   # committed 10.0 - 13.0, here 10.5 - 13.0
    assert "| UniHead without task token (Tables 2, 6) − HD, sibling 2-fc stacks (Table 6) |" not in text   # not a pair read
    assert "HD + MHSA on the RoIAlign tokens (Table 6) |" not in text            # not trained here: no row, no difference


def test_pck_reads_a_runs_experiment_and_seed_from_its_name():
    assert pckmod.run_of("uni_keypoints_zero_init_seed2") == ("uni_keypoints_zero_init", 2)
    assert pckmod.run_of("uni_keypoints_seed10") == ("uni_keypoints", 10)
    assert pckmod.run_of("uni_keypoints") == ("uni_keypoints", None)
    assert pckmod.run_of("uni_keypoints_seedless") == ("uni_keypoints_seedless", None)


def test_pck_prefers_the_pipelines_own_configuration_of_a_seed_named_run(tmp_path):
    for name in ("uni_keypoints", "uni_keypoints_seed1"):             # the second: an experiment of params.yaml
        (tmp_path / f"{name}.json").write_text("{}")
    assert pckmod.config_of("uni_keypoints_seed1", tmp_path) == (tmp_path / "uni_keypoints_seed1.json", None)
    assert pckmod.config_of("uni_keypoints_seed2", tmp_path) == (tmp_path / "uni_keypoints.json", 2)   # a kept run
    assert pckmod.config_of("uni_keypoints", tmp_path) == (tmp_path / "uni_keypoints.json", None)


def test_box_fit_takes_each_persons_best_overlap_whatever_its_score():
    gts = [person(1, (0, 0, 10, 20), [[5, 5], [6, 6]]), person(2, (0, 0, 10, 10), [[5, 5], [6, 6]]),
           person(3, (0, 0, 10, 10), [[5, 5], [6, 6]])]
    gts[0]["keypoints"][5] = 0.0                                 # one of the six labelled keypoints not visible
    exact = {"image_id": 1, "bbox": [0, 0, 10, 20], "score": 0.1, "keypoints": [0, 0, 0.9, 9, 9, 0.2]}
    wide = {"image_id": 1, "bbox": [0, 0, 20, 20], "score": 0.9, "keypoints": [0, 0, 0.9, 9, 9, 0.9]}
    half = {"image_id": 2, "bbox": [0, 0, 5, 10], "score": 0.5, "keypoints": [0, 0, 0.9, 9, 9, 0.9]}
    f = pckmod.box_fit(gts, [exact, wide, half], images=4)
    assert f["per_image"] == pytest.approx(0.75)
    assert (f["iou50"], f["iou70"], f["persons"]) == (2, 1, 3)   # IoU 1 (the low-scoring exact box), 0.5, none
    assert f["median_iou"] == pytest.approx(0.5)                 # of 1, 0.5 and 0 (image 3 has no prediction)
    assert (f["w_ratio"], f["h_ratio"]) == (pytest.approx(0.75), 1.0)   # medians of widths (1, 0.5), heights (1, 1)
    assert f["pred_visible"] == pytest.approx(5 / 6) and f["gt_visible"] == pytest.approx(5 / 6)
    assert "| run | 0.8 | 0.50 | 2/3 | 1/3 | 0.75 | 1.00 | 83% | 83% |" == pckmod.box_fit_row("run", f)
    blind = [dict(p, keypoints=[0, 0, 0.5, 9, 9, 0.5]) for p in (exact, wide, half)]   # no visibility token
    g = pckmod.box_fit(gts, blind, images=4)
    assert g["pred_visible"] is None and pckmod.box_fit_row("run", g).endswith("| – | 83% |")


def test_shifted_boxes_move_by_the_fraction_of_their_size_and_keep_it():
    import torch
    boxes = torch.tensor([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 9.0, 7.0]])
    moved = pckmod.shift_boxes(boxes, 0.2, torch.Generator().manual_seed(0))
    wh = boxes[:, 2:] - boxes[:, :2]
    assert torch.allclose(moved[:, 2:] - moved[:, :2], wh)                      # size kept
    d = (moved[:, :2] - boxes[:, :2]) / (0.2 * wh)                                # (cos t, sin t) per box
    assert torch.allclose(d.norm(dim=1), torch.ones(2)) and not torch.allclose(d[0], d[1])
    assert torch.equal(pckmod.shift_boxes(boxes, 0.0, torch.Generator()), boxes)


def test_offset_undone_is_zero_on_the_roi_and_one_on_the_person():
    gts = np.array([[0, 0, 10, 10], [0, 0, 20, 20]], float)
    rois = gts + np.array([[2, 0, 2, 0], [0, 4, 0, 4]])                          # centres off by 2 and 4
    assert pckmod.offset_undone(rois, rois, gts) == 0.0
    assert pckmod.offset_undone(rois, gts, gts) == 1.0
    half = gts + np.array([[1, 0, 1, 0], [0, 2, 0, 2]])
    assert pckmod.offset_undone(rois, half, gts) == pytest.approx(0.5)
    assert pckmod.offset_undone(rois, gts + np.array([[4, 0, 4, 0], [0, 8, 0, 8]]), gts) == pytest.approx(-1.0)   # moved the wrong way
    assert np.isnan(pckmod.offset_undone(gts, rois, gts))                        # no RoI off-centre: nothing to undo


def test_other_machine_comparison_reads_mask_rcnn_by_box_and_by_mask_ap(tmp_path):
    spec = importlib.util.spec_from_file_location("other_machine", Path(__file__).parents[1] / "analysis" / "unihead_1x_other_machine.py")
    om = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(om)
    both = lambda box, mask: {"bbox_AP": box, "bbox_AP50": 2 * box, "bbox_AP75": box / 2,
                              "segm_AP": mask, "segm_AP50": 3 * mask, "segm_AP75": mask / 3}
    runs = {n: {"metrics": both(*v), "profile": "mini"} for n, v in
            {"baseline_mask_rcnn": (0.15, 0.14), "baseline_mask_rcnn_seed1": (0.17, 0.12),
             "uni_mask_rcnn": (0.08, 0.10), "uni_mask_rcnn_seed1": (0.10, 0.09)}.items()}
    (tmp_path / "runs.json").write_text(json.dumps(runs))
    (tmp_path / "model.pt").write_bytes(b"checkpoint")
    record = om.collect([tmp_path / "runs.json"], tmp_path / "model.pt")
    kept = record["runs"]["uni_mask_rcnn_seed1"]
    assert (kept["AP"], kept["segm_AP"], kept["segm_AP50"]) == (0.10, 0.09, 0.27) and "segm_AP" not in om.kept_columns("uni_atss", both(1, 2))
    committed = {n: dict(r) for n, r in record["runs"].items() if "_seed" not in n}
    text = om.render(record, committed)
    assert "| Mask R-CNN, 2-fc box head (Table 7; box AP) | 15.0 (1 run) | 30.0 (1 run) | 7.5 (1 run) | 16.0 ± 1.4 (2 runs) |" in text
    assert "| Mask R-CNN, 2-fc box head (Table 7; mask AP) | 14.0 (1 run) | 42.0 (1 run) | 4.7 (1 run) | 13.0 ± 1.4 (2 runs) |" in text
    from unified_vision.engine.tables import welch_gap
    for what, first, second, committed_diff in (("box", [15.0, 17.0], [8.0, 10.0], -7.0), ("mask", [14.0, 12.0], [10.0, 9.0], -4.0)):
        g = welch_gap(first, second)                                             # each read by its own metric, Welch on it
        assert (f"| Mask R-CNN, UniHead (mask) (Table 7; {what} AP) − Mask R-CNN, 2-fc box head (Table 7; {what} AP) | "
                f"{committed_diff:+.1f} | {g['diff']:+.1f} | [{g['ci'][0]:.1f}, {g['ci'][1]:.1f}] | {g['p']:.3f} |") in text


def _analysis_module(script: str):
    "An analysis script, imported by file (analysis/ is not a package)."
    spec = importlib.util.spec_from_file_location(script, Path(__file__).parents[1] / "analysis" / f"{script}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cls_loss_module():
    return _analysis_module("unihead_cls_loss")


def test_cls_loss_windows_and_running_mean():
    cl = _cls_loss_module()
    steps, values = np.arange(20, 220, 20), np.arange(10, dtype=float)          # 10 logs, the last at step 200
    assert cl.window_mean(steps, values, 0.0, 0.25) == pytest.approx(0.5)      # steps 20 and 40 (0.1, 0.2 of the schedule)
    assert cl.window_mean(steps, values, 0.9, 1.0) == pytest.approx(8.5)        # steps 180 and 200: the last one counts
    with pytest.raises(ValueError, match="no logged step"):
        cl.window_mean(steps, values, 0.0, 0.1)                                 # the first log is at 0.1: [0, 0.1) is empty
    np.testing.assert_allclose(cl.running_mean(np.array([2.0, 4.0, 6.0, 8.0]), 2), [2.0, 3.0, 5.0, 7.0])   # trailing


def test_cls_loss_reads_seed_logs_and_renders_the_gaps(tmp_path):
    cl = _cls_loss_module()
    logs, metrics = tmp_path / "logs", tmp_path / "metrics"
    metrics.mkdir()
    level = {cl.HEADS[0]: 0.3, cl.HEADS[1]: 0.4, cl.HEADS[2]: 0.3}
    for sched, heads in cl.GROUPS.items():
        for head, (experiment, seeds) in heads.items():
            for i, run in enumerate(cl.seed_runs(experiment, seeds)):
                d = logs / run / "plots" / "metrics" / "train"
                d.mkdir(parents=True)
                for loss in ("loss_cls", "loss_box"):
                    rows = "".join(f"{s}\t{level[head] + 0.01 * i}\n" for s in range(20, 420, 20))
                    (d / f"{loss}.tsv").write_text(f"step\t{loss}\n" + rows)
                (metrics / f"{run}.json").write_text(json.dumps({"bbox_AP": 0.1 + 0.01 * i}))
    data = cl.gather(logs, metrics)
    assert data["4x"][cl.HEADS[1]]["runs"][-1] == "uni_faster_rcnn_4x_seed3" and data["1x"][cl.HEADS[0]]["loss_box"] is None
    text = cl.render(data, "f.png")
    assert f"| {cl.HEADS[1]} − {cl.HEADS[2]} | last 10% | +0.100 |" in text     # class token 0.1 above, seed for seed
    assert "| UniHead, class token (paper) | 3 | 11.0 ± 1.0 | 0.410 ± 0.010 |" in text
    (logs / "uni_faster_rcnn_seed2" / "plots" / "metrics" / "train" / "loss_cls.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"dvc repro train@uni_faster_rcnn_seed2"):
        cl.gather(logs, metrics)
    with pytest.raises(ValueError, match="logged other steps"):
        cl.stack_seeds([(np.array([20, 40]), np.zeros(2)), (np.array([20, 60]), np.zeros(2))], ["a", "b"])


def test_cls_loss_names_what_the_class_fc_reads_and_sorts_by_it():
    cl = _cls_loss_module()
    uni = lambda **kw: {"head": "unihead", "heads": {"unihead": kw}}
    assert cl.class_input({"framework": "faster_rcnn", "heads": {"two_fc": {}}}) == "RoI grid (7 x 7 RoIAlign)"
    assert cl.class_input(uni()) == "class token" and cl.class_input(uni(cls_input="all")) == "all K + 1 tokens"
    assert cl.class_input(uni(cls_input="mean")) == "mean of the K point tokens"
    assert cl.class_input(uni(cls_input="all_low_rank")) == "all K + 1 tokens, rank width"
    assert cl.class_input(uni(attention=False, cls_input="token")) == "all K tokens, no attention"   # no token to pool into
    row = lambda label, reads, last: {"label": label, "reads": reads, "AP": 5.0, "dagger": label == "b",
                                      "loss_cls": {"first 10%": 0.6, "middle 10%": 0.5, "last 10%": last}}
    text = cl.render_one_seed([row("a", "class token", 0.45), row("b", "class token", 0.40), row("c", "all K + 1 tokens", 0.5)])
    assert text.index("| c |") < text.index("| b |") < text.index("| a |")       # by input, then by the last loss
    assert "| b | class token | 5.0 † |" in text and "class FC on class token: 2 run(s), loss_cls in the last 10% 0.400 to 0.450" in text


def test_cls_loss_probes_read_their_experiment_and_settings(tmp_path):
    cl = _cls_loss_module()
    assert cl.probe_experiment("uni_faster_rcnn_clsall_seed1_dim128", "dim128") == "uni_faster_rcnn_clsall"
    assert cl.probe_experiment("uni_faster_rcnn_l3_seed2", None) == "uni_faster_rcnn_l3"
    assert cl.probe_seed("uni_faster_rcnn_clsall_seed1_dim128", "dim128") == 1 and cl.probe_seed("uni_faster_rcnn_dim128", "dim128") == 0
    with pytest.raises(ValueError, match="does not end in its tag"):
        cl.probe_experiment("uni_faster_rcnn_dim128", "wide")
    (tmp_path / "uni.json").write_text(json.dumps({"experiment": "uni", "head": "unihead", "heads": {"unihead": {"dim": 64}}}))
    steps = list(range(20, 420, 20))
    run = lambda level, settings, tag: {"steps": steps, "loss_cls": [level] * 20, "loss_box": [0.3] * 20, "AP": 7.0,
                                        "settings": settings, "tag": tag, "cpu": {"model": "207"}, "pretrain_md5": "ec8c" + "0" * 28}
    text = cl.render_probes({"uni_seed2": run(0.4, [], None), "uni_dim128": run(0.3, ["heads.unihead.dim=128"], "dim128")}, tmp_path)
    assert "| uni_seed2 | class token | 64 | 7.0 | 0.400 | 0.400 | 0.400 | 0.300 | model 207, ec8c… |" in text
    assert "| uni_dim128 | class token | 128 | 7.0 | 0.300 |" in text
    assert text.index("| uni_seed2 |") < text.index("| uni_dim128 |")           # by input, then width
    assert cl.render_probes({}, tmp_path) == ""


def test_cls_loss_groups_probe_seeds_and_tests_them_against_the_same_pretrain():
    cl = _cls_loss_module()
    steps = list(range(20, 420, 20))
    run = lambda ap, tag, md5="ec8c": {"steps": steps, "loss_cls": [0.46] * 20, "AP": ap, "settings": ["x=1"] if tag else [],
                                       "tag": tag, "pretrain_md5": md5}
    record = {"uni_seed0_mean": run(5.5, "mean"), "uni_seed1_mean": run(5.3, "mean"), "uni_seed2_mean": run(5.1, "mean"),
              "uni_dim128": run(10.0, "dim128"), "uni_seed2": run(7.1, None)}
    groups = cl.probe_groups(record)
    assert sorted(groups[("uni", "mean")]) == [0, 1, 2] and list(groups[("uni", "dim128")]) == [0] and list(groups[("uni", None)]) == [2]
    names = ("baseline_faster_rcnn", "uni_faster_rcnn", "uni_faster_rcnn_clsall")
    other = {"pretrain_md5": "ec8c", "runs": {f"{n}{s}": {"AP": ap / 100} for n, base in zip(names, (13.0, 7.3, 11.9))
                                               for s, ap in zip(("", "_seed1", "_seed2"), (base - 0.2, base, base + 0.2))}}
    text = cl.render_probe_groups(record, other)
    assert "| uni (mean) | 0, 1, 2 | 5.3 ± 0.2 | 0.460 ± 0.000 | -7.7 [" in text and "class token 7.3 ± 0.2" in text
    assert "dim128" not in text                                        # one seed: no group
    assert "none with these runs' checkpoint" in cl.render_probe_groups(record, {**other, "pretrain_md5": "b365"})
    assert cl.render_probe_groups({"uni_dim128": run(10.0, "dim128")}, other) == ""


def _cls_attention_module():
    return _analysis_module("unihead_cls_attention")


def test_cls_attention_tells_a_uniform_pooling_from_a_selection():
    ca = _cls_attention_module()
    t = 17
    uniform = np.full((5, 2, t, t), 1 / t)
    s = ca.attention_stats(uniform)
    assert s["entropy"] == pytest.approx(1.0) and s["largest"] == pytest.approx(1 / t) and s["varies"] == pytest.approx(0.0)
    assert s["on itself"] == pytest.approx(1 / t) and s["points' entropy"] == pytest.approx(1.0)
    picks = np.zeros((4, 2, t, t))                     # each RoI's class token looks at one point, another for each RoI
    for roi in range(4):
        picks[roi, :, 0, roi + 1] = 1.0
    picks[:, :, 1:] = 1 / t
    s = ca.attention_stats(picks)
    assert s["entropy"] == pytest.approx(0.0, abs=1e-9) and s["largest"] == pytest.approx(1.0) and s["on itself"] == 0.0
    assert s["varies"] == pytest.approx(0.75)          # half L1 to the mean row: 0.5 * (0.75 + 3 * 0.25)
    assert s["mean_row"][1:5] == [0.25] * 4 and len(s["entropy_per_roi"]) == 4
    with pytest.raises(ValueError, match="sum to 1"):
        ca.attention_stats(uniform * 2)
    with pytest.raises(ValueError, match="tokens, tokens"):
        ca.attention_stats(uniform[:, :, 0])


def test_cls_attention_renders_each_block_of_each_run(tmp_path):
    ca = _cls_attention_module()
    layer = lambda e: {"entropy": e, "on itself": 0.01, "largest": 0.2, "varies": 0.3, "points' entropy": 0.8,
                       "entropy_per_roi": [e, e], "mean_row": [1 / 17] * 17}
    run = lambda reads, ap: {"layers": [layer(0.7), layer(0.9)], "rois": 2, "cls_input": reads, "width": 64, "heads": 2, "AP": ap}
    record = {"uni_seed2": run("token", 7.1), "uni_mean": run("mean", 11.0)}
    text = ca.render(record, "fig.png")
    assert "| uni_seed2 | class token | 64, 2 | 7.1 | 1 | 2 | 0.700 | 0.010 | 0.200 | 0.300 | 0.800 |" in text
    assert "| | | | | 2 | 2 | 0.900 |" in text and "mean of the K point tokens" in text
    assert text.index("| uni_mean |") < text.index("| uni_seed2 |")
    assert "- class token (1 run): class token's entropy 0.70-0.70 in the first block, 0.90-0.90 in the last" in text
    ca.plot(record, tmp_path / "fig.png")
    assert (tmp_path / "fig.png").stat().st_size > 0 and [p.name for p in tmp_path.iterdir()] == ["fig.png"]   # no temporary left
