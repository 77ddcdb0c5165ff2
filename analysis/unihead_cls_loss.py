"""Does the paper's class token learn to classify more slowly than a class FC over all of UniHead's tokens, and than
the 2-fc head? A reading of the committed training logs, no training.

In Faster R-CNN on `mini` the class-token UniHead (the paper's sec. 3.2, our default) is 6.2 box AP behind the 2-fc
head at 1x and 1.7 at 4x, while the released code's class FC over all K+1 output tokens (`cls_input: all`) is within
noise of the 2-fc head at both (README, results/unihead_noise.md). The two UniHeads differ only in what the class FC
reads, and all three heads are trained with the same cross-entropy on the same kind of sampled RoIs
(`loss_cls`: nbs/50_frameworks.two_stage.ipynb, nbs/32_heads.unihead.ipynb). So their `loss_cls` curves say whether
the class token's gap is a slower or a lower fit of the classification itself. The localisation branch is the same in
both UniHeads; their `loss_box` (the L1 of eq. 6 on the box corners, divided by the proposal's size: `box_loss: l1`)
is shown too, to see that it is unaffected. The 2-fc head's `loss_box` is a smooth L1 on box deltas, another loss, so
it is left out.

    python analysis/unihead_cls_loss.py        # writes analysis/unihead_cls_loss.md and analysis/unihead_cls_loss.png

A third section sets probes beside them: runs trained elsewhere with `same_results_on_cpu.py run --keep DIR [--seed N]
[--set KEY=VALUE ... --tag T]` (e.g. a wider UniHead, which params.yaml does not hold), whose outputs carry their loss
history. `--add RUNS.json ...` merges them into analysis/unihead_cls_loss_runs.json, with the machine's CPU and the
md5 of the `runs/pretrain/model.pt` they started from, before the tables are written:

    python analysis/unihead_cls_loss.py --add /tmp/uni_faster_rcnn_dim128.json

A variant probed with several seeds (e.g. `--set heads.unihead.cls_input=mean --tag mean` with `--seed 0`, 1 and 2)
gets a row over its seeds, with Welch's test of its box AP against the 2-fc head and both UniHeads of
analysis/unihead_1x_other_machine_runs.json (seeds 0-2 there) where those started from the same pretrain checkpoint.

Reads logs/<run>/plots/metrics/train/<loss>.tsv (dvclive, one value every `log_every` steps: the loss of that step's
batch) and metrics/<run>.json for the box AP, for each head, schedule and seed of GROUPS.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent

HEADS = ("2-fc head", "UniHead, class token (paper)", "UniHead, all tokens (released code)")
COLOURS = dict(zip(HEADS, ("tab:grey", "tab:red", "tab:blue")))
# schedule -> head -> the experiment of seed 0 (seed N > 0 is `<experiment>_seed<N>`) and its seeds
GROUPS = {
    "1x": {HEADS[0]: ("baseline_faster_rcnn", 3), HEADS[1]: ("uni_faster_rcnn", 3), HEADS[2]: ("uni_faster_rcnn_clsall", 3)},
    "4x": {HEADS[0]: ("baseline_faster_rcnn_4x", 4), HEADS[1]: ("uni_faster_rcnn_4x", 4),
           HEADS[2]: ("uni_faster_rcnn_4x_clsall", 4)},
}
WINDOWS = {"first 10%": (0.0, 0.1), "middle 10%": (0.45, 0.55), "last 10%": (0.9, 1.0)}
SMOOTH = 5   # log points per running mean in the figure (5 x 20 steps)
# Every 1x Faster R-CNN head of Tables 2 and 4-6, seed 0: what does its class FC read?
ONE_SEED = (("2-fc head", "baseline_faster_rcnn"), ("2-fc head, disentangled (HD; Table 6)", "hd_faster_rcnn"),
            ("deformable RoI pooling, no MHSA (Table 6)", "deform_pool_no_mhsa"),
            ("UniHead, all tokens (released code)", "uni_faster_rcnn_clsall"),
            ("UniHead, class token (paper; K = 16, L = 2/3)", "uni_faster_rcnn"),
            ("without task token (Table 2)", "uni_faster_rcnn_no_token"),
            ("K = 8 (Table 4)", "uni_faster_rcnn_k8"), ("K = 24", "uni_faster_rcnn_k24"), ("K = 32", "uni_faster_rcnn_k32"),
            ("L = 1 (Table 5)", "uni_faster_rcnn_l1"), ("L = 2", "uni_faster_rcnn_l2"), ("L = 3", "uni_faster_rcnn_l3"),
            ("L = 4", "uni_faster_rcnn_l4"), ("RoIAlign tokens + MHSA (Table 6)", "roi_tokens_mhsa"))


def seed_runs(experiment: str, seeds: int) -> list[str]:
    "The runs of an experiment's seeds 0 .. seeds-1, as the pipeline names them."
    return [experiment] + [f"{experiment}_seed{s}" for s in range(1, seeds)]


def read_curve(logs: Path, run: str, loss: str) -> tuple[np.ndarray, np.ndarray]:
    "Steps and values of one logged training loss of a run; a clear error where the log is missing or empty."
    path = logs / run / "plots" / "metrics" / "train" / f"{loss}.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no `{loss}` log for run {run!r}; train it with `dvc repro train@{run}` "
                                f"(or check out the committed logs/)")
    with path.open() as f:
        rows = [(int(r["step"]), float(r[loss])) for r in csv.DictReader(f, delimiter="\t")]
    if not rows:
        raise ValueError(f"{path}: the log holds no values; rerun `dvc repro train@{run}`")
    steps, values = map(np.asarray, zip(*rows))
    return steps, values


def window_mean(steps: np.ndarray, values: np.ndarray, lo: float, hi: float) -> float:
    """Mean of the logged values whose step lies in the fraction [lo, hi) of the schedule (the last log step is 1.0;
    `hi` = 1.0 includes it)."""
    frac = steps / steps[-1]
    keep = (frac >= lo) & ((frac < hi) | (hi >= 1.0))
    if not keep.any():
        raise ValueError(f"no logged step in the fraction [{lo}, {hi}) of a {steps[-1]}-step schedule")
    return float(values[keep].mean())


def running_mean(values: np.ndarray, n: int) -> np.ndarray:
    "Mean of each value and the n-1 before it (fewer at the start): a trailing window, so no step sees the future."
    c = np.cumsum(np.insert(values.astype(float), 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - n, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def stack_seeds(curves: list[tuple[np.ndarray, np.ndarray]], names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    "The seeds' curves as one array (seed x log point); they must share their log steps."
    steps = curves[0][0]
    for (s, _), name in zip(curves[1:], names[1:]):
        if len(s) != len(steps) or (s != steps).any():
            raise ValueError(f"run {name!r} logged other steps than {names[0]!r}: is one of them from another schedule?")
    return steps, np.stack([v for _, v in curves])


def box_ap(metrics: Path, run: str) -> float:
    path = metrics / f"{run}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics for run {run!r}; evaluate it with `dvc repro evaluate@{run}`")
    return 100 * json.loads(path.read_text())["bbox_AP"]


def mean_std(vals: list[float], digits: int = 3) -> str:
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


# UniHead's `cls_input` -> what its class FC reads, as the tables name it (in the tables' order: the points kept apart first)
READOUTS = {"all": "all K + 1 tokens", "all_low_rank": "all K + 1 tokens, rank width", "mean": "mean of the K point tokens",
            "token": "class token"}


def class_input(config: dict) -> str:
    "What a Faster R-CNN head's class FC reads, from the run's configuration (configs/<run>.json)."
    if config.get("head") != "unihead":             # the framework's own head (the 2-fc head here)
        return "RoI grid (7 x 7 RoIAlign)"
    head = config["heads"]["unihead"]
    if not head.get("attention", True):
        return "all K tokens, no attention"
    return READOUTS[head.get("cls_input", "token")]


def one_seed_rows(logs: Path, metrics: Path, configs: Path) -> list[dict]:
    "The ONE_SEED runs: what the class FC reads, box AP, whether it is † in the tables, loss_cls in each window."
    sys.path.insert(0, str(ROOT))
    from unified_vision.engine.tables import _product_thresholded
    rows = []
    for label, run in ONE_SEED:
        path = configs / f"{run}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no configuration of run {run!r}; write it with `dvc repro configs`")
        steps, cls = read_curve(logs, run, "loss_cls")
        rows.append({"label": label, "run": run, "reads": class_input(json.loads(path.read_text())),
                     "AP": box_ap(metrics, run), "dagger": _product_thresholded(metrics, run),
                     "loss_cls": {w: window_mean(steps, cls, lo, hi) for w, (lo, hi) in WINDOWS.items()}})
    return rows


def probe_runs(paths: list[Path], pretrain: Path) -> dict:
    "Runs of `same_results_on_cpu.py run` outputs as record entries: the losses and box AP, where and from what they trained."
    sys.path.insert(0, str(HERE))
    from determinism_probe import cpu_description
    if not pretrain.exists():
        raise FileNotFoundError(f"{pretrain}: the runs' backbone checkpoint is needed to record its md5; `dvc repro pretrain`")
    md5 = hashlib.md5(pretrain.read_bytes()).hexdigest()
    out = {}
    for path in paths:
        for name, run in json.loads(path.read_text()).items():
            hist = run.get("history")
            if not hist or "loss_cls" not in hist:
                raise ValueError(f"{path}: run {name!r} has no loss history; it was written before `same_results_on_cpu.py "
                                 "run` kept one: train it again")
            out[name] = {"steps": hist["step"], "loss_cls": hist["loss_cls"], "loss_box": hist.get("loss_box"),
                         "AP": 100 * run["metrics"]["bbox_AP"], "settings": run.get("settings", []), "tag": run.get("tag"),
                         "train_seconds": run.get("train_seconds"), "cpu": cpu_description(), "pretrain_md5": md5,
                         "date": time.strftime("%Y-%m-%d")}
    return out


def _untagged(name: str, tag: str | None) -> str:
    "A probe run's name `<experiment>[_seed<N>][_<tag>]` without its tag."
    if tag:
        if not name.endswith(f"_{tag}"):
            raise ValueError(f"probe run {name!r} does not end in its tag '_{tag}'")
        name = name[: -len(tag) - 1]
    return name


def probe_experiment(name: str, tag: str | None) -> str:
    "The experiment of a probe run `<experiment>[_seed<N>][_<tag>]`."
    return re.sub(r"_seed\d+$", "", _untagged(name, tag))


def probe_seed(name: str, tag: str | None) -> int:
    "The seed of a probe run `<experiment>[_seed<N>][_<tag>]` (no `_seed<N>`: the experiment's own, 0)."
    seed = re.search(r"_seed(\d+)$", _untagged(name, tag))
    return int(seed.group(1)) if seed else 0


def probe_config(name: str, settings: list[str], tag: str | None, configs: Path) -> dict:
    "The configuration a probe run trained with: its experiment's (configs/<experiment>.json) with its settings applied."
    experiment = probe_experiment(name, tag)
    path = configs / f"{experiment}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no configuration for probe run {name!r}; `dvc repro configs`")
    sys.path.insert(0, str(HERE))
    from same_results_on_cpu import apply_settings
    return apply_settings(json.loads(path.read_text()), settings)


def render_probes(record: dict, configs: Path) -> str:
    if not record:
        return ""
    lines = ["## Probes on other machines", "",
             "Runs of `same_results_on_cpu.py run --keep` (analysis/unihead_cls_loss_runs.json), from that machine's own "
             "backbone pretraining, so set them against each other, not against the committed runs above. 'width': "
             "UniHead's token width (`heads.unihead.dim`; `mini`'s is 64, the paper's 256).", "",
             "| run | class FC reads | width | box AP | " + " | ".join(f"loss_cls, {w}" for w in WINDOWS) + " | loss_box, last 10% | CPU, pretrain |",
             "|---|---|---|---|" + "---|" * len(WINDOWS) + "---|---|"]
    rows = []
    for name, r in record.items():
        cfg = probe_config(name, r["settings"], r.get("tag"), configs)
        steps = np.asarray(r["steps"])
        cls = {w: window_mean(steps, np.asarray(r["loss_cls"]), lo, hi) for w, (lo, hi) in WINDOWS.items()}
        box = "–" if not r.get("loss_box") else f"{window_mean(steps, np.asarray(r['loss_box']), *WINDOWS['last 10%']):.3f}"
        where = f"model {r['cpu'].get('model', '?')}, {r['pretrain_md5'][:4]}…"
        rows.append((class_input(cfg), cfg["heads"]["unihead"]["dim"], name,
                     f"| {name} | {class_input(cfg)} | {cfg['heads']['unihead']['dim']} | {r['AP']:.1f} | "
                     + " | ".join(f"{v:.3f}" for v in cls.values()) + f" | {box} | {where} |"))
    lines += [row for *_, row in sorted(rows)]
    return "\n".join(lines) + "\n"


# The other-machine record's several-seed 1x runs that a probe group is set against (same pretrain only)
REFERENCES = (("2-fc head", "baseline_faster_rcnn"), ("class token", "uni_faster_rcnn"), ("all K + 1 tokens", "uni_faster_rcnn_clsall"))


def probe_groups(record: dict) -> dict:
    "(experiment, tag) -> {seed: run} of the probes, a group per variant; a run without `_seed<N>` is seed 0."
    groups = {}
    for name, r in record.items():
        groups.setdefault((probe_experiment(name, r.get("tag")), r.get("tag")), {})[probe_seed(name, r.get("tag"))] = r
    return groups


def render_probe_groups(record: dict, other: dict | None) -> str:
    """Probe variants trained with several seeds: box AP and loss_cls (last 10%) over the seeds, and Welch's test of
    their box AP against the other-machine record's 1x runs of the 2-fc head and both UniHeads (seeds 0-2 there),
    where those started from the same pretrain checkpoint."""
    sys.path.insert(0, str(ROOT))
    from unified_vision.engine.tables import welch_gap
    groups = {k: g for k, g in probe_groups(record).items() if len(g) > 1}
    if not groups:
        return ""
    md5s = {r["pretrain_md5"] for g in groups.values() for r in g.values()}
    refs = {}
    if other and md5s == {other.get("pretrain_md5")}:
        for label, experiment in REFERENCES:
            runs = [other["runs"].get(n) for n in seed_runs(experiment, 3)]
            if all(runs):
                refs[label] = [100 * r["AP"] for r in runs]
    lines = ["### Probe variants with several seeds", "",
             "Box AP and `loss_cls` (last 10%) over the seeds of each variant; beside them Welch's test of the box AP "
             "(variant minus reference) against the runs of analysis/unihead_1x_other_machine_runs.json that started "
             "from the same pretrain checkpoint (seeds 0-2 each: "
             + (", ".join(f"{label} {statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" for label, v in refs.items()) or
                "none with these runs' checkpoint") + ").", "",
             "| variant | seeds | box AP | loss_cls, last 10% | " + " | ".join(f"− {label}: diff [95% CI], p" for label in refs) + " |",
             "|---|---|---|---|" + "---|" * len(refs)]
    for (experiment, tag), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        ap = [runs[s]["AP"] for s in sorted(runs)]
        loss = [window_mean(np.asarray(runs[s]["steps"]), np.asarray(runs[s]["loss_cls"]), *WINDOWS["last 10%"]) for s in sorted(runs)]
        cells = []
        for ref in refs.values():
            g = welch_gap(ref, ap)
            p = "< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}"
            cells.append(f"{g['diff']:+.1f} [{g['ci'][0]:+.1f}, {g['ci'][1]:+.1f}], {p}")
        name = experiment + (f" ({tag})" if tag else "")
        lines.append(f"| {name} | {', '.join(map(str, sorted(runs)))} | {mean_std(ap, 1)} | {mean_std(loss)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def gather(logs: Path, metrics: Path) -> dict:
    "schedule -> head -> runs, steps, loss_cls and loss_box per seed (None for the 2-fc head's box loss), box AP per seed."
    out = {}
    for sched, heads in GROUPS.items():
        out[sched] = {}
        for head, (experiment, seeds) in heads.items():
            runs = seed_runs(experiment, seeds)
            steps, cls = stack_seeds([read_curve(logs, r, "loss_cls") for r in runs], runs)
            box = None if head == HEADS[0] else stack_seeds([read_curve(logs, r, "loss_box") for r in runs], runs)[1]
            out[sched][head] = {"runs": runs, "steps": steps, "loss_cls": cls, "loss_box": box,
                                "AP": [box_ap(metrics, r) for r in runs]}
    return out


def render(data: dict, figure: str) -> str:
    sys.path.insert(0, str(ROOT))
    from unified_vision.engine.tables import welch_gap
    lines = ["# UniHead's class token: how fast each head fits the classification (`mini`, Faster R-CNN)", "",
             f"Generated by `python analysis/unihead_cls_loss.py` from the committed training logs (`logs/<run>/plots/"
             f"metrics/train/`) and metrics (`metrics/<run>.json`) of the pipeline's runs; see the script's docstring. "
             "Training `loss_cls`: the cross-entropy of the sampled RoIs' classes, logged every 20 steps (that step's "
             "batch); here its mean over a window of the schedule, then mean ± std over the seeds. UniHead's "
             "`loss_box`: its L1 on the box corners over the proposal's size (the 2-fc head's is another loss, left out).", "",
             f"![loss_cls over training]({figure})", ""]
    for sched, heads in data.items():
        n_steps = int(next(iter(heads.values()))["steps"][-1])
        lines += [f"## {sched} ({n_steps} steps)", "",
                  "| head | seeds | box AP | " + " | ".join(f"loss_cls, {w}" for w in WINDOWS) + " | loss_box, last 10% |",
                  "|---|---|---|" + "---|" * len(WINDOWS) + "---|"]
        per_window = {}
        for head, d in heads.items():
            cells = []
            for w, (lo, hi) in WINDOWS.items():
                vals = [window_mean(d["steps"], v, lo, hi) for v in d["loss_cls"]]
                per_window[head, w] = vals
                cells.append(mean_std(vals))
            box = "–" if d["loss_box"] is None else mean_std([window_mean(d["steps"], v, *WINDOWS["last 10%"]) for v in d["loss_box"]])
            lines.append(f"| {head} | {len(d['runs'])} | {mean_std(d['AP'], 1)} | " + " | ".join(cells) + f" | {box} |")
        lines += ["", "Differences of `loss_cls` (second minus first; Welch's t-test over the seeds):", "",
                  "| second − first | window | difference | 95% CI | p |", "|---|---|---|---|---|"]
        for first, second in ((HEADS[2], HEADS[1]), (HEADS[0], HEADS[1]), (HEADS[0], HEADS[2])):
            for w in WINDOWS:
                g = welch_gap(per_window[first, w], per_window[second, w])
                p = "< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}"
                lines.append(f"| {second} − {first} | {w} | {g['diff']:+.3f} | [{g['ci'][0]:+.3f}, {g['ci'][1]:+.3f}] | {p} |")
        lines.append("")
    return "\n".join(lines)


def render_one_seed(rows: list[dict]) -> str:
    lines = ["## Every 1x head of Tables 2 and 4-6, by what its class FC reads (seed 0 each)", "",
             "One run each, the committed ones (the tables' rows). Their training logs are what the code of their day "
             "computed; † marks a box AP evaluated with the old score threshold (the tables' note), which the training "
             "loss does not depend on. Sorted by the class FC's input, then by `loss_cls` in the last 10%.", "",
             "| head | class FC reads | box AP | " + " | ".join(f"loss_cls, {w}" for w in WINDOWS) + " |",
             "|---|---|---|" + "---|" * len(WINDOWS)]
    order = ("RoI grid (7 x 7 RoIAlign)", "all K tokens, no attention", *READOUTS.values())
    for r in sorted(rows, key=lambda r: (order.index(r["reads"]), r["loss_cls"]["last 10%"])):
        ap = f"{r['AP']:.1f}" + (" †" if r["dagger"] else "")
        lines.append(f"| {r['label']} | {r['reads']} | {ap} | " + " | ".join(f"{r['loss_cls'][w]:.3f}" for w in WINDOWS) + " |")
    for reads in order:
        vals = [r["loss_cls"]["last 10%"] for r in rows if r["reads"] == reads]
        if vals:
            lines.append(f"{'' if reads != order[0] else chr(10)}- class FC on {reads}: {len(vals)} run(s), loss_cls in the "
                         f"last 10% {min(vals):.3f} to {max(vals):.3f}")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(data), figsize=(6 * len(data), 4), sharey=True)
    for ax, (sched, heads) in zip(np.atleast_1d(axes), data.items()):
        for head, d in heads.items():
            smooth = np.stack([running_mean(v, SMOOTH) for v in d["loss_cls"]])
            ax.plot(d["steps"], smooth.mean(0), color=COLOURS[head], label=f"{head} ({len(d['runs'])} seeds)")
            ax.fill_between(d["steps"], smooth.min(0), smooth.max(0), color=COLOURS[head], alpha=0.2, linewidth=0)
        ax.set_title(f"Faster R-CNN, mini, {sched}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel(f"training loss_cls (running mean of {SMOOTH} logs)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--logs", type=Path, default=ROOT / "logs")
    ap.add_argument("--metrics", type=Path, default=ROOT / "metrics")
    ap.add_argument("--configs", type=Path, default=ROOT / "configs")
    ap.add_argument("--out", type=Path, default=HERE / "unihead_cls_loss.md")
    ap.add_argument("--record", type=Path, default=HERE / "unihead_cls_loss_runs.json", help="the probes' record")
    ap.add_argument("--add", type=Path, nargs="+", default=[], metavar="RUNS.json",
                    help="same_results_on_cpu.py run outputs to merge into the record first")
    ap.add_argument("--pretrain", type=Path, default=ROOT / "runs" / "pretrain" / "model.pt",
                    help="with --add: the backbone checkpoint the runs started from")
    ap.add_argument("--other", type=Path, default=HERE / "unihead_1x_other_machine_runs.json",
                    help="the other-machine runs that several-seed probes are compared with")
    args = ap.parse_args()
    record = json.loads(args.record.read_text()) if args.record.exists() else {}
    if args.add:
        record.update(probe_runs(args.add, args.pretrain))
        tmp = args.record.with_name(args.record.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        tmp.replace(args.record)
    data = gather(args.logs, args.metrics)
    rows = one_seed_rows(args.logs, args.metrics, args.configs)
    figure = args.out.with_suffix(".png")
    plot(data, figure)
    other = json.loads(args.other.read_text()) if args.other.exists() else None
    groups = render_probe_groups(record, other)
    text = (render(data, figure.name) + "\n" + render_one_seed(rows) + "\n" + render_probes(record, args.configs)
            + ("\n" + groups if groups else ""))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(f"wrote {args.out} and {figure}")


if __name__ == "__main__":
    main()
