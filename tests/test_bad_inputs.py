"""Bad input gets a clear error naming the file and the problem, and leaves no partial output."""
import json
import shutil

import pytest
import yaml

from unified_vision.cli import main
from unified_vision.core import ConfigError, DataError
from unified_vision.data.coco import CocoDataset, coco_paths


@pytest.fixture()
def coco_copy(smoke_data, tmp_path):
    shutil.copytree(smoke_data / "coco", tmp_path / "coco")
    return tmp_path / "coco"


def test_truncated_annotation_json(coco_copy):
    ann, img = coco_paths(coco_copy, "val")
    ann.write_text(ann.read_text()[: len(ann.read_text()) // 2])
    with pytest.raises(DataError, match="instances_val2017.json: corrupt or truncated JSON") as e:
        CocoDataset(ann, img)
    assert "fix:" in str(e.value)


def test_binary_garbage_annotation(coco_copy):
    ann, img = coco_paths(coco_copy, "val")
    ann.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(DataError, match="instances_val2017.json"):
        CocoDataset(ann, img)


def test_annotation_pointing_at_missing_image(coco_copy):
    ann, img = coco_paths(coco_copy, "val")
    first = json.loads(ann.read_text())["images"][0]["file_name"]
    (img / first).unlink()
    with pytest.raises(DataError, match=f"missing from .*first: {first}"):
        CocoDataset(ann, img)


def test_box_with_zero_width(coco_copy):
    ann, img = coco_paths(coco_copy, "val")
    data = json.loads(ann.read_text())
    data["annotations"][0]["bbox"][2] = 0
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation \d+ .* zero or negative size"):
        CocoDataset(ann, img)


def test_annotation_with_unknown_image_id(coco_copy):
    ann, img = coco_paths(coco_copy, "val")
    data = json.loads(ann.read_text())
    data["annotations"][0]["image_id"] = 987654321
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError, match="987654321, which is not in 'images'"):
        CocoDataset(ann, img)


@pytest.fixture()
def workdir(root, tmp_path, monkeypatch):
    "A scratch copy of params.yaml in an empty folder, as the pipeline's working directory."
    shutil.copy(root / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _edit_params(path, edit):
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params))


@pytest.mark.parametrize("key,value,message", [
    ("framework", "faster_rcnm", "(?s)unknown framework 'faster_rcnm'.*did you mean 'faster_rcnn'"),
    ("head", "uni_hed", "unknown head 'uni_hed'"),
])
def test_unknown_names_in_params(workdir, capsys, key, value, message):
    _edit_params(workdir / "params.yaml", lambda p: p["experiments"]["baseline_faster_rcnn"].update({key: value}))
    assert main(["--profile", "smoke", "train", "baseline_faster_rcnn"]) == 2
    assert capsys.readouterr().err.count("error:") == 1
    with pytest.raises(ConfigError, match=message):
        from unified_vision.cli import stage_train
        from unified_vision.core import load_yaml
        stage_train(load_yaml("params.yaml"), "baseline_faster_rcnn", "smoke")
    assert not (workdir / "runs").exists()


def test_configs_stage_checks_every_run(workdir, capsys):
    "The pipeline checks names once, in the `configs` stage, before anything trains; it writes no configs on an error."
    _edit_params(workdir / "params.yaml", lambda p: p["unihead_experiments"]["uni_fcos"].update(head="uni_hed"))
    assert main(["--profile", "smoke", "configs"]) == 2
    assert "unknown head 'uni_hed'" in capsys.readouterr().err
    assert not (workdir / "configs").exists()


def test_train_without_check_leaves_the_check_to_the_configs_stage(workdir, monkeypatch):
    "`train NAME --no-check` (what dvc.yaml runs) goes straight to the notebook; without the flag the names are checked."
    calls = []
    monkeypatch.setattr("unified_vision.cli.run_notebook", lambda *a: calls.append(a[0]))
    _edit_params(workdir / "params.yaml", lambda p: p["experiments"]["baseline_faster_rcnn"].update(head="uni_hed"))
    assert main(["--profile", "smoke", "train", "baseline_faster_rcnn"]) == 2 and not calls
    assert main(["--profile", "smoke", "train", "baseline_faster_rcnn", "--no-check"]) == 0 and len(calls) == 1


def test_unknown_backbone(workdir, capsys):
    _edit_params(workdir / "params.yaml", lambda p: p["profiles"]["smoke"]["model"]["backbone"].update(name="resnet19"))
    assert main(["--profile", "smoke", "train", "baseline_retinanet"]) == 2
    assert "unknown backbone 'resnet19'" in capsys.readouterr().err
    assert not (workdir / "runs").exists()


def test_malformed_experiment_entry(workdir, capsys):
    _edit_params(workdir / "params.yaml", lambda p: p["experiments"].update(baseline_fcos="fcos"))
    assert main(["--profile", "smoke", "train", "baseline_fcos"]) == 2
    assert "experiments.baseline_fcos must be a mapping" in capsys.readouterr().err


def test_invalid_yaml(workdir, capsys):
    (workdir / "params.yaml").write_text("profile: mini\nexperiments: [unclosed\n")
    assert main(["tables"]) == 2
    assert "params.yaml: is not valid YAML" in capsys.readouterr().err


def test_coco_profile_without_data(workdir, capsys):
    assert main(["--profile", "coco", "data"]) == 2
    err = capsys.readouterr().err
    assert "instances_train2017.json: not found" in err and "dvc add data" in err
    assert not (workdir / "generated").exists()
