"""``bench train refiner NAME --teacher T --student S`` and ``bench eval refiner NAME ... --iterations K``."""

from __future__ import annotations

import argparse
import time

from tabulate import tabulate

from aprbench.harness.cli.commands.common import add_command, add_data_options, make_context

COLUMNS = ["scene", "iteration", "frames", "median_m", "median_deg", "mean_m", "mean_deg",
           "acc_0.05m_5deg", "acc_0.1m_10deg", "acc_0.25m_2deg", "acc_0.5m_5deg", "ms_per_frame"]


def _add_options(parser: argparse.ArgumentParser, iterations: int = 3) -> None:
    parser.add_argument("name", metavar="NAME[=WEIGHTS]", help="refiner name: pae-rpr (iAPR) or image-rpr (retrieval "
                        "baseline); =path to use given weights")
    parser.add_argument("--teacher", required=True, metavar="T[=CHECKPOINT]",
                        help="teacher name (trained with its recipe or found in the store), optionally =path to its weights")
    parser.add_argument("--student", metavar="S",
                        help="student (PAE) that encodes poses, e.g. pae; needed by pae-rpr, ignored by image-rpr")
    parser.add_argument("--encode", choices=["estimate", "ground_truth"], default="estimate",
                        help="what the student encoded during its training (default estimate)")
    parser.add_argument("--iterations", type=int, default=iterations, help=f"refinement iterations (default {iterations})")
    parser.add_argument("--split", default="test", help="split to evaluate on (default test)")
    add_data_options(parser)


def register(commands) -> None:
    """Add ``train refiner`` and ``eval refiner`` (see ``harness.cli.main.Commands``)."""
    add_command(commands.train, "refiner", [commands.common], "train a relative pose regressor (iAPR or image-RPR)",
                "Train a refiner from its teacher's stored training-split outputs (and the student's encoding of "
                "neighbour poses for pae-rpr); a stored one is reused, an interrupted training resumes. Then prints "
                "the errors per refinement iteration per scene.", _add_options, run_train)
    add_command(commands.eval, "refiner", [commands.common], "evaluate a refiner per iteration per scene",
                "Run K iterations of refinement from the teacher's estimate (iteration 0) and print median/mean errors, "
                "threshold accuracies and cumulative ms per frame per iteration per scene, and the bytes the refiner "
                "keeps at test time.", _add_options, run_eval)


def _obtain(args: argparse.Namespace):
    from aprbench.harness.running.stages.chain import obtain_chain, split_name

    used = {"teacher": [split_name(args.teacher)[0]], "refiner": [split_name(args.name)[0]]}
    if args.student:
        used["student"] = [split_name(args.student)[0]]
    ctx = make_context(args, used)
    t0 = time.perf_counter()
    chain = obtain_chain(ctx, args.teacher, args.student, args.encode, refiner=args.name)
    return ctx, chain.teacher, chain.student, chain.refiner, time.perf_counter() - t0


def report(ctx, refiner, teacher, student, split: str, iterations: int) -> str:
    """Errors per iteration per scene (:func:`harness.running.stages.refiner.evaluate_refiner`) and stored bytes."""
    from aprbench.harness.running.stages.refiner import evaluate_refiner
    from aprbench.harness.api.interfaces import PoseIndexRefiner

    frame = evaluate_refiner(ctx, refiner, teacher, student, split, iterations)
    table = tabulate(frame[[c for c in COLUMNS if c in frame]], headers="keys", tablefmt="github", showindex=False,
                     floatfmt=".4g")
    stored = int(frame["stored_bytes"].iloc[0]) if len(frame) else 0
    what = "PAE + RPR weights" if getattr(refiner.model, "neighbours", "student") != "retrieval" else \
        "training images + their latents and poses + RPR weights"
    if isinstance(refiner.model, PoseIndexRefiner):
        what = "training poses + their PAE encodings"
    return f"{table}\nstored at test time besides the teacher: {stored:,} bytes ({stored / 2**20:.2f} MiB: {what})"


def _describe(ctx, teacher, student, refiner, split: str) -> str:
    s = f", student {student.name} ({student.fingerprint})" if student is not None else ""
    return (f"refiner {refiner.name} ({refiner.fingerprint}) of teacher {teacher.name} ({teacher.fingerprint}){s} "
            f"on {ctx.dataset} {split}, scenes {', '.join(ctx.data.scenes)}")


def run_train(args: argparse.Namespace) -> int:
    from aprbench.harness.training.loop import distributed_env

    ctx, teacher, student, refiner, seconds = _obtain(args)
    if distributed_env()[0] != 0:
        return 0
    print(f"{_describe(ctx, teacher, student, refiner, args.split)}: ready in {seconds:.1f} s, {refiner.path}")
    print(report(ctx, refiner, teacher, student, args.split, args.iterations))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    ctx, teacher, student, refiner, _ = _obtain(args)
    print(_describe(ctx, teacher, student, refiner, args.split))
    print(report(ctx, refiner, teacher, student, args.split, args.iterations))
    return 0


__all__ = ["register", "report"]
