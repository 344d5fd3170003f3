"""``bench run``: expand the matrix, obtain or compute every cell, print the leaderboard.

``bench`` with no arguments runs the default matrix below on the synthetic dataset.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harness.errors import BenchError
from harness.matrix import NONE, Axes, expand, flatten, parse_list, shard, validate
from harness.plugins import KINDS, get_manager
from harness.registry import parse_overrides
from harness.store import Store

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
        "run", parents=[commands.common], help="run a teacher x student x refiner x iterations x fraction matrix",
        description="Expand every compatible combination into cells, obtain each model from the store or train it "
        "with its recipe, evaluate every cell on the test split, cache it in HDF5 and print the leaderboard. "
        "With no axis options, runs the default matrix (posenet-mobilenet on room, mstransformer on room+site, "
        "pae with both encodings, pae-rpr for 1 and 3 iterations, the image decoder on the PoseNet PAE).",
    )
    p.add_argument("--dataset", default="synthetic", help="dataset NAME[:key=value,...] (default synthetic)")
    p.add_argument("--scenes", nargs="+", metavar="SCENE", help="restrict to these scenes")
    p.add_argument("--teacher", nargs="+", action="extend", metavar="T",
                   help="teachers: NAME, NAME@scene+scene (pin scenes), NAME=CHECKPOINT.pth (use given weights)")
    p.add_argument("--student", nargs="+", action="extend", metavar="S", help="students (pae, pae-shallow, ...; 'none' = teacher alone)")
    p.add_argument("--encode", nargs="+", action="extend", metavar="E", help="what students encode in training: estimate, ground_truth")
    p.add_argument("--refiner", nargs="+", action="extend", metavar="R", help="refiners (pae-rpr, image-rpr; 'none')")
    p.add_argument("--iterations", help="refinement iterations, comma-separated, e.g. 0,1,3")
    p.add_argument("--fraction", help="training-data fractions, comma-separated, e.g. 1.0,0.3")
    p.add_argument("--decoder", nargs="+", action="extend", metavar="D", help="decoders scored on every teacher x student (the student trained with the first --encode value); "
                   "NAME@TEACHER limits one to that teacher")
    p.add_argument("--profile", default="quick", help="recipe profile: quick or paper (default quick)")
    p.add_argument("--set", action="append", default=[], metavar="[KIND.]KEY=VALUE",
                   help="override a recipe value for one kind (teacher.epochs=2) or all kinds (epochs=2); repeatable")
    p.add_argument("--shard", metavar="i/n", help="run only slice i of n (0 <= i < n) of the cells, e.g. for a Slurm array")
    p.add_argument("--format", default="github", help="leaderboard format: github, latex, html, plain, csv")
    p.add_argument("--no-report", action="store_true", help="do not write the HTML/PNG report")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def kind_overrides(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """``["teacher.epochs=2", "lr=1e-4"]`` -> ``{"teacher": {"epochs": 2, "lr": 1e-4}, "student": {"lr": 1e-4}, ...}``."""
    out: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
    for pair in pairs:
        key = pair.split("=", 1)[0]
        kind, dot, _ = key.partition(".")
        if dot and kind in out:
            out[kind].update(parse_overrides([pair[len(kind) + 1:]]))
        else:
            for values in out.values():
                values.update(parse_overrides([pair]))
    return {k: v for k, v in out.items() if v}


def run(args: argparse.Namespace) -> int:
    from harness.data import open_dataset
    from harness import leaderboard
    from harness.runner import MatrixRunner

    default = args.teacher is None
    axis = lambda name, given: given if given is not None else (DEFAULT_MATRIX[name] if default else None)  # noqa: E731
    teachers = axis("teacher", args.teacher)
    axes = Axes(
        dataset=args.dataset.split(":", 1)[0],
        teachers=flatten(teachers),
        students=flatten(axis("student", args.student) or [NONE]),
        encodes=flatten(axis("encode", args.encode) or ["estimate"]),
        refiners=flatten(axis("refiner", args.refiner) or [NONE]),
        iterations=parse_list(axis("iterations", args.iterations) or "0", int),
        fractions=parse_list(args.fraction or "1.0", float),
        decoders=flatten(axis("decoder", args.decoder) or []),
    )
    overrides = kind_overrides(args.set)
    store = Store(args.workdir)
    manager = get_manager(args.plugin)
    registry = manager.registry()
    validate(axes, registry)
    shard([], [], args.shard)  # a malformed --shard is refused before any work
    name, data = open_dataset(args.dataset, store, registry, scenes=args.scenes)
    plan = expand(axes, data, registry, args.profile)
    if plan.refused:
        print(f"refused {len(plan.refused)} combination(s):", file=sys.stderr)
        for what, why in plan.refused:
            print(f"  {what}: {why}", file=sys.stderr)
    if not plan.cells:
        raise BenchError("no compatible cells to run")
    runner = MatrixRunner(store, manager, data, name, args.profile, overrides, progress=not args.no_progress)
    summary, fps = runner.run(plan, args.shard)
    leaderboard.show(store, manager, fps, fmt=args.format)
    print(f"\n{summary.total} cell(s) in this run: {summary.cached} from the store, {summary.computed} computed, "
          f"{len(summary.failed)} failed ({summary.seconds:.1f} s); work directory {store.root}")
    if not args.no_report and not args.shard:
        from harness.report import write_report

        index = write_report(store, store.root / "report", fps, manager=manager)
        print(f"report: {index}")
    if summary.failed:
        print(f"\n{len(summary.failed)} cell(s) failed (details in {store.root / 'cells'}/*.failed.json):", file=sys.stderr)
        for what, why in summary.failed:
            print(f"  {what}: {why}", file=sys.stderr)
        return 1
    return 0
