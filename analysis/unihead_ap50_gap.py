"""Where UniHead's AP50 goes in Faster R-CNN on `mini`. At the 4x schedule UniHead is level with the 2-fc head at AP75 but
about 6 points behind at AP50 (results/unihead_noise.md). This script takes trained checkpoints of the pipeline and asks
two questions of each, on the validation split, writing analysis/unihead_ap50_gap.md:

1. Is it the post-processing? UniHead ranks by class probability x predicted IoU. Rules for the candidate filter
   before NMS (`test.threshold_on`, `test.score_thresh` of the two-stage frameworks, nbs/50_frameworks.two_stage.ipynb):
   - class: keep a candidate whose class probability is above 0.05; rank by the score. The default; mmdetection's
     `multiclass_nms` with `score_factors` does the same. For a head without an IoU factor it is the only rule.
   - score: keep a candidate whose score (probability x predicted IoU) is above 0.05. The code before 2026-12-04.
   - none: threshold 0; every candidate goes to NMS and the 100 best per image stay. UniHead's released config.
   - no IoU factor: the class probability alone filters and ranks (UniHead's `iou` output dropped here, for the
     diagnosis only): does the predicted IoU help the ranking on `mini`?
   - NMS 0.3: the default rule with NMS at IoU 0.3 instead of 0.5 (diagnosis only): are the extra false positives
     near-duplicates, boxes on an object that another box already covers?
2. What kind of error is it? COCOeval at IoU 0.1 and 0.5, with and without the class (`useCats`), default rule:
   AP at IoU 0.1 forgives loose boxes; class-agnostic AP forgives a wrong class (and counts a second box of another class
   on the same object as a false positive); the recall at IoU 0.1 without classes says how many objects get any box.
   Then each image's detections, best first, are matched to the ground truth as COCO does at IoU 0.5 (same class, each
   object once), and every unmatched one is put in the first kind it fits: a duplicate (IoU >= 0.5 with an object of its
   class that a better detection took), a loose box (IoU 0.1-0.5 with an object of its class; "object found" when a
   better detection already matched the object of its class it overlaps most, "missed" otherwise), a wrong class
   (IoU >= 0.1 with an object of another class), or background. Counted per image, and among each image's 10 best
   (the matching sees only those).

    python analysis/unihead_ap50_gap.py uni_faster_rcnn_4x baseline_faster_rcnn_4x

Each experiment needs `runs/<experiment>/model.pt` (its `train` stage) and `configs/<experiment>.json`. The numbers
are kept in analysis/unihead_ap50_gap.json, merged by experiment, so checkpoints can be evaluated one at a time.
"""
import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

# each rule: what it changes in the detector's `test_cfg` (the default rule is `class`), and whether the IoU output is dropped
RULES = {"class": {}, "score": {"threshold_on": "score"}, "none": {"score_thresh": 0.0}, "no IoU factor": {"drop_iou": True},
         "NMS 0.3": {"nms_iou": 0.3}}
FP_KINDS = ("duplicate", "loose, object found", "loose, object missed", "wrong class", "background")


@contextlib.contextmanager
def _without_iou(model):
    "Drop the `iou` output of every RoI stage's head while inside (diagnosis only: the class probability alone scores)."
    heads = [stage.head for stage in model.stages]
    originals = [h.forward for h in heads]
    for h, f in zip(heads, originals):
        h.forward = lambda *a, _f=f, **k: {key: v for key, v in _f(*a, **k).items() if key != "iou"}
    try:
        yield
    finally:
        for h in heads:
            del h.forward              # back to the class's own forward


def _coco_eval(coco, results, ids, agnostic: bool = False, thresholds=(0.1, 0.5, 0.75)):
    import numpy as np
    from pycocotools.cocoeval import COCOeval
    from unified_vision.engine.evaluate import _load_results
    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(coco, _load_results(coco, results), "bbox")
        ev.params.imgIds, ev.params.iouThrs, ev.params.useCats = list(ids), np.array(thresholds), int(not agnostic)
        ev.evaluate(); ev.accumulate()
    return ev


def _ap(ev, t: int) -> float:
    "AP (%) at the `t`-th IoU threshold: all areas, 100 detections, mean over the classes that have ground truth."
    p = ev.eval["precision"][t, :, :, 0, -1]
    return 100 * float(p[p > -1].mean()) if (p > -1).any() else float("nan")


def _recall(ev, t: int) -> float:
    r = ev.eval["recall"][t, :, 0, -1]
    return 100 * float(r[r > -1].mean()) if (r > -1).any() else float("nan")


def false_positive_kinds(coco, results: list[dict], ids, top: int | None = None) -> dict:
    "Mean per image of true positives and of each kind of false positive (FP_KINDS) at IoU 0.5, best detections first."
    import numpy as np
    from pycocotools import mask as mask_utils
    counts = dict.fromkeys(("true positive", *FP_KINDS), 0)
    by_image = {}
    for r in results:
        by_image.setdefault(r["image_id"], []).append(r)
    for image_id in ids:
        dets = sorted(by_image.get(image_id, []), key=lambda r: -r["score"])[:top]
        gts = [g for g in coco.loadAnns(coco.getAnnIds(imgIds=image_id)) if not g.get("iscrowd", 0)]
        if not dets:
            continue
        if not gts:
            counts["background"] += len(dets)
            continue
        iou = mask_utils.iou([d["bbox"] for d in dets], [g["bbox"] for g in gts], [0] * len(gts))
        same = np.array([[d["category_id"] == g["category_id"] for g in gts] for d in dets])
        taken = np.zeros(len(gts), bool)
        for i in range(len(dets)):
            free = np.where(same[i] & ~taken & (iou[i] >= 0.5))[0]
            if len(free):
                taken[free[np.argmax(iou[i, free])]] = True
                counts["true positive"] += 1
            elif (same[i] & (iou[i] >= 0.5)).any():
                counts["duplicate"] += 1
            elif (same[i] & (iou[i] >= 0.1)).any():     # found: a better detection matched the object it overlaps most
                best = np.argmax(np.where(same[i], iou[i], -1))
                counts["loose, object found" if taken[best] else "loose, object missed"] += 1
            elif (~same[i] & (iou[i] >= 0.1)).any():
                counts["wrong class"] += 1
            else:
                counts["background"] += 1
    return {k: v / len(ids) for k, v in counts.items()}


def _sha256(path: Path) -> str:
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def analyse(name: str, root: Path, progress: bool) -> dict:
    "`{'rules': {rule: numbers}, 'errors': numbers}` of one trained two-stage experiment."
    import torch
    from unified_vision.core import DataError
    from unified_vision.engine.evaluate import coco_evaluate, predict
    from unified_vision.engine.experiment import build_dataset, load_trained
    cfg_path = root / "configs" / f"{name}.json"
    if not cfg_path.exists():
        raise DataError(cfg_path, "no resolved configuration", "run `python -m unified_vision.cli configs` first")
    cfg = json.loads(cfg_path.read_text())
    torch.set_num_threads(int(cfg["train"].get("threads", torch.get_num_threads())))
    dataset = build_dataset(cfg, "val")
    model = load_trained(cfg, root / "runs" / name / "model.pt", len(dataset.class_names))
    if "threshold_on" not in getattr(model, "test_cfg", {}):
        raise DataError(cfg_path, f"'{name}' is not a two-stage detector", "pass Faster / Mask / Cascade R-CNN experiments")
    default = dict(model.test_cfg, threshold_on="class")
    out, by_rule, evals = {"rules": {}}, {}, {}
    for rule, change in RULES.items():
        change = dict(change)
        drop_iou = change.pop("drop_iou", False)
        model.test_cfg.update({**default, **change})
        with _without_iou(model) if drop_iou else contextlib.nullcontext():
            by_rule[rule] = results = predict(model, dataset, progress=progress)
        evals[rule] = ev = _coco_eval(dataset.coco, results, dataset.ids)
        out["rules"][rule] = {"AP50": _ap(ev, 1), "AP75": _ap(ev, 2), "R50": _recall(ev, 1),
                              "dets_per_image": len(results) / len(dataset), "threshold": model.test_cfg["score_thresh"]}
    model.test_cfg.update(default)
    if "unihead" not in cfg["heads"] and not by_rule["class"] == by_rule["score"] == by_rule["no IoU factor"]:
        raise AssertionError(f"{name}: a head without an IoU factor gave different detections under 'class' and 'score'")
    results, ev = by_rule["class"], evals["class"]
    box = coco_evaluate(dataset.coco, results, "bbox", image_ids=dataset.ids)     # the standard AP over IoU 0.5:0.95
    recorded = root / "metrics" / f"{name}.json"
    recorded = json.loads(recorded.read_text()) if recorded.exists() else {}
    if "unihead" not in cfg["heads"]:
        recorded_rule = "any (no IoU factor)"
    else:
        recorded_rule = recorded.get("eval_threshold_on", "score (before the record)") if recorded else None
    out["checkpoint"] = {"sha256": _sha256(root / "runs" / name / "model.pt"), "AP": 100 * box["AP"], "AP50": 100 * box["AP50"],
                         "AP75": 100 * box["AP75"], **{f"metrics_file_{k}": 100 * recorded[f"bbox_{k}"] for k in ("AP", "AP50", "AP75")
                                                       if recorded.get(f"bbox_{k}") is not None},
                         "metrics_file_rule": recorded_rule}
    agn = _coco_eval(dataset.coco, results, dataset.ids, agnostic=True)
    out["errors"] = {"rule": "class", "AP50": _ap(ev, 1), "AP10": _ap(ev, 0), "AP50_agnostic": _ap(agn, 1),
                     "AP10_agnostic": _ap(agn, 0), "R50": _recall(ev, 1), "R10_agnostic": _recall(agn, 0),
                     "per_image": false_positive_kinds(dataset.coco, results, dataset.ids),
                     "top10": false_positive_kinds(dataset.coco, results, dataset.ids, top=10)}
    print(name, json.dumps(out), file=sys.stderr)
    return out


def render(rows: dict, command: str) -> str:
    lines = ["## Where UniHead's AP50 goes (Faster R-CNN, `mini`, box AP on the validation split)", "",
             f"Generated by `{command}` from trained checkpoints of the pipeline (see the script's docstring). "
             "Only the evaluation changes between the rows of one experiment.", "",
             "### 0. The checkpoints", "",
             "Each checkpoint's box AP under the default rule, beside what the pipeline's metrics file (`metrics/<experiment>.json`) "
             "records for the experiment. They differ when the checkpoint is not the one the pipeline evaluated: a run retrained "
             "on another machine is another sample (float sums differ from the first iterations on), and metrics written "
             "before 2026-12-04 used the *score* rule.", "",
             "| experiment | checkpoint (SHA-256) | AP | AP50 | AP75 | metrics file: AP | AP50 | AP75 | its rule |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        c = r["checkpoint"]
        lines.append(f"| {name} | {c['sha256']} | {c['AP']:.1f} | {c['AP50']:.1f} | {c['AP75']:.1f} | "
                     + " | ".join(f"{c[k]:.1f}" if k in c else "–" for k in ("metrics_file_AP", "metrics_file_AP50", "metrics_file_AP75"))
                     + f" | {c['metrics_file_rule'] or '–'} |")
    lines += ["", "### 1. The post-processing", "",
             "*class*: candidates whose class probability is above 0.05, ranked by probability × predicted IoU (the default). "
             "*score*: candidates whose probability × predicted IoU is above 0.05 (the rule before 2026-12-04). *none*: "
             "threshold 0, the 100 best per image (UniHead's released config). *no IoU factor*: the class probability alone "
             "filters and ranks (diagnosis). *NMS 0.3*: *class* with NMS at IoU 0.3 instead of 0.5 (diagnosis). For the 2-fc head *class* and *score* are the "
             "same rule, and so is *no IoU factor* (checked: identical detections). R50: recall at IoU 0.5 with 100 detections per image, mean over classes.", "",
             "| experiment | rule | AP50 | AP75 | R50 | detections / image |", "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        for rule, m in r["rules"].items():
            lines.append(f"| {name} | {rule} | {m['AP50']:.1f} | {m['AP75']:.1f} | {m['R50']:.1f} | {m['dets_per_image']:.1f} |")
    lines += ["", "### 2. The kind of error", "",
              "Default rule. AP10: AP at IoU 0.1 (a loose box counts). Agnostic: COCOeval without classes (a box of the wrong "
              "class counts; a second box of another class on the same object is a false positive). R10 agnostic: the "
              "share of objects that get any box overlapping them by 0.1 or more among the 100 per image.", "",
              "| experiment | AP50 | AP10 | AP50 agnostic | AP10 agnostic | R50 | R10 agnostic |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        e = r["errors"]
        lines.append(f"| {name} | {e['AP50']:.1f} | {e['AP10']:.1f} | {e['AP50_agnostic']:.1f} | {e['AP10_agnostic']:.1f} | "
                     f"{e['R50']:.1f} | {e['R10_agnostic']:.1f} |")
    lines += ["", "Detections per image by kind (default rule, IoU 0.5; see the docstring): all of them, then each image's 10 best.", "",
              "| experiment | detections counted | true positive | " + " | ".join(FP_KINDS) + " |", "|---|---|---|" + "---|" * len(FP_KINDS)]
    for name, r in rows.items():
        for which in ("per_image", "top10"):
            k = r["errors"][which]
            label = "all" if which == "per_image" else "10 best"
            lines.append(f"| {name} | {label} | {k['true positive']:.2f} | " + " | ".join(f"{k[f]:.2f}" for f in FP_KINDS) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--out", default="analysis/unihead_ap50_gap.md")
    parser.add_argument("--json", default="analysis/unihead_ap50_gap.json", help="the raw numbers, merged by experiment")
    args = parser.parse_args(argv)
    root = Path(os.getcwd())
    sys.path.insert(0, str(root))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = Path(args.json)
    rows = json.loads(raw.read_text()) if raw.exists() else {}
    for name in args.experiments:
        rows[name] = analyse(name, root, progress=sys.stderr.isatty())
    for path, text in ((raw, json.dumps(rows, indent=1) + "\n"),
                       (Path(args.out), render(rows, "python analysis/unihead_ap50_gap.py " + " ".join(rows)))):
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text); tmp.replace(path)


if __name__ == "__main__":
    main()
