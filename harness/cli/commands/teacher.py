"""``bench train teacher NAME`` and ``bench eval teacher NAME[=CHECKPOINT]``."""

from __future__ import annotations

import argparse
import time
from typing import Callable

from tabulate import tabulate

from aprbench.harness.cli.commands.common import add_command, add_data_options, make_context


def register(commands) -> None:
    """Add ``train teacher`` and ``eval teacher`` (see ``harness.cli.main.Commands``)."""
    def options(name_help: str) -> Callable[[argparse.ArgumentParser], None]:
        def add(parser: argparse.ArgumentParser) -> None:
            parser.add_argument("name", metavar="NAME[=WEIGHTS]", help=name_help)
            add_data_options(parser)
        return add

    add_command(commands.train, "teacher", [commands.common], "train an APR teacher with its recipe (or find it in the store)",
                "Train a teacher (absolute pose regressor) with its registry.toml recipe on a dataset's training split; "
                "a stored one is reused, an interrupted training resumes. Prints test errors.",
                options("teacher name, e.g. posenet-mobilenet, mstransformer"), run_train)
    add_command(commands.eval, "teacher", [commands.common], "evaluate a teacher per scene beside the mean-pose baseline",
                "Evaluate a teacher (trained with its recipe, or NAME=WEIGHTS.pth for given weights) and print per-scene "
                "errors on the test and training splits beside the mean-training-pose baseline.",
                options("teacher name, optionally =path to a state dict"), run_eval)


def report(ctx, art) -> str:
    """The per-scene table: teacher test errors, mean-pose baseline, train-split errors, scene accuracy."""
    from aprbench.harness.running.stages.teacher import baseline_table, evaluate_teacher

    test = evaluate_teacher(ctx, art, "test")
    train = evaluate_teacher(ctx, art, "train")
    base = baseline_table(ctx, "test")
    frame = test[["scene", "frames", "median_m", "median_deg", "mean_m", "mean_deg"]].copy()
    frame = frame.merge(base.rename(columns={"median_m": "baseline_m", "median_deg": "baseline_deg"}), on="scene", how="left")
    frame = frame.merge(train[["scene", "median_m", "median_deg"]].rename(
        columns={"median_m": "train_m", "median_deg": "train_deg"}), on="scene", how="left")
    for col in test.columns:
        if col.startswith("acc_") or col in ("scene_acc", "ms_per_frame"):
            frame[col] = test[col].to_numpy()
    return tabulate(frame, headers="keys", tablefmt="github", showindex=False, floatfmt=".3g")


def run_train(args: argparse.Namespace) -> int:
    from aprbench.harness.running.stages.teacher import obtain_teacher
    from aprbench.harness.training.loop import distributed_env

    ctx = make_context(args, {"teacher": [args.name]})
    t0 = time.perf_counter()
    art = obtain_teacher(ctx, args.name)
    if distributed_env()[0] != 0:
        return 0
    print(f"teacher {art.name} ({art.fingerprint}) ready in {time.perf_counter() - t0:.1f} s: {art.path}")
    print(report(ctx, art))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from aprbench.harness.running.stages.chain import obtain_chain, split_name

    ctx = make_context(args, {"teacher": [split_name(args.name)[0]]})
    art = obtain_chain(ctx, args.name).teacher
    print(f"teacher {art.name} ({art.fingerprint}) on {ctx.dataset}, scenes {', '.join(ctx.data.scenes)}")
    print(report(ctx, art))
    return 0


__all__ = ["register", "report"]
