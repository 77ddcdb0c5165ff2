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

Each ground-truth person is matched to the highest-scoring predicted person of its image whose box overlaps it with
IoU >= 0.5 (each prediction used once); an unmatched person counts all its visible keypoints as misses.

Usage: python analysis/keypoints_pck.py --profile mini uni_keypoints uni_keypoints_no_token uni_keypoints_zero_init
Needs `generated/<profile>` and the runs' checkpoints (`dvc repro train_unihead@<experiment>`). Writes
analysis/keypoints_pck_<profile>.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "analysis"))
from keypoints_oks_scale import persons  # noqa: E402  (the validation persons with keypoints)
ALPHAS = (0.05, 0.1, 0.2)


def match_people(gts: list[dict], preds: list[dict], iou: float = 0.5) -> list[dict | None]:
    "For each ground-truth person, the best-scoring unused prediction of its image with box IoU >= `iou`, or None."
    by_image = {}
    for p in sorted(preds, key=lambda p: -p["score"]):
        by_image.setdefault(p["image_id"], []).append(p)
    matched, used = [], set()
    for g in gts:
        cands = [p for p in by_image.get(g["image_id"], []) if id(p) not in used]
        ious = mask_utils.iou([p["bbox"] for p in cands], [g["bbox"]], [0])[:, 0] if cands else np.zeros(0)   # xywh boxes
        ok = [p for p, v in zip(cands, ious) if v >= iou]
        best = ok[0] if ok else None      # candidates are in score order
        if best is not None:
            used.add(id(best))
        matched.append(best)
    return matched


def pck(gts: list[dict], kpts: list[np.ndarray | None], alpha: float) -> float:
    "Fraction of visible ground-truth keypoints within `alpha` x max(box w, h); None predictions miss all theirs."
    hit = total = 0
    for g, k in zip(gts, kpts):
        gt = np.asarray(g["keypoints"], float).reshape(-1, 3)
        vis = gt[:, 2] > 0
        total += int(vis.sum())
        if k is not None:
            err = np.linalg.norm(np.asarray(k, float).reshape(-1, 3)[:, :2] - gt[:, :2], axis=1)
            hit += int((err[vis] <= alpha * max(g["bbox"][2], g["bbox"][3])).sum())
    return hit / max(total, 1)


def layout_in_box(layout: np.ndarray, box) -> np.ndarray:
    "Keypoints of a layout given relative to a box's centre in units of its width/height, placed in the xywh `box`."
    x, y, w, h = box
    xy = np.array([x + w / 2, y + h / 2]) + layout * np.array([w, h])
    return np.c_[xy, np.ones(len(xy))]


def run_models(experiment: str, threads: int):
    "(trained results, untrained results, val dataset, train dataset) of `experiment`."
    import torch
    from unified_vision.core import DataError, seed_everything
    from unified_vision.engine.evaluate import predict
    from unified_vision.engine.experiment import build_dataset, load_trained
    from unified_vision.frameworks.build import build_model
    cfg_path = ROOT / "configs" / f"{experiment}.json"
    if not cfg_path.exists():
        raise DataError(cfg_path, "resolved configuration not found", "run `dvc repro configs` (or name an experiment of params.yaml)")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("task") != "keypoints":
        raise DataError(cfg_path, f"experiment '{experiment}' is a {cfg.get('task')} run, not a keypoints one", "name a pose experiment")
    torch.set_num_threads(threads)
    val, train = build_dataset(cfg, "val"), build_dataset(cfg, "train")
    div = lambda m: getattr(getattr(m, "neck", None), "size_divisible", 32)
    trained = load_trained(cfg, ROOT / "runs" / experiment / "model.pt", len(val.class_names))
    seed_everything(cfg.get("seed", 0))
    fresh = build_model(cfg, len(val.class_names))
    for module in fresh.modules():     # as at iteration 0 of training (UniHead's mean pose, sec. 3.4)
        if hasattr(module, "prepare_from_dataset"):
            module.prepare_from_dataset(train)
    return (predict(trained, val, progress=False, size_divisible=div(trained)),
            predict(fresh, val, progress=False, size_divisible=div(fresh)), val, train)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("experiments", nargs="+")
    p.add_argument("--profile", default="mini")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    os.chdir(ROOT)                                  # configs hold data roots relative to the repository
    from unified_vision.heads.points import mean_keypoint_layout
    header = " | ".join(f"PCK@{a:g}" for a in ALPHAS) + " | " + " | ".join(f"PCK@{a:g} matched" for a in ALPHAS)
    lines = [f"# Keypoint PCK on the `{args.profile}` validation persons", "",
             f"Generated by `python analysis/keypoints_pck.py --profile {args.profile} {' '.join(args.experiments)}`. "
             "PCK@a: fraction of visible ground-truth keypoints within a x the longer side of the person's ground-truth box, "
             "over all validation persons (an undetected person misses all its keypoints); 'matched': persons with a "
             "predicted person box at IoU >= 0.5; 'PCK matched': over the matched persons only, which sets the keypoints "
             "against the box-only reference in the same boxes. See the script's docstring for the rows.", "",
             f"| experiment | prediction | matched | {header} |", "|---|---|---|" + "---|" * 2 * len(ALPHAS)]
    for exp in args.experiments:
        trained, fresh, val, train = run_models(exp, args.threads)
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
    out = Path(__file__).with_name(f"keypoints_pck_{args.profile}.md")
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(out)                                  # never a half-written table
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
