"""Wall time of the DVC pipeline per stage, and training throughput / peak memory per framework.

    python benchmarks/bench_pipeline.py --profile smoke            # in a scratch copy of the repository
    python benchmarks/bench_pipeline.py --profile smoke --one-repro   # the same, as one `dvc repro`, as a user runs it
    python benchmarks/bench_pipeline.py --profile mini --in-place  # the main job itself, in this repository
    python benchmarks/bench_pipeline.py --profile mini --in-place --stale   # only the stages dvc.lock says are out of date
    python benchmarks/bench_pipeline.py --profile mini --in-place --stages train_unihead@x evaluate_unihead@x   # these stages

Each stage is run on its own (`dvc repro --single-item --force <stage>`, in pipeline order) and timed from
outside, so the times include process and notebook-kernel start-up (and DVC's own start, once per stage). With
`--one-repro` the whole pipeline is one `dvc repro`, as a user runs it (DVC starts once), and a stage's time is read
from DVC's output: from its "Running stage" line to the next one. Training images/s and peak resident
memory come from the `logs/<experiment>/timing.json` that each training notebook writes. The Markdown
goes to benchmarks/results/pipeline_<profile>.md (collected into BENCHMARKS.md by make_benchmarks.py).
"""
import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPY = ["params.yaml", "dvc.yaml", "paper_numbers.yaml", ".dvcignore", "unified_vision", "nbs/experiments", "kernels/csrc"]


def _env() -> dict:
    "This interpreter's environment first on PATH (its dvc, its python), offline hub."
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}


def run(args, cwd):
    r = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(args)} failed in {cwd} (exit {r.returncode}):\n{(r.stdout + r.stderr)[-4000:]}")
    return r.stdout


def scratch_copy(profile: str) -> Path:
    repo = Path(tempfile.mkdtemp(prefix=f"bench_{profile}_"))
    for name in COPY:
        src, dst = ROOT / name, repo / name
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.failed.ipynb"))
        else:
            dst.parent.mkdir(parents=True, exist_ok=True); shutil.copy(src, dst)
    params = repo / "params.yaml"
    params.write_text(re.sub(r"^profile: \w+", f"profile: {profile}", params.read_text(), flags=re.M))
    run(["git", "init", "-q"], repo); run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)                  # dvclive needs a repository with a commit
    run(["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-q", "-m", "scratch"], repo)
    return repo


PREREQUISITES = ("data", "configs", "pretrain")


def stages(repo: Path) -> list[str]:
    "Pipeline order: data, configs, pretrain, then each experiment's training and evaluation in params order, tables."
    import yaml
    names = set(run(["dvc", "stage", "list", "--name-only"], repo).split())
    params = yaml.safe_load((repo / "params.yaml").read_text())
    experiments = [e for key, group in params.items() if key == "experiments" or (key.endswith("_experiments") and key != "coco_experiments")
                   for e in group]
    order = [n for n in PREREQUISITES if n in names]
    for e in experiments:   # train@<e> and evaluate@<e>, or the per-paper group's train_<paper>@<e> and evaluate_<paper>@<e>
        order += sorted((n for n in names if n.split("@")[-1] == e and n.split("@")[0].split("_")[0] in ("train", "evaluate")),
                        key=lambda n: not n.startswith("train"))
    return order + sorted(names - set(order) - {"tables"}) + (["tables"] if "tables" in names else [])


def time_stages(repo: Path, progress: Path, resume: bool = False, only: list[str] | None = None) -> dict:
    """Run and time every stage (or those of `only`); the times so far are saved to `progress` after each one. With
    `resume`, stages already timed there are skipped (the prerequisites are rerun only when `dvc status` says they changed)."""
    times = json.loads(progress.read_text()) if (resume or only is not None) and progress.exists() else {}
    for name in stages(repo) if only is None else only:
        if resume and name in times and name != "tables":
            if name not in PREREQUISITES or _up_to_date(repo, name):
                continue
        start = time.perf_counter()
        run(["dvc", "repro", "--single-item", "--force", name], repo)
        times[name] = time.perf_counter() - start
        progress.write_text(json.dumps(times, indent=1))
        _record_day(progress, name)
        print(f"{name}: {times[name]:.1f} s", flush=True)
    return times


RUNNING = re.compile(r"^Running stage '([^']+)'")


def stage_times_from_output(lines: list[tuple[float, str]], end: float) -> dict:
    """Per-stage wall time from the timestamped output lines of one `dvc repro`: each stage runs from its
    "Running stage '<name>'" line to the next stage's (the last one to `end`), DVC's hashing and lock update included."""
    starts = [(m.group(1), t) for t, line in lines if (m := RUNNING.match(line.strip()))]
    return {name: (starts[i + 1][1] if i + 1 < len(starts) else end) - t for i, (name, t) in enumerate(starts)}


def time_one_repro(repo: Path, progress: Path) -> dict:
    "Run the whole pipeline as one `dvc repro` and time each stage from its output, which is echoed as it comes."
    start, lines = time.perf_counter(), []
    proc = subprocess.Popen(["dvc", "repro"], cwd=repo, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        lines.append((time.perf_counter() - start, line))
        if RUNNING.match(line.strip()):
            print(f"[{lines[-1][0]:7.1f} s] {line.strip()}", flush=True)
    if proc.wait() != 0:
        sys.exit(f"dvc repro failed in {repo} (exit {proc.returncode}):\n{''.join(l for _, l in lines)[-4000:]}")
    times = stage_times_from_output(lines, time.perf_counter() - start)
    progress.write_text(json.dumps(times, indent=1))
    _days_file(progress).write_text(json.dumps({k: time.strftime("%Y-%m-%d") for k in times}, indent=1))  # all from this run
    return times


def _days_file(progress: Path) -> Path:
    return progress.with_name(progress.name.replace(".times.json", ".days.json"))


def _record_day(progress: Path, stage: str) -> None:
    "When each stage was timed: a resumed run mixes sessions, which may have had different machines."
    path = _days_file(progress)
    days = json.loads(path.read_text()) if path.exists() else {}
    days[stage] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(days, indent=1))


def _sessions_note(progress: Path, times: dict) -> str:
    path = _days_file(progress)
    days = json.loads(path.read_text()) if path.exists() else {}
    by_day = {}
    for k in times:
        by_day.setdefault(days.get(k, "an earlier session"), []).append(k)
    if len(by_day) < 2:
        return ""
    parts = [f"{len(v)} on {d}" + (f" ({', '.join(v)})" if len(v) <= 20 else "") for d, v in sorted(by_day.items())]
    return ("Stages timed in different sessions (`--resume`), which may have run on different machines of this kind: "
            + "; ".join(parts) + ". Compare stages timed in the same session.")


def stale_stages(status: dict, order: list[str], have_output) -> list[str]:
    """The stages of `order` whose result `dvc.lock` no longer vouches for, from `dvc status --json`: a changed command
    or a modified dependency (code, configuration, an upstream checkpoint). A stage whose only change is an output
    missing from this machine's cache (a fresh clone's checkpoints) is up to date. A rerun training reruns its
    evaluation; a stale evaluation whose checkpoint is missing here (`have_output(train stage)` false) retrains it."""
    def changed(dep_state) -> bool:
        # a file dependency reports "modified"; a params file reports {param: "modified" | "new" | "deleted"}, and
        # any entry there is a changed configuration (an experiment added to or removed from params.yaml)
        return dep_state == "modified" or (isinstance(dep_state, dict) and len(dep_state) > 0)

    def stale(name):
        for entry in status.get(name, []):
            if entry == "changed command":
                return True
            if isinstance(entry, dict) and any(changed(v) for v in entry.get("changed deps", {}).values()):
                return True
        return False
    todo = {n for n in order if stale(n)}
    for n in order:
        kind, _, exp = n.partition("@")
        if exp and kind.startswith("evaluate") and n in todo:
            train = "train" + kind[len("evaluate"):] + "@" + exp
            if train in order and not have_output(train):
                todo.add(train)
    for n in list(todo):
        kind, _, exp = n.partition("@")
        if exp and kind.startswith("train"):
            todo.add("evaluate" + kind[len("train"):] + "@" + exp)
    if todo:
        todo.add("tables")
    return [n for n in order if n in todo]


def _trained_here(repo: Path, stage: str) -> bool:
    return (repo / "runs" / stage.partition("@")[2] / "model.pt").exists()


def _up_to_date(repo: Path, stage: str) -> bool:
    return "changed" not in run(["dvc", "status", stage], repo)


def study_only_experiments(params: dict) -> set[str]:
    """The experiments that only tables other than the paper's own (`unihead_table<N>`) show: the added seed, optimizer,
    schedule and variant study of results/unihead_noise.md. A run that a paper table needs, even indirectly (Table 8's
    backbone pretrainings are in no table), is not one of them."""
    from unified_vision.engine.tables import experiments_of   # the tables stage's own reading of a table's rows
    in_paper, in_other = set(), set()
    for key, table in params.get("tables", {}).items():
        (in_paper if re.fullmatch(r"unihead_table\d+", key) else in_other).update(experiments_of(table))
    return in_other - in_paper


def report(profile: str, repo: Path, times: dict, one_repro: bool = False) -> str:
    total = sum(times.values())
    runs = {k: v for k, v in times.items() if k.split("@")[0].split("_")[0] in ("train", "evaluate")}
    is_baseline = lambda k: k.split("@")[0] in ("train", "evaluate")   # the `experiments` group; paper groups are train_<paper>@
    baseline = sum(v for k, v in runs.items() if is_baseline(k))
    unihead = sum(v for k, v in runs.items() if not is_baseline(k))
    import yaml
    study = study_only_experiments(yaml.safe_load((repo / "params.yaml").read_text()))
    in_study = lambda k: not is_baseline(k) and k.split("@")[-1] in study
    study_time = sum(v for k, v in runs.items() if in_study(k))
    lines = [f"### Pipeline `{profile}`", "", f"Measured on {platform.node() and 'this machine'}: {os.cpu_count()} cores, "
             f"`torch.set_num_threads` from params (`train.threads`), "
             + ("one `dvc repro` of the whole pipeline (DVC started once, as a user runs it; a stage's time from DVC's "
                "output, its start to the next stage's). " if one_repro else "`dvc repro` stage by stage (DVC started per stage). ")
             + f"Total wall time: "
             f"**{total / 60:.1f} min**; the baseline detectors' stages (`train@*` and `evaluate@*`, the `experiments` group): "
             f"**{baseline / 60:.1f} min**; the UniHead experiments' stages (all other `train@`/`evaluate@`): "
             f"**{unihead / 60:.1f} min** over {sum(not is_baseline(k) for k in runs) // 2} experiments. Of these, the runs "
             f"that the paper's own tables need (results/unihead_table1-9.md, with Table 8's backbone pretrainings): "
             f"**{(unihead - study_time) / 60:.1f} min** over {sum(not is_baseline(k) and not in_study(k) for k in runs) // 2} "
             f"experiments; the added seed, optimizer, schedule and variant study that only results/unihead_noise.md shows: "
             f"**{study_time / 60:.1f} min** over {sum(in_study(k) for k in runs) // 2}.", "", "| stage | wall time (s) |", "|---|---|"]
    note = _sessions_note(ROOT / "benchmarks" / "results" / f"pipeline_{profile}.times.json", times)
    lines[-2:-2] = [note, ""] if note else []
    lines += [f"| {k} | {v:.1f} |" for k, v in times.items()]
    lines += ["", "| experiment | iterations | training s/iter | training images/s | peak RSS of the training kernel (MB) |", "|---|---|---|---|---|"]
    for t in sorted((repo / "logs").glob("*/timing.json")):
        name = t.parent.name
        if not (name in times or any(k.split("@")[0].startswith("train") and k.endswith(f"@{name}") for k in times)):
            continue   # a log of an earlier run
        d = json.loads(t.read_text())
        lines.append(f"| {t.parent.name} | {d['iterations']} | {d['s_per_iter']} | {d['images_per_s']} | {d['peak_rss_mb']} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--profile", default="smoke")
    p.add_argument("--in-place", action="store_true", help="run in this repository (updates dvc.lock and results/)")
    p.add_argument("--resume", action="store_true", help="skip the stages a previous (interrupted) in-place run already timed")
    p.add_argument("--stale", action="store_true", help="run only the stages `dvc status` says are out of date (in place)")
    p.add_argument("--one-repro", action="store_true", help="one `dvc repro` of the whole pipeline in a scratch copy, "
                   "timed from its output (what a user waits for), instead of one `dvc repro` per stage")
    p.add_argument("--stages", nargs="+", metavar="STAGE", help="run and time only these stages, in place, in pipeline "
                   "order, adding their times to the saved ones (an experiment added to params.yaml)")
    p.add_argument("--report-only", action="store_true", help="write the Markdown from the times saved so far (an unfinished run)")
    args = p.parse_args()
    repo = ROOT if args.in_place else scratch_copy(args.profile)
    if args.in_place:
        cur = re.search(r"^profile: (\w+)", (ROOT / "params.yaml").read_text(), re.M).group(1)
        assert cur == args.profile, f"params.yaml names profile {cur}; in-place runs use the profile params.yaml names"
    progress = ROOT / "benchmarks" / "results" / f"pipeline_{args.profile}.times.json"
    out = progress.with_name(f"pipeline_{args.profile}.md")
    if args.report_only:
        times = json.loads(progress.read_text())
        todo = [n for n in stages(repo) if n not in times]
        text = report(args.profile, repo, times, one_repro=args.one_repro)
        if todo:
            text += f"\n**Unfinished run**: {len(todo)} of {len(todo) + len(times)} stages not run yet ({', '.join(todo[:6])}{', ...' if len(todo) > 6 else ''}).\n"
        out.write_text(text)
        print(text)
        return
    only = None
    if args.stale:
        assert args.in_place, "--stale updates this repository's dvc.lock: use it with --in-place"
        status = json.loads(run(["dvc", "status", "--json"], repo) or "{}")
        only = stale_stages(status, stages(repo), lambda n: _trained_here(repo, n))
        print(f"{len(only)} stages out of date: {', '.join(only)}", flush=True)
    if args.stages:
        assert args.in_place, "--stages updates this repository's dvc.lock: use it with --in-place"
        order = stages(repo)
        unknown = sorted(set(args.stages) - set(order))
        assert not unknown, f"not stages of this pipeline: {', '.join(unknown)} (see `dvc stage list`)"
        only = [n for n in order if n in args.stages]
    if args.one_repro:
        assert not args.in_place, "--one-repro times a fresh pipeline: run it in a scratch copy (without --in-place)"
        times = time_one_repro(repo, progress)
    else:
        times = time_stages(repo, progress, resume=args.resume and args.in_place, only=only)
    out.write_text(report(args.profile, repo, times, one_repro=args.one_repro))
    print(out.read_text())
    if not args.in_place:
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main()
