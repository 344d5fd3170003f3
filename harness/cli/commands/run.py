"""``bench run``: expand the matrix, obtain or compute every cell, print the leaderboard.

``bench`` with no arguments runs the default matrix below on the synthetic dataset.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from aprbench.harness.cli.commands.common import add_device_options, add_progress_options, add_recipe_options, device_from_args
from aprbench.harness.errors import BenchError
from aprbench.harness.running.matrix import NONE, Axes, TeacherSpec, expand, flatten, parse_list, shard, validate
from aprbench.harness.api.manager import get_manager
from aprbench.harness.api.recipes import check_overrides, check_profile, parse_sets, resolve
from aprbench.harness.running.stages.chain import split_name
from aprbench.harness.store.replay import Replay, options_of
from aprbench.harness.store.hdf5 import Store

# measured: `bench` in an empty folder, quick profile, seed 0, synthetic, by worker processes (README)
DEFAULT_COLD_RUN = {
    1: "no earlier run here; the default matrix took about 5-6 min in one process on an idle 2-core CPU when that "
       "process trained at two threads (models now train at their recipe's threads, 1: expect longer)",
    2: "no earlier run here; the default matrix takes about 3½ min with two worker processes on an idle 2-core CPU",
}
MAX_SEEDS = 1000  # a count beyond this is a typo (each seed trains every model of the matrix again)
MAX_ITERATIONS = 1000  # refinement steps a refiner cell runs and stores (I x N x 7 estimates)
QUIET_OPTIONS = ("no_progress", "quiet")  # options that change how a run looks, not what it prints at the end

DEFAULT_MATRIX = {
    "teacher": ["posenet-mobilenet@room", "mstransformer"],
    "student": [NONE, "pae"],
    "encode": ["estimate", "ground_truth"],
    "refiner": [NONE, "pae-rpr"],
    "iterations": "0,1,3",
    "decoder": ["image-decoder@posenet-mobilenet"],
}


def register(commands) -> None:
    p = commands.top.add_parser(
        "run", parents=[commands.common], help="run a teacher x student x refiner x iterations x fraction x seed matrix",
        description="Expand every compatible combination into cells, obtain each model from the store or train it "
        "with its recipe, evaluate every cell on the test split, cache it in HDF5 and print the leaderboard. "
        "With no axis options, runs the default matrix (posenet-mobilenet on room, mstransformer on room+site, "
        "pae with both encodings, pae-rpr for 1 and 3 iterations, the image decoder on the PoseNet PAE).",
    )
    p.add_argument("--dataset", default="synthetic", help="dataset NAME[:key=value,...] (default synthetic)")
    p.add_argument("--scenes", nargs="+", metavar="SCENE", help="restrict to these scenes")
    p.add_argument("--teacher", nargs="+", action="extend", metavar="T",
                   help="teachers: NAME, NAME@scene+scene (pin scenes), NAME=WEIGHTS.pth (use given weights)")
    p.add_argument("--student", nargs="+", action="extend", metavar="S",
                   help="students (pae, pae-shallow, ...; NAME=WEIGHTS.pth; 'none' = teacher alone)")
    p.add_argument("--encode", nargs="+", action="extend", metavar="E", help="what students encode in training: estimate, ground_truth")
    p.add_argument("--refiner", nargs="+", action="extend", metavar="R", help="refiners (pae-rpr, image-rpr, pae-knn, pae-knn-closed, or a plugin's; NAME=WEIGHTS.pth; 'none')")
    p.add_argument("--iterations", help="refinement iterations to show, comma-separated, e.g. 0,1,3 (a refiner cell runs the "
                   "largest once and stores every step; default: each refiner recipe's `iterations`)")
    p.add_argument("--fraction", help="training-data fractions, comma-separated, e.g. 1.0,0.3")
    p.add_argument("--seeds", help="training seeds, comma-separated (0,1,2; seed 4 alone: 4,), or a count "
                                   "(3 means 0,1,2); default 0")
    p.add_argument("--seed", type=int, help="one training seed: --seed 4 is --seeds 4, (as in bench train)")
    p.add_argument("--decoder", nargs="+", action="extend", metavar="D", help="decoders scored on every teacher x student (the student trained with the first --encode value); "
                   "NAME@TEACHER limits one to that teacher")
    add_recipe_options(p)
    add_device_options(p)
    p.add_argument("--shard", metavar="i/n", help="run only slice i of n (0 <= i < n) of the cells, e.g. for a Slurm array")
    p.add_argument("--launcher", default="none", choices=["none", "local", "slurm"],
                   help="run the shards as a job array through submitit: slurm (sbatch), local (processes on this "
                   "machine); none (default) runs here")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="number of jobs (shards) for --launcher; without one, N worker processes on this machine, "
                   "whole teacher chains each, progress shown here (default on a CPU: one per teacher chain with work "
                   "left, up to the cores; each model runs at its recipe's threads, so any N gives the same numbers; "
                   "1 runs everything in this process; or $BENCH_JOBS)")
    p.add_argument("--slurm", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="submitit executor parameters for --launcher, e.g. slurm_partition=gpu timeout_min=120 "
                   "gpus_per_node=1 cpus_per_task=8 mem_gb=32 (defaults: one GPU, 8 CPUs, 24 h per job)")
    p.add_argument("--format", default="github", help="leaderboard format: github, latex, html, plain, csv")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/PNG report")
    add_progress_options(p)
    p.add_argument("--recompute", action="append", metavar="NAME",
                   help="compute again the stored cells of this run that use model NAME (any kind), with NAME's "
                   "weights and those of the models after it in their chains (repeatable)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --jobs' processes: cells only
    p.set_defaults(func=run)


def parse_seeds(text: str | None) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a single count ``"3"`` -> [0, 1, 2]; ``None`` -> [0]."""
    if text is None:
        return [0]
    values = parse_list(text, int, "--seeds")
    if len(values) == 1 and "," not in text:
        if not 1 <= values[0] <= MAX_SEEDS:
            raise BenchError(f"--seeds {text}: a count must be in 1..{MAX_SEEDS} (or list seeds: 0,1,2; seed N alone: N,)")
        return list(range(values[0]))
    if not values:
        raise BenchError(f"--seeds {text}: expected integers, e.g. 0,1,2 (or a count: 3)")
    return distinct("--seeds", values)


def distinct(option: str, values: list | None) -> list | None:
    """``values`` with repeats merged (first occurrence kept), a note on stderr naming each repeated one: a cell
    given twice is run and counted once (a repeated value is never a second seed)."""
    if values is None:
        return None
    kept = list(dict.fromkeys(values))
    repeated = [v for v in kept if values.count(v) > 1]
    if repeated:
        print(f"bench: note: {option} {', '.join(map(str, repeated))} given more than once; merged "
              "(each cell runs and counts once)", file=sys.stderr)
    return kept


def _iterations(text: str | None) -> list[int] | None:
    """``--iterations 0,1,3`` (each in 0..MAX_ITERATIONS)."""
    if text is None:
        return None
    values = parse_list(text, int, "--iterations")
    for k in values:
        if k > MAX_ITERATIONS:
            raise BenchError(f"--iterations {k}: at most {MAX_ITERATIONS} refinement steps")
    return values


def axes_from_args(args: argparse.Namespace) -> Axes:
    """The matrix axes the options name (the default matrix when no teacher is given)."""
    default = args.teacher is None
    axis = lambda name, given: given if given is not None else (DEFAULT_MATRIX[name] if default else None)  # noqa: E731
    iterations = axis("iterations", args.iterations)
    return Axes(
        dataset=args.dataset.split(":", 1)[0],
        teachers=distinct("--teacher", flatten(axis("teacher", args.teacher))),
        students=distinct("--student", flatten(axis("student", args.student) or [NONE])),
        encodes=distinct("--encode", flatten(axis("encode", args.encode) or ["estimate"])),
        refiners=distinct("--refiner", flatten(axis("refiner", args.refiner) or [NONE])),
        iterations=distinct("--iterations", _iterations(iterations)),
        fractions=distinct("--fraction", parse_list(args.fraction or "1.0", float, "--fraction")),
        decoders=distinct("--decoder", flatten(axis("decoder", args.decoder) or [])),
        seeds=_seeds(args),
    )


def _seeds(args: argparse.Namespace) -> list[int]:
    """``--seeds``, or the one seed of ``--seed`` (not both)."""
    seed = getattr(args, "seed", None)
    if seed is None:
        return parse_seeds(args.seeds)
    if args.seeds is not None:
        raise BenchError("--seed and --seeds: give one of them (--seeds 0,1,2 or a count; --seed N for seed N alone)")
    if not 0 <= seed:
        raise BenchError(f"--seed {seed}: a seed is an integer >= 0")
    return [seed]


def run(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    # every option is checked before any data is opened or model trained
    axes = axes_from_args(args)
    _check_launcher(args)
    store = Store(args.workdir)
    options = {**options_of(args, QUIET_OPTIONS), "set_files": set_files_digest(args.set)}
    replay = None if args.shard or args.worker or args.recompute else Replay(store.root, "run", options, args.plugin)
    recorded = replay.load() if replay else None
    if recorded is not None and (args.no_report or Path(recorded["report"]).is_file()):
        return _print_run(recorded, store, time.perf_counter() - start, args.no_report, replayed=True)
    return _run(args, axes, store, replay, start)


def set_files_digest(sets: list[str] | None) -> dict[str, str]:
    """Content hashes of the files ``--set`` values name (``teacher.pretrained_file=pre.pth``): other weights under
    the same name are another command for the replay record."""
    import hashlib

    out = {}
    for o in parse_sets(sets):
        path = Path(o.value).expanduser() if isinstance(o.value, str) and o.value else None
        if path is not None and path.is_file():
            h = hashlib.sha256()
            with open(path, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
            out[o.text] = h.hexdigest()[:16]
    return out


def _check_launcher(args: argparse.Namespace) -> None:
    """Refuse launcher options that do not go together, before anything runs."""
    if args.launcher == "none":
        # a launched job runs the launcher's command again with `--launcher none --shard i/N` appended
        if args.slurm and not args.shard:
            raise BenchError("--slurm needs --launcher slurm or --launcher local")
        if args.jobs is not None and args.jobs < 1:
            raise BenchError(f"--jobs {args.jobs}: need at least 1 (1 runs every cell in this process)")
        return
    if args.shard:
        raise BenchError(f"--launcher {args.launcher} shards the matrix itself: leave out --shard")
    if args.jobs is None or args.jobs < 1:
        raise BenchError(f"--launcher {args.launcher} needs --jobs N (N >= 1), the number of shards to submit")
    from aprbench.harness.running.launch import parse_parameters

    parse_parameters(args.slurm)


def _print_run(out: dict, store: Store, seconds: float, no_report: bool, replayed: bool = False) -> int:
    """What a run prints after its cells are done: refused combinations, the leaderboard, the summary."""
    if replayed:
        sys.stderr.write(out.get("notes", ""))
    if out["refused"]:
        print(f"refused {len(out['refused'])} combination(s):", file=sys.stderr)
        for what, why in out["refused"]:
            print(f"  {what}: {why}", file=sys.stderr)
    sys.stderr.write(out["board_stderr"])
    sys.stdout.write(out["board"])
    cached = out["total"] - out["computed"] - len(out["failed"]) if not replayed else out["total"]
    computed = 0 if replayed else out["computed"]
    print(f"\n{out['total']} cell(s) in this run: {cached} from the store, {computed} computed, "
          f"{len(out['failed'])} failed ({seconds:.1f} s); work directory {store.root}")
    if not no_report and out.get("report"):
        print(f"report: {out['report']}" + (" (unchanged)" if replayed else ""))
    if out["failed"]:
        print(f"\n{len(out['failed'])} cell(s) failed (details in {store.root / 'cells'}/*.failed.json):", file=sys.stderr)
        for what, why in out["failed"]:
            print(f"  {what}: {why}", file=sys.stderr)
        return 1
    return 0


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _keep_times(store: Store) -> None:
    """Keep this run's stage times as the estimate of the next (a read-only work directory keeps none)."""
    from aprbench.harness.running.progress import TIMES

    try:
        TIMES.save(store.timings_path())
    except OSError:
        pass


def _run(args: argparse.Namespace, axes: Axes, store: Store, replay: Replay | None, start: float) -> int:
    """Check the options, plan the cells, compute those not stored, print the leaderboard and the summary."""
    from aprbench.harness.running.progress import TIMES, mode_from_args

    TIMES.seconds.clear()  # this run's stages only
    device, precision, overrides, manager = _checked_options(args, axes)
    data, plan, runner = _planned(args, axes, store, manager, overrides, device, precision)
    if args.worker:
        return _work(args, runner, plan)
    mode = mode_from_args(args)
    summary, fps, jobs, notes = _computed(args, runner, plan, store, device, mode)
    unmeasured = _costs(args, runner, plan, store, fps, mode)
    out, status = _shown(args, store, manager, plan, summary, fps, notes)
    _say_times(summary, mode, jobs, args.launcher, start)
    if replay is not None and not summary.failed and not unmeasured:  # the next run re-measures: not replayed
        _remember(args, axes, replay, out, plan, data, store)
    return status


def _checked_options(args: argparse.Namespace, axes: Axes):
    """``(device, precision, overrides, plugin manager)``: every option checked before any data is opened."""
    from aprbench.harness.results import leaderboard

    if args.format not in leaderboard.FORMATS:
        raise BenchError(f"--format {args.format!r}: expected one of {', '.join(leaderboard.FORMATS)}")
    device, precision = device_from_args(args)
    overrides = parse_sets(args.set)
    manager = get_manager(args.plugin)
    registry = manager.registry()
    check_profile(args.profile, registry)  # a plugin's recipe tables may name profiles of their own
    validate(axes, registry)
    shard([], [], args.shard)  # a malformed --shard is refused before any work
    used = {"teacher": [TeacherSpec.parse(t).name for t in axes.teachers]}
    for kind, values in (("student", axes.students), ("refiner", axes.refiners), ("decoder", axes.decoders)):
        used[kind] = [split_name(v.partition("@")[0])[0] for v in values if v != NONE]
    check_overrides(registry, overrides, used)
    for kind, names in used.items():
        for name in names:
            resolve(registry, kind, name, axes.dataset, args.profile, overrides)
    unknown = [n for n in args.recompute or [] if not any(n in names for names in used.values())]
    if unknown:
        models = sorted({n for names in used.values() for n in names})
        raise BenchError(f"--recompute {unknown[0]}: no model of this run has that name (its models: "
                         f"{', '.join(models)})")
    return device, precision, overrides, manager


def _planned(args: argparse.Namespace, axes: Axes, store: Store, manager, overrides, device, precision):
    """``(data, plan, runner)``: the dataset opened, the matrix expanded (refused combinations said) and its runner."""
    import time

    from aprbench.harness.data.datasets import open_dataset
    from aprbench.harness.running.progress import TIMES, mode_from_args
    from aprbench.harness.running.runner import MatrixRunner

    t0 = time.perf_counter()
    name, data = open_dataset(args.dataset, store, manager.registry(), scenes=args.scenes, profile=args.profile)
    TIMES.add("render/data", time.perf_counter() - t0)
    plan = expand(axes, data, manager.registry(), args.profile, overrides)
    if plan.refused and not args.worker:  # said before the (long) run as well as with its results
        print(f"refused {len(plan.refused)} combination(s):", file=sys.stderr)
        for what, why in plan.refused:
            print(f"  {what}: {why}", file=sys.stderr)
    if not plan.cells:
        raise BenchError("no compatible cells to run")
    runner = MatrixRunner(store, manager, data, name, args.profile, overrides, progress=mode_from_args(args),
                          device=device, precision=precision, log=args.log)
    plan.cells = _distinct_cells(plan.cells, runner, quiet=args.worker)
    return data, plan, runner


def _distinct_cells(cells: list, runner, quiet: bool = False) -> list:
    """The plan's cells with those of equal fingerprints (the same teacher named twice, e.g. ``NAME`` and
    ``NAME@room`` on a one-scene dataset, or one weights file by two paths) merged, with a note."""
    seen: dict[str, object] = {}
    for cell in cells:
        seen.setdefault(runner.fingerprint(cell), cell)
    if len(seen) < len(cells) and not quiet:
        print(f"bench: note: {len(cells) - len(seen)} cell(s) named twice by the axes (the same model and data); "
              "merged (each runs and counts once)", file=sys.stderr)
    return list(seen.values())


def _computed(args: argparse.Namespace, runner, plan, store: Store, device, mode: str):
    """``(summary, fingerprints, jobs, notes)``: the plan's cells obtained from the store or computed, here, in
    worker processes or as launched jobs; ``--recompute`` models forgotten first; a source changed under an
    unchanged VERSION said once (``notes``, said again when the run is replayed)."""
    fps = [runner.fingerprint(c) for c in plan.cells]
    if args.recompute:
        _forget(args, runner, plan, fps, store)
    notes = _note_changed_sources(runner, fps, store)
    jobs = _jobs(args, runner, plan, device, fps)
    if args.launcher != "none":
        summary, fps = _launch(args, runner, plan, store, fps)
    elif jobs > 1:
        summary, fps = _run_workers(args, runner, plan, store, jobs, mode, fps)
    else:
        summary, fps = runner.run(plan, args.shard, first_run=_first_run(args, 1))
    return summary, fps, jobs, notes


def _costs(args: argparse.Namespace, runner, plan, store: Store, fps: list[str], mode: str) -> bool:
    """Re-measure the ms/frame of the run's new pose cells now that no worker trains
    (:func:`harness.running.costs.remeasure`); not in a shard or under a launcher, whose neighbours may still be
    training. True when a stored pose cell of the run is left without a re-measured cost."""
    import time

    from aprbench.harness.running.costs import remeasure, unmeasured
    from aprbench.harness.running.progress import TIMES

    if args.launcher != "none" or args.shard:
        return False
    t0 = time.perf_counter()
    if remeasure(runner, plan.cells, fps, say=None if mode == "quiet" else _say):
        TIMES.add("cost re-measurement", time.perf_counter() - t0)
    return bool(unmeasured(store, plan.cells, fps))


def _forget(args: argparse.Namespace, runner, plan, fps: list[str], store: Store) -> None:
    """``--recompute NAME``: remove this run's (this shard's) stored cells that use NAME, with NAME's weights and
    those of the models after it in their chains, so they are computed again."""
    from aprbench.harness.running.progress import say
    from aprbench.harness.store.housekeeping import forget

    mine = [fps[k] for k in shard(plan.cells, fps, args.shard)]
    cells, models = forget(store, mine, args.recompute)
    say(f"--recompute {', '.join(args.recompute)}: {cells} stored cell(s) and {models} trained model(s) removed; "
        "computing them again")


def _note_changed_sources(runner, fps: list[str], store: Store) -> str:
    """Say once per plugin when stored cells of this run were made by another source under the same VERSION;
    return what was said."""
    from aprbench.harness.api.identity import plugin_identity
    from aprbench.harness.store.housekeeping import changed_sources

    lines = []
    for (kind, name), count in changed_sources(store, runner.registry, fps).items():
        code = plugin_identity(runner.registry, kind, name)
        lines.append(f"bench: note: {kind} {name} ({code.origin}): its source changed since {count} stored cell(s) "
                     f"were computed, but its VERSION ({code.version}) did not, so they are reused; to recompute "
                     f"them, bump VERSION in its source or run with --recompute {name}\n")
    sys.stderr.write("".join(lines))
    return "".join(lines)


def _shown(args: argparse.Namespace, store: Store, manager, plan, summary, fps: list[str],
           notes: str = "") -> tuple[dict, int]:
    """Print the leaderboard, write the report and print the summary; return the record to replay and the status."""
    import contextlib
    import io
    import time

    from aprbench.harness.results import leaderboard
    from aprbench.harness.running.progress import TIMES

    t0 = time.perf_counter()
    board, board_err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(board_err):  # kept, to be said again when the run is replayed
            built = leaderboard.show(store, manager, fps, fmt=args.format, file=board)
    except BaseException:
        sys.stderr.write(board_err.getvalue())
        raise
    out = {"refused": [], "notes": notes, "board": board.getvalue(), "board_stderr": board_err.getvalue(), "total": summary.total,
           "computed": summary.computed, "failed": [list(f) for f in summary.failed], "report": None}
    if not args.no_report and not args.shard and not (args.launcher != "none" and summary.failed):
        from aprbench.harness.results.report import write_report

        out["report"] = str(write_report(store, store.report_dir(), fps, manager=manager, board=built))
    TIMES.add("leaderboard and report", time.perf_counter() - t0)
    if summary.computed:
        TIMES.add("evaluation per cell", TIMES.seconds.get("evaluation", 0.0) / summary.computed)
        _keep_times(store)
    status = _print_run(out, store, summary.seconds, args.no_report)  # refused combinations were said before
    out["refused"] = [list(r) for r in plan.refused]
    return out, status


def _say_times(summary, mode: str, jobs: int, launcher: str, start: float) -> None:
    """The time per stage of a run that computed something."""
    import time

    from aprbench.harness.running.progress import TIMES, StageTimes, duration

    if not summary.computed or mode == "quiet":
        return
    shown = {k: v for k, v in TIMES.seconds.items() if k != "evaluation per cell"}
    print("\ntime per stage:\n" + StageTimes.table_of(shown), file=sys.stderr)
    if jobs > 1 and launcher == "none":
        print(f"  ({jobs} worker processes ran side by side: the run took {duration(time.perf_counter() - start)} "
              "of wall-clock time)", file=sys.stderr)


def _remember(args: argparse.Namespace, axes: Axes, replay: Replay, out: dict, plan, data, store: Store) -> None:
    """Keep what the run printed, to replay it while nothing it read changes (:mod:`harness.store.replay`)."""
    from aprbench.harness.data.datasets import parse_dataset_spec

    given = [split_name(v.partition("@")[0])[1] for v in [*axes.teachers, *axes.students, *axes.refiners, *axes.decoders]]
    paths = [Path(v) for v in parse_dataset_spec(args.dataset)[1].values() if isinstance(v, str) and Path(v).exists()]
    paths += [Path(str(o.value)).expanduser() for o in parse_sets(args.set)  # --set …pretrained_file=: watched
              if isinstance(o.value, str) and o.value and Path(o.value).expanduser().exists()]
    report = [Path(out["report"])] if out["report"] else []
    replay.save(out, [data.root, store.root / "cells", *[g for g in given if g], *paths, *report])


def _launch(args: argparse.Namespace, runner, plan, store: Store, fps: list[str]):
    """Submit the plan's shards as jobs (``--launcher``), wait, and sum up what the store holds afterwards."""
    import time

    from aprbench.harness.cli.jobs import run_shard
    from aprbench.harness.running.launch import launch, parse_parameters

    start = time.perf_counter()
    before = {fp for fp in fps if store.cell_path(fp).is_file()}
    argv = without_option(args.argv, "--recompute")  # done here, once, before the jobs start
    outcomes = launch(args.launcher, args.jobs, argv, store.root, parse_parameters(args.slurm), job=run_shard)
    summary = _summary_from_store(plan, fps, store, before, "not computed (its job failed, see below)")
    bad = [o for o in outcomes if not o.ok]
    if bad:
        print(f"\n{len(bad)} of {len(outcomes)} job(s) failed:", file=sys.stderr)
        for o in bad:
            print(f"  job {o.job_id} (shard {o.shard}): {o.error}\n    log: {o.stderr} (stdout {o.stdout})", file=sys.stderr)
        if not summary.failed:
            summary.failed.append((f"{len(bad)} job(s)", "failed after their cells were stored"))
    summary.seconds = time.perf_counter() - start
    return summary, fps


def _summary_from_store(plan, fps: list[str], store: Store, before: set[str], missing: str):
    """What other processes did to the plan's cells: stored now (computed unless in ``before``), failed (their
    recorded error), or neither (``missing``)."""
    import json

    from aprbench.harness.running.runner import RunSummary

    summary = RunSummary(total=len(fps))
    for cell, fp in zip(plan.cells, fps):
        if store.cell_path(fp).is_file():
            summary.cached += fp in before
            summary.computed += fp not in before
        elif store.failure_path(fp).is_file():
            try:
                error = json.loads(store.failure_path(fp).read_text()).get("error", "failed")
            except (OSError, ValueError, AttributeError):  # a damaged record still says the cell failed
                error = f"failed (its record {store.failure_path(fp).name} is unreadable)"
            summary.failed.append((cell.describe(), str(error).splitlines()[0]))
        else:
            summary.failed.append((cell.describe(), missing))
    return summary


def _first_run(args: argparse.Namespace, jobs: int) -> str:
    """What the plan says about time when this work directory has no earlier run: the default matrix's
    measured cold time (README, "Progress, speed and the work directory")."""
    default = args.teacher is None and args.profile == "quick" and args.dataset == "synthetic" and not args.set
    seeds = len(_seeds(args))
    if not default:
        return ""
    return DEFAULT_COLD_RUN[min(jobs, 2)] + (f", for each of the {seeds} seeds" if seeds > 1 else "")


def _jobs(args: argparse.Namespace, runner, plan, device, fps: list[str]) -> int:
    """Worker processes for this run (:mod:`harness.running.workers`): ``--jobs``, else automatic when no shard or
    launcher is given and the cells to compute (fingerprints ``fps``) span several teacher chains."""
    if args.launcher != "none" or args.shard:
        return 1
    import os

    from aprbench.harness.running.workers import auto_jobs, cpu_cores

    todo = {cell.chain() for cell, fp in zip(plan.cells, fps) if not runner.store.cell_path(fp).is_file()}
    if args.jobs is None and not os.environ.get("BENCH_JOBS", "").strip():
        return auto_jobs(device.type, len(todo)) if len(todo) > 1 else 1
    asked = args.jobs if args.jobs is not None else auto_jobs(device.type, len(todo))
    cap = max(1, min(asked, len(todo), cpu_cores()))
    if cap < asked:  # more workers than chains with work or cores would only wait, or exhaust memory
        what = f"--jobs {asked}" if args.jobs is not None else f"BENCH_JOBS={asked}"
        print(f"bench: note: {what} capped at {cap} worker process(es): {len(todo)} teacher chain(s) with cells "
              f"left to compute, {cpu_cores()} CPU core(s)", file=sys.stderr)
    return cap


def _run_workers(args: argparse.Namespace, runner, plan, store: Store, jobs: int, mode: str,
                 fps: list[str] | None = None):
    """Compute the plan's cells (fingerprints ``fps``, computed when not given) in ``jobs`` worker processes
    (:func:`harness.running.workers.run_workers`), then sum up what the store holds; their stage times join this
    process's."""
    import time

    from aprbench.harness.running.progress import TIMES, say
    from aprbench.harness.running.runner import Interrupted
    from aprbench.harness.running.workers import run_workers

    start = time.perf_counter()
    fps = fps or [runner.fingerprint(c) for c in plan.cells]
    before = {fp for fp in fps if store.cell_path(fp).is_file()}
    todo = [c for c, fp in zip(plan.cells, fps) if fp not in before]
    shards = [[plan.cells[k] for k in shard(plan.cells, fps, f"{i}/{jobs}")] for i in range(jobs)]
    labels = [", ".join(dict.fromkeys(c.teacher.label() for c in cells)) or "-" for cells in shards]
    if mode != "quiet":
        say(runner.plan_text(todo, len(before), jobs, _first_run(args, jobs)))
        say(f"  processes: {jobs} workers, each model at its recipe's threads (default 1), a teacher chain per "
            "worker (--jobs 1: one process; the same numbers): "
            + "; ".join(f"[{lab}] {len(cells)} cell(s)" for lab, cells in zip(labels, shards)))
    try:
        outcomes = run_workers(without_option(args.argv, "--recompute"), str(store.root), labels)
    except KeyboardInterrupt:
        raise Interrupted(_summary_from_store(plan, fps, store, before, ""), store) from None
    for outcome in outcomes:
        for stage, seconds in outcome.times.items():
            TIMES.add(stage, seconds)
    crashed = {o.label: o.status for o in outcomes if o.status not in (0, 1)}
    summary = _summary_from_store(plan, fps, store, before, "not computed (its worker process "
                                  f"ended: {', '.join(f'[{k}] status {v}' for k, v in crashed.items()) or 'no status'})")
    summary.seconds = time.perf_counter() - start
    return summary, fps


def without_option(argv: list[str], option: str) -> list[str]:
    """``argv`` without every ``OPTION VALUE`` and ``OPTION=VALUE`` of ``option``."""
    out, skip = [], False
    for item in argv:
        if skip:
            skip = False
        elif item == option:
            skip = True
        elif not item.startswith(option + "="):
            out.append(item)
    return out


def _work(args: argparse.Namespace, runner, plan) -> int:
    """A worker's part (``--worker``): compute its shard's cells, say progress, end with its stage times."""
    import json

    from aprbench.harness.running.progress import TIMES
    from aprbench.harness.running.workers import TIMES_TAG

    summary, _ = runner.run(plan, args.shard, announce=False)
    print(TIMES_TAG + json.dumps(TIMES.seconds), flush=True)
    return 1 if summary.failed else 0
