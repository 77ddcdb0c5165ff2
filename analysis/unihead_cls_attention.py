"""Where does UniHead's class token look? Its attention over the K points, measured on trained checkpoints.

In Faster R-CNN on `mini` the class FC of the paper's UniHead reads the class token alone, and every such run ends its
training classification loss about 0.1 above a class FC over all K + 1 tokens or over the RoI grid
(analysis/unihead_cls_loss.md). The class token reaches the points only through attention: in each block of the class
stack its row of the attention matrix mixes the K point tokens (and itself) into one vector. If those rows are close
to uniform, the class token is little more than the mean of the points, and the class FC sees a summary blind to which
point saw what; if they are sharp and change from RoI to RoI, it selects. This script measures that on checkpoints
kept by `same_results_on_cpu.py run --keep DIR`, on the validation split:

- entropy: of the class token's attention row over the K + 1 tokens, divided by log(K + 1) (1 = uniform);
- on itself: the weight the class token gives to itself;
- largest: the largest weight of the row (uniform: 1 / (K + 1));
- varies: half the L1 distance between a RoI's row and the run's mean row (0 = every RoI attends alike: a fixed
  pooling, not a selection), averaged over the RoIs;
- points' entropy: the same entropy for the rows of the K point tokens, for comparison: how sharply the points
  attend, in the same block.

Each is averaged over the attention heads, then over the RoIs: the best `--per-image` post-NMS detections of each
validation image (`viz.unihead.trace_unihead`, the widget's trace), per block of the class stack. Runs whose class FC
does not read the class token (`cls_input: all` or `mean`) have a class token too, which attends and is attended to;
their rows are shown for comparison.

    python analysis/unihead_cls_attention.py --keep /work/notes/rep/keep --add uni_faster_rcnn_seed2 ...
    python analysis/unihead_cls_attention.py        # renders analysis/unihead_cls_attention.md and .png from the record

A run is described in analysis/unihead_cls_loss_runs.json (its settings, tag, box AP and the pretrain it started
from), so add it there first (`unihead_cls_loss.py --add`). `--add` measures and writes analysis/unihead_cls_attention.json.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))
from unihead_cls_loss import READOUTS as READS, probe_config  # noqa: E402
from unified_vision.core import atomic_path  # noqa: E402
STATS = ("entropy", "on itself", "largest", "varies", "points' entropy")


def normalised_entropy(rows: np.ndarray) -> np.ndarray:
    "Entropy of each attention row (last axis) divided by log of its length: 1 for a uniform row, 0 for one token."
    return -(rows * np.log(np.clip(rows, 1e-12, None))).sum(-1) / math.log(rows.shape[-1])


def attention_stats(att: np.ndarray) -> dict:
    """The statistics of one block's attention matrices `[N, H, T, T]` (N RoIs, H heads, T = K + 1 tokens, token 0 the
    class token; each row sums to 1): the class token's row, each averaged over heads then RoIs, and the points' rows."""
    att = np.asarray(att, dtype=np.float64)
    if att.ndim != 4 or len(att) == 0 or att.shape[-1] != att.shape[-2]:
        raise ValueError(f"attention must be [N > 0, heads, tokens, tokens], got shape {att.shape}")
    if not np.allclose(att.sum(-1), 1.0, atol=1e-4):
        raise ValueError("attention rows must each sum to 1: are these softmax weights?")
    rows = att[:, :, 0]
    entropy = normalised_entropy(rows)
    varies = 0.5 * np.abs(rows - rows.mean(0, keepdims=True)).sum(-1)
    return {"entropy": float(entropy.mean()), "on itself": float(rows[..., 0].mean()),
            "largest": float(rows.max(-1).mean()), "varies": float(varies.mean()),
            "points' entropy": float(normalised_entropy(att[:, :, 1:]).mean()),
            "entropy_per_roi": entropy.mean(1).round(4).tolist(), "mean_row": rows.mean((0, 1)).round(5).tolist()}


def run_config(name: str, probe: dict, configs: Path) -> dict:
    "The configuration a kept run trained with (its experiment's, with its settings), to evaluate on this machine."
    cfg = probe_config(name, probe["settings"], probe.get("tag"), configs)
    cfg["model"]["backbone"]["pretrained"] = False            # the checkpoint holds the trained backbone
    cfg["data"]["root"] = str(ROOT / cfg["data"]["root"])
    return cfg


def measure(name: str, probe: dict, keep: Path, configs: Path, per_image: int) -> dict:
    "Class-token attention statistics of one kept run, per block of its class stack."
    import torch
    from tqdm.auto import tqdm
    from unified_vision.engine.experiment import build_dataset, load_trained
    from unified_vision.viz.unihead import trace_unihead
    checkpoint = keep / name / "model.pt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{checkpoint}: no kept checkpoint of run {name!r}; train it with "
                                f"`same_results_on_cpu.py run --keep {keep} ...`")
    cfg = run_config(name, probe, configs)
    torch.set_num_threads(int(cfg["train"].get("threads", 2)))
    dataset = build_dataset(cfg, "val")
    model = load_trained(cfg, checkpoint, len(dataset.class_names)).eval()
    maps = []                                               # per image: [n, layers, heads, tokens, tokens]
    for i in tqdm(range(len(dataset)), desc=name, leave=False):
        trace = trace_unihead(model, dataset[i].image, max_anchors=per_image, score_thresh=0.0)
        if len(trace):
            maps.append(trace.attention["cls"].numpy())
    maps = np.concatenate(maps)
    head = cfg["heads"]["unihead"]
    return {"layers": [attention_stats(maps[:, layer]) for layer in range(maps.shape[1])], "rois": len(maps),
            "images": len(dataset), "per_image": per_image, "cls_input": head.get("cls_input", "token"), "width": head["dim"],
            "heads": head["heads"], "num_points": maps.shape[-1] - 1, "AP": probe["AP"], "pretrain_md5": probe["pretrain_md5"],
            "date": time.strftime("%Y-%m-%d")}


def render(record: dict, figure: str) -> str:
    lines = ["# Where UniHead's class token looks (`mini`, Faster R-CNN, kept checkpoints)", "",
             "Generated by `python analysis/unihead_cls_attention.py` from analysis/unihead_cls_attention.json; see the "
             "script's docstring for the statistics. The class token's attention row over the K + 1 tokens, in each block "
             "of the class stack, averaged over the attention heads and over the best post-NMS detections of each "
             "validation image. 'entropy' 1 is uniform; a uniform row puts 1 / (K + 1) on every token "
             f"(K = 16: {1 / 17:.3f}).", "", f"![class-token attention]({figure})", "",
             "| run | class FC reads | width, heads | box AP | block | RoIs | " + " | ".join(STATS) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(STATS)]
    for name, r in sorted(record.items(), key=lambda kv: (kv[1]["cls_input"], kv[1]["width"], kv[0])):
        for layer, s in enumerate(r["layers"]):
            head = (f"| {name} | {READS[r['cls_input']]} | {r['width']}, {r['heads']} | {r['AP']:.1f} |" if layer == 0
                    else "| | | | |")
            lines.append(f"{head} {layer + 1} | {r['rois']} | " + " | ".join(f"{s[k]:.3f}" for k in STATS) + " |")
    lines += ["", "By what the class FC reads (ranges over the runs):", ""]
    span = lambda vals, digits=2: f"{min(vals):.{digits}f}-{max(vals):.{digits}f}"
    for reads in READS:
        runs = [r for r in record.values() if r["cls_input"] == reads]
        if runs:
            points = [layer["points' entropy"] for r in runs for layer in r["layers"]]
            lines.append(f"- {READS[reads]} ({len(runs)} run{'s' if len(runs) > 1 else ''}): class token's entropy {span([r['layers'][0]['entropy'] for r in runs])} "
                         f"in the first block, {span([r['layers'][-1]['entropy'] for r in runs])} in the last; its largest weight "
                         f"in the first block {span([r['layers'][0]['largest'] for r in runs])}; the points' entropy "
                         f"{span(points)}; box AP {span([r['AP'] for r in runs], 1)}")
    return "\n".join(lines) + "\n"


COLOURS = {"token": "tab:red", "mean": "tab:green", "all": "tab:blue", "all_low_rank": "tab:purple"}


def plot(record: dict, path: Path) -> None:
    """Left: the class token's mean entropy in each block of the class stack, one line per run, coloured by what the
    class FC reads. Right: the entropy of each RoI's class-token row in the first block, pooled over the runs of each
    readout (density)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_l, ax_h) = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, r in sorted(record.items()):
        entropy = [layer["entropy"] for layer in r["layers"]]
        ax_l.plot(range(1, len(entropy) + 1), entropy, marker="o", color=COLOURS[r["cls_input"]], alpha=0.75)
        ax_l.annotate(f"{name} ({r['AP']:.1f} AP)", (len(entropy), entropy[-1]), fontsize=6, xytext=(4, 0),
                      textcoords="offset points", va="center", color=COLOURS[r["cls_input"]])
    bins = np.linspace(0.5, 1.0, 51)
    for reads, colour in COLOURS.items():
        first = [e for r in record.values() if r["cls_input"] == reads for e in r["layers"][0]["entropy_per_roi"]]
        if first:
            runs = sum(r["cls_input"] == reads for r in record.values())
            ax_h.hist(first, bins=bins, density=True, histtype="step", lw=1.5, color=colour,
                      label=f"class FC reads the {READS[reads]} ({runs} runs)")
            ax_l.plot([], [], marker="o", color=colour, label=f"class FC reads the {READS[reads]}")
    ax_l.axhline(1.0, color="0.5", ls=":", label="uniform attention")
    ax_l.set_xlabel("block of the class stack")
    ax_l.set_ylabel("class token's attention entropy / log(K + 1)")
    ax_l.set_xlim(0.8, max(len(r["layers"]) for r in record.values()) + 1.6)
    ax_l.set_xticks(range(1, max(len(r["layers"]) for r in record.values()) + 1))
    ax_l.legend(fontsize=7, loc="lower right")
    ax_h.set_xlabel("entropy of one RoI's class-token row / log(K + 1), first class block")
    ax_h.set_ylabel("density over RoIs")
    ax_h.legend(fontsize=7, loc="upper left")
    for ax in (ax_l, ax_h):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:          # never a half-written figure
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--add", nargs="+", default=[], metavar="RUN", help="kept runs to measure (named as in the probes' record)")
    ap.add_argument("--keep", type=Path, help="where same_results_on_cpu.py run --keep kept them")
    ap.add_argument("--per-image", type=int, default=10, help="the best post-NMS detections traced per validation image")
    ap.add_argument("--probes", type=Path, default=HERE / "unihead_cls_loss_runs.json")
    ap.add_argument("--configs", type=Path, default=ROOT / "configs")
    ap.add_argument("--record", type=Path, default=HERE / "unihead_cls_attention.json")
    ap.add_argument("--out", type=Path, default=HERE / "unihead_cls_attention.md")
    args = ap.parse_args()
    record = json.loads(args.record.read_text()) if args.record.exists() else {}
    if args.add:
        if args.keep is None:
            ap.error("--add needs --keep, the directory that holds the runs' checkpoints")
        probes = json.loads(args.probes.read_text())
        for name in args.add:
            if name not in probes:
                sys.exit(f"unihead_cls_attention: run {name!r} is not in {args.probes}; add it first with "
                         f"`unihead_cls_loss.py --add RUNS.json`")
            record[name] = measure(name, probes[name], args.keep, args.configs, args.per_image)
        with atomic_path(args.record) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
    if not record:
        sys.exit(f"unihead_cls_attention: {args.record} holds no run; measure some with --add")
    figure = args.out.with_suffix(".png")
    plot(record, figure)
    with atomic_path(args.out) as tmp:
        tmp.write_text(render(record, figure.name))
    print(f"wrote {args.out} and {figure}")


if __name__ == "__main__":
    main()
