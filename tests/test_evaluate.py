"""COCOeval on ground truth used as predictions gives AP 1.0 for bbox, segm and keypoints; our result conversion agrees."""
import pytest
import torch

from unified_vision.data.coco import CocoDataset, coco_paths, load_coco
from unified_vision.engine.evaluate import coco_evaluate, ground_truth_as_results, to_coco_results


@pytest.mark.parametrize("task,iou_type", [("detection", "bbox"), ("instance_segmentation", "segm"), ("keypoints", "keypoints")])
def test_ground_truth_scores_one(smoke_data, task, iou_type):
    gt = load_coco(coco_paths(smoke_data / "coco", "val", task)[0])
    stats = coco_evaluate(gt, ground_truth_as_results(gt, iou_type), iou_type)
    assert stats["AP"] == pytest.approx(1.0)
    assert stats["APl"] is None       # no large object in the smoke images: undefined, not 0


def test_converted_targets_score_one(smoke_data):
    "Targets of our dataset, turned back into COCO results by our converter, also score AP 1.0 (bbox and segm)."
    ann, img = coco_paths(smoke_data / "coco", "val", "instance_segmentation")
    ds = CocoDataset(ann, img, "instance_segmentation")
    results = []
    for i in range(len(ds)):
        t = ds[i].target
        det = {"boxes": t["boxes"], "labels": t["labels"], "scores": torch.ones(len(t["labels"])), "masks": t["masks"][:, None].float()}
        results += to_coco_results(det, t["image_id"], ds.category_ids, (1.0, 1.0), t["orig_size"])
    for iou_type in ("bbox", "segm"):
        assert coco_evaluate(ds.coco, results, iou_type)["AP"] == pytest.approx(1.0, abs=1e-6)


def test_empty_results_score_zero(smoke_data):
    "No detections: 0 where ground truth exists, undefined (None) for a size range without any (no large object at smoke size)."
    gt = load_coco(coco_paths(smoke_data / "coco", "val")[0])
    stats = coco_evaluate(gt, [], "bbox")
    assert stats["AP"] == 0.0 and stats["APs"] == 0.0
    assert stats["APl"] is None and stats["ARl"] is None
