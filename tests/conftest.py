"""Shared fixtures: the repository root, params.yaml, and a smoke-profile dataset generated once per session."""
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def params():
    from unified_vision.core import load_yaml
    return load_yaml(ROOT / "params.yaml")


@pytest.fixture(scope="session")
def smoke_data(tmp_path_factory, params) -> Path:
    "The smoke profile's generated dataset, in a temporary folder."
    from unified_vision.cli import profile_config
    from unified_vision.data.synthetic import generate_dataset
    _, cfg = profile_config(params, "smoke")
    out = tmp_path_factory.mktemp("data") / "smoke"
    generate_dataset(out, cfg["data"]["synthetic"], seed=cfg["data"]["seed"], progress=False)
    return out


@pytest.fixture()
def smoke_cfg(params, smoke_data):
    "Resolve a smoke-profile experiment with its data root pointed at the session's generated data."
    from unified_vision.core import resolve_experiment

    def make(name: str, **overrides):
        from unified_vision.core import deep_merge
        cfg = resolve_experiment(params, name, "smoke")
        cfg["data"]["root"] = str(smoke_data)
        cfg["model"]["backbone"]["pretrained"] = False      # the pretraining stage is tested with the pipeline
        return deep_merge(cfg, overrides)
    return make


@pytest.fixture()
def roi_align_backward_calls(monkeypatch) -> list:
    """Counts the calls of the parallel RoIAlign backward kernel: `ops._C` is replaced, for the test, by a stand-in that
    appends to the returned list on each `roi_align_backward` call and passes everything else through. Skips the test
    where the extension is not built."""
    from unified_vision import ops
    if not ops.extension_available():
        pytest.skip("unified_vision._C is not built")
    calls, ext = [], ops._C

    class Counting:
        def roi_align_backward(self, *args):
            calls.append(1)
            return ext.roi_align_backward(*args)

        def __getattr__(self, name):
            return getattr(ext, name)
    monkeypatch.setattr(ops, "_C", Counting())
    return calls


def pytest_sessionfinish(session, exitstatus):
    "Stop the warm kernel servers the pipeline tests started (they would exit by themselves once idle)."
    from unified_vision.engine.warm_kernel import stop_servers
    stop_servers()
