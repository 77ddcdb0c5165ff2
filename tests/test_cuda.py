"""Tests that need a CUDA GPU. They skip on the CPU-only machines and CI, and run on a lent GPU machine through
`benchmarks/gpu_checks.sh`.

What they check:
* the extension was built with its CUDA kernels;
* the CUDA kernels agree with the CPU kernels at the sizes the heads use, forward and every gradient;
* the custom ops' registrations (schema, fake tensor, autograd) hold for CUDA tensors;
* each UniHead slot gives the same outputs on the GPU as on the CPU for the same inputs;
* each UniHead experiment trains on the GPU through the trainer's own step, with AMP, and its loss falls;
* the pipeline's `run_training` and `run_evaluation` put the model on the GPU, and a resumed run keeps AMP's loss scale.

`tests/test_ops.py` adds float16, bfloat16 and float64 on the GPU, against the float64 reference."""
import copy
import dataclasses
from collections import OrderedDict

import numpy as np
import pytest
import torch

from unified_vision import ops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def to_device(x, device):
    "Move tensors inside dicts, lists, tuples and dataclasses to `device`."
    if torch.is_tensor(x):
        return x.to(device)
    if isinstance(x, dict):
        return type(x)((k, to_device(v, device)) for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device) for v in x)
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: to_device(getattr(x, f.name), device) for f in dataclasses.fields(x)})
    return x


def assert_same_on_both(fn, inputs, diff, tol=1e-4, seed=0, grad_tol=None):
    "Forward and gradients of every input in `diff` of `fn` on the CPU against the same on the GPU."
    gen = torch.Generator().manual_seed(seed)
    results = {}
    for device in ("cpu", "cuda"):
        xs = [x.detach().to(device).requires_grad_(i in diff) if torch.is_tensor(x) and x.is_floating_point()
              else to_device(x, device) for i, x in enumerate(inputs)]
        out = fn(*xs)
        g = torch.randn(out.shape, generator=gen.manual_seed(seed)).to(device, out.dtype)
        grads = torch.autograd.grad(out, [xs[i] for i in diff], g)
        results[device] = [out, *grads]
    tols = [tol] + [grad_tol or tol] * len(diff)
    for name, a, b, t in zip(["output"] + [f"grad {i}" for i in diff], results["cuda"], results["cpu"], tols):
        torch.testing.assert_close(a.cpu(), b, rtol=t, atol=t, msg=lambda m: f"{name}: {m}")


def test_extension_has_its_cuda_kernels():
    assert ops.extension_available(), "unified_vision._C is not built"
    assert ops._C_HAS_CUDA, ("unified_vision._C was built without CUDA: rebuild with "
                             "CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 UV_FORCE_CUDA=1 python setup.py build_ext --inplace")


# ---- kernels: CUDA against CPU ------------------------------------------------------------------------------------

def _points(N, P, K, H, W, gen):
    "Points over the map and up to two pixels beyond every border."
    return torch.rand(N, P, K, 2, generator=gen) * torch.tensor([W + 4.0, H + 4.0]) - 2


@pytest.mark.parametrize("N,C,H,W,P,K", [(2, 64, 40, 56, 300, 16), (3, 17, 7, 9, 50, 36), (1, 256, 100, 152, 512, 16)])
def test_point_sample_cuda_matches_cpu(N, C, H, W, P, K):
    gen = torch.Generator().manual_seed(0)
    f, p = torch.randn(N, C, H, W, generator=gen), _points(N, P, K, H, W, gen)
    assert_same_on_both(ops.point_sample, [f, p], (0, 1))


def test_multilevel_point_sample_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(1)
    strides, (N, C, H, W, P, K) = (4, 8, 16, 32), (2, 32, 128, 160, 200, 16)
    feats = [torch.randn(N, C, H // s, W // s, generator=gen) for s in strides]
    p = torch.rand(N, P, K, 2, generator=gen) * torch.tensor([W, H], dtype=torch.float32)
    level = torch.randint(0, 4, (N, P), generator=gen)

    def fn(*a):
        return ops.multilevel_point_sample(list(a[:4]), a[4], a[5], strides)
    assert_same_on_both(fn, feats + [p, level], (0, 1, 2, 3, 4))


@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_deform_roi_pool_cuda_matches_cpu(sampling_ratio):
    gen = torch.Generator().manual_seed(2)
    N, C, H, W, R, k, scale = 2, 64, 50, 76, 300, 7, 1 / 8
    x = torch.randn(N, C, H, W, generator=gen)
    img = torch.tensor([W / scale, H / scale])
    xy1 = torch.rand(R, 2, generator=gen) * img * 1.1 - 0.05 * img     # some RoIs cross the border
    rois = torch.cat([torch.randint(0, N, (R, 1), generator=gen).float(), xy1,
                      xy1 + (0.01 + 0.4 * torch.rand(R, 2, generator=gen)) * img], 1)
    off = torch.randn(R, 2, k, k, generator=gen) * 0.3

    def fn(x, rois, off):
        return ops.deform_roi_pool(x, rois, off, k, scale, sampling_ratio, 0.1)
    assert_same_on_both(fn, [x, rois, off], (0, 2))


def test_ms_deform_attn_cuda_matches_cpu():
    gen = torch.Generator().manual_seed(3)
    shapes = torch.tensor([[32, 40], [16, 20], [8, 10], [4, 5]])
    sizes = shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    N, Lq, M, D, L, P = 2, 300, 8, 32, 4, 4
    value = torch.randn(N, int(sizes.sum()), M, D, generator=gen)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen) * 1.1 - 0.05
    attn = torch.rand(N, Lq, M, L, P, generator=gen).softmax(-1)
    # A location's gradient sums 2 x D products scaled by the level's width or height (up to 40 here), accumulated in
    # another order on the GPU: float32 rounding reaches a few 1e-4 of it (seen: 3.3e-4 on 1 of 153,600 elements).
    assert_same_on_both(ops.ms_deform_attn, [value, shapes, starts, loc, attn], (0, 3, 4), grad_tol=1e-3)


def test_opcheck_registrations_on_cuda():
    "Schema, fake-tensor, autograd registration and AOT dispatch checks of the custom ops, with CUDA tensors."
    gen = torch.Generator().manual_seed(4)
    f = torch.randn(2, 3, 9, 11, generator=gen).cuda().requires_grad_()
    p = (torch.rand(2, 4, 3, 2, generator=gen) * 8).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.unified_vision.point_sample.default, (f, p))
    x = torch.randn(2, 3, 9, 10, generator=gen).cuda().requires_grad_()
    rois = torch.tensor([[0, 1.0, 1.0, 6.0, 7.0], [1, 0.0, 2.0, 9.0, 8.0], [0, 3.0, 3.0, 5.0, 4.0]]).cuda()
    off = (torch.randn(3, 2, 2, 2, generator=gen) * 0.2).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.unified_vision.deform_roi_pool.default, (x, rois, off, 2, 2, 1.0, 2, 0.1))
    shapes = torch.tensor([[6, 5], [3, 3]]).cuda()
    starts = torch.tensor([0, 30]).cuda()
    value = torch.randn(1, 39, 2, 4, generator=gen).cuda().requires_grad_()
    loc = torch.rand(1, 3, 2, 2, 2, 2, generator=gen).cuda().requires_grad_()
    attn = torch.rand(1, 3, 2, 2, 2, generator=gen).softmax(-1).cuda().requires_grad_()
    torch.library.opcheck(torch.ops.unified_vision.ms_deform_attn.default, (value, shapes, starts, loc, attn))


# ---- UniHead on the GPU ---------------------------------------------------------------------------------------------

SLOTS = ["uni_faster_rcnn", "uni_seg", "uni_keypoints", "uni_atss", "uni_fcos", "deform_pool_no_mhsa", "cls_resnet_unihead"]


def _unihead_of(model):
    from unified_vision.heads.unihead import SLOT_CLASSES
    heads = [m for m in model.modules() if isinstance(m, tuple(SLOT_CLASSES.values()))]
    assert heads, f"no UniHead in {type(model).__name__}"
    return heads[0]


def _smoke_model_and_batch(smoke_cfg, name, n=2):
    from unified_vision.data.coco import collate
    from unified_vision.engine.experiment import build_dataset, initial_model
    cfg = smoke_cfg(name)
    ds = build_dataset(cfg, "train")
    torch.manual_seed(0)
    model = initial_model(cfg, ds)
    batch = collate([ds[i] for i in range(n)], getattr(getattr(model, "neck", None), "size_divisible", 32))
    return cfg, ds, model, batch


@pytest.mark.parametrize("name", SLOTS)
def test_unihead_gives_the_same_outputs_on_gpu_and_cpu(smoke_cfg, name):
    "The head slot's inputs are taken from a CPU run of the whole model; the head alone reruns them on the GPU."
    _, _, model, batch = _smoke_model_and_batch(smoke_cfg, name)
    head = _unihead_of(model)
    seen = []

    def keep_first_call(module, args, kwargs, out):      # returns None: the model's output stays as it is
        if not seen:
            seen.append((args, kwargs, out))
    hook = head.register_forward_hook(keep_first_call, with_kwargs=True)
    model.eval()
    with torch.no_grad():
        model(batch.images, batch.image_sizes)
    hook.remove()
    args, kwargs, cpu_out = seen[0]
    with torch.no_grad():
        gpu_out = copy.deepcopy(head).cuda().eval()(*to_device(args, "cuda"), **to_device(kwargs, "cuda"))
    assert set(gpu_out) == set(cpu_out)
    compared = 0
    for k, v in cpu_out.items():
        if torch.is_tensor(v) and v.is_floating_point():
            torch.testing.assert_close(gpu_out[k].cpu(), v, rtol=1e-3, atol=1e-3, msg=lambda m: f"{name} '{k}': {m}")
            compared += 1
    assert compared >= 2


@pytest.mark.parametrize("name", SLOTS + ["uni_mask_rcnn", "uni_cascade_rcnn"])
def test_unihead_trains_on_gpu_with_amp(smoke_cfg, tmp_path, name):
    "Thirty steps of the trainer's own step (autocast + gradient scaler) on one batch: finite, falling loss."
    from unified_vision.engine.train import Schedule, Trainer
    _, ds, model, batch = _smoke_model_and_batch(smoke_cfg, name, n=4)
    model = model.cuda().train()
    trainer = Trainer(model, ds, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.0},
                      Schedule(epochs=1, iters_per_epoch=30, steps=[], warmup_iters=0), batch_size=4,
                      run_dir=tmp_path, progress=False)
    assert trainer.amp and trainer.scaler.is_enabled()
    losses = [trainer._step(batch)["loss"] for _ in range(30)]
    assert np.all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < 0.9 * np.mean(losses[:3]), losses


# ---- the pipeline's own entry points on the GPU ---------------------------------------------------------------------

def test_run_training_and_evaluation_use_the_gpu(smoke_cfg, tmp_path):
    "`train.device: auto` puts the model on the GPU with AMP; the checkpoint keeps the loss scale and the GPU's RNG."
    from unified_vision.engine.experiment import initial_model, build_dataset, run_evaluation, run_training
    from unified_vision.engine.train import load_checkpoint
    cfg = smoke_cfg("uni_faster_rcnn")
    cfg["train"]["checkpoint_every"] = 2
    trainer = run_training(cfg, tmp_path / "run", stop_at=4, progress=False)
    assert next(trainer.model.parameters()).is_cuda and trainer.amp and trainer.iteration == 4
    state = load_checkpoint(trainer.checkpoint_path, initial_model(cfg, build_dataset(cfg, "train")))
    assert state["extra"]["scaler"]["scale"] > 0 and len(state["cuda_rng"]) == torch.cuda.device_count()
    resumed = run_training(cfg, tmp_path / "run", stop_at=6, progress=False)
    assert resumed.start_iteration == 4 and resumed.iteration == 6
    torch.save({"model": resumed.model.state_dict()}, tmp_path / "model.pt")
    metrics = run_evaluation(cfg, tmp_path / "model.pt", progress=False)
    assert 0 <= metrics["bbox_AP"] <= 1 and metrics["cost_infer_ms"] > 0, metrics
