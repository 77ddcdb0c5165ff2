"""Every framework trains for a few steps on `smoke` with falling loss, and its inference returns COCO-style detections."""
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
