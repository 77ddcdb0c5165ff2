"The pipeline benchmark's `--stale` selection: which stages `dvc.lock` no longer vouches for."
import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("bench_pipeline", Path(__file__).parents[1] / "benchmarks" / "bench_pipeline.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

ORDER = ["data", "configs", "pretrain", "train@a", "evaluate@a", "train@b", "evaluate@b", "train_p@c", "evaluate_p@c",
         "train_p@d", "evaluate_p@d", "tables"]


def test_missing_checkpoints_alone_rerun_nothing():
    status = {"train@a": [{"changed outs": {"runs/a/model.pt": "not in cache"}}],
              "evaluate@a": [{"changed deps": {"runs/a/model.pt": "deleted"}}]}
    assert bench.stale_stages(status, ORDER, lambda n: False) == []


def test_code_or_command_changes_rerun_training_evaluation_and_tables():
    status = {"train@b": [{"changed deps": {"unified_vision/core.py": "modified"}}],
              "train_p@c": ["changed command"],
              "tables": [{"changed deps": {"metrics/b.json": "modified"}}]}
    assert bench.stale_stages(status, ORDER, lambda n: True) == [
        "train@b", "evaluate@b", "train_p@c", "evaluate_p@c", "tables"]


def test_stale_evaluation_retrains_only_when_its_checkpoint_is_missing_here():
    status = {"evaluate_p@d": [{"changed deps": {"unified_vision/engine/evaluate.py": "modified",
                                                 "runs/d/model.pt": "deleted"}}]}
    assert bench.stale_stages(status, ORDER, lambda n: True) == ["evaluate_p@d", "tables"]
    assert bench.stale_stages(status, ORDER, lambda n: False) == ["train_p@d", "evaluate_p@d", "tables"]


def test_changed_params_rerun_the_stage_that_reads_them():
    "An experiment added to params.yaml: `configs` (which reads that section) reruns before the new run's stages."
    status = {"configs": [{"changed deps": {"params.yaml": {"unihead_experiments": "modified"}}}],
              "train_p@d": [{"changed deps": {"configs/d.json": "deleted", "unified_vision/core.py": "modified"}}]}
    assert bench.stale_stages(status, ORDER, lambda n: True) == ["configs", "train_p@d", "evaluate_p@d", "tables"]
    untouched = {"configs": [{"changed deps": {"params.yaml": {}}}]}
    assert bench.stale_stages(untouched, ORDER, lambda n: True) == []


def test_one_repro_times_each_stage_from_its_start_to_the_next():
    "Stage times of one `dvc repro` come from its output: each stage lasts until the next one starts, the last until the end."
    lines = [(0.5, "Running stage 'data':\n"), (0.6, "> python -m unified_vision.cli data\n"),
             (3.0, "Updating lock file 'dvc.lock'\n"), (3.5, "Running stage 'train@a':\n"), (9.0, "some log line\n"),
             (10.0, "  Running stage 'evaluate@a':\n")]
    times = bench.stage_times_from_output(lines, end=14.0)
    assert list(times) == ["data", "train@a", "evaluate@a"]
    assert times == {"data": 3.0, "train@a": 6.5, "evaluate@a": 4.0}
    assert bench.stage_times_from_output([(1.0, "Stage 'data' didn't change, skipping\n")], end=2.0) == {}


def test_study_only_experiments_are_those_no_paper_table_shows():
    "The wall-time split: a run a paper table shows (even beside the study) counts as the paper's; a run in no table too."
    params = {"tables": {
        "unihead_table7": {"rows": [{"experiment": "uni"}, {"label": "paper only", "note": "no run"}]},
        "unihead_noise": {"rows": [{"experiments": ["uni", "uni_seed1"], "label": "seeds"}, {"experiment": "uni_adamw"}]},
        "baselines": {"rows": [{"experiment": "base_retina"}]}}}
    assert bench.study_only_experiments(params) == {"uni_seed1", "uni_adamw", "base_retina"}
    assert bench.study_only_experiments({}) == set()
