"""RoIAlign's backward on the CPU: torchvision's serial kernel against the parallel one of `kernels/`.

The parallel kernel (nbs/60_ops.ipynb, section 4) gives torchvision's input gradient bit for bit; what it changes
is the time. Two measurements, on the two-stage experiments of the pipeline (every training step of Faster R-CNN,
Mask R-CNN and Cascade R-CNN calls it, once per pyramid level and cascade stage, plus the mask branch's):

1. the op alone: the RoIAlign backward calls of one real training step, recorded with their arguments, replayed
   through each kernel (median of `--reps` replays; every replay checked with `torch.equal`), at the `mini`
   profile's scale and, with `--coco`, at the paper's (ResNet-50 FPN, 800 x 1088 px, random weights);
2. whole training steps: two copies of each `mini` model from the same weights, one trained with each kernel on
   the same batches, alternating which goes first, `--iters` steps after 2 warm-ups each (medians); at the end the
   two copies' weights are compared bit for bit.

Randomly initialised models (timing only), 2 threads. Writes benchmarks/results/roi_align_backward_cpu.md.

Usage: python benchmarks/bench_roi_align_backward.py [--iters 20] [--reps 5] [--coco] [--experiments ...]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_heads import COCO_SIZE, ROOT, build, resized, train_step  # noqa: E402
sys.path.insert(0, str(ROOT / "analysis"))
from determinism_probe import cpu_description  # noqa: E402
from unified_vision import ops  # noqa: E402
from unified_vision.core import atomic_path, load_yaml  # noqa: E402
from unified_vision.data.coco import collate  # noqa: E402
from unified_vision.engine.train import build_optimizer  # noqa: E402

EXPERIMENTS = ["baseline_faster_rcnn", "uni_faster_rcnn", "baseline_mask_rcnn", "uni_mask_rcnn",
               "baseline_cascade_rcnn", "uni_cascade_rcnn"]
OUT = HERE / "results" / "roi_align_backward_cpu.md"


def record_calls(model, batch) -> list[tuple]:
    "The arguments of every RoIAlign backward call of one training step (ours serves them, and records them)."
    calls, ext = [], ops._C

    class Recording:
        def roi_align_backward(self, *args):
            calls.append(tuple(a.clone() if torch.is_tensor(a) else a for a in args))
            return ext.roi_align_backward(*args)

        def __getattr__(self, name):
            return getattr(ext, name)
    ops.use_parallel_roi_align_backward(True)
    ops._C = Recording()
    try:
        model.train()
        sum(model(batch.images, batch.image_sizes, batch.targets).values()).backward()
    finally:
        ops._C = ext
    model.zero_grad(set_to_none=True)
    return calls


def replay(calls, reps: int) -> dict:
    "Median seconds of all the recorded calls through each kernel, and whether every result was equal."
    theirs, ours = torch.ops.torchvision._roi_align_backward, ops._C.roi_align_backward
    times, equal = {"torchvision": [], "ours": []}, True
    ops.use_parallel_roi_align_backward(False)                   # the dispatcher's CPU kernel is torchvision's again
    for i in range(reps + 1):
        for name in (("torchvision", "ours") if i % 2 == 0 else ("ours", "torchvision")):
            fn = theirs if name == "torchvision" else ours
            start = time.perf_counter()
            outs = [fn(*args) for args in calls]
            if i:                                                # the first round warms up
                times[name].append(time.perf_counter() - start)
            if name == "ours":
                mine = outs
            else:
                ref = outs
        equal &= all(torch.equal(a, b) for a, b in zip(mine, ref))
    ops.use_parallel_roi_align_backward(True)
    return {"median": {k: statistics.median(v) for k, v in times.items()}, "equal": equal, "calls": len(calls),
            "shapes": sorted({f"{a[0].shape[0]}x{a[0].shape[1]}x{a[0].shape[2]}x{a[0].shape[3]}" for a in calls})}


def weights_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def compare_steps(cfg, model, train, iters: int) -> dict:
    "Median s/iter of training with each kernel (two copies, same start, same batches) and whether they stay equal."
    bs, div = cfg["train"]["batch_size"], model.neck.size_divisible
    batches = [collate([train[(i * bs + j) % len(train)] for j in range(bs)], div) for i in range(iters + 2)]
    copies = {"torchvision": copy.deepcopy(model), "ours": copy.deepcopy(model)}
    opts = {k: build_optimizer(m, cfg["train"]["optimizer"]) for k, m in copies.items()}
    times = {k: [] for k in copies}
    for i, batch in enumerate(batches):
        for name in (("torchvision", "ours") if i % 2 == 0 else ("ours", "torchvision")):
            ops.use_parallel_roi_align_backward(name == "ours")
            torch.manual_seed(i)                                 # the same random draws (sampling, dropout) for both
            start = time.perf_counter()
            train_step(copies[name], opts[name], batch)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    ops.use_parallel_roi_align_backward(True)
    return {"median": {k: statistics.median(v) for k, v in times.items()},
            "same_weights": weights_equal(copies["torchvision"], copies["ours"])}


def render(ops_rows: dict, step_rows: dict, args) -> str:
    d = cpu_description()
    cpu = f"{d.get('model name', d['machine'])} (family {d.get('cpu family', '?')}, model {d.get('model', '?')})"
    lines = ["### RoIAlign's backward on the CPU: torchvision's kernel against ours", "",
             f"Written by `python benchmarks/bench_roi_align_backward.py --iters {args.iters} --reps {args.reps}"
             f"{' --coco' if args.coco else ''}` on {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}. "
             "Our kernel returns torchvision's input gradient bit for bit (nbs/60_ops.ipynb, section 4); only the time "
             "differs. Randomly initialised models.", "",
             "The op alone: the RoIAlign backward calls of one training step (one per pyramid level that holds RoIs, per "
             "cascade stage, and the mask branch's), recorded with their arguments and replayed through each kernel; "
             f"median of {args.reps} replays. 'equal': every replayed result `torch.equal` to torchvision's.", "",
             "| profile | experiment | calls | grad shapes (R x C x PH x PW) | torchvision ms/step | ours ms/step | ours / torchvision | equal |",
             "|---|---|---|---|---|---|---|---|"]
    for (profile, name), r in ops_rows.items():
        m = r["median"]
        lines.append(f"| {profile} | {name} | {r['calls']} | {', '.join(r['shapes'])} | {m['torchvision'] * 1e3:.1f} | "
                     f"{m['ours'] * 1e3:.1f} | {m['ours'] / m['torchvision']:.2f}x | {'yes' if r['equal'] else 'NO'} |")
    lines += ["", f"Whole `mini` training steps: two copies of each model from the same weights, one trained with each "
              f"kernel on the same batches (alternating which goes first), {args.iters} steps after 2 warm-ups, medians. "
              "'same weights': the two copies' weights equal bit for bit after all the steps.", "",
              "| experiment | torchvision s/iter | ours s/iter | ours / torchvision | same weights |", "|---|---|---|---|---|"]
    for name, r in step_rows.items():
        m = r["median"]
        lines.append(f"| {name} | {m['torchvision']:.3f} | {m['ours']:.3f} | {m['ours'] / m['torchvision']:.2f}x | "
                     f"{'yes' if r['same_weights'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--coco", action="store_true", help="also replay the op at the paper's scale (Faster R-CNN)")
    p.add_argument("--experiments", nargs="+", default=EXPERIMENTS)
    args = p.parse_args()
    if not ops.extension_available():
        sys.exit("bench_roi_align_backward: unified_vision._C is not built (make kernels)")
    torch.set_num_threads(2)
    params = load_yaml(ROOT / "params.yaml")
    ops_rows, step_rows = {}, {}
    for name in args.experiments:
        print(f"{name} ...", flush=True)
        cfg, model, train, _ = build(params, name)
        bs, div = cfg["train"]["batch_size"], model.neck.size_divisible
        calls = record_calls(model, collate([train[j] for j in range(bs)], div))
        ops_rows[("mini", name)] = replay(calls, args.reps)
        step_rows[name] = compare_steps(cfg, model, train, args.iters)
    if args.coco:
        for name in ("baseline_faster_rcnn", "uni_faster_rcnn"):
            print(f"{name} (coco) ...", flush=True)
            cfg, model, train, _ = build(params, name, profile="coco")
            samples = [resized(train[j], COCO_SIZE) for j in range(cfg["train"]["batch_size"])]
            calls = record_calls(model, collate(samples, model.neck.size_divisible))
            ops_rows[("coco", name)] = replay(calls, args.reps)
    text = render(ops_rows, step_rows, args)
    with atomic_path(OUT) as tmp:
        tmp.write_text(text)
    print(text)
    if not all(r["equal"] for r in ops_rows.values()) or not all(r["same_weights"] for r in step_rows.values()):
        sys.exit("bench_roi_align_backward: the kernels disagreed (see the table)")


if __name__ == "__main__":
    main()
