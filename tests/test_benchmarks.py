"The head benchmark's helpers: both models of a pair get the same proposals; the paper-scale inputs keep boxes on their objects."
import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location("bench_heads", Path(__file__).parents[1] / "benchmarks" / "bench_heads.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_shared_weights_give_both_heads_the_same_proposals(smoke_cfg):
    from unified_vision.data.coco import collate
    from unified_vision.engine.experiment import build_dataset
    from unified_vision.frameworks.build import build_model
    base_cfg, uni_cfg = smoke_cfg("baseline_faster_rcnn"), smoke_cfg("uni_faster_rcnn")
    val = build_dataset(base_cfg, "val")
    torch.manual_seed(0); base = build_model(base_cfg, len(val.class_names)).eval()
    torch.manual_seed(1); uni = build_model(uni_cfg, len(val.class_names)).eval()
    batch = collate([val[0]], base.neck.size_divisible)

    def proposals(m):
        with torch.no_grad():
            feats = m.neck(batch.images)
            from torchvision.models.detection.image_list import ImageList
            return m.rpn(ImageList(batch.images, batch.image_sizes), feats)[0][0]

    assert not torch.equal(proposals(base), proposals(uni))           # different seeds: different RPNs
    head_before = {k: v.clone() for k, v in uni.state_dict().items() if k.startswith("stages.")}
    assert bench.share_non_head_weights(base, uni) > 0
    assert torch.equal(proposals(base), proposals(uni))
    head_after = {k: v for k, v in uni.state_dict().items() if k.startswith("stages.")}
    assert head_before and all(torch.equal(head_before[k], head_after[k]) for k in head_before)   # the head keeps its own


def test_resized_scales_image_boxes_masks_and_keypoints_together():
    img = torch.zeros(3, 16, 32)
    img[:, 4:8, 8:16] = 1.0                                          # a bright box at x 8-16, y 4-8
    masks = torch.zeros(1, 16, 32, dtype=torch.uint8)
    masks[0, 4:8, 8:16] = 1
    kpts = torch.tensor([[[8.0, 4.0, 2.0]]])
    s = bench.Sample(img, {"boxes": torch.tensor([[8.0, 4.0, 16.0, 8.0]]), "labels": torch.tensor([1]), "masks": masks,
                           "keypoints": kpts})
    r = bench.resized(s, (32, 96))                                   # y x2, x x3
    assert r.image.shape == (3, 32, 96)
    torch.testing.assert_close(r.target["boxes"], torch.tensor([[24.0, 8.0, 48.0, 16.0]]))
    assert r.target["masks"].dtype == torch.uint8 and r.target["masks"].sum() == 4 * 2 * 8 * 3
    ys, xs = torch.nonzero(r.target["masks"][0], as_tuple=True)
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (24, 48, 8, 16)
    torch.testing.assert_close(r.target["keypoints"], torch.tensor([[[24.0, 8.0, 2.0]]]))
    assert r.image[:, 10:14, 28:44].min() > 0.99 and r.image[:, 20:, :].max() < 0.01   # the box's pixels moved with it


@pytest.mark.parametrize("profile", ["mini", "coco"])
def test_report_text_states_the_setting_and_the_ratio(profile):
    r = {"bs": 2, "shared": 10, "train": (0.1, 0.15), "infer": (20.0, 22.0), "gflops": (200.0, 250.0), "head_gflops": (28.0, 78.0)}
    text = bench.coco_text([("Faster R-CNN", r)], 0.5, 3, 4) if profile == "coco" else bench.mini_text([("Faster R-CNN", r)], 0.5)
    assert "| Faster R-CNN | 0.100 | 0.150 | 1.50x | 20.0 | 22.0 | 1.10x | 200 | 250 | 1.25x | 28 | 78 |" in text
    assert ("800 x 1088" in text) == (profile == "coco")


def test_inference_gflops_counts_the_whole_model_and_its_head(smoke_cfg):
    "The FLOP count of one inference: the head's part is inside the total, and a wider 2-fc head costs more."
    from unified_vision.data.coco import collate
    from unified_vision.engine.experiment import build_dataset
    from unified_vision.frameworks.build import build_model
    cfg = smoke_cfg("baseline_faster_rcnn")
    val = build_dataset(cfg, "val")
    batch = collate([val[0]], 32)
    torch.manual_seed(0)
    total, head = bench.inference_gflops(build_model(cfg, len(val.class_names)), batch)
    assert 0 < head < total
    wide = {**cfg, "heads": {**cfg["heads"], "two_fc": {**cfg["heads"]["two_fc"], "fc_dim": 4 * cfg["heads"]["two_fc"]["fc_dim"]}}}
    torch.manual_seed(0)
    wide_total, wide_head = bench.inference_gflops(build_model(wide, len(val.class_names)), batch)
    assert wide_head > head and abs((wide_total - wide_head) - (total - head)) < 1e-3 * total


def test_inference_gflops_sees_attention_in_eval_mode():
    "An eval-mode `nn.MultiheadAttention` (fused kernel) counts its projections and attention products, as in training."
    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.MultiheadAttention(64, 4, batch_first=True)

        def forward(self, images, sizes):
            return self.head(images, images, images, need_weights=False)[0]

    batch = type("Batch", (), {"images": torch.randn(10, 17, 64), "image_sizes": None})()
    total, head = bench.inference_gflops(Tiny(), batch)
    projections = 2 * 10 * 17 * 64 * (3 * 64 + 64)            # q, k, v and output projections
    products = 2 * 2 * 10 * 17 * 17 * 64                       # q k^T and attention x v, over all heads
    assert abs(total * 1e9 - (projections + products)) < 1e-6 * total * 1e9 and head == total
    assert torch.backends.mha.get_fastpath_enabled()             # switched back on afterwards


def test_flop_reading_states_the_ratios_of_each_row():
    "The generated sentence under the table carries the head and model FLOP ratios and the time ratio of that row."
    r = {"gflops": (100.0, 120.0), "head_gflops": (10.0, 30.0), "infer": (50.0, 65.0)}
    text = bench.flop_reading([("Faster R-CNN", r)])
    assert "3.0x the baseline head's" in text and "(30 vs 10 GFLOPs" in text and text.startswith("- Faster R-CNN:")
    assert "whole model 1.20x" in text and "time ratio is 1.30x" in text


def _load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_roi_align_backward_bench_replays_the_calls_of_a_step(smoke_cfg):
    "The RoIAlign benchmark records a real step's backward calls, replays them through both kernels and compares."
    from unified_vision import ops
    if not ops.extension_available():
        pytest.skip("unified_vision._C is not built")
    from unified_vision.data.coco import collate
    from unified_vision.engine.experiment import build_dataset
    from unified_vision.frameworks.build import build_model
    rab = _load_bench("bench_roi_align_backward")
    cfg = smoke_cfg("baseline_mask_rcnn")
    train = build_dataset(cfg, "train")
    torch.manual_seed(0)
    model = build_model(cfg, len(train.class_names))
    was, ext = ops.use_parallel_roi_align_backward(), ops._C
    try:
        calls = rab.record_calls(model, collate([train[0], train[1]], model.neck.size_divisible))
        assert ops._C is ext                                                    # the recorder is gone again
        assert {tuple(c[0].shape[-2:]) for c in calls} == {(7, 7), (14, 14)}   # box and mask branches
        result = rab.replay(calls, reps=1)
    finally:
        ops.use_parallel_roi_align_backward(was)
    assert result["equal"] and result["calls"] == len(calls) and set(result["median"]) == {"torchvision", "ours"}
    text = rab.render({("smoke", "baseline_mask_rcnn"): result}, {}, type("A", (), {"iters": 1, "reps": 1, "coco": False})())
    assert "| smoke | baseline_mask_rcnn |" in text and "| yes |" in text


def test_op_counter_counts_kernels_and_host_syncs_but_not_views():
    "Views and allocations launch nothing; `nonzero` and `.item()` make the host wait: the counter tells them apart."
    tbo = _load_bench("bench_train_ops")
    x = torch.randn(4, 4)
    with tbo.OpCounter() as ops:
        y = x.view(16)                                           # a view
        z = (y + 1).unsqueeze(0)                                 # one kernel, one view
        z.nonzero()                                              # a kernel and a sync
        torch.empty(3)                                           # an allocation
        z.sum().item()                                           # two kernels, one a sync
    assert sum(ops.kernels.values()) == 4, ops.kernels
    assert dict(ops.syncs) == {"aten.nonzero.default": 1, "aten._local_scalar_dense.default": 1}


def test_count_step_counts_forward_backward_and_optimizer_apart():
    """A linear layer's step: 2*2*4*3 FLOPs forward, as many for its weight's gradient; the optimizer's ops counted apart,
    on its foreach path: as many for 8 parameter tensors as for 2."""
    from types import SimpleNamespace
    tbo = _load_bench("bench_train_ops")

    class Tiny(torch.nn.Module):
        def __init__(self, extra: int):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.extra = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(3)) for _ in range(extra)])

        def forward(self, images, image_sizes, targets):
            out = self.fc(images)
            for p in self.extra:
                out = out + p
            return {"loss": out.pow(2).sum()}

    def count(extra):
        model = Tiny(extra)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, foreach=True)
        return tbo.count_step(model, opt, SimpleNamespace(images=torch.randn(2, 4), image_sizes=None, targets=None))

    small, large = count(0), count(6)
    assert small["gflops"] * 1e9 == 2 * (2 * 2 * 4 * 3)
    assert (small["params"], large["params"]) == (2, 8) and small["syncs"] == 0
    assert small["ops"]["aten.addmm.default"] == 1 and large["kernels"] > small["kernels"]
    assert small["opt_kernels"] == large["opt_kernels"] > 0


def test_train_ops_fit_recovers_the_prices_and_reads_the_gpu_table(tmp_path):
    tbo = _load_bench("bench_train_ops")
    points = [(g, k, 2e-5 * g + 1e-5 * k) for g, k in [(2000, 1100), (2300, 1700), (400, 800), (1700, 3000)]]
    a, b, res = tbo.fit_launch_model(points)
    assert a == pytest.approx(2e-5) and b == pytest.approx(1e-5) and max(map(abs, res)) < 1e-9
    table = tmp_path / "heads_coco_cuda.md"
    table.write_text("| framework | baseline train s/iter | UniHead train s/iter | ratio |\n|---|---|---|---|\n"
                     "| Faster R-CNN | 0.062 | 0.083 | 1.32x | 46.7 |\n| ATSS | 0.070 | 0.607 | 8.65x | 22.0 |\n")
    assert tbo.measured_gpu_steps(table) == {"Faster R-CNN": (0.062, 0.083, 1.32), "ATSS": (0.070, 0.607, 8.65)}
    assert tbo.measured_gpu_steps(tmp_path / "absent.md") == {}
    base = {"gflops": 2000.0, "kernels": 1100, "syncs": 100, "params": 190, "opt_kernels": 9}
    uni = {**base, "gflops": 2300.0, "kernels": 1700, "params": 260, "added": {"aten.mm.default": 50}}
    atss = [dict(base, gflops=400.0, kernels=800), dict(uni, gflops=1700.0, kernels=3000)]
    text = tbo.render("coco", [("Faster R-CNN", [base, uni]), ("ATSS", atss)],
                      tbo.measured_gpu_steps(table))
    assert "| Faster R-CNN | 1.15x | 1.55x | 1.32x | mm.default +50 |" in text
    assert "Fit over the 4 GPU steps on record" in text and "- ATSS: measured" in text


def test_counting_dispatches_dropout_and_attention_as_on_cuda():
    """On the CPU a training-mode dropout is three ops and attention with dropout the unfused math path; counted as a CUDA
    run dispatches them, each is one fused op forward and one backward, and everything is restored afterwards."""
    import torch.nn.functional as F
    tbo = _load_bench("bench_train_ops")
    drop, mha = torch.nn.Dropout(0.1).train(), torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True).train()
    x = torch.randn(3, 5, 8, requires_grad=True)

    def counted(fn):
        with tbo.OpCounter() as ops:
            fn().sum().backward()
        return ops.kernels

    cpu_drop, cpu_attn = counted(lambda: drop(x)), counted(lambda: mha(x, x, x, need_weights=False)[0])
    with tbo.dispatch_as_on_cuda():
        cuda_drop, cuda_attn = counted(lambda: drop(x)), counted(lambda: mha(x, x, x, need_weights=False)[0])
    assert "aten.bernoulli_.float" in cpu_drop and "aten.bernoulli_.float" not in cuda_drop
    assert cuda_drop["aten.native_dropout.default"] == 1 and cuda_drop["aten.native_dropout_backward.default"] == 1
    assert cuda_drop.total() < cpu_drop.total()
    fused = "aten._scaled_dot_product_flash_attention_for_cpu.default"
    assert fused not in cpu_attn and cuda_attn[fused] == 1 and cuda_attn.total() < cpu_attn.total()
    assert (F.dropout.__name__, F.scaled_dot_product_attention.__name__) == ("dropout", "scaled_dot_product_attention")
