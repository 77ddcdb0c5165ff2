"""Do warm kernels change what a stage computes? Run the training and evaluation stages of `smoke` experiments twice in
one scratch copy of the repository, once with plain kernels (`UV_WARM_KERNEL=0`) and once with kernels forked from a
warm server (the default), and compare the trained weights, the logged losses and the metrics bit for bit.

    python analysis/warm_kernels_same_results.py EXPERIMENT ...

Each stage runs as DVC runs it, `python -m unified_vision.cli train|evaluate NAME` in a fresh process, after the
`data`, `configs` and `pretrain` stages of the smoke profile. Writes analysis/warm_kernels_same_results.md, with each
stage's wall time in both modes (one run, so read the times as an indication; the benchmark is
benchmarks/bench_stage_overhead.py). Timings inside the metrics (`cost_infer_ms`) are left out of the comparison.
"""
import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "analysis")]
from bench_pipeline import PREREQUISITES, _env, run, scratch_copy  # noqa: E402
from same_results_on_cpu import weights_digest  # noqa: E402


def stage(repo: Path, args: list[str], warm: bool) -> float:
    env = {**_env(), "UV_WARM_KERNEL": "1" if warm else "0"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "unified_vision.cli", *args], cwd=repo, env=env, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"{' '.join(args)} failed:\n{(r.stdout + r.stderr)[-3000:]}")
    return time.perf_counter() - t0


def outcome(repo: Path, name: str) -> dict:
    import torch
    state = torch.load(repo / "runs" / name / "model.pt", map_location="cpu", weights_only=True)["model"]
    losses = {}
    for tsv in sorted((repo / "logs" / name / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv) as f:
            losses[tsv.stem] = [row[tsv.stem] for row in csv.DictReader(f, delimiter="\t")]   # not the timestamps
    metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
    metrics.pop("cost_infer_ms", None)
    return {"weights": weights_digest(state), "losses": losses, "metrics": metrics}


def report(results: dict) -> str:
    rows, same_all = [], True
    for name, r in results.items():
        same = {part: r["cold"][part] == r["warm"][part] for part in ("weights", "losses", "metrics")}
        same_all &= all(same.values())
        t = r["seconds"]
        rows.append(f"| {name} | {r['cold']['weights']} | {r['warm']['weights']} | "
                    + " | ".join("same" if same[p] else "**different**" for p in same)
                    + f" | {t['cold_train']:.1f} / {t['warm_train']:.1f} | {t['cold_evaluate']:.1f} / {t['warm_evaluate']:.1f} |")
    verdict = "identical" if same_all else "NOT identical"
    return f"""# Warm kernels give the same results as plain kernels

Written by `python analysis/warm_kernels_same_results.py {' '.join(results)}`: each `smoke` experiment's training and
evaluation stages run as DVC runs them (`python -m unified_vision.cli ...`, a fresh process each), first with plain
kernels (`UV_WARM_KERNEL=0`), then with kernels forked from a warm server, in one scratch copy of the repository on
this machine. Weights: a SHA-256 prefix of every tensor of `runs/<name>/model.pt`; losses: every value dvclive
logged; metrics: every evaluation number but the timing. Verdict: **{verdict}**.

| experiment | weights, plain | weights, warm | weights | losses | metrics | train s, plain / warm | evaluate s, plain / warm |
|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("experiments", nargs="+")
    a = p.parse_args()
    repo = scratch_copy("smoke")
    print("scratch copy:", repo, file=sys.stderr)
    for name in PREREQUISITES:
        run(["dvc", "repro", "--single-item", name], repo)
    results = {name: {"seconds": {}} for name in a.experiments}
    for mode in ("cold", "warm"):
        for name in a.experiments:
            r = results[name]
            r["seconds"][f"{mode}_train"] = stage(repo, ["train", name, "--no-check"], warm=mode == "warm")
            r["seconds"][f"{mode}_evaluate"] = stage(repo, ["evaluate", name], warm=mode == "warm")
            r[mode] = outcome(repo, name)
            print(mode, name, r[mode]["weights"], {k: round(v, 1) for k, v in r["seconds"].items()}, file=sys.stderr)
    out = ROOT / "analysis" / "warm_kernels_same_results.md"
    out.write_text(report(results))
    print(out.read_text())


if __name__ == "__main__":
    main()
