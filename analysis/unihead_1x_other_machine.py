"""The 1x comparison of `results/unihead_noise.md` -- the 2-fc head, UniHead with the paper's class token and UniHead
with the released code's class FC over all tokens, seeds 0-2 each, in Faster R-CNN -- trained again on another
machine, from that machine's own backbone pretraining. The committed runs all start from one `pretrain` checkpoint
(AMD EPYC); another CPU model pretrains a different one (see analysis/determinism_probe.md), so runs there are new
samples of the whole chain, pretraining included. Do the gaps between the heads hold?

    # on the other machine, with its own `dvc repro pretrain` (runs/pretrain/model.pt):
    python analysis/same_results_on_cpu.py run --profile mini EXPERIMENT ... > runs.json
    python analysis/unihead_1x_other_machine.py collect runs.json [more.json ...] --out analysis/unihead_1x_other_machine_runs.json
    # later runs from the same pretraining (same machine, or a CPU model that pretrains it bit for bit), added to it:
    python analysis/unihead_1x_other_machine.py collect more_runs.json --add
    # anywhere:
    python analysis/unihead_1x_other_machine.py render analysis/unihead_1x_other_machine_runs.json

Runs of the one-seed rows in SINGLE, if collected, are shown under the seeds table beside their committed runs: the
rows whose committed runs, or the runs they are compared with, the tables mark † (trained with older code): Table 3's
zero initialisation for detection and for segmentation (mask AP), the 2x pair, seed 0 of the 4x pair, the AdamW pair,
Table 7's Cascade R-CNN pair and Table 8's four backbone pairs (each detector on its classification backbone trained
on the same machine: `same_results_on_cpu.py run --profile mini --keep DIR cls_resnext t8_resnext t8_resnext_unihead`);
and, not †, the one-seed ablations of Tables 2 (no task token), 4 (K = 8, 24, 32, read against the seeds of K = 16, the
class-token row) and 5 (L = 1 to 4, each read against the next), Table 6's module rows (HD, HD + MHSA on RoIAlign
tokens, HD + DPL without MHSA, each read against the row the module is added to; the full row is Table 2's UniHead
without task token), the pose rows of Tables 2 and 3 (task token, zero initialisation), and Table 7's one-stage pairs
(ATSS and FCOS, each UniHead against the framework's own head) and its Mask R-CNN pair (read by box AP and, as the
paper prints it, by mask AP), each one seed in the tables: more seeds of them there (`run --seed N`) say whether each
difference is more than noise. Pose
rows are read by PCK@0.1, not keypoint AP, which is about 0 for any model at `mini`'s person sizes
(analysis/keypoints_oks_mini.md).

`collect` keeps each run's metrics, loss-free, with this machine's CPU and the md5 of runs/pretrain/model.pt.
`render` sets them beside the committed runs' metrics (metrics/<experiment>.json) and writes
analysis/unihead_1x_other_machine.md: box AP, AP50, AP75 as mean +- sample standard deviation over the seeds, and
Welch's test on AP for each pair of heads, on each machine (unified_vision.engine.tables.welch_gap, as the tables
stage does).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
ROWS = {
    "2-fc head": ["baseline_faster_rcnn", "baseline_faster_rcnn_seed1", "baseline_faster_rcnn_seed2"],
    "UniHead, class token (paper)": ["uni_faster_rcnn", "uni_faster_rcnn_seed1", "uni_faster_rcnn_seed2"],
    "UniHead, class FC on all tokens (released code)": ["uni_faster_rcnn_clsall", "uni_faster_rcnn_clsall_seed1",
                                                        "uni_faster_rcnn_clsall_seed2"],
}
PAIRS = [("2-fc head", "UniHead, class token (paper)"),
         ("2-fc head", "UniHead, class FC on all tokens (released code)"),
         ("UniHead, class token (paper)", "UniHead, class FC on all tokens (released code)")]
COLUMNS = ("AP", "AP50", "AP75")
PCK_COLUMNS = ("PCK10", "PCK05", "PCK20")          # PCK@0.1 first: the pose rows' headline, as AP is the others'
# One seed each: rows whose committed runs, or the runs they are set against, are marked † in `results/` (older code,
# older score threshold), trained here with the current code. Each is read against the row it is compared with there.
SINGLE = {"UniHead, zero initialisation (Table 3)": "uni_faster_rcnn_zero_init",
          "2-fc head, 2x schedule": "baseline_faster_rcnn_2x",
          "UniHead, class token, 2x schedule": "uni_faster_rcnn_2x",
          "2-fc head, 4x schedule, seed 0": "baseline_faster_rcnn_4x",
          "UniHead, class token, 4x schedule, seed 0": "uni_faster_rcnn_4x",
          "2-fc head, AdamW": "baseline_faster_rcnn_adamw",
          "UniHead, class token, AdamW": "uni_faster_rcnn_adamw",
          "Cascade R-CNN, 2-fc heads (Table 7)": "baseline_cascade_rcnn",
          "Cascade R-CNN, UniHead (Table 7)": "uni_cascade_rcnn",
          "Segmentation, task-aware initialisation (Tables 3, 9; mask AP)": "uni_seg",
          "Segmentation, zero initialisation (Table 3; mask AP)": "uni_seg_zero_init",
          **{f"{label}, {head} (Table 8)": f"t8_{b}{suffix}"
             for b, label in [("resnet_deep", "ResNet (deeper)"), ("resnext", "ResNeXt"), ("resnext_dcn", "ResNeXt-DCN"),
                              ("swin_t", "Swin-T")]
             for head, suffix in [("2-fc head", ""), ("UniHead", "_unihead")]},
          # Not †, but one seed each: the ablations of Tables 2 to 6 (differences of about one seed's spread), and
          # Table 7's one-stage and Mask R-CNN pairs.
          "UniHead without task token (Tables 2, 6)": "uni_faster_rcnn_no_token",
          **{f"UniHead, K = {k} (Table 4)": f"uni_faster_rcnn_k{k}" for k in (8, 24, 32)},
          **{f"UniHead, L = {n} (Table 5)": f"uni_faster_rcnn_l{n}" for n in (1, 2, 3, 4)},
          "HD, sibling 2-fc stacks (Table 6)": "hd_faster_rcnn",
          "HD + MHSA on the RoIAlign tokens (Table 6)": "roi_tokens_mhsa",
          "HD + DPL by deformable RoI pooling, no MHSA (Table 6)": "deform_pool_no_mhsa",
          "Pose, task token, task-aware initialisation (Tables 2, 3, 9; PCK@0.1)": "uni_keypoints",
          "Pose without task token (Table 2; PCK@0.1)": "uni_keypoints_no_token",
          "Pose, zero initialisation (Table 3; PCK@0.1)": "uni_keypoints_zero_init",
          "ATSS, its own head (Table 7)": "baseline_atss",
          "ATSS, UniHead (Table 7)": "uni_atss",
          "FCOS, its own head (Table 7)": "baseline_fcos",
          "FCOS, UniHead (Table 7)": "uni_fcos",
          "Mask R-CNN, 2-fc box head (Table 7; box AP)": "baseline_mask_rcnn",
          "Mask R-CNN, UniHead (mask) (Table 7; box AP)": "uni_mask_rcnn",
          "Mask R-CNN, 2-fc box head (Table 7; mask AP)": "baseline_mask_rcnn",
          "Mask R-CNN, UniHead (mask) (Table 7; mask AP)": "uni_mask_rcnn"}
SINGLE_DIFFS = [("UniHead, class token (paper)", "UniHead, zero initialisation (Table 3)"),
                ("2-fc head, 2x schedule", "UniHead, class token, 2x schedule"),
                ("2-fc head, 4x schedule, seed 0", "UniHead, class token, 4x schedule, seed 0"),
                ("2-fc head, AdamW", "UniHead, class token, AdamW"),
                ("Cascade R-CNN, 2-fc heads (Table 7)", "Cascade R-CNN, UniHead (Table 7)"),
                ("Segmentation, task-aware initialisation (Tables 3, 9; mask AP)",
                 "Segmentation, zero initialisation (Table 3; mask AP)")] + [
                (f"{label}, 2-fc head (Table 8)", f"{label}, UniHead (Table 8)")
                for label in ("ResNet (deeper)", "ResNeXt", "ResNeXt-DCN", "Swin-T")] + [
                ("UniHead, class token (paper)", "UniHead without task token (Tables 2, 6)")] + [
                ("UniHead, class token (paper)", f"UniHead, K = {k} (Table 4)") for k in (8, 24, 32)] + [
                (f"UniHead, L = {n} (Table 5)", f"UniHead, L = {n + 1} (Table 5)") for n in (1, 2, 3)] + [
                ("2-fc head", "HD, sibling 2-fc stacks (Table 6)"),
                ("HD, sibling 2-fc stacks (Table 6)", "HD + MHSA on the RoIAlign tokens (Table 6)"),
                ("HD, sibling 2-fc stacks (Table 6)", "HD + DPL by deformable RoI pooling, no MHSA (Table 6)"),
                ("HD + MHSA on the RoIAlign tokens (Table 6)", "UniHead without task token (Tables 2, 6)"),
                ("HD + DPL by deformable RoI pooling, no MHSA (Table 6)", "UniHead without task token (Tables 2, 6)"),
                ("Pose, task token, task-aware initialisation (Tables 2, 3, 9; PCK@0.1)", "Pose without task token (Table 2; PCK@0.1)"),
                ("Pose, task token, task-aware initialisation (Tables 2, 3, 9; PCK@0.1)", "Pose, zero initialisation (Table 3; PCK@0.1)"),
                ("ATSS, its own head (Table 7)", "ATSS, UniHead (Table 7)"),
                ("FCOS, its own head (Table 7)", "FCOS, UniHead (Table 7)"),
                ("Mask R-CNN, 2-fc box head (Table 7; box AP)", "Mask R-CNN, UniHead (mask) (Table 7; box AP)"),
                ("Mask R-CNN, 2-fc box head (Table 7; mask AP)", "Mask R-CNN, UniHead (mask) (Table 7; mask AP)")]
# Which metrics a row is read by: mask AP for the segmentation rows, PCK for the pose rows, box AP for every other row.
METRICS = {"uni_seg": ("segm", COLUMNS), "uni_seg_zero_init": ("segm", COLUMNS),
           **{e: ("keypoints", PCK_COLUMNS) for e in ("uni_keypoints", "uni_keypoints_no_token", "uni_keypoints_zero_init")}}
# Rows read by another metric than their experiment's own (METRICS): Mask R-CNN's pair is read by box AP and, as the
# paper's Table 7 prints it, by mask AP. A run of such an experiment keeps those columns as `<prefix>_<column>`.
ROW_PREFIX = {"Mask R-CNN, 2-fc box head (Table 7; mask AP)": "segm", "Mask R-CNN, UniHead (mask) (Table 7; mask AP)": "segm"}


def extra_prefixes(experiment: str) -> list[str]:
    "The metric prefixes that rows of `experiment` read besides its own (ROW_PREFIX)."
    return sorted({ROW_PREFIX[r] for r, e in SINGLE.items() if e == experiment and r in ROW_PREFIX})


def run_key(row: str, col: str) -> str:
    "Where a run keeps row `row`'s column `col`: `col` for the experiment's own metric, `<prefix>_<col>` for another."
    return col if row not in ROW_PREFIX else f"{ROW_PREFIX[row]}_{col}"


def kept_columns(experiment: str, metrics: dict) -> dict:
    "The columns a run of `experiment` keeps from its metrics file `metrics`: its own metric's, then the extra rows'."
    cols = columns_of(experiment)
    return {**{c: metrics.get(metric_key(experiment, c)) for c in cols},
            **{f"{p}_{c}": metrics.get(f"{p}_{c}") for p in extra_prefixes(experiment) for c in cols}}


def columns_of(experiment: str) -> tuple[str, ...]:
    "The columns experiment `experiment` is read by, its headline first: AP, AP50, AP75, or PCK@0.1, @0.05, @0.2 for pose."
    return METRICS.get(experiment, ("bbox", COLUMNS))[1]


def metric_key(name: str, col: str) -> str:
    "The metrics-file key of column `col` for experiment `name`: mask AP for segmentation rows, keypoint PCK for pose rows."
    return f"{METRICS.get(name, ('bbox',))[0]}_{col}"


def collect(paths: list[Path], pretrain: Path) -> dict:
    "The runs of `same_results_on_cpu.py run` outputs (later files win), with this machine and its pretraining."
    sys.path.insert(0, str(HERE))
    from determinism_probe import cpu_description
    runs = {}
    for p in paths:
        for name, rec in json.loads(Path(p).read_text()).items():
            experiment = experiment_of(name)
            if experiment is None:
                continue
            if rec.get("profile") != "mini":
                raise ValueError(f"{p}: run {name} is of profile {rec.get('profile')!r}; this comparison needs `--profile mini` runs")
            runs[name] = {**kept_columns(experiment, rec["metrics"]), "train_seconds": rec.get("train_seconds"), "weights": rec.get("weights")}
    return {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(),
            "pretrain_md5": hashlib.md5(pretrain.read_bytes()).hexdigest(), "runs": runs}


def same_cpu_model(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("model name", "cpu family", "model"))


def merge(old: dict, new: dict, where: str = "the record") -> dict:
    """`new`'s runs added to the record `old` (new runs win), if both start from the same pretraining checkpoint: runs
    from another checkpoint are another sample and would blur the seeds' spread. Another CPU model that pretrained the
    same checkpoint bit for bit runs the same kernels (analysis/determinism_probe.md); its runs are listed under
    `more_cpus`, and a run it trained again must have the record's weights, bit for bit, or nothing is added."""
    if old["pretrain_md5"] != new["pretrain_md5"]:
        raise ValueError(f"{where}: its runs come from pretrain md5 {old['pretrain_md5'][:8]}… on {old['cpu'].get('model name')}, "
                         f"these from {new['pretrain_md5'][:8]}… on {new['cpu'].get('model name')}; write them to a "
                         "record of their own (--out) instead of adding them")
    for name, run in new["runs"].items():
        before = old["runs"].get(name, {}).get("weights")
        if before and run.get("weights") and before != run["weights"]:
            raise ValueError(f"{where}: run {name} trained again gives weights {run['weights']}, the record's are {before}: "
                             "this machine does not compute what the record's did; write its runs to a record of their own (--out)")
    merged = {**old, "runs": {**old["runs"], **new["runs"]}}
    if same_cpu_model(old["cpu"], new["cpu"]):
        return {**merged, "date": new["date"]}
    more = [dict(m) for m in old.get("more_cpus", [])]
    entry = next((m for m in more if same_cpu_model(m["cpu"], new["cpu"])), None)
    if entry is None:
        entry = {"cpu": new["cpu"], "runs": []}
        more.append(entry)
    entry["runs"] = sorted(set(entry["runs"]) | set(new["runs"]))
    again = {n for n, r in new["runs"].items() if r.get("weights") and old["runs"].get(n, {}).get("weights") == r["weights"]}
    entry["same_weights"] = sorted(set(entry.get("same_weights", [])) | again)
    entry["date"] = new["date"]
    return {**merged, "more_cpus": more}


def committed_metrics(metrics_dir: Path) -> dict:
    """AP, AP50 and AP75 of every committed run of the rows, from the pipeline's metrics files, and whether the tables
    mark the run † (its score threshold filtered the product score: unified_vision.engine.tables)."""
    sys.path.insert(0, str(ROOT))
    from unified_vision.engine.tables import _product_thresholded
    out = {}
    for name in [n for names in ROWS.values() for n in names] + list(SINGLE.values()):
        path = metrics_dir / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no committed metrics for {name}; run the pipeline's evaluate stage first")
        m = json.loads(path.read_text())
        out[name] = {**kept_columns(name, m), "dagger": _product_thresholded(metrics_dir, name)}
    return out


def experiment_of(name: str) -> str | None:
    "The experiment of a row that run `name` belongs to (`<experiment>_seed<N>` for a one-seed row), None for no row's run."
    if any(name in names for names in ROWS.values()):
        return name
    return next((e for e in SINGLE.values() if name in single_runs(e, [name])), None)


def single_runs(experiment: str, runs: dict) -> list[str]:
    "A one-seed row's runs: the experiment, then any runs of it with other seeds (`same_results_on_cpu.py run --seed N`)."
    return [experiment] + sorted(n for n in runs if re.fullmatch(re.escape(experiment) + r"_seed\d+", n))


def values(runs: dict, row: str, col: str) -> list[float]:
    "The row's runs' values of `col` (x 100), skipping runs this machine has not got."
    names = ROWS[row] if row in ROWS else single_runs(SINGLE[row], runs)
    key = run_key(row, col)
    return [100 * runs[n][key] for n in names if n in runs and runs[n].get(key) is not None]


def headline(row: str) -> str:
    "The column a row's differences are read by: PCK@0.1 for the pose rows, AP for the others."
    return columns_of(SINGLE.get(row, ""))[0]


def mean_of(runs: dict, row: str) -> float | None:
    vals = values(runs, row, headline(row))
    return statistics.mean(vals) if vals else None


def single_lines(runs: dict, committed: dict) -> list[str]:
    "The one-seed rows trained here, beside the committed runs (†: see results/), and the differences they are read for, where this machine has both sides."
    if not any(n in runs for n in SINGLE.values()):
        return []
    lines = ["", "One seed each in the tables (more on the other machine where a cell says how many runs it averages), current code: rows whose committed runs, or the runs they are compared with, are marked † "
             "in `results/` (trained with older code and evaluated with the older score threshold), the ablations of "
             "Tables 2 to 6 and Table 7's one-stage and Mask R-CNN pairs. Box AP; mask AP or PCK@0.1 (pose: keypoint AP "
             "is about 0 at `mini`'s person sizes) where the row says so. Table 8's detectors start from classification backbones trained on each machine "
             "(on the other one by `same_results_on_cpu.py run --keep`, before the detectors)."]
    trained = [r for r in SINGLE if SINGLE[r] in runs]
    for cols, names in ((COLUMNS, ("AP", "AP50", "AP75")), (PCK_COLUMNS, ("PCK@0.1", "PCK@0.05", "PCK@0.2"))):
        rows = [r for r in trained if columns_of(SINGLE[r]) == cols]
        if rows:
            lines += single_table(rows, cols, names, runs, committed)
    lines += ["", "Second minus first, AP (PCK@0.1 for the pose rows), a several-seed row by its mean; where the other "
              "machine has two or more runs on each side, Welch's test on them (95% interval, p; – where a side has one run):", "",
              "| second − first | committed | other machine | other machine: 95% CI | p |", "|---|---|---|---|---|"]
    for first, second in SINGLE_DIFFS:
        if mean_of(runs, first) is None or mean_of(runs, second) is None:
            continue
        cells = []
        for src in (committed, runs):
            a, b = mean_of(src, first), mean_of(src, second)
            cells.append("–" if a is None or b is None else f"{b - a:+.1f}")
        lines.append(f"| {second} − {first} | " + " | ".join(cells + gap_cells(runs, first, second)[1:]) + " |")
    return lines


def single_table(rows: list[str], cols: tuple[str, ...], names: tuple[str, ...], runs: dict, committed: dict) -> list[str]:
    "One table of one-seed rows read by the same columns `cols` (headers `names`), committed beside the other machine."
    lines = ["", "| row | committed " + " | ".join(names) + " | other machine " + " | ".join(names) + " |",
             "|---|" + "---|" * 2 * len(cols)]
    for row in rows:
        mark = " †" if committed.get(SINGLE[row], {}).get("dagger") else ""
        lines.append(f"| {row} | " + " | ".join(mean_std(values(committed, row, c)) + (mark if c == cols[0] else "")
                                               for c in cols) + " | "
                     + " | ".join(mean_std(values(runs, row, c)) for c in cols) + " |")
    return lines


def mean_std(vals: list[float]) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.1f} (1 run)"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}" + ("" if len(vals) == 3 else f" ({len(vals)} runs)")


def gap_cells(runs: dict, first: str, second: str) -> list[str]:
    sys.path.insert(0, str(ROOT))
    from unified_vision.engine.tables import welch_gap
    a, b = values(runs, first, headline(first)), values(runs, second, headline(second))
    if len(a) < 2 or len(b) < 2:
        return ["–", "–", "–"]
    g = welch_gap(a, b)
    p = "< 0.001" if g["p"] < 0.001 else f"{g['p']:.3f}"
    return [f"{g['diff']:+.1f}", f"[{g['ci'][0]:.1f}, {g['ci'][1]:.1f}]", p]


def render(record: dict, committed: dict) -> str:
    cpu = record["cpu"]
    other = f"{cpu.get('model name')} (family {cpu.get('cpu family')}, model {cpu.get('model')})"
    more = ""
    for m in record.get("more_cpus", []):
        more += (f" {len(m['runs'])} of the runs ({', '.join(m['runs'])}; {m['date']}) ran on model {m['cpu'].get('model')}, "
                 "which pretrained the same checkpoint bit for bit" + (
                     f" and trained {', '.join(m['same_weights'])} again to the record's weights, bit for bit."
                     if m.get("same_weights") else "."))
    runs = record["runs"]
    lines = [
        "## UniHead against the 2-fc head and the frameworks' own heads on another machine, from another pretraining (`mini`; 1x seeds 0-2 in Faster R-CNN, one-seed † rows, the ablations of Tables 2-6 and Table 7's one-stage and Mask R-CNN pairs)",
        "",
        f"Generated by `python analysis/unihead_1x_other_machine.py render` from `analysis/unihead_1x_other_machine_runs.json` "
        f"(runs collected {record['date']}). *Committed*: the pipeline's runs (`metrics/`, AMD EPYC, all from the `pretrain` "
        f"checkpoint of md5 b365…; `results/unihead_noise.md`). *Other machine*: the same experiments, same code path and "
        f"schedule, trained by `analysis/same_results_on_cpu.py run --profile mini` on {other}, from that machine's own "
        f"pretraining (md5 {record['pretrain_md5'][:4]}…, a different checkpoint: analysis/determinism_probe.md).{more} "
        "Mean ± sample standard deviation over seeds 0-2, or over seeds 0 to N-1 where a cell says N runs.",
        "",
        "| head | committed AP | AP50 | AP75 | other machine AP | AP50 | AP75 | other machine: training s per run |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in ROWS:
        secs = [runs[n]["train_seconds"] for n in ROWS[row] if n in runs and runs[n].get("train_seconds")]
        lines.append(f"| {row} | " + " | ".join(mean_std(values(committed, row, c)) for c in COLUMNS) + " | "
                     + " | ".join(mean_std(values(runs, row, c)) for c in COLUMNS) + " | "
                     + (f"{statistics.mean(secs):.0f}" if secs else "–") + " |")
    lines += ["", "Welch's test on AP, second minus first, on each machine (95% interval of the difference of the means, "
              "two-sided p; p > 0.05 means these seeds cannot tell the heads apart, not that they are equal):", "",
              "| second − first | committed: difference | 95% CI | p | other machine: difference | 95% CI | p |",
              "|---|---|---|---|---|---|---|"]
    for first, second in PAIRS:
        lines.append(f"| {second} − {first} | " + " | ".join(gap_cells(committed, first, second)) + " | "
                     + " | ".join(gap_cells(runs, first, second)) + " |")
    lines += single_lines(runs, committed)
    lines += ["", "Training seconds are information only: they depend on what else the machine ran meanwhile.", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect"); c.add_argument("runs", nargs="+", type=Path)
    c.add_argument("--pretrain", type=Path, default=ROOT / "runs/pretrain/model.pt")
    c.add_argument("--out", type=Path, default=HERE / "unihead_1x_other_machine_runs.json")
    c.add_argument("--add", action="store_true", help="add the runs to the record already at --out (same pretraining only)")
    r = sub.add_parser("render"); r.add_argument("record", type=Path, nargs="?", default=HERE / "unihead_1x_other_machine_runs.json")
    r.add_argument("--metrics", type=Path, default=ROOT / "metrics")
    r.add_argument("--out", type=Path, default=HERE / "unihead_1x_other_machine.md")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from unified_vision.core import atomic_path
    if args.cmd == "collect":
        record = collect(args.runs, args.pretrain)
        if args.add:
            record = merge(json.loads(args.out.read_text()), record, str(args.out))
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(record, indent=1) + "\n")
        print(f"{len(record['runs'])} runs -> {args.out}")
    else:
        text = render(json.loads(args.record.read_text()), committed_metrics(args.metrics))
        with atomic_path(args.out) as tmp:
            tmp.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
