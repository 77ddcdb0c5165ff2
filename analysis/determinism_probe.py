"""Which CPU settings make training bit-identical across machines of this kind? A probe to run once on each machine.

The `pretrain` stage has given three different checkpoints on three machines of this kind (x86, 2 cores each,
different CPU models), while it is repeatable on any one of them. PyTorch on x86 picks its kernels by the
instruction sets the CPU has: ATen's vectorised kernels (AVX2 or AVX-512), oneDNN's convolutions and MKL's matrix
products each dispatch on their own, and a float sum taken in another order rounds differently. A run can only be bit-identical where the same kernels run, with the same
number of threads. Each library has a switch that caps the instruction set it uses:

* `ATEN_CPU_CAPABILITY` (`default`, `avx2`, `avx512`) for ATen;
* `ONEDNN_MAX_CPU_ISA` (`SSE41`, `AVX2`, ...) for oneDNN;
* `MKL_CBWR` (conditional bitwise reproducibility: `COMPATIBLE`, `AVX2`, ...) for MKL.

This script trains a short, fixed piece of the pipeline, by default the `mini` backbone pretraining (random
initialisation, the profile's 2 threads, `--iterations` steps; `--experiment <name>` trains that experiment of the
profile instead, e.g. a detector, also from random weights), once per setting, each in a fresh process because the switches are
read when torch loads, and records the SHA-256 of the resulting weights beside the machine's CPU. The default
setting runs twice, to show the run is repeatable on one machine. Run on several machines, the records say which
setting gives the same weights everywhere, and at what speed: the one the pipeline could pin.

Usage: python analysis/determinism_probe.py [--iterations 30] [--experiment pretrain|<experiment name>]
Needs `generated/mini` (`dvc repro data`). Appends one record per machine to analysis/determinism_probe.jsonl and
rewrites analysis/determinism_probe.md from all records.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
VARIANTS = {
    "default": {},
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "compatible": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"},
    # added 2026-12-05, after `compatible` agreed across Intel and AMD at 2.8x the time of a full pretraining: which
    # library's cap is the one that matters? MKL alone, or MKL with the other two capped at AVX2 (cheaper than SSE4.1)
    "mkl_compatible": {"MKL_CBWR": "COMPATIBLE"},
    "avx2_mkl_compatible": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE"},
}
SWITCHES = sorted({k for v in VARIANTS.values() for k in v})


def weights_hash(state_dict) -> str:
    "SHA-256 over the names and bytes of every tensor, in the state dict's order."
    h = hashlib.sha256()
    for name, t in state_dict.items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def train_once(iterations: int, profile: str = "mini", experiment: str = "pretrain") -> dict:
    "`experiment` (the backbone pretraining by default) for `iterations` steps from random weights, in this process."
    sys.path.insert(0, str(ROOT))
    import torch
    from unified_vision.cli import experiment_config, pretrain_config
    from unified_vision.core import DataError, deep_merge, load_yaml
    from unified_vision.engine.experiment import run_training
    params = load_yaml(ROOT / "params.yaml")
    cfg = pretrain_config(params, profile) if experiment == "pretrain" else experiment_config(params, experiment, profile)
    root = ROOT / cfg["data"]["root"]
    if not root.exists():
        raise DataError(root, "generated data not found", f"run `dvc repro -s data` with profile {profile} first")
    cfg = deep_merge(cfg, {"data": {"root": str(root)}, "model": {"backbone": {"pretrained": False}}})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = run_training(cfg, run_dir, stop_at=iterations, progress=False)
    return {"hash": weights_hash(trainer.model.state_dict()), "seconds": round(time.perf_counter() - start, 1),
            "loss": round(trainer.history[-1]["loss"], 6) if trainer.history else None,
            "capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}


def run_variant(name: str, iterations: int, experiment: str = "pretrain") -> dict:
    "`train_once` in a fresh process with the variant's switches set (and the others unset)."
    env = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    env.update(VARIANTS[name], HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, __file__, "--child", "--iterations", str(iterations), "--experiment", experiment], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"variant {name} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def cpu_description() -> dict:
    "Model name, family/model numbers and the vector extensions that decide kernel dispatch."
    info = {}
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    for line in text.splitlines():
        k, _, v = line.partition(":")
        k, v = k.strip(), v.strip()
        if k in ("model name", "cpu family", "model", "flags") and k not in info:
            info[k] = v
    flags = set(info.pop("flags", "").split())
    info["extensions"] = sorted(f for f in flags if f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma"))
    info["cores"] = os.cpu_count()
    info["machine"] = platform.machine()
    return info


def experiment_of(record: dict) -> str:
    return record.get("experiment", "pretrain")          # records before --experiment existed probed the pretraining


def render(records: list[dict]) -> str:
    """Markdown: one row per machine, one column per variant (hash prefix, seconds; – where a record predates the
    variant); then whether each variant agrees, over the records that have it."""
    names = list(VARIANTS)
    lines = ["# Bit-reproducibility across machines: the probe's records", "",
             "Written by `python analysis/determinism_probe.py` (see its docstring): a `mini` experiment (the backbone "
             "pretraining unless the row names another) trained for a few steps from random weights, once per setting of the "
             "instruction-set switches, on each machine it was run on. "
             "Cells: the first 12 hex digits of the weights' SHA-256, and the seconds the run took.", "",
             "| date | CPU | extensions | experiment | iterations | repeatable | " + " | ".join(names) + " |",
             "|---|---|---|---|---|---|" + "---|" * len(names)]
    for r in records:
        cpu = f"{r['cpu'].get('model name', '?')} (family {r['cpu'].get('cpu family', '?')}, model {r['cpu'].get('model', '?')})"
        cells = [f"`{r['variants'][n]['hash'][:12]}` ({r['variants'][n]['seconds']} s)" if n in r["variants"] else "–"
                 for n in names]
        lines.append(f"| {r['date']} | {cpu} | {' '.join(r['cpu']['extensions'])} | {experiment_of(r)} | {r['iterations']} | "
                     f"{'yes' if r['repeatable'] else 'NO'} | " + " | ".join(cells) + " |")
    lines += ["", "Per setting, over the machines with the same experiment and iteration count:", ""]
    for exp, it in sorted({(experiment_of(r), r["iterations"]) for r in records}):
        for n in names:
            same = [r for r in records if r["iterations"] == it and experiment_of(r) == exp and n in r["variants"]]
            if not same:                                  # a setting added after these records were taken
                continue
            cpus = {r["cpu"].get("cpu family", "?") + "/" + r["cpu"].get("model", "?") for r in same}
            hashes = {r["variants"][n]["hash"] for r in same}
            verdict = ("only one CPU model so far" if len(cpus) < 2 else
                       "the same weights on every CPU model" if len(hashes) == 1 else f"{len(hashes)} different results")
            lines.append(f"- {exp}, {it} iterations, `{n}` ({', '.join(f'{k}={v}' for k, v in VARIANTS[n].items()) or 'no switch'}): "
                         f"{len(same)} record(s), {len(cpus)} CPU model(s): {verdict}")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--experiment", default="pretrain", help="'pretrain' or an experiment of params.yaml (e.g. baseline_faster_rcnn)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(train_once(args.iterations, experiment=args.experiment)))
        return
    variants = {n: run_variant(n, args.iterations, args.experiment) for n in VARIANTS}
    again = run_variant("default", args.iterations, args.experiment)
    record = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_description(), "experiment": args.experiment, "iterations": args.iterations,
              "repeatable": again["hash"] == variants["default"]["hash"], "variants": variants}
    log = HERE / "determinism_probe.jsonl"
    with open(log, "a") as f:
        f.write(json.dumps(record) + "\n")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    sys.path.insert(0, str(ROOT))
    from unified_vision.core import atomic_path
    with atomic_path(HERE / "determinism_probe.md") as tmp:
        tmp.write_text(render(records))
    print(render(records))


if __name__ == "__main__":
    main()
