"""``bench train decoder NAME --teacher T --student S`` and ``bench decode --teacher T --student S --out grid.png``."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from aprbench.harness.cli.commands.common import add_command, add_data_options, make_context
from aprbench.harness.errors import BenchError


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--teacher", required=True, metavar="T[=CHECKPOINT]",
                        help="teacher name (trained with its recipe or found in the store), optionally =path to its weights")
    parser.add_argument("--student", required=True, metavar="S", help="student (PAE) whose latents are decoded, e.g. pae")
    parser.add_argument("--encode", choices=["estimate", "ground_truth"], default="estimate",
                        help="what the student encoded during its training (default estimate)")
    add_data_options(parser)


def register(commands) -> None:
    """Add ``train decoder`` and the top-level ``decode``."""
    def train_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", metavar="NAME[=WEIGHTS]", help="decoder name, e.g. image-decoder")
        _add_options(parser)

    def decode_options(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--decoder", default="image-decoder", help="decoder name (default image-decoder)")
        parser.add_argument("--split", default="test", choices=["train", "test"], help="split whose poses are decoded (default test)")
        parser.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default grid.png)")
        parser.add_argument("-n", type=int, default=16, help="frames in the grid (default 16)")
        _add_options(parser)

    add_command(commands.train, "decoder", [commands.common], "train an image decoder on a student's pose encodings",
                "Train a decoder (PAE latents of the training poses -> resized training images, L1); a stored one is "
                "reused. Prints PSNR/SSIM on the training and test poses.", train_options, run_train)
    add_command(commands.top, "decode", [commands.common], "decode images from poses and write a grid PNG",
                "Decode the ground-truth poses of a split through the student and the decoder; print PSNR and SSIM "
                "against the true images and write a PNG grid (ground truth beside decoded).", decode_options, run_decode)


def _obtain(args: argparse.Namespace, name: str):
    from aprbench.harness.running.stages.chain import obtain_chain, split_name

    used = {"teacher": [split_name(args.teacher)[0]], "student": [split_name(args.student)[0]],
            "decoder": [split_name(name)[0]]}
    ctx = make_context(args, used)
    t0 = time.perf_counter()
    chain = obtain_chain(ctx, args.teacher, args.student, args.encode, decoder=name)
    return ctx, chain.teacher, chain.student, chain.decoder, time.perf_counter() - t0


def _scores_line(split: str, scores: dict) -> str:
    return f"{split}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f} ({scores['frames']} frames)"


def run_train(args: argparse.Namespace) -> int:
    from aprbench.harness.running.stages.decoder import decoder_scores

    ctx, teacher, student, decoder, seconds = _obtain(args, args.name)
    print(f"decoder {decoder.name} ({decoder.fingerprint}) of student {student.name} / teacher {teacher.name} "
          f"ready in {seconds:.1f} s: {decoder.path}")
    for split in ("train", "test"):
        if len(ctx.data.split(split).labels):
            print(_scores_line(split, decoder_scores(ctx, decoder, teacher, student, split)))
    return 0


def run_decode(args: argparse.Namespace) -> int:
    from aprbench.harness.running.stages.decoder import decoder_scores, write_grid

    if args.n < 1:
        raise BenchError(f"-n {args.n}: the grid needs at least 1 frame")
    ctx, teacher, student, decoder, _ = _obtain(args, args.decoder)
    print(_scores_line(args.split, decoder_scores(ctx, decoder, teacher, student, args.split)))
    out = write_grid(ctx, decoder, teacher, student, args.split, args.out, n=args.n)
    print(f"grid (ground truth | decoded, {args.n} frames): {out}")
    return 0


__all__ = ["register"]
