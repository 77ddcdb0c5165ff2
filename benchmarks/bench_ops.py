"""CPU benchmark of the compiled ops (`unified_vision._C`) against their pure-PyTorch references.

For every case (shapes from the papers' settings at `mini` and COCO scale) it measures, with
`torch.set_num_threads(2)`:

* **time** -- forward + backward (gradients to every differentiable input), median of several
  repeats after warm-up, kernel and reference run alternately in the same process (so a busy
  machine slows both alike);
* **peak memory** -- the increase of the process's peak resident set size (VmHWM) during one
  forward + backward, in a fresh subprocess per (case, implementation): inputs are built, the op
  runs once as a warm-up, freed heap is returned to the OS (malloc_trim), the peak is reset through
  /proc/self/clear_refs, the op runs again, and the new peak minus the resident size before it is
  reported. It counts everything the op touches (tensors, autograd buffers, kernel
  scratch, allocator slack), not just tensor bytes.

`--device cuda` runs the same cases on a GPU: kernel (the extension's CUDA path) against the same PyTorch reference
on the GPU, each timed between `torch.cuda.synchronize()` calls, and peak memory as the increase of
`torch.cuda.max_memory_allocated()` during one forward + backward (the caching allocator's tensors: outputs,
gradients, autograd buffers, scratch).

Usage: python benchmarks/bench_ops.py [--only SUBSTRING] [--quick] [--device cpu|cuda]
Writes benchmarks/results/ops_cpu.md (or ops_cuda.md).
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from unified_vision import ops  # noqa: E402

THREADS = 2


def _msda_shapes(h, w, levels=4, first_stride=8):
    "Level sizes of a Deformable DETR pyramid (strides 8, 16, 32, 64) for an h x w image."
    return [(-(-h // (first_stride * 2 ** l)), -(-w // (first_stride * 2 ** l))) for l in range(levels)]


# name -> (op, scale, description, builder kwargs)
CASES = {
    "point_sample/mini-64": ("point_sample", "mini", "N=8, C=64, 32x32, P=128 x K=16",
                             dict(N=8, C=64, H=32, W=32, P=128, K=16)),
    "point_sample/mini-128": ("point_sample", "mini", "N=8, C=128, 16x16, P=128 x K=16",
                              dict(N=8, C=128, H=16, W=16, P=128, K=16)),
    "point_sample/coco": ("point_sample", "coco", "N=2, C=256, 200x304, P=512 x K=16",
                          dict(N=2, C=256, H=200, W=304, P=512, K=16)),
    "multilevel_point_sample/coco": ("multilevel_point_sample", "coco",
                                     "N=2, C=256, P2-P5 of 800x1216, P=512 x K=16",
                                     dict(N=2, C=256, H=800, W=1216, P=512, K=16)),
    "deform_roi_pool/mini": ("deform_roi_pool", "mini", "N=4, C=64, 32x32, R=256, 7x7, sr=2",
                             dict(N=4, C=64, H=32, W=32, R=256, k=7, scale=1 / 8, sr=2)),
    "deform_roi_pool/mini-adaptive": ("deform_roi_pool", "mini", "N=4, C=64, 32x32, R=256, 7x7, sr=adaptive",
                                      dict(N=4, C=64, H=32, W=32, R=256, k=7, scale=1 / 8, sr=-1)),
    "deform_roi_pool/coco": ("deform_roi_pool", "coco", "N=2, C=256, 200x304, R=2x512, 7x7, sr=2",
                             dict(N=2, C=256, H=200, W=304, R=1024, k=7, scale=1 / 4, sr=2)),
    "ms_deform_attn/mini": ("ms_deform_attn", "mini", "N=2, Lq=100, M=8, D=32, L=4, P=4, 256x256 image",
                            dict(N=2, Lq=100, M=8, D=32, P=4, shapes=_msda_shapes(256, 256))),
    "ms_deform_attn/coco-decoder": ("ms_deform_attn", "coco", "N=2, Lq=300, M=8, D=32, L=4, P=4, 800x1216 image",
                                    dict(N=2, Lq=300, M=8, D=32, P=4, shapes=_msda_shapes(800, 1216))),
    "ms_deform_attn/coco-encoder": ("ms_deform_attn", "coco", "N=2, Lq=S=5440, M=8, D=32, L=4, P=4, 512x512 image",
                                    dict(N=2, Lq=None, M=8, D=32, P=4, shapes=_msda_shapes(512, 512))),
}


def build(name: str, impl: str, seed: int = 0, device: str = "cpu"):
    """(function, inputs, indices of differentiable inputs) for a case on `device`; `impl` is kernel|reference.
    The inputs are drawn on the CPU from a seeded generator, then moved, so both devices see the same numbers."""
    fn, inputs, diff = _case_on(name, impl, seed, device)
    return fn, [x.to(device) for x in inputs], diff


def _case_on(name: str, impl: str, seed: int, device: str):
    op, _, _, kw = CASES[name]
    gen = torch.Generator().manual_seed(seed)
    ref = impl == "reference"
    if op == "point_sample":
        f = torch.randn(kw["N"], kw["C"], kw["H"], kw["W"], generator=gen)
        p = torch.rand(kw["N"], kw["P"], kw["K"], 2, generator=gen) * torch.tensor([kw["W"], kw["H"]], dtype=torch.float32)
        return (ops.point_sample_reference if ref else ops.point_sample), [f, p], (0, 1)
    if op == "multilevel_point_sample":
        strides = (4, 8, 16, 32)
        feats = [torch.randn(kw["N"], kw["C"], kw["H"] // s, kw["W"] // s, generator=gen) for s in strides]
        p = torch.rand(kw["N"], kw["P"], kw["K"], 2, generator=gen) * torch.tensor([kw["W"], kw["H"]], dtype=torch.float32)
        level = torch.randint(0, 4, (kw["N"], kw["P"]), generator=gen).to(device)
        sampler = ops.point_sample_reference if ref else ops.point_sample

        def fn(*a):
            return ops.multilevel_point_sample(list(a[:4]), a[4], level, strides, sampler=sampler)
        return fn, feats + [p], (0, 1, 2, 3, 4)
    if op == "deform_roi_pool":
        N, C, H, W, R, k, scale = kw["N"], kw["C"], kw["H"], kw["W"], kw["R"], kw["k"], kw["scale"]
        x = torch.randn(N, C, H, W, generator=gen)
        img = torch.tensor([W / scale, H / scale])
        xy1 = torch.rand(R, 2, generator=gen) * img * 0.8
        wh = (0.02 + 0.25 * torch.rand(R, 2, generator=gen)) * img
        b = torch.arange(R).div(R // N, rounding_mode="floor").clamp(max=N - 1).float().view(R, 1)
        rois = torch.cat([b, xy1, xy1 + wh], 1).to(device)
        off = torch.randn(R, 2, k, k, generator=gen) * 0.3
        f = ops.deform_roi_pool_reference if ref else ops.deform_roi_pool

        def fn(x, off):
            return f(x, rois, off, k, scale, kw["sr"], 0.1)
        return fn, [x, off], (0, 1)
    if op == "ms_deform_attn":
        shapes = torch.tensor(kw["shapes"])
        sizes = shapes[:, 0] * shapes[:, 1]
        starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
        S = int(sizes.sum())
        shapes, starts = shapes.to(device), starts.to(device)
        N, M, D, P = kw["N"], kw["M"], kw["D"], kw["P"]
        Lq = kw["Lq"] or S
        L = len(kw["shapes"])
        value = torch.randn(N, S, M, D, generator=gen)
        loc = torch.rand(N, Lq, M, L, P, 2, generator=gen)
        attn = torch.rand(N, Lq, M, L, P, generator=gen).softmax(-1)
        f = ops.ms_deform_attn_reference if ref else ops.ms_deform_attn

        def fn(v, lc, a):
            return f(v, shapes, starts, lc, a)
        return fn, [value, loc, attn], (0, 1, 2)
    raise KeyError(name)


def fwd_bwd(fn, inputs, diff):
    for i in diff:
        inputs[i].requires_grad_(True)
        inputs[i].grad = None
    out = fn(*inputs)
    out.backward(torch.ones_like(out))


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_case(name: str, repeats: int, warmup: int = 1, device: str = "cpu") -> tuple[dict, dict]:
    """Median and minimum forward + backward seconds of the kernel and the reference. The two run
    alternately, so a busy machine slows both alike. On a GPU each call is timed between synchronisations."""
    impls = {impl: build(name, impl, device=device) for impl in ("kernel", "reference")}
    times = {impl: [] for impl in impls}
    for rep in range(warmup + repeats):
        for impl, (fn, inputs, diff) in impls.items():
            _sync(device)
            t0 = time.perf_counter()
            fwd_bwd(fn, inputs, diff)
            _sync(device)
            if rep >= warmup:
                times[impl].append(time.perf_counter() - t0)
    return ({impl: statistics.median(ts) for impl, ts in times.items()},
            {impl: min(ts) for impl, ts in times.items()})


def _status_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def memory_child(name: str, impl: str):
    "Runs in a fresh subprocess: peak RSS increase (MiB) during one forward + backward."
    torch.set_num_threads(THREADS)
    fn, inputs, diff = build(name, impl)
    # Warm-up: the first call imports modules, starts the thread pool and fills caches that are not
    # part of the op's footprint. Then hand the freed heap back to the OS so it cannot hide the peak.
    fwd_bwd(fn, inputs, diff)
    for i in diff:
        inputs[i].grad = None
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fwd_bwd(fn, inputs, diff)
    peak = _status_kb("VmHWM")
    print(json.dumps({"peak_mib": (peak - before) / 1024}))


def cuda_memory_case(name: str, impl: str) -> float:
    "Increase (MiB) of the CUDA caching allocator's peak during one forward + backward, after a warm-up call."
    fn, inputs, diff = build(name, impl, device="cuda")
    fwd_bwd(fn, inputs, diff)
    for i in diff:
        inputs[i].grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fwd_bwd(fn, inputs, diff)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2 ** 20


def memory_case(name: str, impl: str, device: str = "cpu") -> float:
    if device == "cuda":
        return cuda_memory_case(name, impl)
    r = subprocess.run([sys.executable, __file__, "--memory-child", name, impl], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_mib"]


def cpu_header(load0: float) -> list[str]:
    return [
        "# unified_vision.ops on the CPU: compiled kernels vs pure-PyTorch references",
        "",
        f"Forward + backward (gradients to every differentiable input), `torch.set_num_threads({THREADS})`, "
        "float32; time is the median of several repeats after a warm-up, kernel and reference run alternately in the "
        "same process. Peak memory is the increase of the peak resident set size (VmHWM, reset through "
        "/proc/self/clear_refs) during one forward + backward in a fresh subprocess per measurement, after one warm-up "
        "call and `malloc_trim`: inputs excluded, everything the op allocates included (outputs, gradients, autograd "
        "buffers, scratch, allocator slack).",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}. "
        "Generated by `python benchmarks/bench_ops.py`.",
        "",
        f"Load average (1 min) when the run started: {load0:.2f}, when it ended: {os.getloadavg()[0]:.2f} -- the "
        "machine may be shared, so single timings can jump; the ratio of the fastest runs (best-of) is shown as well.",
        "",
    ]


def cuda_header(load0: float) -> list[str]:
    return [
        "# unified_vision.ops on a GPU: CUDA kernels vs pure-PyTorch references on the same GPU",
        "",
        "Forward + backward (gradients to every differentiable input), float32; each call timed between "
        "`torch.cuda.synchronize()` calls, median of several repeats after 3 warm-ups, kernel and reference "
        "alternately in one process. Peak memory: increase of `torch.cuda.max_memory_allocated()` during one "
        "forward + backward after a warm-up call (inputs excluded; outputs, gradients, autograd buffers and scratch "
        "included).",
        "",
        f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"compute capability {'.'.join(map(str, torch.cuda.get_device_capability()))}, extension built with "
        f"TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST', '(unset)')}. "
        "Generated by `python benchmarks/bench_ops.py --device cuda` on a lent GPU machine "
        "(`benchmarks/gpu_checks.sh`).",
        "",
    ]


def fmt_ms(s: float) -> str:
    return f"{s * 1e3:.1f}" if s < 10 else f"{s * 1e3:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/ops_<device>.md")
    args = ap.parse_args()
    if args.memory_child:
        return memory_child(*args.memory_child)
    if not ops.extension_available():
        sys.exit("unified_vision._C is not built: run `python setup.py build_ext --inplace` first")
    if args.device == "cuda" and not (torch.cuda.is_available() and ops._C_HAS_CUDA):
        sys.exit("--device cuda needs a GPU and an extension built with its CUDA kernels "
                 "(CUDA_HOME=/usr/local/cuda TORCH_CUDA_ARCH_LIST=9.0 UV_FORCE_CUDA=1 python setup.py build_ext --inplace)")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"ops_{args.device}.md")
    torch.set_num_threads(THREADS)
    load0 = os.getloadavg()[0]
    rows = []
    for name, (op, scale, desc, _) in CASES.items():
        if args.only not in name:
            continue
        reps = (3 if scale == "coco" else 5) if args.quick else (7 if scale == "coco" else 21)
        if args.device == "cuda":
            reps *= 3
        med, best = time_case(name, reps, warmup=1 if args.device == "cpu" else 3, device=args.device)
        m_k = memory_case(name, "kernel", args.device)
        m_r = memory_case(name, "reference", args.device)
        t_r, t_k = med["reference"], med["kernel"]
        row = dict(case=name, shape=desc, t_ref=t_r, t_ker=t_k, speedup=t_r / t_k,
                   best_speedup=best["reference"] / best["kernel"], m_ref=m_r, m_ker=m_k)
        rows.append(row)
        print(f"{name:32s} ref {fmt_ms(t_r):>7s} ms  kernel {fmt_ms(t_k):>7s} ms  x{t_r / t_k:6.1f} "
              f"(best-of x{row['best_speedup']:5.1f})  mem ref {m_r:8.1f} MiB  kernel {m_k:8.1f} MiB", flush=True)
    lines = (cuda_header(load0) if args.device == "cuda" else cpu_header(load0)) + [
        "| case | shape | reference ms | kernel ms | speed-up (median) | speed-up (best-of) | reference peak MiB | kernel peak MiB |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['case']} | {r['shape']} | {fmt_ms(r['t_ref'])} | {fmt_ms(r['t_ker'])} | "
                     f"{r['speedup']:.1f}x | {r['best_speedup']:.1f}x | {r['m_ref']:.1f} | {r['m_ker']:.1f} |")
    if not args.only:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n".join(lines) + "\n")
        print(f"wrote {out}")
    else:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
