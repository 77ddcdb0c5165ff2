"""Tests of the procedural COCO / ImageNet generator (`unified_vision.data.synthetic`).

All on tiny configurations (64 px, a handful of images) so the file runs in a few seconds.
"""
import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO

from unified_vision.data import synthetic as syn

TINY = dict(image_size=64, num_train=6, num_val=4, cls_per_class_train=3, cls_per_class_val=2, cls_image_size=32)


def load_coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def components(mask: np.ndarray) -> int:
    "Number of 8-connected components of an [H, W] bool mask."
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count, stack = count + 1, [start]
        seen[start] = True
        while stack:
            y, x = stack.pop()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                        seen[q] = True
                        stack.append(q)
    return count


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    summary = syn.generate_dataset(out, TINY, seed=0, progress=False)
    return out, summary


def annotation_files(root: Path):
    return sorted((root / "coco" / "annotations").glob("*.json"))


def test_layout(dataset):
    out, summary = dataset
    names = [p.name for p in annotation_files(out)]
    assert names == ["instances_train2017.json", "instances_val2017.json",
                     "person_keypoints_train2017.json", "person_keypoints_val2017.json"]
    assert sorted(p.name for p in (out / "coco" / "train2017").iterdir())[0] == "000000000001.jpg"
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))
    assert not list(out.parent.glob(".data.*"))  # no temporary folder left


@pytest.mark.parametrize("split", ["train", "val"])
def test_images_load_with_declared_size(dataset, split):
    out, _ = dataset
    coco = load_coco(out / f"coco/annotations/instances_{split}2017.json")
    assert len(coco.imgs) == TINY[f"num_{split}"]
    for info in coco.imgs.values():
        with Image.open(out / f"coco/{split}2017" / info["file_name"]) as im:
            assert im.size == (info["width"], info["height"]) == (64, 64) and im.mode == "RGB"


def test_coco_fields(dataset):
    out, _ = dataset
    doc = json.loads((out / "coco/annotations/instances_train2017.json").read_text())
    assert set(doc) == {"info", "licenses", "images", "annotations", "categories"}
    assert doc["categories"][0] == {"id": 1, "name": "person", "supercategory": "person"}
    assert len(doc["categories"]) >= 7
    for a in doc["annotations"]:
        assert {"id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation"} <= set(a)
        assert "keypoints" not in a and all(isinstance(v, float) for v in a["bbox"])
    assert len({a["id"] for a in doc["annotations"]}) == len(doc["annotations"])


def check_masks(coco: COCO) -> None:
    "Every mask decodes at its image's size; area and tight bbox agree with it."
    for a in coco.dataset["annotations"]:
        info = coco.imgs[a["image_id"]]
        m = coco.annToMask(a).astype(bool)
        assert m.shape == (info["height"], info["width"])
        assert m.sum() == a["area"] >= syn.MIN_AREA
        ys, xs = np.nonzero(m)
        x, y, w, h = a["bbox"]
        assert w > 0 and h > 0
        assert np.allclose([x, y, x + w, y + h], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], atol=1)


def test_masks_decode_and_both_formats_occur(dataset):
    out, _ = dataset
    kinds = set()
    for split in ("train", "val"):
        coco = load_coco(out / f"coco/annotations/instances_{split}2017.json")
        check_masks(coco)
        kinds |= {type(a["segmentation"]).__name__ for a in coco.dataset["annotations"]}
    assert kinds == {"list", "dict"}


def test_crowd_regions(tmp_path):
    syn.generate_dataset(tmp_path / "d", dict(TINY, num_val=1, crowd_prob=1.0, cls_per_class_train=0,
                                              cls_per_class_val=0), seed=1, progress=False)
    coco = load_coco(tmp_path / "d/coco/annotations/instances_train2017.json")
    crowds = [a for a in coco.dataset["annotations"] if a["iscrowd"]]
    assert crowds
    for a in crowds:
        assert isinstance(a["segmentation"]["counts"], list) and a["segmentation"]["size"] == [64, 64]
    check_masks(coco)


def test_split_objects_have_two_parts(tmp_path):
    syn.generate_dataset(tmp_path / "d", dict(TINY, split_prob=1.0, crowd_prob=0.0, cls_per_class_train=0,
                                              cls_per_class_val=0), seed=2, progress=False)
    coco = load_coco(tmp_path / "d/coco/annotations/instances_train2017.json")
    parts = [components(coco.annToMask(a).astype(bool)) for a in coco.dataset["annotations"]]
    assert max(parts) >= 2 and sum(p == 2 for p in parts) >= 1


def test_keypoints(dataset):
    out, _ = dataset
    for split in ("train", "val"):
        doc = json.loads((out / f"coco/annotations/person_keypoints_{split}2017.json").read_text())
        (cat,) = doc["categories"]
        assert cat["name"] == "person" and len(cat["keypoints"]) == 17 and len(cat["skeleton"]) == 19
        assert all(1 <= i <= 17 for pair in cat["skeleton"] for i in pair)
        assert all(a["category_id"] == 1 for a in doc["annotations"])
        for a in doc["annotations"]:
            kp = np.reshape(a["keypoints"], (17, 3))
            assert set(kp[:, 2]) <= {0, 1, 2} and a["num_keypoints"] == (kp[:, 2] > 0).sum()
            assert (kp[kp[:, 2] == 0, :2] == 0).all()
            shown = kp[kp[:, 2] > 0, :2]
            assert ((shown >= 0) & (shown < 64)).all()
    train = json.loads((out / "coco/annotations/person_keypoints_train2017.json").read_text())
    assert any(a["num_keypoints"] > 0 for a in train["annotations"])


@pytest.mark.parametrize("seed", range(12))
def test_person_left_is_on_image_right(seed):
    "Facing the viewer: upright, the figure's left is at image right; rotations keep that handedness."
    kp = syn.person_layer(np.random.default_rng(seed), (50, 50), 80, (100, 100)).keypoints
    left_to_right = kp[syn.KEYPOINT_NAMES.index("left_hip")] - kp[syn.KEYPOINT_NAMES.index("right_hip")]
    up = kp[0] - (kp[11] + kp[12]) / 2  # nose minus mid-hip
    cross = left_to_right[0] * up[1] - left_to_right[1] * up[0]
    assert cross < 0  # (1, 0) x (0, -1) = -1 for an upright figure (y down)


def test_classification_folders(dataset):
    out, summary = dataset
    for split, n in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (out / "imagenet" / split).iterdir())
        assert folders == sorted(syn.CLASS_NAMES)
        for name in folders:
            files = sorted((out / "imagenet" / split / name).glob("*.jpg"))
            assert len(files) == n == summary["imagenet"][split][name]
            with Image.open(files[0]) as im:
                assert im.size == (32, 32)


def tree_bytes(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_deterministic(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    syn.generate_dataset(again, TINY, seed=0, progress=False)
    assert tree_bytes(out) == tree_bytes(again)
    other = tmp_path / "other"
    syn.generate_dataset(other, dict(TINY, cls_per_class_train=0, cls_per_class_val=0), seed=1, progress=False)
    a, b = tree_bytes(out), tree_bytes(other)
    assert a["coco/annotations/instances_train2017.json"] != b["coco/annotations/instances_train2017.json"]
    assert a["coco/train2017/000000000001.jpg"] != b["coco/train2017/000000000001.jpg"]


def test_image_independent_of_split_size():
    small, large = syn.resolve_cfg(dict(TINY)), syn.resolve_cfg(dict(TINY, num_train=50))
    assert np.array_equal(syn.make_coco_image(small, 0, 0, 3)[0], syn.make_coco_image(large, 0, 0, 3)[0])


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_paint = syn.paint

    def failing_paint(image, layer):
        calls["n"] += 1
        if calls["n"] > 200:
            raise RuntimeError("interrupted")
        real_paint(image, layer)

    monkeypatch.setattr(syn, "paint", failing_paint)
    with pytest.raises(RuntimeError, match="interrupted"):
        syn.generate_dataset(tmp_path / "data", TINY, seed=0, progress=False)
    assert calls["n"] > 200 and list(tmp_path.iterdir()) == []


def test_interrupted_run_keeps_previous_dataset(tmp_path, monkeypatch):
    cfg = dict(TINY, num_train=1, num_val=1, cls_per_class_train=0, cls_per_class_val=0)
    syn.generate_dataset(tmp_path / "data", cfg, seed=0, progress=False)
    before = tree_bytes(tmp_path / "data")
    (tmp_path / ".data.tmp").mkdir()  # a stale folder from a killed run
    monkeypatch.setattr(syn, "save_jpeg", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError):
        syn.generate_dataset(tmp_path / "data", cfg, seed=1, progress=False)
    assert tree_bytes(tmp_path / "data") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_unknown_cfg_key_is_refused(tmp_path):
    with pytest.raises(Exception, match="unknown keys"):
        syn.generate_dataset(tmp_path / "data", {"num_trian": 3}, progress=False)
    assert not (tmp_path / "data").exists()


def _hue_gap(rgb, hue) -> float:
    import colorsys
    h = colorsys.rgb_to_hsv(*rgb)[0]
    return min(abs(h - hue), 1 - abs(h - hue))


def test_class_appearance_sets_hue_and_pattern():
    "appearance=1: every shape wears its class's pattern in its class's hue; appearance=0: colours are random."
    rng = np.random.default_rng(0)
    for k, name in enumerate(syn.SHAPE_CLASSES):
        hue = k / len(syn.SHAPE_CLASSES)
        for _ in range(5):
            spec = syn.shape_layer(name, rng, (32, 32), 20, (64, 64), appearance=1.0).parts[0][1]
            assert spec["kind"] == syn.PREFERRED_TEXTURE[name]
            assert _hue_gap(spec["c1"], hue) < 0.12 and _hue_gap(spec["c2"], hue) < 0.12
    gaps = [_hue_gap(syn.shape_layer("disc", rng, (32, 32), 20, (64, 64), appearance=0.0).parts[0][1]["c1"], 0.0)
            for _ in range(40)]
    assert max(gaps) > 0.25                      # random colours reach far from the class hue
