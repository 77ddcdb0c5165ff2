"""Configuration as data: experiment groups, presets, `base`, the pruned per-run configuration files, lazy registries."""
import json

import pytest

from unified_vision.cli import experiment_config, stage_configs
from unified_vision.core import ConfigError, Registry, experiment_groups, resolve_experiment


def test_every_group_resolves_on_every_profile(params):
    names = experiment_groups(params)
    assert "baseline_faster_rcnn" in names and "uni_faster_rcnn" in names and "t10_det_swin_l" not in names
    for profile in ("smoke", "mini", "coco"):
        for name in names:
            cfg = resolve_experiment(params, name, profile)
            assert cfg["experiment"] == name and cfg["model"]["backbone"]["name"]


def test_a_name_in_two_groups_is_refused():
    params = {"experiments": {"a": {}}, "x_experiments": {"a": {}}}
    with pytest.raises(ConfigError, match="two groups"):
        experiment_groups(params)


def test_base_and_backbone_preset(params):
    cfg = resolve_experiment(params, "cls_swin_t_extra", "mini")
    assert cfg["task"] == "classification" and cfg["framework"] == "classifier"        # from pretrain.experiment
    bb = cfg["model"]["backbone"]
    assert bb["name"].startswith("swin_tiny") and bb["kwargs"]["depths"] == [2, 2, 6, 4] and bb["pretrained"] is False
    assert "channels" not in bb["kwargs"]                                                # nothing left of the profile's ResNet


def test_unknown_preset_is_named(params):
    bad = {**params, "experiments": {**params["experiments"], "x": {"model": {"backbone": {"preset": "swin_xl"}}}}}
    with pytest.raises(ConfigError, match="swin_xl"):
        resolve_experiment(bad, "x", "mini")


def test_run_configuration_keeps_only_what_the_run_uses(params):
    cfg = experiment_config(params, "baseline_faster_rcnn", "mini")
    assert list(cfg["frameworks"]) == ["faster_rcnn"] and list(cfg["heads"]) == ["two_fc"]
    assert "backbones" not in cfg and "pretrain" not in cfg
    uni = experiment_config(params, "uni_mask_rcnn", "mini")
    assert list(uni["heads"]) == ["unihead"] and uni["heads"]["unihead"]["task"] == "detection"


def test_unrelated_edit_leaves_a_runs_configuration_unchanged(params, tmp_path):
    "Editing UniHead's defaults changes the UniHead runs' files and not the baselines' (so DVC reruns only those)."
    import copy
    stage_configs(params, "mini", out=tmp_path / "a")
    edited = copy.deepcopy(params)
    edited["defaults"]["heads"]["unihead"]["box_loss"] = "giou"
    stage_configs(edited, "mini", out=tmp_path / "b")
    same = lambda n: (tmp_path / "a" / f"{n}.json").read_text() == (tmp_path / "b" / f"{n}.json").read_text()
    assert same("baseline_faster_rcnn") and same("pretrain")
    assert not same("uni_faster_rcnn")
    assert json.loads((tmp_path / "b" / "uni_seg.json").read_text())["heads"]["unihead"]["num_points"] == 36


def test_registry_imports_a_module_named_after_an_unknown_entry(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "myhead.py").write_text("from test_config_registry import REG\n@REG.register('myhead')\ndef myhead(): return 42\n")
    reg = Registry("head", package="plugins_pkg")
    mod = tmp_path / "test_config_registry.py"
    mod.write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    import test_config_registry
    test_config_registry.REG = reg
    assert reg.build("myhead") == 42
    with pytest.raises(ConfigError, match="unknown head 'nohead'"):
        reg.get("nohead")


@pytest.mark.parametrize("profile", ["smoke", "mini"])
def test_every_backbone_preset_of_a_profile_runs(params, profile):
    "Each backbone a run of `profile` uses builds and gives non-empty features (a scaled-down preset can reach zero width)."
    import torch
    from unified_vision.models.backbones import TimmBackbone
    size = 64
    seen = set()
    for name in experiment_groups(params):
        bb = resolve_experiment(params, name, profile)["model"]["backbone"]
        key = (bb["name"], json.dumps(bb.get("kwargs", {}), sort_keys=True))
        if key in seen:
            continue
        seen.add(key)
        torch.manual_seed(0)
        net = TimmBackbone(bb["name"], (32,), False, **bb.get("kwargs", {})).eval()
        with torch.no_grad():
            feats = net(torch.rand(1, 3, size, size))
        assert feats[-1].numel() > 0 and torch.isfinite(feats[-1]).all(), (profile, name, bb["name"])
    assert len(seen) >= 5


def test_stage_command_line_starts_without_torch():
    "Every DVC stage runs `python -m unified_vision.cli`: importing it, and papermill through it, loads no torch and no slow optional checker."
    import subprocess, sys
    code = ("import sys, unified_vision.cli as c; c.import_papermill(); "
            "print(sorted(m for m in ('torch', 'timm', 'rfc3987_syntax') if sys.modules.get(m) is not None))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
