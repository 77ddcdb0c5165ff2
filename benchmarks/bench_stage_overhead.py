"""The fixed cost of one pipeline stage, apart from its work: why the `smoke` pipeline takes minutes.

    python benchmarks/bench_stage_overhead.py            # writes benchmarks/results/stage_overhead.md

Every `train@*` / `evaluate@*` stage is one `dvc repro` step that starts `python -m unified_vision.cli`, which runs
a notebook through papermill in a Jupyter kernel, which imports torch, torchvision, timm and the package. At `smoke`
scale the training itself takes a second or two, so the pipeline's wall time is set by these start-up costs times the
number of stages. This script times each of them on its own, in fresh processes (median of `--repeats`), and the
start-up of a stage's kernel three ways side by side: a plain kernel left to exit cleanly (how stages ran before
warm kernels), a plain kernel killed once its notebook is done (`UV_WARM_KERNEL=0`), and a kernel forked from a warm
server (the default; see nbs/75_engine.warm_kernel.ipynb). Run it on an idle machine: it is a timing.
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


def imports_notebook(path: Path) -> Path:
    "A notebook with a parameters cell and one cell: the training notebook's imports. What a stage pays before its work."
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x = 0", metadata={"tags": ["parameters"]}), nbformat.v4.new_code_cell(notebook_imports())]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def components(tmp: Path) -> list[tuple[str, list[str], dict, str]]:
    """(what, command, extra environment, kind): the commands one stage runs, one cost at a time. kind "before" and "now"
    are a whole stage's start-up (the CLI, papermill, the kernel, the imports, the kernel's end) then and now; "once" is
    paid by the first stage in a folder; "" is a part of the others, shown to say where the time goes."""
    py = sys.executable
    nb, out = imports_notebook(tmp / "imports.ipynb"), tmp / "out.ipynb"
    run_nb = f"from unified_vision.cli import run_notebook; run_notebook({str(nb)!r}, {str(out)!r}, {{'x': 1}})"
    graceful = ("from unified_vision.cli import import_papermill; import os; import_papermill().execute_notebook("
                f"{str(nb)!r}, {str(out)!r}, parameters={{'x': 1}}, kernel_name='python3', language='python', "
                "progress_bar=False, cwd=os.getcwd())")
    return [
        ("Python interpreter start", [py, "-c", "pass"], {}, ""),
        ("`import torch`", [py, "-c", "import torch"], {}, ""),
        ("`import torch, torchvision` (torchvision.ops imports torch._dynamo)", [py, "-c", "import torch, torchvision"], {}, ""),
        ("the training notebook's imports, in a fresh interpreter", [py, "-c", notebook_imports()], {}, ""),
        ("DVC start and pipeline parsing (`dvc stage list`), once per `dvc repro`", ["dvc", "stage", "list", "--name-only"], {}, ""),
        ("a stage's start-up, plain kernel left to exit cleanly (before)", [py, "-c", graceful], {}, "before"),
        ("a stage's start-up, plain kernel killed when done (`UV_WARM_KERNEL=0`)", [py, "-c", run_nb], {"UV_WARM_KERNEL": "0"}, ""),
        ("the first stage in a folder, which starts the warm server", [py, "-c", run_nb], {"UV_WARM_KERNEL": "1"}, "once"),
        ("a stage's start-up, kernel forked from the warm server (the default)", [py, "-c", run_nb], {"UV_WARM_KERNEL": "1"}, "now"),
    ]


def venv_env() -> dict:
    "This interpreter's environment first on PATH (so `dvc` is the venv's), offline hub."
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def median_seconds(cmd: list[str], repeats: int, extra_env: dict | None = None, cwd: Path = ROOT) -> float:
    env = {**venv_env(), **(extra_env or {})}
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure(comps, repeats: int, folder: Path, progress=None) -> list[tuple[str, float, str]]:
    """Median seconds of each component, run in `folder`, a new one: no warm server serves it yet, so the "once" row
    (timed a single time) starts one, and the rows after it find it."""
    measured = []
    for what, cmd, extra, kind in (progress or (lambda x, **k: x))(comps, desc="components"):
        cwd = ROOT if cmd[0] == "dvc" else folder       # DVC needs the repository
        measured.append((what, median_seconds(cmd, 1 if kind == "once" else repeats, extra, cwd=cwd), kind))
    return measured


def experiment_stage_count(names: list[str]) -> int:
    "The stages that run one experiment (`train*@x`, `evaluate*@x`); data, configs, pretrain and tables run once."
    return sum(1 for n in names if "@" in n and n.split("@")[0].startswith(("train", "evaluate")))


def report(measured: list[tuple[str, float, str]], n_stages: int, smoke_total_min: float | None, repeats: int) -> str:
    seconds = {kind: s for _, s, kind in measured if kind}
    before, now, once = seconds["before"], seconds["now"], seconds.get("once", 0.0)
    rows = "\n".join(f"| {what} | {s:.2f} | {kind} |" for what, s, kind in measured)
    total_before, total_now = before * n_stages / 60, (now * (n_stages - 1) + once) / 60
    smoke = (f" The last measured `smoke` pipeline took **{smoke_total_min:.1f} min** (above)." if smoke_total_min else "")
    return f"""### Fixed cost per pipeline stage

Measured by `benchmarks/bench_stage_overhead.py` on this machine, each command in a fresh process, median of {repeats}
(the "once" row: one run). A stage's start-up is `run_notebook` of a notebook whose one cell is the training notebook's
imports: the CLI, papermill, the kernel's start, the imports and the kernel's end, all that a `train@*` or `evaluate@*`
stage pays before and after its work. The first rows show where the time goes. "before": how every stage ran before
warm kernels; "now": the default, a kernel forked from a server that has the imports done (nbs/75_engine.warm_kernel.ipynb).

| what | seconds | kind |
|---|---|---|
{rows}

Per stage: **{before:.1f} s** before, **{now:.1f} s** now ({before / now:.1f}x less). The pipeline has {n_stages} such stages
(one training and one evaluation per experiment), so start-up is **{total_before:.1f} min** of any profile's wall time
before and **{total_now:.1f} min** now (the first stage starting the server), however small the profile's data and
schedule.{smoke}
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
        measured = measure(components(Path(tmp)), args.repeats, Path(tmp), progress=tqdm)
    names = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=ROOT, check=True, capture_output=True, text=True,
                           env=venv_env()).stdout.split()
    text = report(measured, experiment_stage_count(names), smoke_total_minutes(), args.repeats)
    out = ROOT / "benchmarks" / "results" / "stage_overhead.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
