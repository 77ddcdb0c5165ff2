"""Every framework trains for a few steps on `smoke` with falling loss, and its inference returns COCO-style detections."""
import copy

import pytest
import torch

from unified_vision.data.coco import collate
from unified_vision.engine.experiment import build_dataset
from unified_vision.engine.train import build_optimizer
from unified_vision.frameworks.build import build_model

BASELINES = ["baseline_faster_rcnn", "baseline_mask_rcnn", "baseline_cascade_rcnn", "baseline_retinanet", "baseline_fcos", "baseline_atss"]


@pytest.mark.parametrize("name", BASELINES)
def test_framework_loss_falls_on_smoke(smoke_cfg, name):
    cfg = smoke_cfg(name)
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    model = build_model(cfg, len(ds.class_names)).train()
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    batch = collate([ds[i] for i in range(4)], model.neck.size_divisible)
    losses = []
    for _ in range(20):
        out = model(batch.images, batch.image_sizes, batch.targets)
        assert all(k.startswith("loss") and v.dim() == 0 and torch.isfinite(v) for k, v in out.items())
        total = sum(out.values())
        opt.zero_grad(); total.backward(); opt.step()
        losses.append(total.item())
    assert sum(losses[-3:]) / 3 < 0.85 * sum(losses[:3]) / 3, losses

    model.eval()
    with torch.no_grad():
        dets = model(batch.images, batch.image_sizes)
    assert len(dets) == 4
    for d in dets:
        assert d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) <= 100
        if len(d["boxes"]):
            assert (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all() and d["labels"].max() < len(ds.class_names)
        if name == "baseline_mask_rcnn":
            assert d["masks"].shape[0] == len(d["boxes"])


def test_head_slot_is_shared(smoke_cfg):
    "The same dense head plugs into all three one-stage frameworks; the RoI head into the three two-stage ones."
    for fw in ("retinanet", "fcos", "atss"):
        cfg = smoke_cfg("baseline_retinanet", framework=fw, head="atss_head")
        assert type(build_model(cfg, 8).head).__name__ == "DenseHead"
    for fw in ("faster_rcnn", "cascade_rcnn", "mask_rcnn"):
        cfg = smoke_cfg("baseline_faster_rcnn", framework=fw, head="two_fc")
        assert all(type(s.head).__name__ == "TwoFCHead" for s in build_model(cfg, 8).stages)


def test_threshold_on_class_only_adds_lower_scored_detections(smoke_cfg):
    """UniHead in Faster R-CNN scores by class probability x predicted IoU. Thresholding the class probability admits
    candidates whose product is under the threshold, so they rank below every candidate the product threshold keeps:
    each image's detections under `score` are exactly the best-scored prefix of its detections under `class`."""
    cfg = smoke_cfg("uni_faster_rcnn")
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    model = build_model(cfg, len(ds.class_names)).train()
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    batch = collate([ds[i] for i in range(4)], model.neck.size_divisible)
    for _ in range(10):
        loss = sum(model(batch.images, batch.image_sizes, batch.targets).values())
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    model.test_cfg["score_thresh"] = 0.0
    with torch.no_grad():           # a threshold inside this model's range of scores: their median
        t = model.test_cfg["score_thresh"] = torch.cat([d["scores"] for d in model(batch.images, batch.image_sizes)]).median().item()
    found = {}
    for rule in ("class", "score"):
        model.test_cfg["threshold_on"] = rule
        with torch.no_grad():
            found[rule] = model(batch.images, batch.image_sizes)
    assert sum(len(d["scores"]) for d in found["class"]) > sum(len(d["scores"]) for d in found["score"]) > 0
    for by_class, by_score in zip(found["class"], found["score"]):
        n = len(by_score["scores"])
        assert (by_score["scores"] > t).all() and (by_class["scores"][n:] <= t).all()
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(by_class[key][:n], by_score[key]), key


@pytest.mark.parametrize("name", ["uni_mask_rcnn", "baseline_cascade_rcnn"])
def test_roi_align_backward_kernel_leaves_training_unchanged(smoke_cfg, roi_align_backward_calls, name):
    "Three training steps with torchvision's RoIAlign CPU backward and with ours end in the same weights, bit for bit."
    from unified_vision import ops
    cfg = smoke_cfg(name)
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    start = build_model(cfg, len(ds.class_names)).train()
    batch = collate([ds[i] for i in range(4)], start.neck.size_divisible)
    was, weights = ops.use_parallel_roi_align_backward(), []
    try:
        for ours in (False, True):
            ops.use_parallel_roi_align_backward(ours)
            model = copy.deepcopy(start)
            opt = build_optimizer(model, cfg["train"]["optimizer"])
            torch.manual_seed(1)
            for _ in range(3):
                loss = sum(model(batch.images, batch.image_sizes, batch.targets).values())
                opt.zero_grad(); loss.backward(); opt.step()
            weights.append(model.state_dict())
    finally:
        ops.use_parallel_roi_align_backward(was)
    moved = [k for k, v in start.state_dict().items() if v.is_floating_point() and not torch.equal(v, weights[0][k])]
    assert len(moved) > 10 and len(roi_align_backward_calls) >= 3   # the steps trained the model, through our kernel
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
