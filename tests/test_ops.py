"""Tests of unified_vision.ops: the compiled kernels against the pure-PyTorch references (forward
and every gradient), gradcheck in float64, torchvision roi_align equivalence, the fallback path,
the torch.library registrations, and an nvcc compile-only check of the CUDA sources."""
import glob
import os
import shutil
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import torchvision

from unified_vision import ops

ROOT = Path(__file__).resolve().parents[1]
NVCC = "/usr/local/cuda/bin/nvcc"

needs_ext = pytest.mark.skipif(not ops.extension_available(), reason="unified_vision._C is not built")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CPU_DTYPES = [torch.float32, torch.float64]
DEVICE_DTYPES = [("cpu", d) for d in CPU_DTYPES] + [
    pytest.param("cuda", d, marks=needs_cuda) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]
# Tolerances of the kernel against a float64 reference, by dtype.
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def close(actual, expected, tol=1e-5):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=tol, atol=tol)


def grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g, allow_unused=True)


def check_against_reference(kernel_fn, ref_fn, inputs, diff, tol=1e-5, seed=0):
    "Forward and the gradient of every differentiable input (indices `diff`) of kernel vs reference."
    inputs = [x.detach().clone().requires_grad_(i in diff) if torch.is_tensor(x) else x for i, x in enumerate(inputs)]
    out = kernel_fn(*inputs)
    ref = ref_fn(*inputs)
    close(out, ref, tol)
    if out.numel() == 0:
        return
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype).to(out.device)
    diff_inputs = [inputs[i] for i in diff]
    for a, b in zip(grads(out, diff_inputs, g), grads(ref, diff_inputs, g)):
        close(a, b, tol)


# ---------------------------------------------------------------- input makers

def make_points(N, C, H, W, P, K, seed=0, dtype=torch.float32, device="cpu", borders=True):
    gen = torch.Generator().manual_seed(seed)
    f = torch.randn(N, C, H, W, generator=gen, dtype=dtype)
    # Points cover the map and two pixels beyond every border.
    p = torch.rand(N, P, K, 2, generator=gen, dtype=dtype) * torch.tensor([W + 4.0, H + 4.0], dtype=dtype) - 2
    if borders and P * K >= 8 and N > 0:
        edge = torch.tensor([[-0.5, 2.0], [0.0, 1.0], [0.5, 0.5], [W, H], [W + 0.5, 1.0], [1.0, H + 0.5],
                             [-1.5, -0.2], [W - 0.5, H - 0.5]], dtype=dtype)
        p.view(N, P * K, 2)[0, :8] = edge
    return f.to(device), p.to(device)


def make_rois(N, R, H, W, scale, seed=0, dtype=torch.float32, degenerate=True):
    "RoIs in image pixels (the map is H x W at `scale`), partly outside the image, some degenerate."
    gen = torch.Generator().manual_seed(seed)
    img_w, img_h = W / scale, H / scale
    xy1 = torch.rand(R, 2, generator=gen, dtype=dtype) * torch.tensor([img_w * 1.2, img_h * 1.2], dtype=dtype) - 0.1 * torch.tensor([img_w, img_h], dtype=dtype)
    wh = torch.rand(R, 2, generator=gen, dtype=dtype) * torch.tensor([img_w * 0.6, img_h * 0.6], dtype=dtype)
    b = torch.randint(0, max(N, 1), (R, 1), generator=gen).to(dtype)
    rois = torch.cat([b, xy1, xy1 + wh], 1)
    if degenerate and R >= 3:
        rois[0, 3] = rois[0, 1]                # zero width
        rois[1, 4] = rois[1, 2]                # zero height
        rois[2, 3:5] = rois[2, 1:3]            # a point
    return rois


def make_msda(N, Lq, M, D, P, shapes, seed=0, dtype=torch.float32, device="cpu", spread=0.2):
    gen = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(shapes, dtype=torch.long)
    L = shapes.shape[0]
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S = int(sizes.sum())
    value = torch.randn(N, S, M, D, generator=gen, dtype=dtype)
    # Locations cover [0, 1] and `spread` beyond every border.
    loc = torch.rand(N, Lq, M, L, P, 2, generator=gen, dtype=dtype) * (1 + 2 * spread) - spread
    attn = torch.rand(N, Lq, M, L, P, generator=gen, dtype=dtype)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


# ---------------------------------------------------------------- point_sample

@needs_ext
@pytest.mark.parametrize("C", [1, 30, 71, 1025])
def test_point_sample_matches_reference(C):
    small = C > 100
    f, p = make_points(1 if small else 2, C, 5 if small else 9, 6 if small else 13, 2 if small else 5, 4 if small else 8, seed=C)
    check_against_reference(ops.point_sample, ops.point_sample_reference, [f, p], diff=(0, 1))


@needs_ext
@pytest.mark.parametrize("N,P,K,H,W", [(2, 0, 4, 5, 5), (2, 3, 0, 5, 5), (0, 3, 4, 5, 5), (2, 3, 4, 0, 5), (1, 1, 1, 1, 1)])
def test_point_sample_empty_and_tiny(N, P, K, H, W):
    f, p = make_points(N, 3, H, W, P, K, borders=False)
    check_against_reference(ops.point_sample, ops.point_sample_reference, [f, p], diff=(0, 1))
    assert ops.point_sample(f, p).shape == (N, P, K, 3)


@needs_ext
def test_point_sample_non_contiguous_inputs():
    f, p = make_points(2, 6, 8, 10, 3, 4)
    f_nc = f.transpose(2, 3).contiguous().transpose(2, 3)     # same values, channels-last-ish strides
    p_nc = torch.stack([p[..., 0], p[..., 1]], 0).permute(1, 2, 3, 0)
    check_against_reference(ops.point_sample, ops.point_sample_reference, [f_nc, p_nc], diff=(0, 1))


@needs_ext
@pytest.mark.parametrize("H,W,P,K", [(40, 37, 2, 5), (6, 7, 4, 8)])  # sparse (NCHW path) and dense (NHWC path)
@pytest.mark.parametrize("channels_last", [False, True])
def test_point_sample_layouts(H, W, P, K, channels_last):
    f, p = make_points(2, 19, H, W, P, K)
    if channels_last:
        f = f.contiguous(memory_format=torch.channels_last)
    check_against_reference(ops.point_sample, ops.point_sample_reference, [f, p], diff=(0, 1))


@needs_ext
def test_deform_roi_pool_channels_last_input():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 12, 14, generator=gen).contiguous(memory_format=torch.channels_last)
    rois = make_rois(2, 6, 12, 14, 0.5)
    off = torch.randn(6, 2, 3, 3, generator=gen)
    check_against_reference(lambda *a: ops.deform_roi_pool(*a, 3, 0.5),
                            lambda *a: ops.deform_roi_pool_reference(*a, 3, 0.5), [x, rois, off], diff=(0, 2))


def test_point_sample_matches_grid_sample():
    f, p = make_points(2, 4, 7, 9, 3, 5, dtype=torch.float64)
    grid = p / torch.tensor([9.0, 7.0], dtype=torch.float64) * 2 - 1
    expected = torch.nn.functional.grid_sample(f, grid, align_corners=False).permute(0, 2, 3, 1)
    close(ops.point_sample_reference(f, p), expected, 1e-12)
    close(ops.point_sample(f, p), expected, 1e-12)


@needs_ext
def test_multilevel_point_sample_matches_reference():
    gen = torch.Generator().manual_seed(0)
    strides = (4, 8, 16, 32)
    feats = [torch.randn(2, 6, 128 // s, 96 // s, generator=gen) for s in strides]
    pts = torch.rand(2, 7, 5, 2, generator=gen) * torch.tensor([110.0, 140.0]) - 5
    level = torch.randint(0, 4, (2, 7), generator=gen)
    level[0, 0] = 7  # out of range: reads zeros
    inputs = feats + [pts, level]

    def kernel(*a):
        return ops.multilevel_point_sample(list(a[:4]), a[4], a[5], strides)

    def reference(*a):
        return ops.multilevel_point_sample(list(a[:4]), a[4], a[5], strides, sampler=ops.point_sample_reference)

    check_against_reference(kernel, reference, inputs, diff=(0, 1, 2, 3, 4))
    out = kernel(*inputs)
    assert out.shape == (2, 7, 5, 6) and out[0, 0].abs().sum() == 0
    n, p = 1, 2
    lvl = int(level[n, p])
    close(out[n, p], ops.point_sample_reference(feats[lvl][n:n + 1], pts[n:n + 1, p:p + 1] / strides[lvl])[0, 0])


# ---------------------------------------------------------------- deform_roi_pool

@needs_ext
@pytest.mark.parametrize("C", [1, 30, 71, 1025])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
def test_deform_roi_pool_matches_reference(C, sampling_ratio):
    small = C > 100
    N, H, W, R, k = (1, 6, 7, 3, 2) if small else (2, 15, 19, 9, 7)
    gen = torch.Generator().manual_seed(C)
    x = torch.randn(N, C, H, W, generator=gen)
    rois = make_rois(N, R, H, W, 0.25, seed=C)
    off = torch.randn(R, 2, k, k, generator=gen) * 0.7
    check_against_reference(
        lambda *a: ops.deform_roi_pool(*a, k, 0.25, sampling_ratio),
        lambda *a: ops.deform_roi_pool_reference(*a, k, 0.25, sampling_ratio), [x, rois, off], diff=(0, 2))


@needs_ext
@pytest.mark.parametrize("R,N,C", [(0, 2, 4), (3, 2, 0), (3, 0, 4)])
def test_deform_roi_pool_empty(R, N, C):
    x = torch.randn(N, C, 8, 8)
    rois = make_rois(max(N, 1), R, 8, 8, 1.0, degenerate=False)
    off = torch.randn(R, 2, 3, 3)
    if N == 0:  # every batch index is out of range: zeros
        out = ops.deform_roi_pool(x, rois, off, 3)
        assert out.shape == (R, C, 3, 3) and out.abs().sum() == 0
        return
    check_against_reference(lambda *a: ops.deform_roi_pool(*a, 3), lambda *a: ops.deform_roi_pool_reference(*a, 3),
                            [x, rois, off], diff=(0, 2))


@needs_ext
def test_deform_roi_pool_rectangular_output_and_bad_batch_index():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 5, 12, 14, generator=gen)
    rois = make_rois(2, 5, 12, 14, 0.5)
    rois[3, 0] = 5  # out of range: pools zeros
    off = torch.randn(5, 2, 3, 4, generator=gen)
    check_against_reference(lambda *a: ops.deform_roi_pool(*a, (3, 4), 0.5, 3, 0.2),
                            lambda *a: ops.deform_roi_pool_reference(*a, (3, 4), 0.5, 3, 0.2), [x, rois, off], diff=(0, 2))
    assert ops.deform_roi_pool(x, rois, off, (3, 4), 0.5)[3].abs().sum() == 0


@pytest.mark.parametrize("use_kernel", [pytest.param(True, marks=needs_ext), False])
@pytest.mark.parametrize("sampling_ratio", [-1, 0, 2])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_deform_roi_pool_zero_offsets_is_roi_align(use_kernel, sampling_ratio, dtype):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 16, 20, 28, generator=gen, dtype=dtype, requires_grad=True)
    rois = make_rois(2, 12, 20, 28, 0.25, dtype=dtype)
    fn = ops.deform_roi_pool if use_kernel else ops.deform_roi_pool_reference
    out = fn(x, rois, torch.zeros(12, 2, 7, 7, dtype=dtype), 7, 0.25, sampling_ratio)
    expected = torchvision.ops.roi_align(x, rois, 7, 0.25, sampling_ratio, aligned=True)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    g = torch.randn_like(out)
    # Gradients are scatters summed in a different order: allow float32 rounding of the sums.
    torch.testing.assert_close(grads(out, [x], g)[0], grads(expected, [x], g)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- ms_deform_attn

MSDA_SHAPES = [(6, 8), (3, 4), (2, 2), (1, 1)]


@needs_ext
@pytest.mark.parametrize("D", [1, 30, 71, 1025])
def test_ms_deform_attn_matches_reference(D):
    small = D > 100
    inputs = make_msda(1 if small else 2, 3 if small else 11, 2 if small else 3, D, 2 if small else 4,
                       MSDA_SHAPES[:2] if small else MSDA_SHAPES, seed=D)
    check_against_reference(ops.ms_deform_attn, ops.ms_deform_attn_reference, inputs, diff=(0, 3, 4))


@needs_ext
@pytest.mark.parametrize("N,Lq,M,P", [(2, 0, 2, 2), (0, 3, 2, 2), (2, 3, 2, 0), (1, 1, 1, 1)])
def test_ms_deform_attn_empty_and_tiny(N, Lq, M, P):
    inputs = make_msda(N, Lq, M, 4, P, MSDA_SHAPES)
    check_against_reference(ops.ms_deform_attn, ops.ms_deform_attn_reference, inputs, diff=(0, 3, 4))
    assert ops.ms_deform_attn(*inputs).shape == (N, Lq, M * 4)


def test_ms_deform_attn_reference_matches_grid_sample_formulation():
    value, shapes, starts, loc, attn = make_msda(2, 5, 3, 4, 3, MSDA_SHAPES[:3], dtype=torch.float64)
    N, S, M, D = value.shape
    out = 0
    for l, (h, w) in enumerate(shapes.tolist()):
        v = value[:, starts[l]:starts[l] + h * w].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        grid = (2 * loc[:, :, :, l] - 1).transpose(1, 2).reshape(N * M, 5, 3, 2)
        s = torch.nn.functional.grid_sample(v, grid, align_corners=False)
        out = out + (s * attn[:, :, :, l].transpose(1, 2).reshape(N * M, 1, 5, 3)).sum(-1)
    expected = out.view(N, M * D, 5).transpose(1, 2)
    close(ops.ms_deform_attn_reference(value, shapes, starts, loc, attn), expected, 1e-12)


@needs_ext
def test_ms_deform_attn_rejects_inconsistent_levels():
    value, shapes, starts, loc, attn = make_msda(1, 2, 1, 4, 2, MSDA_SHAPES[:2])
    with pytest.raises(RuntimeError, match="does not fit"):
        ops.ms_deform_attn(value[:, :10], shapes, starts, loc, attn)


def test_msdeformattn_module():
    torch.manual_seed(0)
    layer = ops.MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=3)
    _, shapes, starts, _, _ = make_msda(1, 1, 1, 1, 1, MSDA_SHAPES[:2])
    src = torch.randn(2, 60, 16)
    y = layer(torch.randn(2, 4, 16), torch.rand(2, 4, 2, 2), src, shapes, starts)
    y.sum().backward()
    assert y.shape == (2, 4, 16) and layer.sampling_offsets.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- gradcheck (float64)

def off_lattice(n, lo, hi, gen):
    "Index-space coordinates in [lo, hi) at least 0.1 away from every integer."
    whole = torch.randint(lo, hi, (n,), generator=gen).double()
    return whole + 0.1 + 0.8 * torch.rand(n, generator=gen, dtype=torch.float64)


@needs_ext
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_point_sample(seed):
    gen = torch.Generator().manual_seed(seed)
    N, C, H, W, P, K = 2, 3, 5, 6, 2, 3
    f = torch.randn(N, C, H, W, generator=gen, dtype=torch.float64, requires_grad=True)
    x = off_lattice(N * P * K, -1, W, gen) + 0.5   # pixel units: index + 0.5
    y = off_lattice(N * P * K, -1, H, gen) + 0.5
    p = torch.stack([x, y], -1).view(N, P, K, 2).requires_grad_()
    assert torch.autograd.gradcheck(ops.point_sample, (f, p))


@needs_ext
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_deform_roi_pool(seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 9, 10, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = make_rois(2, 4, 9, 10, 0.5, seed=seed, dtype=torch.float64, degenerate=False)
    off = (torch.randn(4, 2, 2, 2, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    for sr in (-1, 2):
        assert torch.autograd.gradcheck(lambda a, o: ops.deform_roi_pool(a, rois, o, 2, 0.5, sr, 0.1), (x, off))


@needs_ext
@pytest.mark.parametrize("seed", [0, 1])
def test_gradcheck_ms_deform_attn(seed):
    gen = torch.Generator().manual_seed(seed)
    value, shapes, starts, _, attn = make_msda(1, 3, 2, 3, 2, MSDA_SHAPES[:3], seed=seed, dtype=torch.float64)
    N, Lq, M, L, P = attn.shape
    locs = []
    for l, (h, w) in enumerate(shapes.tolist()):  # index space off the lattice, then normalised
        n = N * Lq * M * P
        locs.append(torch.stack([(off_lattice(n, -1, w, gen) + 0.5) / w, (off_lattice(n, -1, h, gen) + 0.5) / h], -1)
                    .view(N, Lq, M, 1, P, 2))
    loc = torch.cat(locs, 3)
    args = (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn.requires_grad_())
    assert torch.autograd.gradcheck(ops.ms_deform_attn, args)


# ---------------------------------------------------------------- dtype / device

@needs_ext
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_point_sample_device_dtype(device, dtype):
    f, p = make_points(2, 7, 9, 11, 3, 5, dtype=torch.float64)
    fd, pd = f.to(device, dtype).requires_grad_(), p.to(device, dtype).requires_grad_()
    out = ops.point_sample(fd, pd)
    assert out.dtype == dtype and out.device.type == device
    # The reference reads the same (rounded) numbers, in float64.
    f64, p64 = (t.detach().cpu().double().requires_grad_() for t in (fd, pd))
    ref = ops.point_sample_reference(f64, p64)
    close(out.cpu(), ref, TOL[dtype])
    g = torch.randn_like(ref)
    gf, gp = grads(out, [fd, pd], g.to(device, dtype))
    rf, rp = grads(ref, [f64, p64], g)
    close(gf.cpu(), rf, TOL[dtype])
    close(gp.cpu(), rp, 10 * TOL[dtype])  # a sum over channels of differences


@needs_ext
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_deform_roi_pool_device_dtype(device, dtype):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 12, 15, generator=gen, dtype=torch.float64)
    rois = make_rois(2, 5, 12, 15, 0.5, dtype=torch.float64, degenerate=False)
    off = torch.randn(5, 2, 3, 3, generator=gen, dtype=torch.float64) * 0.5
    xd, od = x.to(device, dtype).requires_grad_(), off.to(device, dtype).requires_grad_()
    # Low-precision RoIs move the samples, so the reference gets the same rounded numbers.
    rd = rois.to(device, dtype)
    out = ops.deform_roi_pool(xd, rd, od, 3, 0.5, 2)
    assert out.dtype == dtype and out.device.type == device
    x64, o64 = xd.detach().cpu().double().requires_grad_(), od.detach().cpu().double().requires_grad_()
    ref = ops.deform_roi_pool_reference(x64, rd.cpu().double(), o64, 3, 0.5, 2)
    close(out.cpu(), ref, TOL[dtype])
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, [xd, od], g.to(device, dtype)), grads(ref, [x64, o64], g)):
        close(a.cpu(), b, 10 * TOL[dtype])


@needs_ext
@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_ms_deform_attn_device_dtype(device, dtype):
    value, shapes, starts, loc, attn = make_msda(2, 7, 2, 8, 3, MSDA_SHAPES, dtype=torch.float64)
    vd, ld, ad = (t.to(device, dtype).requires_grad_() for t in (value, loc, attn))
    out = ops.ms_deform_attn(vd, shapes.to(device), starts.to(device), ld, ad)
    assert out.dtype == dtype and out.device.type == device
    v64, l64, a64 = (t.detach().cpu().double().requires_grad_() for t in (vd, ld, ad))
    ref = ops.ms_deform_attn_reference(v64, shapes, starts, l64, a64)
    close(out.cpu(), ref, TOL[dtype])
    g = torch.randn_like(ref)
    for a, b in zip(grads(out, [vd, ld, ad], g.to(device, dtype)), grads(ref, [v64, l64, a64], g)):
        close(a.cpu(), b, 10 * TOL[dtype])


def test_cpu_half_uses_reference_without_warning():
    f, p = make_points(1, 3, 5, 5, 2, 2, dtype=torch.bfloat16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = ops.point_sample(f, p)
    assert out.dtype == torch.bfloat16


# ---------------------------------------------------------------- RoIAlign backward on the CPU

@pytest.fixture()
def roi_align_kernels():
    "Switch between torchvision's RoIAlign CPU backward and ours; restores the switch and the thread count."
    was, threads = ops.use_parallel_roi_align_backward(), torch.get_num_threads()
    yield ops.use_parallel_roi_align_backward
    ops.use_parallel_roi_align_backward(was)
    torch.set_num_threads(threads)


def _roi_align_input_grad(x, rois, g, scale, sampling_ratio, aligned):
    x = x.detach().requires_grad_()
    out = torchvision.ops.roi_align(x, rois, tuple(g.shape[-2:]), scale, sampling_ratio, aligned)
    return torch.autograd.grad(out, x, g)[0]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_backward_is_torchvisions_bit_for_bit(roi_align_kernels, roi_align_backward_calls, dtype, aligned,
                                                        sampling_ratio):
    "Inside, across and outside the map, degenerate RoIs, a non-contiguous gradient, 1 and 3 threads: torch.equal."
    x = torch.randn(3, 21, 13, 17, generator=torch.Generator().manual_seed(1)).to(dtype)
    rois = make_rois(3, 40, 13, 17, 0.25, seed=2).to(dtype)
    g = torch.randn(40, 5, 6, 21, generator=torch.Generator().manual_seed(3)).to(dtype).permute(0, 3, 1, 2)
    for threads in (1, 3):
        torch.set_num_threads(threads)
        roi_align_kernels(False)
        theirs = _roi_align_input_grad(x, rois, g, 0.25, sampling_ratio, aligned)
        roi_align_kernels(True)
        ours = _roi_align_input_grad(x, rois, g, 0.25, sampling_ratio, aligned)
        assert theirs.abs().sum() > 0 and torch.equal(ours, theirs)
    assert len(roi_align_backward_calls) == 2


@needs_ext
def test_roi_align_backward_edge_cases(roi_align_kernels):
    roi_align_kernels(True)
    x = torch.randn(2, 3, 8, 9)
    for rois in (torch.zeros(0, 5), torch.tensor([[1.0, 100.0, 100.0, 120.0, 130.0]])):   # none; wholly outside
        g = torch.randn(len(rois), 3, 7, 7)
        grad = _roi_align_input_grad(x, rois, g, 1.0, 0, True)
        assert grad.shape == x.shape and not grad.any()
    with pytest.raises(RuntimeError, match="rois must be"):
        ops._C.roi_align_backward(torch.randn(2, 3, 7, 7), torch.zeros(3, 5), 1.0, 7, 7, 2, 3, 8, 9, 0, True)


def test_roi_align_backward_switch(roi_align_kernels, monkeypatch):
    assert roi_align_kernels(False) is False
    assert roi_align_kernels(True) is ops.extension_available()
    monkeypatch.setenv("UV_ROI_ALIGN_BACKWARD", "fast")
    with pytest.raises(ValueError, match="UV_ROI_ALIGN_BACKWARD='fast'.*torchvision"):
        ops._roi_align_backward_choice()
    monkeypatch.setenv("UV_ROI_ALIGN_BACKWARD", "torchvision")
    assert ops._roi_align_backward_choice() == "torchvision"


# ---------------------------------------------------------------- fallback and registration

def test_fallback_to_reference_warns_once(monkeypatch):
    monkeypatch.setattr(ops, "_C", None)
    monkeypatch.setattr(ops, "_WARNED", set())
    assert not ops.extension_available()
    f, p = make_points(2, 3, 6, 7, 2, 4)
    x = torch.randn(2, 3, 10, 10)
    rois = make_rois(2, 4, 10, 10, 1.0)
    off = torch.randn(4, 2, 2, 2)
    msda = make_msda(1, 3, 2, 4, 2, MSDA_SHAPES[:2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            close(ops.point_sample(f, p), ops.point_sample_reference(f, p))
            close(ops.deform_roi_pool(x, rois, off, 2), ops.deform_roi_pool_reference(x, rois, off, 2))
            close(ops.ms_deform_attn(*msda), ops.ms_deform_attn_reference(*msda))
    messages = [str(w.message) for w in caught if "unified_vision.ops" in str(w.message)]
    assert len(messages) == 1 and "reference" in messages[0]


@needs_ext
def test_opcheck_registrations():
    "Schema, fake-tensor, autograd registration and AOT dispatch checks of the custom ops."
    for H, W in ((5, 6), (30, 31)):  # both CPU layouts
        f, p = make_points(2, 3, H, W, 2, 3, borders=False)
        torch.library.opcheck(torch.ops.unified_vision.point_sample.default, (f.requires_grad_(), p.requires_grad_()))
    x = torch.randn(2, 3, 9, 10, requires_grad=True)
    rois = make_rois(2, 3, 9, 10, 1.0, degenerate=False)
    off = torch.randn(3, 2, 2, 2, requires_grad=True)
    torch.library.opcheck(torch.ops.unified_vision.deform_roi_pool.default, (x, rois, off, 2, 2, 1.0, 2, 0.1))
    value, shapes, starts, loc, attn = make_msda(1, 3, 2, 4, 2, MSDA_SHAPES[:2])
    torch.library.opcheck(torch.ops.unified_vision.ms_deform_attn.default,
                          (value.requires_grad_(), shapes, starts, loc.requires_grad_(), attn))


@needs_ext
def test_torch_compile_traces_custom_ops():
    f, p = make_points(2, 4, 6, 6, 2, 3, borders=False)
    f.requires_grad_()

    def fn(f, p):
        return ops.point_sample(f, p).square().sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    close(compiled(f, p), fn(f, p))
    g1, = torch.autograd.grad(compiled(f, p), f)
    g2, = torch.autograd.grad(fn(f, p), f)
    close(g1, g2)


# Runs in a process of its own: it defines the package's custom ops a second time, which then stays so for the
# rest of the process. Three tensors per op, made from one seed; every output and gradient is compared bit for bit.
SECOND_DEFINITION = r'''
import types, torch
from unified_vision import ops

def run():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(2, 8, 12, 12, generator=g, requires_grad=True)
    p = (torch.rand(2, 5, 4, 2, generator=g) * 12).requires_grad_()
    rois = torch.tensor([[0, 1., 1., 9., 9.], [1, 2., 3., 11., 10.]])
    off = (torch.randn(2, 2, 3, 3, generator=g) * 0.1).requires_grad_()
    v = torch.randn(2, 20, 2, 4, generator=g, requires_grad=True)
    shapes, starts = torch.tensor([[4, 4], [2, 2]]), torch.tensor([0, 16])
    loc = torch.rand(2, 3, 2, 2, 2, 2, generator=g).requires_grad_()
    attn = torch.rand(2, 3, 2, 2, 2, generator=g).requires_grad_()
    outs = [ops.point_sample(f, p), ops.deform_roi_pool(f, rois, off, 3, 1.0, 2, 0.1),
            ops.ms_deform_attn(v, shapes, starts, loc, attn)]
    grads = torch.autograd.grad(sum(o.square().sum() for o in outs), [f, p, off, v, loc, attn])
    return outs + list(grads)

before = run()
copy = types.ModuleType("notebook_copy")          # what running nbs/60_ops.ipynb in this process does
exec(compile(open(ops.__file__).read(), ops.__file__, "exec"), copy.__dict__)
for name in ("point_sample", "deform_roi_pool", "ms_deform_attn"):
    for op in (name, name + "_backward"):
        assert ops._live(op) is getattr(copy, f"_{op}_op")._opoverload, op    # the package calls the live definition
after = run()
assert all(torch.equal(a, b) for a, b in zip(before, after))
print("same results after a second definition")
'''


@needs_ext
def test_ops_survive_a_second_definition_in_the_process():
    """Defining the custom ops again in a process that imported the package (running nbs/60_ops.ipynb there) makes
    torch delete the first definitions; the package's wrappers and backward functions must reach the new ones by
    name (`ops._live`), not call the deleted ones (which read freed memory: a std::bad_alloc in CI once)."""
    r = subprocess.run([sys.executable, "-c", SECOND_DEFINITION], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "same results after a second definition" in r.stdout


def test_input_validation():
    with pytest.raises(ValueError):
        ops.point_sample(torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4))
    with pytest.raises(ValueError):
        ops.deform_roi_pool(torch.randn(1, 3, 4, 4), torch.randn(2, 5), torch.randn(2, 2, 3, 3), 2)
    with pytest.raises(ValueError):
        ops.multilevel_point_sample([torch.randn(1, 2, 4, 4)], torch.randn(1, 2, 3, 2), torch.zeros(1, 2, dtype=torch.long), (4, 8))


# ---------------------------------------------------------------- CUDA sources compile (no GPU needed)

def _nvcc_command(cu: str, out_dir: Path) -> list[str]:
    from torch.utils.cpp_extension import include_paths
    os.environ.setdefault("CUDA_HOME", str(Path(NVCC).parents[1]))
    incs = [f"-I{p}" for p in [str(ROOT / "kernels" / "csrc")] + include_paths(device_type="cuda")]
    return [NVCC, "-c", cu, "-o", str(out_dir / (Path(cu).stem + ".o")), *incs, "-DWITH_CUDA", "-arch=sm_90",
            "-std=c++20", "--expt-relaxed-constexpr", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__", "-Xcompiler", "-fPIC"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(NVCC), reason=f"{NVCC} not found")
def test_cuda_sources_compile(tmp_path):
    sources = sorted(glob.glob(str(ROOT / "kernels" / "csrc" / "**" / "*.cu"), recursive=True))
    assert len(sources) == 3, sources

    def compile_one(cu):
        r = subprocess.run(_nvcc_command(cu, tmp_path), capture_output=True, text=True)
        return cu, r.returncode, r.stdout + r.stderr

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(compile_one, sources))
    failures = [f"{cu}:\n{log[-3000:]}" for cu, rc, log in results if rc != 0]
    assert not failures, "\n\n".join(failures)
    for cu in sources:
        obj = tmp_path / (Path(cu).stem + ".o")
        assert obj.exists() and obj.stat().st_size > 0
