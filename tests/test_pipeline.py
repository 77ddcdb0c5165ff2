"""The DVC pipeline end to end on the `smoke` profile, in a scratch copy of the repository.

Checks the acceptance of the pipeline: `dvc exp run -S profile=smoke` runs every stage and writes the result
tables; `dvc repro` right after reruns nothing; changing one experiment's parameter reruns exactly that
experiment's training and evaluation and the tables. The pipeline runs with warm kernels (the default); rerun with
plain ones, two experiments give the same weights, losses and metrics.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COPY = ["params.yaml", "dvc.yaml", "paper_numbers.yaml", ".dvcignore", "unified_vision", "nbs/experiments", "kernels/csrc"]


def _run(args, cwd, extra_env=None, **kw):
    "Run a command as a user would: conftest's MPLBACKEND=Agg (for this process's plots) would keep figures out of the notebooks."
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update({"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", **(extra_env or {})})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=True, **kw).stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("pipeline")
    for name in COPY:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.failed.ipynb", ".*.running.ipynb"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, dst)
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "init"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "pipeline"], repo)
    _run(["dvc", "exp", "run", "-S", "profile=smoke"], repo, timeout=5400)   # the full smoke pipeline (53 experiments) took over 30 min on a slower 2-core machine
    return repo


def _planned_stages(repo) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", _run(["dvc", "repro", "--dry"], repo)))


def test_smoke_pipeline_writes_every_table(repo):
    table = (repo / "results" / "baselines.md").read_text()
    for label in ("Faster R-CNN", "Mask R-CNN", "Cascade R-CNN", "RetinaNet", "FCOS", "ATSS"):
        row = next(l for l in table.splitlines() if l.startswith(f"| {label} |"))
        assert "not run" not in row and re.search(r"\| \d+\.\d \|", row), row
    assert "38.8" in table                                   # the paper's column (UniHead Table 7, Faster RCNN) is there
    assert (repo / "runs" / "baseline_atss" / "train.ipynb").exists() and (repo / "metrics" / "baseline_atss.json").exists()
    assert (repo / "results" / "plots" / "baselines_loss.png").exists()
    run = json.loads((repo / "runs" / "baseline_atss" / "train.ipynb").read_text())   # its kernel drew inline figures
    assert any("image/png" in o.get("data", {}) for c in run["cells"] for o in c.get("outputs", [])), "no loss-curve figure"


def test_table1_counts_the_whole_model(repo):
    "UniHead Table 1's #params is the whole classifier's, so the extra blocks (in the backbone) add to it."
    lines = (repo / "results" / "unihead_table1.md").read_text().splitlines()
    header = next(l for l in lines if l.startswith("|  |")).split("|")
    col = header.index(" #params (M) ")
    params = {l.split("|")[1].strip(): float(l.split("|")[col]) for l in lines if l.startswith("| ResNet")}
    assert params["ResNet + extra blocks"] > params["ResNet"] > 0, params


def test_second_repro_reruns_nothing(repo):
    assert _planned_stages(repo) == set()


def test_changing_one_experiment_reruns_only_it(repo):
    "One experiment's parameter changes: `dvc repro` reruns its training, its evaluation and the tables, nothing else."
    import yaml
    params = repo / "params.yaml"
    data = yaml.safe_load(params.read_text())
    data["experiments"]["baseline_fcos"]["seed"] = 1
    params.write_text(yaml.safe_dump(data, sort_keys=False))   # same values elsewhere, so DVC sees one change
    ran = set(re.findall(r"Running stage '([^']+)'", _run(["dvc", "repro"], repo, timeout=900)))
    assert ran == {"configs", "train@baseline_fcos", "evaluate@baseline_fcos", "tables"}
    assert _planned_stages(repo) == set()


def _outcome(repo, name) -> dict:
    "Trained weights, every logged value (not the timestamps) and the metrics but the timing, of experiment `name`."
    import csv
    import torch
    state = torch.load(repo / "runs" / name / "model.pt", map_location="cpu", weights_only=True)["model"]
    logged = {}
    for tsv in sorted((repo / "logs" / name / "plots" / "metrics").rglob("*.tsv")):
        with open(tsv) as f:
            logged[tsv.stem] = [row[tsv.stem] for row in csv.DictReader(f, delimiter="\t")]
    metrics = json.loads((repo / "metrics" / f"{name}.json").read_text())
    metrics.pop("cost_infer_ms")
    return {"weights": state, "logged": logged, "metrics": metrics}


def test_plain_kernels_give_the_same_results(repo, tmp_path):
    "Kernels forked from the warm server compute what plain kernels compute (in a copy, so the pipeline stays as it ran)."
    import torch
    copy = tmp_path / "plain"
    shutil.copytree(repo, copy, symlinks=True)
    for name in ("uni_faster_rcnn", "baseline_mask_rcnn"):
        warm = _outcome(repo, name)
        for stage in (["train", name, "--no-check"], ["evaluate", name]):
            _run([sys.executable, "-m", "unified_vision.cli", *stage], copy, extra_env={"UV_WARM_KERNEL": "0"}, timeout=600)
        plain = _outcome(copy, name)
        assert warm["weights"].keys() == plain["weights"].keys()
        assert all(torch.equal(warm["weights"][k], plain["weights"][k]) for k in warm["weights"]), name
        assert warm["logged"] == plain["logged"] and warm["metrics"] == plain["metrics"], name
