"""UniHead (paper 000): geometry, initialisation, point reading, every slot and task, and training on `smoke`."""
from collections import OrderedDict

import numpy as np
import pytest
import torch

from unified_vision.heads.points import (clockwise, contour_target, layout_box_edges, layout_contour, layout_scatter,
                                         mask_parts, mean_keypoint_layout, polygon_iou, resample_contour, signed_area)
from unified_vision.heads.unihead import UniHeadCore, UniHeadDense, UniHeadImage, UniHeadRoI, read_roi_points, task_layout
from unified_vision.ops import multilevel_point_sample, point_sample, point_sample_reference

SMALL = dict(dim=16, heads=2, mlp_dim=16, fc_dim=32, dropout=0.0)


def smooth_polygon(rng, n, radius=40.0, centre=(64.0, 64.0)):
    "A random smooth star-shaped outline through `n` vertices, counter-clockwise on screen."
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))[::-1]
    amp, phase = rng.uniform(0, 0.15, 4), rng.uniform(0, 2 * np.pi, 4)
    r = radius * (1 + sum(a * np.cos((f + 1) * ang + p) for f, (a, p) in enumerate(zip(amp, phase))))
    return np.stack([centre[0] + r * np.cos(ang), centre[1] + r * np.sin(ang)], 1)


# ---- contours -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n", [5, 20, 36, 90, 400])
def test_resampled_contour_keeps_the_polygon_and_runs_clockwise(seed, n):
    poly = smooth_polygon(np.random.default_rng(seed), n)
    assert signed_area(poly) < 0                                # generated counter-clockwise
    out = resample_contour(poly, 36)
    assert out.shape == (36, 2) and signed_area(out) > 0         # made clockwise
    assert polygon_iou(poly, out, 128, 128) > 0.95


def test_contour_target_starts_straight_above_the_centre():
    square = np.array([[10, 10], [10, 50], [50, 50], [50, 10]], float)   # counter-clockwise on screen
    t = contour_target(square, 36)
    assert signed_area(t) > 0
    np.testing.assert_allclose(t[0], [30, 10], atol=3)              # top edge, middle
    assert t[1][0] > t[0][0]                                         # then to the right: clockwise on screen


def test_mask_parts_splits_an_occluded_object():
    m = np.zeros((40, 40), np.uint8); m[5:15, 5:15] = 1; m[25:35, 20:38] = 1
    parts = sorted(mask_parts(m), key=lambda p: p[:, 0].min())
    assert len(parts) == 2
    assert parts[0][:, 0].min() == pytest.approx(5.5) and parts[1][:, 0].max() == pytest.approx(37.5)


def test_resampler_rejects_degenerate_polygons():
    with pytest.raises(ValueError, match="at least 3"):
        resample_contour(np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]]), 16)


# ---- initialisation (sec. 3.4) ---------------------------------------------------------------------------------------

def test_detection_layout_puts_a_quarter_of_the_points_on_each_edge():
    u = layout_box_edges(16)
    on_edge = np.isclose(np.abs(u), 0.5)
    assert on_edge.any(1).all()
    counts = [np.isclose(u[:, 0], -0.5).sum(), np.isclose(u[:, 1], -0.5).sum(), np.isclose(u[:, 0], 0.5).sum(), np.isclose(u[:, 1], 0.5).sum()]
    assert counts == [4, 4, 4, 4]


def test_segmentation_layout_is_clockwise_on_the_pseudo_box_from_the_reference_direction():
    u = layout_contour(36)
    assert np.allclose(np.abs(u).max(1), 0.5) and signed_area(u) > 0
    np.testing.assert_allclose(u[0], [0, -0.5], atol=0.02)
    right = layout_contour(36, reference=(1.0, 0.0))
    np.testing.assert_allclose(right[0], [0.5, 0], atol=0.02)


def test_classification_layout_is_scattered_inside_the_anchor_box():
    u = layout_scatter(16, seed=3)
    assert (np.abs(u) <= 0.5).all() and np.unique(u.round(6), axis=0).shape[0] == 16


def test_the_head_outputs_its_layout_before_training():
    anchors, scales = torch.tensor([[50.0, 40.0]]), torch.tensor([[20.0, 10.0]])
    for task, k in (("detection", 16), ("instance_segmentation", 36), ("classification", 16)):
        core = UniHeadCore(8, 8, task_layout(task, k), 3, **SMALL).eval()
        pts = core.disperse(torch.zeros(1, 8), anchors, scales)[0].detach()
        np.testing.assert_allclose(pts.numpy(), (anchors + scales * torch.tensor(task_layout(task, k), dtype=torch.float32)).numpy(), atol=1e-4)
    zero = UniHeadCore(8, 8, task_layout("detection", 16, init="zero"), 3, **SMALL)
    assert torch.allclose(zero.disperse(torch.zeros(1, 8), anchors, scales).detach(), anchors[:, None].expand(1, 16, 2), atol=1e-4)


def test_pose_layout_is_the_training_sets_mean(smoke_cfg):
    from unified_vision.engine.experiment import build_dataset
    cfg = smoke_cfg("baseline_faster_rcnn", task="keypoints")
    ds = build_dataset(cfg, "train")
    mean = mean_keypoint_layout(ds.coco)
    head = UniHeadRoI(8, 1, "keypoints", 17, **SMALL)
    head.prepare_from_dataset(ds)
    bias = head.core.offsets[-1].bias.detach().view(17, 2) * head.core.offset_scale
    np.testing.assert_allclose(bias.numpy(), mean, atol=1e-6)
    assert mean[0, 1] < mean[15, 1]          # the nose is above the ankles
    assert np.abs(mean).max() < 0.75


# ---- reading points ------------------------------------------------------------------------------------------------

def test_a_point_reads_the_same_value_through_the_kernel_and_the_reference():
    torch.manual_seed(0)
    feat = torch.randn(2, 5, 9, 11)
    pts = torch.rand(2, 3, 7, 2) * torch.tensor([11.0, 9.0])
    torch.testing.assert_close(point_sample(feat, pts), point_sample_reference(feat, pts))
    centre = torch.tensor([[[[3.5, 4.5]]]]).expand(2, 1, 1, 2)    # the centre of pixel (row 4, column 3)
    torch.testing.assert_close(point_sample(feat, centre)[:, 0, 0], feat[:, :, 4, 3])


def test_roi_points_are_read_from_the_proposals_fpn_level():
    feats = OrderedDict((f"p{l}", torch.full((1, 2, 256 // 2 ** l, 256 // 2 ** l), float(l))) for l in (2, 3, 4, 5))
    from torchvision.ops.poolers import LevelMapper
    small, large = torch.tensor([[10.0, 10.0, 40.0, 40.0]]), torch.tensor([[0.0, 0.0, 250.0, 250.0]])
    pts = torch.tensor([[[20.0, 20.0]], [[100.0, 100.0]]])
    out = read_roi_points(feats, ("p2", "p3", "p4", "p5"), LevelMapper(2, 5), [torch.cat([small, large])], pts)
    assert out[0, 0, 0] == 2.0 and out[1, 0, 0] == 4.0            # sqrt(area) 30 -> p2, 250 -> p4 (FPN eq. 1, canonical 224 at p4)


# ---- every slot and task: shapes and gradients -----------------------------------------------------------------------

@pytest.fixture()
def pyramid():
    torch.manual_seed(0)
    feats = OrderedDict((f"p{l}", torch.randn(2, 8, 64 // 2 ** l, 64 // 2 ** l, requires_grad=True)) for l in (2, 3, 4, 5))
    props = [torch.tensor([[4.0, 4.0, 30.0, 40.0], [10.0, 12.0, 60.0, 50.0]]), torch.tensor([[0.0, 0.0, 20.0, 20.0]])]
    return feats, props


@pytest.mark.parametrize("task,k,extra", [("detection", 16, {}), ("instance_segmentation", 36, {}), ("keypoints", 17, {}),
                                          ("detection", 16, {"tokens": "roi_grid"}),
                                          ("detection", 16, {"tokens": "deform_roi_pool", "attention": False})])
def test_roi_slot_shapes_and_gradients(pyramid, task, k, extra):
    feats, props = pyramid
    head = UniHeadRoI(8, 3, task, k, **SMALL, **extra)
    out = head(feats, props, [(64, 64)] * 2)
    kk = 49 if extra.get("tokens") == "roi_grid" else k
    assert out["cls_logits"].shape == (3, 4) and out["boxes"].shape == (3, 4) and out["refined"].shape == (3, kk, 2)
    assert (out["boxes"][:, 2:] >= out["boxes"][:, :2]).all()
    if task == "instance_segmentation":
        assert out["contours"].shape == (3, 36, 2)
    if task == "keypoints":
        assert out["keypoints"].shape == (3, 17, 3) and out["visibility"].shape == (3, 17)
    else:
        assert out["iou"].shape == (3,)
    (out["cls_logits"].square().sum() + out["refined"].sum() + out["boxes"].sum()).backward()
    assert feats["p2"].grad.abs().sum() > 0
    for name, p in head.named_parameters():
        if p.requires_grad and not name.startswith(("core.task", "core.refine")) and "task_pred" not in name:
            assert p.grad is not None, name


def test_roi_slot_losses_are_finite_and_reach_the_offsets(pyramid):
    feats, props = pyramid
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 30.0, 38.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[1.0, 0.0, 18.0, 22.0]]), "labels": torch.tensor([2])}]
    head = UniHeadRoI(8, 3, "detection", 16, **SMALL)
    out = head(feats, props, [(64, 64)] * 2)
    labels = [torch.tensor([1, 3]), torch.tensor([2])]
    matched = [torch.cat([targets[0]["boxes"], targets[0]["boxes"]]), targets[1]["boxes"]]
    losses = head.loss(out, props, labels, matched, [torch.tensor([0, 0]), torch.tensor([0])], targets)
    assert set(losses) == {"loss_cls", "loss_box", "loss_iou"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert head.core.offsets[0].weight.grad.abs().sum() > 0


def test_dense_slot_shapes_and_the_anchor_scale():
    from unified_vision.models.criteria import make_priors
    maps = [torch.randn(2, 8, 8, 8, requires_grad=True), torch.randn(2, 8, 4, 4, requires_grad=True)]
    priors = make_priors([(8, 8), (4, 4)], [8, 16], [[64], [128]])
    for scale, expect in (("anchor", priors.boxes), ("stride", None)):
        head = UniHeadDense(8, 3, 2, scale=scale, **SMALL)
        out = head(maps, priors)
        assert out["cls_logits"].shape == (2, 80, 3) and out["boxes"].shape == (2, 80, 4) and out["iou"].shape == (2, 80)
        if expect is not None:
            torch.testing.assert_close(out["boxes"][0], expect, atol=0.5, rtol=0)
        else:   # anchor-free: the initial box is one stride wide
            wh = out["boxes"][0, :, 2:] - out["boxes"][0, :, :2]
            torch.testing.assert_close(wh, priors.strides[:, None].expand(-1, 2), atol=0.5, rtol=0)
    out["cls_logits"].sum().backward()
    assert maps[1].grad.abs().sum() > 0


def test_image_slot_classifies_from_the_class_token():
    head = UniHeadImage(8, 5, **SMALL)
    x = torch.randn(3, 8, 2, 2, requires_grad=True)
    out = head(x)
    assert out["cls_logits"].shape == (3, 5) and "refined" not in out
    out["cls_logits"].sum().backward()
    assert x.grad.abs().sum() > 0


def test_unknown_options_are_named(smoke_cfg):
    from unified_vision.core import ConfigError
    from unified_vision.frameworks.build import build_model
    cfg = smoke_cfg("uni_faster_rcnn")
    cfg["heads"]["unihead"]["num_pionts"] = 8
    with pytest.raises(ConfigError, match="num_pionts"):
        build_model(cfg, 8)
    cfg = smoke_cfg("uni_faster_rcnn", task="keypoints")
    cfg["heads"]["unihead"]["tokens"] = "deform_roi_pool"      # 16 points are square: fine; 17 are not
    cfg["heads"]["unihead"]["num_points"] = 17
    with pytest.raises(ConfigError, match="square"):
        build_model(cfg, 1)


# ---- each task trains on smoke ---------------------------------------------------------------------------------------

TASKS = ["uni_faster_rcnn", "uni_seg", "uni_keypoints", "uni_cascade_rcnn", "uni_mask_rcnn", "uni_atss", "uni_fcos",
         "roi_tokens_mhsa", "deform_pool_no_mhsa", "hd_faster_rcnn", "cls_resnet_unihead", "cls_swin_t_unihead"]


@pytest.mark.parametrize("name", TASKS)
def test_each_unihead_experiment_trains_on_smoke(smoke_cfg, name):
    from unified_vision.data.coco import collate
    from unified_vision.engine.experiment import build_dataset
    from unified_vision.engine.train import build_optimizer
    from unified_vision.frameworks.build import build_model
    cfg = smoke_cfg(name)
    cfg["model"]["backbone"]["pretrained"] = False
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    model = build_model(cfg, len(ds.class_names)).train()
    for m in model.modules():
        if hasattr(m, "prepare_from_dataset"):
            m.prepare_from_dataset(ds)
    opt = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0})
    batch = collate([ds[i] for i in range(4)], getattr(getattr(model, "neck", None), "size_divisible", 32))
    losses = []
    for _ in range(30):
        out = model(batch.images, batch.image_sizes, batch.targets)
        assert all(torch.isfinite(v) for v in out.values()), out
        total = sum(out.values())
        opt.zero_grad(); total.backward(); opt.step()
        losses.append(total.item())
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses
    model.eval()
    with torch.no_grad():
        preds = model(batch.images, batch.image_sizes)
    assert len(preds) == 4
    if cfg["task"] == "keypoints":
        assert all(p["keypoints"].shape[1:] == (17, 3) for p in preds)
    if name == "uni_seg":
        assert all(p["contours"].shape[1:] == (36, 2) for p in preds)
