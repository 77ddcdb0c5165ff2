"""What one training step asks of the hardware: arithmetic and kernel launches, UniHead against each framework's head.

On the lent H200 (benchmarks/results/heads_coco_cuda.md) UniHead's training step in Faster R-CNN took 1.32x the 2-fc
head's, while its inference took 1.10x and its inference arithmetic 1.13x. A GPU step costs arithmetic and, for every
kernel, a launch that the CPU has to issue however small the tensors; when the CPU cannot stay ahead, launches are
the time. No GPU is needed to count both, because the operators a step dispatches are the same on either device. For
one training step of each framework pair, on the same batch, this script counts on the CPU:

* train GFLOPs: forward + backward, by `torch.utils.flop_counter` (matrix products, convolutions, attention; RoIAlign,
  point sampling, NMS are not counted);
* kernel ops: every dispatched operator (ATen or custom) except views and bare allocations; on a GPU each launches at
  least one kernel;
* host syncs: operators whose output size or value the host must read (`nonzero`, `.item()`: ATen's
  `dynamic_output_shape` and `data_dependent_output` tags), where a CPU waits for the GPU to finish;
* parameter tensors, and the optimizer's ops with its `foreach` path (the CUDA default: one op per update over all
  parameters), counted apart from forward + backward.

Then, where a GPU run of `bench_heads.py` is committed for the profile (benchmarks/results/heads_<profile>_cuda.md),
it sets the measured step times beside the counts and fits `seconds = a * GFLOPs + b * kernel ops` over all of that
table's models by least squares: `a` is the arithmetic's price, `b` the price of one launch, and the fit's residuals
say how well two numbers explain the measured steps. It is a fit to the one GPU run on record, not a measurement.

Usage: python benchmarks/bench_train_ops.py [--profile coco|mini] [--frameworks faster_rcnn ...]
       python benchmarks/bench_train_ops.py --profile coco --render    # the Markdown again from the committed counts
Writes benchmarks/results/train_ops_<profile>.json (the counts) and .md.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_heads import (COCO_BATCH, COCO_SIZE, CPU_ATTENTION, PAIRS, build, profile_sample,  # noqa: E402
                         share_non_head_weights, train_step)
from unified_vision.core import load_yaml  # noqa: E402
from unified_vision.data.coco import collate  # noqa: E402
from unified_vision.engine.train import build_optimizer  # noqa: E402

FREE = {torch.ops.aten._unsafe_view.default, torch.ops.aten.empty.memory_format, torch.ops.aten.empty_strided.default,
        torch.ops.aten.empty_like.default, torch.ops.aten.new_empty.default, torch.ops.aten.new_empty_strided.default}
# ATSS and FCOS with UniHead run it at every location of P3-P7: at 800 x 1088 px and batch 2 their training step needs
# more than the 24 GB of the machines this repository is built on (the kernel's OOM killer stops it), so on `coco` they
# are left out unless named. Their UniHead tensors are large, so launches are not what their GPU steps wait on.
DENSE_AT_COCO = ("ATSS", "FCOS")
PAPER_STEP = (0.38, 0.40)       # Table 5: s/iter of Faster R-CNN's 2-fc head and of UniHead (L = 3), V100
SYNC_TAGS = {torch.Tag.dynamic_output_shape, torch.Tag.data_dependent_output}


@contextlib.contextmanager
def dispatch_as_on_cuda():
    """Where ATen takes another path for CPU tensors than for CUDA ones, take the CUDA one while counting: dropout as one
    fused op (`native_dropout`, which ATen uses for CUDA tensors, against bernoulli + div + mul on the CPU), and
    attention as one fused op whatever its dropout (CUDA's flash and memory-efficient kernels apply dropout inside;
    the CPU's fused kernel is skipped for dropout > 0 in favour of the unfused math path, about a dozen ops). For
    counting only: the attention's dropout is left out and dropout draws other numbers than a real run."""
    dropout, attention = F.dropout, F.scaled_dot_product_attention

    def fused_dropout(x, p=0.5, training=True, inplace=False):
        if not training or p == 0.0 or inplace:
            return dropout(x, p, training, inplace)
        return torch.native_dropout(x, p, True)[0]

    def fused_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        return attention(q, k, v, attn_mask=attn_mask, dropout_p=0.0, is_causal=is_causal, scale=scale, **kwargs)

    F.dropout, F.scaled_dot_product_attention = fused_dropout, fused_attention
    try:
        yield
    finally:
        F.dropout, F.scaled_dot_product_attention = dropout, attention


class OpCounter(TorchDispatchMode):
    "Counts the operators dispatched under it: kernel ops (not views, not allocations) and host syncs."

    def __init__(self):
        super().__init__()
        self.kernels, self.syncs = collections.Counter(), collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func in FREE):
            self.kernels[str(func)] += 1
            if SYNC_TAGS.intersection(func.tags):
                self.syncs[str(func)] += 1
        return func(*args, **(kwargs or {}))


def foreach_optimizer(model, cfg):
    "The experiment's optimizer on its `foreach` path, as a CUDA run takes it by default."
    opt = build_optimizer(model, cfg["train"]["optimizer"])
    for group in opt.param_groups:
        group["foreach"] = True
    return opt


def count_step(model, opt, batch) -> dict:
    "Counts of one training step (forward + backward apart from the optimizer step), after one uncounted warm-up step."
    train_step(model, opt, batch)                       # creates the optimizer's state: later steps all look alike
    model.train()
    with dispatch_as_on_cuda(), FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION) as flops, OpCounter() as ops:
        out = model(batch.images, batch.image_sizes, batch.targets)
        opt.zero_grad()
        sum(out.values()).backward()
    with OpCounter() as opt_ops:
        opt.step()
    return {"gflops": flops.get_total_flops() / 1e9, "kernels": sum(ops.kernels.values()),
            "syncs": sum(ops.syncs.values()), "opt_kernels": sum(opt_ops.kernels.values()),
            "params": sum(1 for p in model.parameters() if p.requires_grad),
            "ops": ops.kernels}


def count_pair(params, base_name, uni_name, profile) -> list[dict]:
    "Counts for the baseline and the UniHead experiment of one framework, same batch, non-head weights shared."
    (cfg, base, train, _), (_, uni, _, _) = build(params, base_name, profile), build(params, uni_name, profile)
    share_non_head_weights(base, uni)
    prep = profile_sample(profile)                       # build() sets a coco batch to COCO_BATCH
    batch = collate([prep(train[j]) for j in range(cfg["train"]["batch_size"])], base.neck.size_divisible)
    counted = [count_step(m, foreach_optimizer(m, cfg), batch) for m in (base, uni)]
    added = counted[1].pop("ops")
    added.subtract(counted[0].pop("ops"))
    counted[1]["added"] = dict(added.most_common(12))
    return counted


def measured_gpu_steps(path: Path) -> dict[str, tuple[float, float, float]]:
    """Framework label -> (baseline s/iter, UniHead s/iter, their ratio as printed) from a committed
    `bench_heads.py --device cuda` table; {} if there is none."""
    if not path.exists():
        return {}
    rows = re.findall(r"^\| ([^|]+?) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+)x \|", path.read_text(), flags=re.M)
    return {label: (float(b), float(u), float(r)) for label, b, u, r in rows}


def fit_launch_model(points: list[tuple[float, float, float]]) -> tuple[float, float, list[float]]:
    "Least squares `t = a * gflops + b * kernels` over (gflops, kernels, t); returns a, b and the relative residuals."
    x = torch.tensor([[g, k] for g, k, _ in points], dtype=torch.float64)
    t = torch.tensor([s for _, _, s in points], dtype=torch.float64)
    a, b = torch.linalg.lstsq(x, t[:, None]).solution[:, 0].tolist()
    return a, b, [(a * g + b * k - s) / s for g, k, s in points]


def fit_text(counts, gpu) -> list[str]:
    "The two-number fit over the GPU steps on record, its residuals, and what it splits each framework's overhead into."
    rows = [(label, head, c, s) for label, pair in counts if label in gpu
            for head, c, s in zip(("baseline", "UniHead"), pair, gpu[label][:2])]
    if len(rows) < 3:
        return []
    a, b, res = fit_launch_model([(c["gflops"], c["kernels"], s) for _, _, c, s in rows])
    lines = ["", f"Fit over the {len(rows)} GPU steps on record: seconds = {a * 1e6:.3g} ms per 1000 train GFLOPs "
             f"(an effective {1 / a / 1e3:.3g} TFLOP/s) + {b * 1e6:.3g} µs per kernel op. The second price is what an "
             "operator costs beyond its arithmetic, forward and backward: its launch and the host's work to issue it "
             "(dispatch, autograd), which the GPU waits on when its kernels are small. The first price is the looser one: "
             "these steps differ more in kernel ops than in arithmetic. Parts: each term's share of the fitted time.", "",
             "| framework | head | measured s/iter | fit s/iter | residual | arithmetic part | per-op part |",
             "|---|---|---|---|---|---|---|"]
    for (label, head, c, s), r in zip(rows, res):
        lines.append(f"| {label} | {head} | {s:.3f} | {s * (1 + r):.3f} | {r:+.0%} | {a * c['gflops'] / (s * (1 + r)):.0%} | "
                     f"{b * c['kernels'] / (s * (1 + r)):.0%} |")
    lines += ["", "What the fit makes of each framework's extra training time (UniHead minus baseline head):", ""]
    for label, (base, uni) in counts:
        if label in gpu:
            measured = 1e3 * (gpu[label][1] - gpu[label][0])
            arith, launch = 1e3 * a * (uni["gflops"] - base["gflops"]), 1e3 * b * (uni["kernels"] - base["kernels"])
            lines.append(f"- {label}: measured {measured:+.0f} ms per step; the fit gives {arith:+.0f} ms to the added "
                         f"arithmetic ({uni['gflops'] - base['gflops']:+.0f} GFLOPs) and {launch:+.0f} ms to the added "
                         f"kernel ops ({uni['kernels'] - base['kernels']:+d}).")
    if "Faster R-CNN" in gpu:
        base_s, uni_s = gpu["Faster R-CNN"][:2]
        lines += ["", f"The paper's Table 5 trains Faster R-CNN at {PAPER_STEP[0]:.2f} s per iteration with its 2-fc head "
                  f"and {PAPER_STEP[1]:.2f} s with UniHead (V100): {1e3 * (PAPER_STEP[1] - PAPER_STEP[0]):.0f} ms more per "
                  f"step, where the GPU on record adds {1e3 * (uni_s - base_s):.0f} ms to a baseline step "
                  f"{PAPER_STEP[0] / base_s:.1f}x shorter than the paper's. Different hardware and software, so only a "
                  "pointer: an added cost per step that stays while the rest of the step shrinks makes a larger ratio."]
    return lines


def render(profile, counts, gpu) -> str:
    data = (f"the generated `mini` images resized to {COCO_SIZE[0]} x {COCO_SIZE[1]} px, batch {COCO_BATCH}"
            if profile == "coco" else "generated `mini` images at the profile's batch")
    gpu_col = f" GPU s/iter (heads_{profile}_cuda.md) |" if gpu else ""
    lines = [f"# What a UniHead training step asks of the hardware (`{profile}` profile models)", "",
             f"Written by `python benchmarks/bench_train_ops.py --profile {profile}` (torch {torch.__version__}): one "
             "training step of each framework's baseline and UniHead experiment, randomly initialised with everything "
             f"but the head shared, on the same batch ({data}), counted on the CPU after one warm-up step, "
             "with dropout and attention dispatched as ATen does for CUDA tensors (one fused op each, where the CPU "
             "takes unfused paths). Train GFLOPs: forward + backward "
             "(`torch.utils.flop_counter`; RoIAlign, point sampling and NMS not counted). Kernel ops: dispatched "
             "operators other than views and allocations, forward + backward; on a GPU each launches at least one "
             "kernel, which the CPU has to issue however small its tensors. Host syncs: operators whose output size or "
             "value the host reads (`nonzero`, `.item()`), where the CPU waits for the GPU. Optimizer ops: the "
             "optimizer's step on its `foreach` path (the CUDA default), apart from the kernel ops.", "",
             "| framework | head | train GFLOPs | kernel ops | host syncs | parameter tensors | optimizer ops |" + gpu_col,
             "|---|---|---|---|---|---|---|" + ("---|" if gpu else "")]
    for label, pair in counts:
        for i, (head, c) in enumerate(zip(("baseline", "UniHead"), pair)):
            measured = f" {gpu[label][i]:.3f} |" if label in gpu else " – |"
            lines.append(f"| {label} | {head} | {c['gflops']:.4g} | {c['kernels']} | {c['syncs']} | {c['params']} | "
                         f"{c['opt_kernels']} |" + (measured if gpu else ""))
    lines += ["", "UniHead against the baseline head, same framework, same batch:", "",
              "| framework | train GFLOPs ratio | kernel ops ratio | GPU step ratio (measured) | ops UniHead adds most |",
              "|---|---|---|---|---|"]
    for label, (base, uni) in counts:
        added = ", ".join(f"{op.removeprefix('aten.')} {n:+d}" for op, n in list(uni["added"].items())[:6])
        lines.append(f"| {label} | {uni['gflops'] / base['gflops']:.2f}x | {uni['kernels'] / base['kernels']:.2f}x | "
                     + (f"{gpu[label][2]:.2f}x" if label in gpu else "–") + f" | {added} |")
    missing = [label for label in DENSE_AT_COCO if profile == "coco" and label not in dict(counts)]
    if missing:
        lines += ["", f"{' and '.join(missing)} are not counted at this scale: with UniHead at every location of P3-P7, "
                  "their training step at 800 x 1088 px and batch 2 needs more than this machine's 24 GB on the CPU "
                  "(the OOM killer stops it). Their UniHead runs on tens of thousands of point sets per image, so its "
                  "tensors are large and launches are not what its GPU step waits on (heads_coco_cuda.md: its training "
                  "step is several times any two-stage step); the fit below leaves them out."]
    return "\n".join(lines + fit_text(counts, gpu)) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--profile", choices=["mini", "coco"], default="coco")
    p.add_argument("--frameworks", nargs="*", choices=sorted(PAIRS), default=None,
                   help="default: all on mini; the two-stage ones on coco (see DENSE_AT_COCO)")
    p.add_argument("--render", action="store_true", help="only write the Markdown again from the committed counts")
    args = p.parse_args()
    record = ROOT / "benchmarks" / "results" / f"train_ops_{args.profile}.json"
    if args.render:
        counts = json.loads(record.read_text())
    else:
        torch.set_num_threads(2)
        params = load_yaml(ROOT / "params.yaml")
        counts = []
        names = args.frameworks or [fw for fw in PAIRS if args.profile == "mini" or fw not in ("atss", "fcos")]
        for fw in tqdm(names, desc="framework pairs"):
            label, base, uni = PAIRS[fw]
            pair = count_pair(params, base, uni, args.profile)
            counts.append((label, pair))
            tqdm.write(f"{label}: " + ", ".join(f"{k} {pair[0][k]:.6g} -> {pair[1][k]:.6g}" for k in pair[0]
                                                 if k != "added"))
        record.write_text(json.dumps(counts, indent=1) + "\n")
    gpu = measured_gpu_steps(ROOT / "benchmarks" / "results" / f"heads_{args.profile}_cuda.md")
    out = ROOT / "benchmarks" / "results" / f"train_ops_{args.profile}.md"
    out.write_text(render(args.profile, counts, gpu))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
