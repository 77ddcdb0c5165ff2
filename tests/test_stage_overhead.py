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


def test_report_sums_the_per_stage_rows_only():
    measured = [("python", 0.5, False), ("dvc", 1.0, True), ("notebook", 2.0, True)]
    text = bench.report(measured, n_stages=120, smoke_total_min=10.0, repeats=3)
    assert "Per stage: **3.0 s**" in text and "**6.0 min**" in text
    assert "about 60% of it" in text and "fewer than 200 stages" in " ".join(text.split())
