"""Does a code change alter what the CPU pipeline computes? Train and evaluate experiments with two versions of the
code (or two settings of it) and compare the trained weights, the loss histories and the metrics bit for bit.

    # in each checkout (an old one made with `git worktree add /tmp/old <commit>`, with its `_C` .so copied in):
    python analysis/same_results_on_cpu.py run EXPERIMENT ... > /tmp/<version>.json
    # then, here:
    python analysis/same_results_on_cpu.py compare /tmp/old.json /tmp/new.json --old-label A --new-label B [--out F.md]

`run` uses the code of the current directory (it goes first on `sys.path`) and its params.yaml. With `--profile smoke`
(the default) it trains on a smoke dataset generated once in /tmp/smoke_data from random backbones; with
`--profile mini` it runs the profile as the pipeline does: the generated `mini` data (`dvc repro data`) and the
pretrained backbone of `runs/pretrain/model.pt`, the full schedule. `run --keep DIR` keeps each run in DIR/<experiment>/
and reads a backbone `runs/<x>/model.pt` from DIR/<x>/model.pt where it trained one, so a chain such as `cls_resnext
t8_resnext` trains its own classification backbone first without touching the pipeline's `runs/`; `run --seed N`
runs the experiments with seed N (named `<experiment>_seedN`); `run --set KEY=VALUE [--set ...] --tag T` trains a
variant that params.yaml does not hold (e.g. `--set heads.unihead.dim=128 --tag dim128`), named `<experiment>_T`, for
a probe. Each run's output holds its logged losses per step (`history`). `compare` writes analysis/same_results_on_cpu.md
(or `--out`). Evaluation timings (`cost_infer_ms`) are left out of the comparison: they are never the same twice; the
training time of each run is shown beside it, as information.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path


def weights_digest(state: dict) -> str:
    "A SHA-256 prefix of every tensor of a state dict, in key order: equal exactly when the weights are equal bit for bit."
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _kept_checkpoint(path, keep: Path | None):
    "A backbone checkpoint `runs/<experiment>/model.pt` read from `keep/<experiment>/model.pt` where `run --keep` trained one."
    if keep is None or not isinstance(path, str) or not path.startswith("runs/"):
        return path
    kept = keep / Path(path).relative_to("runs")
    return str(kept) if kept.exists() else path


def apply_settings(cfg: dict, settings: list[str]) -> dict:
    """A copy of the resolved configuration `cfg` with `KEY=VALUE` settings applied (dotted keys, YAML values, e.g.
    `heads.unihead.dim=128`): a variant that params.yaml does not hold, for a probe. Each key must already be in the
    configuration, so that a misspelt one cannot train the unchanged experiment under a new name; the one exception is
    an option of a head (`heads.<head>.<option>`) that the configuration leaves at the code's default (e.g.
    `heads.unihead.cls_input=mean`): the head's builder refuses an option it does not know."""
    import copy
    import yaml
    cfg = copy.deepcopy(cfg)
    for setting in settings:
        key, sep, raw = setting.partition("=")
        if not sep or not key:
            sys.exit(f"same_results_on_cpu: --set {setting!r}: write KEY=VALUE, e.g. --set heads.unihead.dim=128")
        *path, last = key.split(".")
        node = cfg
        for i, part in enumerate(path):
            node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict):
                sys.exit(f"same_results_on_cpu: --set {setting!r}: '{'.'.join(path[:i + 1])}' is not a mapping of "
                         f"{cfg['experiment']}'s configuration (see configs/{cfg['experiment']}.json)")
        if last not in node and not (len(path) == 2 and path[0] == "heads"):
            sys.exit(f"same_results_on_cpu: --set {setting!r}: {cfg['experiment']}'s configuration has no key '{key}' "
                     f"(see configs/{cfg['experiment']}.json for the keys)")
        node[last] = yaml.safe_load(raw)
    return cfg


def loss_history(history: list[dict]) -> dict:
    "A training history (one record per log step) as `{'step': [...], '<loss>': [...]}` for every logged loss."
    keys = [k for k in (history[0] if history else {}) if k.startswith("loss")]
    return {"step": [h["iteration"] for h in history], **{k: [h[k] for h in history] for k in keys}}


def run(names: list[str], profile_name: str = "smoke", keep: Path | None = None, seed: int | None = None,
        settings: tuple[str, ...] = (), tag: str | None = None) -> dict:
    """Train and evaluate each experiment in turn. With `keep`, each run is kept in `keep/<experiment>/` and a later
    experiment's backbone checkpoint `runs/<x>/model.pt` is read from `keep/<x>/model.pt` where one was trained there
    (e.g. `cls_resnext t8_resnext`: the classification backbone, then the detector on it), never from the pipeline's.
    With `seed`, every experiment runs with that seed instead of its own, under the name `<experiment>_seed<seed>`.
    With `settings` (`KEY=VALUE`, see `apply_settings`), every experiment runs changed so, under the name
    `<experiment>[_seed<seed>]_<tag>`."""
    if settings and not tag:
        sys.exit("same_results_on_cpu: --set needs --tag, the suffix that names the changed runs")
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import unified_vision
    from unified_vision.cli import profile_config
    from unified_vision.core import load_yaml, resolve_experiment
    from unified_vision.data.synthetic import generate_dataset
    from unified_vision.engine.experiment import run_evaluation, run_training
    print("code:", unified_vision.__file__, file=sys.stderr)
    params = load_yaml(Path(os.getcwd()) / "params.yaml")
    if profile_name == "smoke":
        data = Path("/tmp/smoke_data")
        if not (data / "coco").exists():
            _, profile = profile_config(params, "smoke")
            generate_dataset(data, profile["data"]["synthetic"], seed=profile["data"]["seed"], progress=False)
    out = {}
    for experiment in names:
        cfg = resolve_experiment(params, experiment, profile_name)
        name = experiment
        if seed is not None:
            cfg["seed"], name = seed, f"{experiment}_seed{seed}"
        if settings:
            cfg, name = apply_settings(cfg, list(settings)), f"{name}_{tag}"
        if profile_name == "smoke":
            cfg["data"]["root"] = str(data)
            cfg["model"]["backbone"]["pretrained"] = False
        else:
            backbone = cfg["model"]["backbone"]
            if "pretrained" in backbone:
                backbone["pretrained"] = _kept_checkpoint(backbone["pretrained"], keep)
            needed = [Path(cfg["data"]["root"])] + [Path(p) for p in [backbone.get("pretrained")] if isinstance(p, str)]
            missing = [str(p) for p in needed if not p.exists()]
            if missing:
                sys.exit(f"same_results_on_cpu: {', '.join(missing)} missing; `dvc repro data pretrain` makes them "
                         "(a backbone trained by another experiment: name that experiment first, with --keep)")
        run_dir = Path(tempfile.mkdtemp()) if keep is None else keep / name
        run_dir.mkdir(parents=True, exist_ok=True)
        trainer = run_training(cfg, run_dir, progress=False)
        metrics = run_evaluation(cfg, run_dir / "model.pt", progress=False)
        metrics.pop("cost_infer_ms", None)
        out[name] = {"weights": weights_digest(trainer.model.state_dict()), "losses": [r["loss"] for r in trainer.history],
                     "metrics": metrics, "profile": profile_name, "train_seconds": round(trainer.seconds, 1),
                     "history": loss_history(trainer.history), **({"settings": list(settings), "tag": tag} if settings else {})}
        print(name, out[name]["weights"], file=sys.stderr)
    return out


def _train_time(a: dict | None, b: dict | None) -> str:
    "Training seconds of both runs and their ratio (records from before the field existed show -)."
    if not (a and b and a.get("train_seconds") and b.get("train_seconds")):
        return "- | - | -"
    return f"{a['train_seconds']:.1f} | {b['train_seconds']:.1f} | {b['train_seconds'] / a['train_seconds']:.2f}x"


def compare(old: dict, new: dict, old_label: str, new_label: str) -> str:
    rows = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        same = {part: a is not None and b is not None and a[part] == b[part] for part in ("weights", "losses", "metrics")}
        rows.append(f"| {name} | {a['weights'] if a else '-'} | {b['weights'] if b else '-'} | "
                    + " | ".join("same" if same[p] else "**different**" for p in same) + f" | {_train_time(a, b)} |")
    verdict = "identical" if all("different" not in r for r in rows) else "NOT identical"
    profiles = sorted({r.get("profile", "smoke") for r in [*old.values(), *new.values()]})
    return f"""# Same results on the CPU before and after a code change

Written by `python analysis/same_results_on_cpu.py compare`: each `{'`/`'.join(profiles)}` experiment trained and evaluated with
{old_label} and with {new_label}, on the same machine; weights as a SHA-256 prefix of every tensor of the trained model,
losses the logged training losses, metrics every evaluation number but the timing. Verdict: **{verdict}**. Training
seconds (the whole `run_training`, one run each, so subject to the machine's other load) are information, not part of
the verdict.

| experiment | weights, {old_label} | weights, {new_label} | weights | losses | metrics | train s, before | train s, after | after / before |
|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run"); r.add_argument("experiments", nargs="+")
    r.add_argument("--profile", choices=["smoke", "mini"], default="smoke")
    r.add_argument("--seed", type=int, help="run every experiment with this seed, named <experiment>_seed<SEED>")
    r.add_argument("--keep", type=Path, help="keep each run in KEEP/<experiment>/; backbones trained there are used by later experiments")
    r.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                   help="change the resolved configuration (dotted key, YAML value; repeatable), e.g. heads.unihead.dim=128")
    r.add_argument("--tag", help="with --set: the runs are named <experiment>[_seed<N>]_<TAG>")
    c = sub.add_parser("compare"); c.add_argument("old"); c.add_argument("new")
    c.add_argument("--old-label", default="the old code"); c.add_argument("--new-label", default="the new code")
    c.add_argument("--out", type=Path, default=Path(__file__).with_suffix(".md"))
    args = p.parse_args()
    if args.cmd == "run":
        print(json.dumps(run(args.experiments, args.profile, args.keep, args.seed, tuple(args.settings), args.tag), sort_keys=True))
    else:
        text = compare(json.loads(Path(args.old).read_text()), json.loads(Path(args.new).read_text()),
                       args.old_label, args.new_label)
        out = args.out
        out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
