"""Where a `mini` UniHead training step's time goes on the CPU: the attention kernel, and the batch padding.

UniHead's encoders are `nn.MultiheadAttention` blocks over K + 1 = 17 tokens, one short sequence per RoI (two-stage
frameworks: 2 x 128 per `mini` step) or per feature-map location (ATSS, FCOS: several hundred per step). PyTorch runs
them through `scaled_dot_product_attention`, which on the CPU picks its FlashAttention kernel by default; that kernel
is written for long sequences. This script times whole training steps of the `mini` UniHead experiments with the
attention kernel pinned by `torch.nn.attention.sdpa_kernel` to each CPU backend (FLASH_ATTENTION, what runs by default,
and MATH, the plain matrix-product formula), alternating the backends step by step on the same batches in one process
(`torch.set_num_threads(2)`), medians after two warm-up steps, per padded batch side. It also checks what a switch would change: one step
from the same weights on the same batch under both backends, and the largest difference in the resulting weights.

Nothing in the pipeline uses this: UniHead runs with PyTorch's default. The ratio says what pinning MATH would save
per training step, on this machine.

Second, the padding: a batch is padded to a multiple of the neck's `size_divisible` (by default the largest stride:
128 with P7). The same batches are timed padded that way and padded to 32 (mmdetection's choice,
`model.neck.size_divisible: 32` in params.yaml), alternating, default attention kernel; the mean over the batches
is what a run of many such steps pays per step. Writes benchmarks/results/step_costs_cpu.md.

Usage: python benchmarks/bench_step_costs.py [--iters 20] [--experiments uni_faster_rcnn uni_atss uni_fcos]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_heads import ROOT, build, train_step  # noqa: E402
from unified_vision.core import atomic_path, load_yaml  # noqa: E402
from unified_vision.data.coco import collate  # noqa: E402
from unified_vision.engine.train import build_optimizer  # noqa: E402
from unified_vision.heads.unihead import Block  # noqa: E402

BACKENDS = {"flash (default)": SDPBackend.FLASH_ATTENTION, "math": SDPBackend.MATH}


def sequences_per_step(model, batch) -> tuple[int, int]:
    "(sequences, tokens) that UniHead's first encoder block sees in one training step, read by a forward hook."
    seen = []
    block = next(m for m in model.modules() if isinstance(m, Block) and m.attn is not None)
    handle = block.register_forward_hook(lambda mod, inp, out: seen.append(tuple(inp[0].shape[:2])))
    try:
        model.train()
        model(batch.images, batch.image_sizes, batch.targets)
    finally:
        handle.remove()
    return seen[0]


def one_step_difference(model, cfg, batch) -> float:
    "Largest absolute weight difference after one step from the same weights and batch, flash vs. math."
    weights = []
    for backend in BACKENDS.values():
        m = copy.deepcopy(model)
        torch.manual_seed(0)
        with sdpa_kernel(backend):
            train_step(m, build_optimizer(m, cfg["train"]["optimizer"]), batch)
        weights.append(m.state_dict())
    return max((weights[0][k].float() - weights[1][k].float()).abs().max().item() for k in weights[0]
               if weights[0][k].is_floating_point())


def compare(params, name: str, iters: int) -> dict:
    cfg, model, train, _ = build(params, name)
    bs, div = cfg["train"]["batch_size"], model.neck.size_divisible
    batches = [collate([train[(i * bs + j) % len(train)] for j in range(bs)], div) for i in range(iters + 2)]
    seqs = {b.images.shape[-1]: sequences_per_step(model, b) for b in reversed(batches)}   # per padded side
    diff = one_step_difference(model, cfg, batches[0])
    opt = build_optimizer(model, cfg["train"]["optimizer"])
    times = {}                                    # (backend, padded side) -> seconds of each step
    for i, batch in enumerate(batches):
        order = list(BACKENDS) if i % 2 == 0 else list(reversed(BACKENDS))
        for b in order:
            with sdpa_kernel(BACKENDS[b]):
                start = time.perf_counter()
                train_step(model, opt, batch)
                dt = time.perf_counter() - start
            if i >= 2:
                times.setdefault((b, batch.images.shape[-1]), []).append(dt)
    padding = {}                                  # padding multiple -> seconds of each step, same batches
    for i in range(len(batches)):
        samples = [train[(i * bs + j) % len(train)] for j in range(bs)]
        for d in ((div, 32) if i % 2 == 0 else (32, div)):
            batch = collate(samples, d)
            start = time.perf_counter()
            train_step(model, opt, batch)
            if i >= 2:
                padding.setdefault(d, []).append(time.perf_counter() - start)
    return {"seqs": seqs, "diff": diff, "divisible": div, "padding": {d: statistics.mean(v) for d, v in padding.items()},
            "median": {k: statistics.median(v) for k, v in times.items()}, "count": {k: len(v) for k, v in times.items()}}


def render(results: dict, iters: int) -> str:
    names = list(BACKENDS)
    lines = ["### A UniHead training step on the CPU: attention kernel and batch padding (`mini`)", "",
             f"Written by `python benchmarks/bench_step_costs.py`: whole training steps of each `mini` UniHead experiment with "
             f"`scaled_dot_product_attention` pinned to each CPU backend, alternating step by step on the same batches in one "
             f"process, 2 threads, {iters} steps after 2 warm-ups each, medians per padded batch side (randomly initialised models; both backends "
             f"train the same model in turn). torch {torch.__version__}. 'sequences x tokens': what UniHead's first encoder "
             f"block sees in a step at that padded side. 'weight diff': the largest difference in any weight after one step from the same weights and "
             f"batch under the two backends (float32 rounding, not a different algorithm). The pipeline runs the default.", "",
             "A batch is padded to a multiple of the model's largest feature stride ('pad to'), so the steps are "
             "grouped by the padded side of their batch: the `mini` training images are 112, 128 or 144 px, and a "
             "batch holding a 144-px image is padded to 256 px where the stride is 128 (ATSS, FCOS: P7). 'steps' is "
             "how many of the timed batches had that side.", "",
             "| experiment | pad to | padded side | steps | sequences x tokens | "
             + " | ".join(f"{n} s/iter" for n in names) + " | math / flash | weight diff |",
             "|---|---|---|---|---|" + "---|" * len(names) + "---|---|"]
    for name, r in results.items():
        for side in sorted({s for _, s in r["median"]}):
            med = {n: r["median"][(n, side)] for n in names}
            lines.append(f"| {name} | {r['divisible']} | {side} | {r['count'][(names[0], side)]} | {r['seqs'][side][0]} x {r['seqs'][side][1]} | "
                         + " | ".join(f"{med[n]:.3f}" for n in names)
                         + f" | {med['math'] / med['flash (default)']:.2f}x | {r['diff']:.1e} |")
    lines += ["", f"Padding: mean s/iter over the same {iters} batches (drawn afresh, so the image sizes are a new draw), "
              "padded to the neck's multiple (the pipeline's) and to 32, alternating, default attention kernel.", "",
              "| experiment | pad to (pipeline) | s/iter | pad to 32 | s/iter | 32 / pipeline |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        pad, div = r["padding"], r["divisible"]
        lines.append(f"| {name} | {div} | {pad[div]:.3f} | 32 | {pad[32]:.3f} | {pad[32] / pad[div]:.2f}x |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)   # the committed step_costs_cpu.md
    p.add_argument("--experiments", nargs="+", default=["uni_faster_rcnn", "uni_atss", "uni_fcos"])
    args = p.parse_args()
    torch.set_num_threads(2)
    params = load_yaml(ROOT / "params.yaml")
    results = {}
    for name in args.experiments:
        print(f"{name} ...", flush=True)
        results[name] = compare(params, name, args.iters)
    text = render(results, args.iters)
    with atomic_path(HERE / "results" / "step_costs_cpu.md") as tmp:
        tmp.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
