"""Does a pose run learn where COCO's keypoint AP cannot tell? PCK of trained and untrained models on a profile's persons.

At the `mini` scale keypoint AP (OKS) is near zero for any prediction that is not within about a pixel of the truth
(see analysis/keypoints_oks_scale.py), so the pose rows of the UniHead tables cannot show whether a head learned.
PCK (the fraction of visible ground-truth keypoints whose prediction lies within alpha x the longer side of the
person's box) is looser and linear in the error, so it can. For each experiment this script runs, on the validation
split, through the same `predict` the evaluation stage uses:

* the trained model (`runs/<experiment>/model.pt`);
* the same model freshly initialised, as at iteration 0 of its training (seed of the run, task-aware initialisation
  from the training split, backbone from the profile's pretraining);
* a box-only reference: the training split's mean keypoint layout (UniHead's pose initialisation, sec. 3.4) placed
  in each person box the trained model detected. A head that learned pose beats it; one that only found the box
  does not;
* the same mean layout in the ground-truth boxes (a perfect detector that knows nothing about pose).

A second table (`box_fit`) shows how well each trained model's person boxes, the extent of its predicted keypoints,
fit the ground-truth persons: the best-overlapping box of each person, its size against the person's, and how many
keypoints are predicted and labelled visible (invisible keypoints get no L1 loss but still stretch the box).

A third table (`head_on_boxes`) gives the trained RoI head boxes instead of proposals: each validation person's own
box, and that box moved by a fraction s of its width and height in a random direction (`shift_boxes`), as a misplaced
proposal would be. It reports the head's person probability on the persons' own boxes (a classifier that learned
nothing scores every box at the training RoIs' share of persons), and per shift the IoU of the RoI and of the head's
box (the extent of its keypoints) with the person, the share of the RoI's centre offset the head's box undoes
(`offset_undone`: 0 when its box stays centred on the RoI, 1 when it is centred on the person), and PCK@0.1 of the
head's keypoints beside the mean layout in the same RoI (a head that ignores the image).

Each ground-truth person is matched to the highest-scoring predicted person of its image whose box overlaps it with
IoU >= 0.5 (each prediction used once); an unmatched person counts all its visible keypoints as misses. The matching
and PCK are the evaluation stage's (`unified_vision.engine.evaluate.keypoint_pck`, which reports PCK for every pose
run); this script adds the untrained and box-only reference rows.

Usage: python analysis/keypoints_pck.py --profile mini uni_keypoints uni_keypoints_no_token uni_keypoints_zero_init
Needs `generated/<profile>` and the runs' checkpoints (`dvc repro train_unihead@<experiment>`). Writes
analysis/keypoints_pck_<profile>.md.

Runs kept elsewhere (`same_results_on_cpu.py run --keep DIR [--seed N]`, which names a run `<experiment>_seed<N>`):
    python analysis/keypoints_pck.py --runs DIR --out analysis/keypoints_pck_other_machine.md uni_keypoints uni_keypoints_seed1
reads DIR/<run>/model.pt, with the experiment's configuration and the run's seed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "analysis"))
from keypoints_oks_scale import persons  # noqa: E402  (the validation persons with keypoints)
from unified_vision.engine.evaluate import match_people, pck  # noqa: E402  (the evaluation stage's PCK)
ALPHAS = (0.05, 0.1, 0.2)
SHIFTS = (0.0, 0.1, 0.2, 0.3)          # the moves of the given boxes, in units of their width and height


def layout_in_box(layout: np.ndarray, box) -> np.ndarray:
    "Keypoints of a layout given relative to a box's centre in units of its width/height, placed in the xywh `box`."
    x, y, w, h = box
    xy = np.array([x + w / 2, y + h / 2]) + layout * np.array([w, h])
    return np.c_[xy, np.ones(len(xy))]


def box_fit(gts: list[dict], preds: list[dict], images: int) -> dict:
    """How well a pose run's person boxes (the extent of its 17 predicted keypoints) fit the ground-truth persons.

    For each ground-truth person, its *best box* is the prediction of its image that overlaps it most, whatever its
    score (none where the image has no prediction). Returns the predictions per image (of `images`), the median best IoU (0 for a person with
    no box), the persons whose best IoU reaches 0.5 and 0.7, the median width and height of the best box over the
    person's, and the share of predicted and of ground-truth keypoints that are visible (> 0.5 and > 0; predicted: None
    for a head without the visibility token, whose keypoints all score sigmoid(0) = 0.5)."""
    from pycocotools import mask as mask_utils
    by_image = {}
    for p in preds:
        by_image.setdefault(p["image_id"], []).append(p)
    best_iou, w_ratio, h_ratio = [], [], []
    for g in gts:
        cands = by_image.get(g["image_id"], [])
        if not cands:
            best_iou.append(0.0)
            continue
        ious = mask_utils.iou([p["bbox"] for p in cands], [g["bbox"]], [0])[:, 0]
        i = int(ious.argmax())
        best_iou.append(float(ious[i]))
        w_ratio.append(cands[i]["bbox"][2] / g["bbox"][2])
        h_ratio.append(cands[i]["bbox"][3] / g["bbox"][3])
    scores = lambda rows: np.concatenate([np.asarray(r["keypoints"], float).reshape(-1, 3)[:, 2] for r in rows]) \
        if rows else np.zeros(0)
    pred, labelled = scores(preds), scores(gts)
    no_head = len(pred) == 0 or bool((pred == 0.5).all())    # without T_visibility every keypoint scores sigmoid(0)
    best_iou = np.asarray(best_iou)
    return {"per_image": len(preds) / max(images, 1),
            "median_iou": float(np.median(best_iou)) if len(best_iou) else float("nan"),
            "iou50": int((best_iou >= 0.5).sum()), "iou70": int((best_iou >= 0.7).sum()), "persons": len(gts),
            "w_ratio": float(np.median(w_ratio)) if w_ratio else float("nan"),
            "h_ratio": float(np.median(h_ratio)) if h_ratio else float("nan"),
            "pred_visible": None if no_head else float(np.mean(pred > 0.5)),
            "gt_visible": float(np.mean(labelled > 0)) if len(labelled) else float("nan")}


def shift_boxes(boxes, s: float, generator):
    "xyxy `boxes` `[N, 4]` (a tensor), each moved by `s` x (its width x cos t, its height x sin t), t uniform per box."
    import torch
    t = torch.rand(len(boxes), generator=generator, dtype=boxes.dtype) * 2 * torch.pi
    wh = boxes[:, 2:] - boxes[:, :2]
    return boxes + (torch.stack([t.cos(), t.sin()], 1) * s * wh).repeat(1, 2)


def offset_undone(rois, preds, gts) -> float:
    """The share of the RoIs' centre offsets from the persons' that the predicted boxes undo, over all boxes:
    1 - sum |c(pred) - c(gt)| / sum |c(roi) - c(gt)| (xyxy `[N, 4]` arrays or tensors; nan when no RoI is off-centre)."""
    centre = lambda b: (np.asarray(b, float)[:, :2] + np.asarray(b, float)[:, 2:]) / 2
    off = np.linalg.norm(centre(rois) - centre(gts), axis=1).sum()
    return float("nan") if off == 0 else float(1 - np.linalg.norm(centre(preds) - centre(gts), axis=1).sum() / off)


def head_on_boxes(model, dataset, layout: np.ndarray, shifts=SHIFTS, seed: int = 0) -> dict:
    """A trained two-stage pose model's RoI head run on the validation persons' own boxes, moved by each of `shifts`
    (see the module docstring): `{"prob": person probabilities on the own boxes, s: {roi_iou, box_iou, undone, pck,
    layout_pck}}`."""
    import torch
    from torchvision.ops import box_convert, box_iou
    from unified_vision.data.coco import collate
    model.eval()
    head, div = model.stages[0].head, getattr(model.neck, "size_divisible", 32)
    g = torch.Generator().manual_seed(seed)
    probs, acc = [], {s: {"roi": [], "box": [], "gt": [], "gts": [], "kpts": [], "layout": []} for s in shifts}
    with torch.no_grad():
        for start in range(0, len(dataset), 8):
            samples = [dataset[i] for i in range(start, min(start + 8, len(dataset)))]
            targets = [s.target for s in samples]
            if not any(len(t["boxes"]) for t in targets):
                continue
            batch = collate(samples, div)
            feats = model.neck(batch.images)
            gt, kp = torch.cat([t["boxes"] for t in targets]), torch.cat([t["keypoints"] for t in targets])
            labels = torch.cat([t["labels"] for t in targets])
            for s in shifts:
                rois = [shift_boxes(t["boxes"], s, g) for t in targets]
                out = head(feats, rois, batch.image_sizes)
                if s == 0:
                    probs += out["cls_logits"].softmax(-1).gather(1, labels[:, None])[:, 0].tolist()
                a, r = acc[s], torch.cat(rois)
                a["roi"].append(r); a["box"].append(out["boxes"]); a["gt"].append(gt)
                a["gts"] += [{"keypoints": k.flatten().tolist(), "bbox": b} for k, b in zip(kp, box_convert(gt, "xyxy", "xywh").tolist())]
                a["kpts"] += list(out["keypoints"].numpy())
                a["layout"] += [layout_in_box(layout, b) for b in box_convert(r, "xyxy", "xywh").tolist()]
    res = {"prob": np.asarray(probs)}
    for s, a in acc.items():
        roi, box, gt = (torch.cat(a[k]) for k in ("roi", "box", "gt"))
        res[s] = {"roi_iou": float(box_iou(roi, gt).diagonal().mean()), "box_iou": float(box_iou(box, gt).diagonal().mean()),
                  "undone": offset_undone(roi, box, gt), "pck": pck(a["gts"], a["kpts"], 0.1),
                  "layout_pck": pck(a["gts"], a["layout"], 0.1)}
    return res


def head_on_boxes_row(name: str, h: dict, shifts) -> str:
    "One row of the table of the head on given boxes."
    p = h["prob"]
    cells = [f"{np.median(p):.3f} ({np.quantile(p, 0.1):.3f}-{np.quantile(p, 0.9):.3f})"]
    for s in shifts:
        r = h[s]
        cells.append(f"{r['roi_iou']:.2f} → {r['box_iou']:.2f}" + ("" if s == 0 else f", {100 * r['undone']:.0f}%")
                     + f", {100 * r['pck']:.1f} / {100 * r['layout_pck']:.1f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def box_fit_row(name: str, f: dict) -> str:
    "One row of the person-box table."
    return (f"| {name} | {f['per_image']:.1f} | {f['median_iou']:.2f} | {f['iou50']}/{f['persons']} | {f['iou70']}/{f['persons']} | "
            f"{f['w_ratio']:.2f} | {f['h_ratio']:.2f} | "
            + ("–" if f["pred_visible"] is None else f"{100 * f['pred_visible']:.0f}%") + f" | {100 * f['gt_visible']:.0f}% |")


def run_of(name: str) -> tuple[str, int | None]:
    "The experiment and seed of run `name`: `<experiment>_seed<N>` (same_results_on_cpu.py run --seed N) or `<experiment>`."
    m = re.fullmatch(r"(.+)_seed(\d+)", name)
    return (m.group(1), int(m.group(2))) if m else (name, None)


def config_of(name: str, configs: Path = ROOT / "configs") -> tuple[Path, int | None]:
    """The resolved configuration of run `name` and the seed to put in it: the pipeline's own `configs/<name>.json` where
    there is one (an experiment of params.yaml, whose name may itself end in `_seed<N>`: its seed stays), otherwise
    that of `<experiment>` with seed N for a run `<experiment>_seed<N>` (same_results_on_cpu.py run --seed N)."""
    own = configs / f"{name}.json"
    if own.exists():
        return own, None
    experiment, seed = run_of(name)
    return configs / f"{experiment}.json", seed


def run_models(name: str, threads: int, runs: Path = ROOT / "runs"):
    "(trained results, untrained results, val dataset, train dataset) of run `name`, its checkpoint in `runs/<name>/model.pt`."
    import torch
    from unified_vision.core import DataError, seed_everything
    from unified_vision.engine.evaluate import predict
    from unified_vision.engine.experiment import build_dataset, initial_model, load_trained
    cfg_path, seed = config_of(name)
    if not cfg_path.exists():
        raise DataError(cfg_path, "resolved configuration not found", "run `dvc repro configs` (or name an experiment of params.yaml)")
    cfg = json.loads(cfg_path.read_text())
    if seed is not None:
        cfg["seed"] = seed
    if cfg.get("task") != "keypoints":
        raise DataError(cfg_path, f"run '{name}' is a {cfg.get('task')} run, not a keypoints one", "name a pose experiment")
    torch.set_num_threads(threads)
    val = build_dataset(cfg, "val")
    div = lambda m: getattr(getattr(m, "neck", None), "size_divisible", 32)
    checkpoint = runs / name / "model.pt"
    if not checkpoint.exists():
        raise DataError(checkpoint, "checkpoint not found", f"train the run first (`dvc repro train_unihead@{cfg_path.stem}`, or "
                        "`same_results_on_cpu.py run --keep DIR` and --runs DIR)")
    trained = load_trained(cfg, checkpoint, len(val.class_names))
    seed_everything(cfg.get("seed", 0))     # iteration 0 of the run, as the evaluation stage builds its untrained reference
    train = build_dataset(cfg, "train")
    fresh = initial_model(cfg, train)
    return (predict(trained, val, progress=False, size_divisible=div(trained)),
            predict(fresh, val, progress=False, size_divisible=div(fresh)), val, train, trained)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("experiments", nargs="+")
    p.add_argument("--profile", default="mini")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="folder of the runs' checkpoints, <RUNS>/<run>/model.pt")
    p.add_argument("--out", type=Path, help="the table (default analysis/keypoints_pck_<profile>.md)")
    args = p.parse_args()
    runs_given, args.runs = args.runs, args.runs.resolve()
    os.chdir(ROOT)                                  # configs hold data roots relative to the repository
    from unified_vision.heads.points import mean_keypoint_layout
    header = " | ".join(f"PCK@{a:g}" for a in ALPHAS) + " | " + " | ".join(f"PCK@{a:g} matched" for a in ALPHAS)
    lines = [f"# Keypoint PCK on the `{args.profile}` validation persons", "",
             f"Generated by `python analysis/keypoints_pck.py --profile {args.profile}"
             + ("" if args.runs == ROOT / "runs" else f" --runs {runs_given}") + f" {' '.join(args.experiments)}`. "
             "PCK@a: fraction of visible ground-truth keypoints within a x the longer side of the person's ground-truth box, "
             "over all validation persons (an undetected person misses all its keypoints); 'matched': persons with a "
             "predicted person box at IoU >= 0.5; 'PCK matched': over the matched persons only, which sets the keypoints "
             "against the box-only reference in the same boxes. See the script's docstring for the rows.", "",
             f"| experiment | prediction | matched | {header} |", "|---|---|---|" + "---|" * 2 * len(ALPHAS)]
    boxes, given = [], []
    for exp in args.experiments:
        trained, fresh, val, train, model = run_models(exp, args.threads, args.runs)
        gts, layout = persons(val.coco), mean_keypoint_layout(train.coco, 17)
        m_trained, m_fresh = match_people(gts, trained), match_people(gts, fresh)
        rows = [("trained", m_trained, [None if m is None else m["keypoints"] for m in m_trained]),
                ("untrained (iteration 0)", m_fresh, [None if m is None else m["keypoints"] for m in m_fresh]),
                ("mean layout in the trained model's boxes", m_trained,
                 [None if m is None else layout_in_box(layout, m["bbox"]) for m in m_trained]),
                ("mean layout in the ground-truth boxes", gts, [layout_in_box(layout, g["bbox"]) for g in gts])]
        for name, matches, kpts in rows:
            n = sum(m is not None for m in matches)
            hit = [(g, k) for g, m, k in zip(gts, matches, kpts) if m is not None]
            cells = " | ".join([f"{100 * pck(gts, kpts, a):.1f}" for a in ALPHAS] +
                               [f"{100 * pck(*zip(*hit), a):.1f}" if hit else "–" for a in ALPHAS])
            lines.append(f"| {exp} | {name} | {n}/{len(gts)} | {cells} |")
        print("\n".join(lines[-4:]), flush=True)
        boxes.append(box_fit_row(exp, box_fit(gts, trained, len(val))))
        given.append(head_on_boxes_row(exp, head_on_boxes(model, val, layout, SHIFTS), SHIFTS))
    lines += ["", "## The person boxes", "",
              "For pose the person box is the extent of the 17 predicted keypoints (no box loss). For each ground-truth "
              "person, its best box is the trained model's prediction that overlaps it most, whatever its score "
              "(`box_fit`); the widths and heights are medians over the persons, over the person's own box. "
              "'visible': the share of predicted keypoints with visibility > 0.5 (– for a head without the visibility token), "
              "and of labelled ones.", "",
              "| experiment | predictions / image | median best IoU | best IoU >= 0.5 | best IoU >= 0.7 | "
              "best box width / person's | height / person's | predicted visible | labelled visible |",
              "|---|---|---|---|---|---|---|---|---|", *boxes,
              "", "## The head on given boxes", "",
              "The trained RoI head run on each validation person's own box and on that box moved by s x its width and "
              "height in a random direction (`head_on_boxes`; the same directions for every run). 'person probability': "
              "median (10th-90th percentile) on the persons' own boxes. Per shift: the RoI's mean IoU with the person → "
              "the head's box's; the share of the RoIs' centre offsets its boxes undo; PCK@0.1 of its keypoints / of the "
              "mean layout in the same RoI.", "",
              "| experiment | person probability | " + " | ".join(f"s = {s:g}" for s in SHIFTS) + " |",
              "|---|---|" + "---|" * len(SHIFTS), *given]
    out = (args.out or Path(__file__).with_name(f"keypoints_pck_{args.profile}.md")).resolve()
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)                                  # never a half-written table
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
