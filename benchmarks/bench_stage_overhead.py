"""The fixed cost of one pipeline stage, apart from its work: why the `smoke` pipeline takes minutes.

    python benchmarks/bench_stage_overhead.py            # writes benchmarks/results/stage_overhead.md

Every `train@*` / `evaluate@*` stage is one `dvc repro` step that starts `python -m unified_vision.cli`, which runs
a notebook through papermill in a fresh Jupyter kernel, which imports torch, torchvision, timm and the package. At
`smoke` scale the training itself takes well under a second, so the pipeline's wall time is set by these start-up
costs times the number of stages. This script times each of them on its own, in fresh processes (median of
`--repeats`), and multiplies by the pipeline's stage count. Run it on an idle machine: it is a timing.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NOTEBOOK = ROOT / "nbs" / "experiments" / "train.ipynb"


def notebook_imports(path: Path = TRAIN_NOTEBOOK) -> str:
    "The import statements of a notebook's code cells (the parameters cell has none), as one Python source."
    cells = json.loads(path.read_text())["cells"]
    lines = [line.rstrip() for c in cells if c["cell_type"] == "code" for line in "".join(c["source"]).splitlines()]
    return "\n".join(line for line in lines if line.startswith(("import ", "from ")))


def trivial_notebook(path: Path) -> Path:
    "A notebook with a parameters cell and one cell of no work: what papermill's kernel costs by itself."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell("x + 1")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def components(tmp: Path) -> list[tuple[str, list[str], bool]]:
    "(what, command, counted in a stage's floor): the commands one stage runs, one cost at a time."
    py = sys.executable
    nb = trivial_notebook(tmp / "trivial.ipynb")
    run_nb = f"from unified_vision.cli import run_notebook; run_notebook({str(nb)!r}, {str(tmp / 'out.ipynb')!r}, {{'x': 1}})"
    return [
        ("Python interpreter start", [py, "-c", "pass"], False),
        ("`import torch`", [py, "-c", "import torch"], False),
        ("`import torch, torchvision` (torchvision.ops imports torch._dynamo)", [py, "-c", "import torch, torchvision"], False),
        ("DVC start and pipeline parsing (`dvc stage list`)", ["dvc", "stage", "list", "--name-only"], False),
        ("CLI + papermill + kernel start, a notebook of no work (`run_notebook`)", [py, "-c", run_nb], True),
        ("the training notebook's imports, in a fresh interpreter", [py, "-c", notebook_imports()], True),
    ]


def venv_env() -> dict:
    "This interpreter's environment first on PATH (so `dvc` is the venv's), offline hub."
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def median_seconds(cmd: list[str], repeats: int) -> float:
    env = venv_env()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def experiment_stage_count(names: list[str]) -> int:
    "The stages that run one experiment (`train*@x`, `evaluate*@x`); data, configs, pretrain and tables run once."
    return sum(1 for n in names if "@" in n and n.split("@")[0].startswith(("train", "evaluate")))


def report(measured: list[tuple[str, float, bool]], n_stages: int, smoke_total_min: float | None, repeats: int) -> str:
    floor = sum(s for _, s, counted in measured if counted)
    rows = "\n".join(f"| {what} | {s:.2f} | {'yes' if counted else ''} |" for what, s, counted in measured)
    smoke = (f" The last measured `smoke` pipeline (above) took **{smoke_total_min:.1f} min**, so about "
             f"{100 * floor * n_stages / 60 / smoke_total_min:.0f}% of it is this fixed cost." if smoke_total_min else "")
    return f"""### Fixed cost per pipeline stage

Measured by `benchmarks/bench_stage_overhead.py` on this machine, each command in a fresh process, median of {repeats}.
A `train@*` or `evaluate@*` stage pays the rows marked "per stage" before it does any work; the first three rows show
where the imports' time goes. One `dvc repro` starts DVC once; `bench_pipeline.py`, which runs every stage with its own
`dvc repro` to time it, also pays the DVC row per stage.

| what | seconds | per stage |
|---|---|---|
{rows}

Per stage: **{floor:.1f} s** before any work. The pipeline has {n_stages} such stages (one training and one evaluation per
experiment), so **{floor * n_stages / 60:.1f} min** of any profile's wall time is start-up, however small the
profile's data and schedule.{smoke} The `smoke` target of 10 minutes would need fewer than
{int(600 // floor)} stages at this cost, or stages that share one process, which DVC's one-command-per-stage model does not offer.
"""


def smoke_total_minutes() -> float | None:
    times = ROOT / "benchmarks" / "results" / "pipeline_smoke.times.json"
    return sum(json.loads(times.read_text()).values()) / 60 if times.exists() else None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    from tqdm import tqdm
    with tempfile.TemporaryDirectory() as tmp:
        comps = components(Path(tmp))
        measured = [(what, median_seconds(cmd, args.repeats), counted) for what, cmd, counted in tqdm(comps, desc="components")]
    names = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=ROOT, check=True, capture_output=True, text=True,
                           env=venv_env()).stdout.split()
    text = report(measured, experiment_stage_count(names), smoke_total_minutes(), args.repeats)
    out = ROOT / "benchmarks" / "results" / "stage_overhead.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
