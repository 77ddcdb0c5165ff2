"""A training run killed mid-way (SIGKILL) and restarted ends with the same weights and metrics as an uninterrupted one."""
import json
import subprocess
import sys
import time

import torch

from unified_vision.engine.experiment import config_hash, run_evaluation, run_training

CHILD = """
import json, sys
from unified_vision.engine.experiment import run_training
run_training(json.loads(open(sys.argv[1]).read()), sys.argv[2], progress=False)
"""


def _kill_after_first_checkpoint(cfg, run_dir, tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    ckpt = run_dir / "checkpoints" / config_hash(cfg) / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(cfg_file), str(run_dir)])
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)                     # let it run on past the checkpoint: that work is lost by the kill
    assert proc.poll() is None, "training finished before it could be killed"
    proc.kill(); proc.wait()
    return ckpt


def test_resume_after_kill_equals_uninterrupted(smoke_cfg, tmp_path):
    cfg = smoke_cfg("baseline_retinanet", train={"schedule": {"epochs": 20, "steps": [12]}, "checkpoint_every": 3, "log_every": 1})
    straight = run_training(cfg, tmp_path / "straight", progress=False)

    ckpt = _kill_after_first_checkpoint(cfg, tmp_path / "killed", tmp_path)
    assert ckpt.exists() and not (tmp_path / "killed" / "model.pt").exists()
    resumed = run_training(cfg, tmp_path / "killed", progress=False)
    assert 0 < resumed.start_iteration < resumed.iteration == straight.iteration

    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    m_a = run_evaluation(cfg, tmp_path / "straight" / "model.pt", progress=False)
    m_b = run_evaluation(cfg, tmp_path / "killed" / "model.pt", progress=False)
    untimed = lambda m: {k: v for k, v in m.items() if not k.endswith("_ms")}  # wall-clock cost varies run to run
    assert untimed(m_a) == untimed(m_b) and "bbox_AP" in m_a


def test_changed_config_does_not_resume(smoke_cfg, tmp_path):
    cfg = smoke_cfg("baseline_fcos")
    run_training(cfg, tmp_path / "run", progress=False, stop_at=4)
    other = smoke_cfg("baseline_fcos", seed=1)
    t = run_training(other, tmp_path / "run", progress=False)
    assert t.start_iteration == 0
