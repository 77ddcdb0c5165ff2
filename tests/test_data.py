"""Data layer round trip: generated COCO files load in pycocotools, masks decode, targets follow the images."""
import json

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from unified_vision.data.coco import CocoDataset, collate, coco_paths, load_coco
from unified_vision.data.transforms import build_transforms
from unified_vision.core import DataError


@pytest.mark.parametrize("task", ["detection", "instance_segmentation", "keypoints"])
def test_generated_files_load_in_pycocotools(smoke_data, task):
    ann, img = coco_paths(smoke_data / "coco", "val", task)
    coco = COCO(str(ann))                      # pycocotools' own loader, not ours
    assert coco.getImgIds() and coco.getAnnIds()
    for a in coco.loadAnns(coco.getAnnIds()):
        m = coco.annToMask(a)
        assert m.shape == (coco.imgs[a["image_id"]]["height"], coco.imgs[a["image_id"]]["width"])
        assert m.sum() > 0


def test_dataset_masks_match_boxes(smoke_data):
    ann, img = coco_paths(smoke_data / "coco", "train", "instance_segmentation")
    ds = CocoDataset(ann, img, "instance_segmentation", train=True)
    for i in range(len(ds)):
        t = ds[i].target
        assert len(t["boxes"]) == len(t["masks"]) == len(t["labels"]) > 0
        for box, mask in zip(t["boxes"], t["masks"]):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            assert abs(xs.min().item() - box[0].item()) <= 1 and abs(xs.max().item() + 1 - box[2].item()) <= 1


def test_keypoints_flip_and_resize_round_trip(smoke_data):
    ann, img = coco_paths(smoke_data / "coco", "train", "keypoints")
    ds = CocoDataset(ann, img, "keypoints", build_transforms({"min_size": 128, "max_size": 128, "flip": 1.0}, train=True), train=True)
    plain = CocoDataset(ann, img, "keypoints", train=True)
    s, p = ds[0], plain[0]
    assert s.image.shape[-1] == 2 * p.image.shape[-1]
    # the flipped image's left wrist is the original's right wrist, mirrored and scaled by 2
    vis = p.target["keypoints"][:, 10, 2] > 0
    if vis.any():
        w = p.image.shape[-1]
        assert torch.allclose(s.target["keypoints"][vis, 9, 0], 2 * (w - p.target["keypoints"][vis, 10, 0]))


def test_collate_pads_to_stride(smoke_data):
    ann, img = coco_paths(smoke_data / "coco", "val")
    ds = CocoDataset(ann, img)
    batch = collate([ds[0], ds[1]], size_divisible=32)
    assert batch.images.shape[-1] % 32 == 0 and batch.image_sizes[0] == tuple(ds[0].image.shape[-2:])
