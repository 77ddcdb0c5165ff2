"The stage-overhead benchmark's helpers: what it counts and how it adds up (no timing is asserted)."
import importlib.util
import json
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_stage_overhead", Path(__file__).parents[1] / "benchmarks" / "bench_stage_overhead.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_notebook_imports_are_the_import_lines_of_the_code_cells(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "source": ["import not_code\n"]},
                    {"cell_type": "code", "source": ["config = {}\n"]},
                    {"cell_type": "code", "source": ["import os, json\n", "os.environ.setdefault('A', '1')\n", "from pathlib import Path\n"]}]}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    assert bench.notebook_imports(path) == "import os, json\nfrom pathlib import Path"


def test_the_training_notebook_imports_torch_through_the_package():
    src = bench.notebook_imports()
    assert "unified_vision.engine.experiment" in src and "os.environ" not in src
    compile(src, "imports", "exec")                                   # a runnable program, as the benchmark runs it


def test_only_per_experiment_stages_are_counted():
    names = ["data", "configs", "pretrain", "train@a", "evaluate@a", "train_unihead@b", "evaluate_unihead@b", "tables"]
    assert bench.experiment_stage_count(names) == 4


def test_report_compares_the_stage_start_up_before_and_now():
    measured = [("python", 0.5, ""), ("before", 6.0, "before"), ("first", 8.0, "once"), ("now", 2.0, "now")]
    text = " ".join(bench.report(measured, n_stages=120, smoke_total_min=10.0, repeats=3).split())
    assert "**6.0 s** before, **2.0 s** now (3.0x less)" in text
    assert "**12.0 min** of any profile's wall time before and **4.1 min** now" in text     # 119 x 2 s + 8 s = 246 s
    assert "| python | 0.50 | |" in text and "took **10.0 min**" in text


def test_kernel_rows_run_the_training_notebooks_imports(tmp_path):
    comps = bench.components(tmp_path)
    kinds = [kind for _, _, _, kind in comps]
    assert kinds.count("before") == kinds.count("now") == kinds.count("once") == 1
    assert kinds.index("once") < kinds.index("now")                   # the server is started before it is reused
    import nbformat
    nb = nbformat.read(tmp_path / "imports.ipynb", as_version=4)
    assert nb.cells[-1].source == bench.notebook_imports() and "parameters" in nb.cells[0].metadata["tags"]
    envs = {kind: extra for _, _, extra, kind in comps if kind}
    assert envs["now"] == envs["once"] == {"UV_WARM_KERNEL": "1"}
