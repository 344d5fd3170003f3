"""``bench train student NAME --teacher T[=CKPT]`` and ``bench eval student NAME --teacher T[=CKPT]``."""

from __future__ import annotations

import argparse
import time

from tabulate import tabulate

from aprbench.harness.cli.commands.common import add_command, add_data_options, make_context

COLUMNS = [
    "scene", "frames", "student_median_m", "teacher_median_m", "student_median_deg", "teacher_median_deg",
    "student_mean_m", "teacher_mean_m", "student_mean_deg", "teacher_mean_deg", "vs_teacher_m", "vs_teacher_deg",
    "latent_mse", "student_ms", "teacher_ms",
]


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME[=WEIGHTS]", help="student name, e.g. pae, pae-shallow, pae-nope, pae-shallow-nope; "
                        "=path to use given weights")
    parser.add_argument("--teacher", required=True, metavar="T[=CHECKPOINT]",
                        help="teacher name (trained with its recipe or found in the store), optionally =path to its weights")
    parser.add_argument("--encode", choices=["estimate", "ground_truth"], default="estimate",
                        help="what the student encodes during training: the teacher's estimated pose (the reference, "
                        "default) or the ground-truth pose (the paper's text)")
    parser.add_argument("--split", default="test", help="split to evaluate on (default test)")
    add_data_options(parser)


def register(commands) -> None:
    """Add ``train student`` and ``eval student`` (see ``harness.cli.main.Commands``)."""
    add_command(commands.train, "student", [commands.common], "distil a pose auto-encoder from a teacher's stored outputs",
                "Train a student (camera pose auto-encoder) from its teacher's stored training-split outputs (no image "
                "is loaded); a stored one is reused, an interrupted training resumes. Prints the student beside its "
                "teacher per scene.", _add_options, run_train)
    add_command(commands.eval, "student", [commands.common], "evaluate a student beside its teacher per scene",
                "Evaluate a student: it encodes the teacher's estimated poses and the teacher's heads decode them; "
                "prints student and teacher errors side by side per scene, with the latent MSE.", _add_options, run_eval)


def report(ctx, student, teacher, split: str = "test") -> str:
    """The per-scene table of :func:`harness.running.stages.student.evaluate_student`."""
    from aprbench.harness.running.stages.student import evaluate_student

    frame = evaluate_student(ctx, student, teacher, split)
    return tabulate(frame[[c for c in COLUMNS if c in frame]], headers="keys", tablefmt="github", showindex=False,
                    floatfmt=".4g")


def _obtain(args: argparse.Namespace):
    from aprbench.harness.running.stages.chain import obtain_chain, split_name

    ctx = make_context(args, {"teacher": [split_name(args.teacher)[0]], "student": [split_name(args.name)[0]]})
    t0 = time.perf_counter()
    chain = obtain_chain(ctx, args.teacher, args.name, args.encode)
    return ctx, chain.teacher, chain.student, time.perf_counter() - t0


def run_train(args: argparse.Namespace) -> int:
    from aprbench.harness.training.loop import distributed_env

    ctx, teacher, student, seconds = _obtain(args)
    if distributed_env()[0] != 0:
        return 0
    print(f"student {student.name} ({student.fingerprint}, encode={args.encode}) of teacher {teacher.name} "
          f"({teacher.fingerprint}) ready in {seconds:.1f} s: {student.path}")
    print(report(ctx, student, teacher, args.split))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    ctx, teacher, student, _ = _obtain(args)
    print(f"student {student.name} ({student.fingerprint}, encode={args.encode}) of teacher {teacher.name} "
          f"on {ctx.dataset} {args.split}, scenes {', '.join(ctx.data.scenes)}")
    print(report(ctx, student, teacher, args.split))
    return 0


__all__ = ["register", "report"]
