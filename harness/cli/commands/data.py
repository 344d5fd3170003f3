"""``bench data render`` and ``bench data check``: export synthetic scenes or twins, validate datasets."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands) -> None:
    """Add ``data render`` and ``data check`` to ``commands.top``."""
    p = commands.top.add_parser(
        "data", parents=[commands.common], help="render synthetic data, check a dataset",
        description="Render the synthetic dataset (or a synthetic twin of a label file) to a folder, "
        "or validate a dataset folder / label file.",
    )
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    r = sub.add_parser(
        "render", parents=[commands.common], help="render synthetic scenes or a twin of a label file",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Render synthetic scenes into OUT in the native 7Scenes layout "
        "(OUT/<scene>/seq-XX/frame-XXXXXX.color.png + .pose.txt camera-to-world 4x4 matrices, "
        "TrainSplit.txt / TestSplit.txt), or with --poses a synthetic twin of label CSVs: the same poses and "
        "splits with new images at OUT/<img_path> and OUT/labels.csv. Also writes OUT/samples.png, "
        "a grid of sample frames. Scenes already rendered in OUT are kept.",
    )
    what = r.add_mutually_exclusive_group()
    what.add_argument("--scene", nargs="+", metavar="NAME",
                      help="synthetic scene(s) to render: room (indoor, 4x4x3 m), site (outdoor street, tens of metres); "
                      "default: all")
    what.add_argument("--poses", nargs="+", type=Path, metavar="LABELS.csv",
                      help="render a synthetic twin of these reference label CSVs (scene,split,seq,img_path,t1..q4) instead")
    r.add_argument("--out", type=Path, required=True, help="output folder (created if needed)")
    r.add_argument("--seed", type=int, default=0, help="seed for scene layout, textures and trajectories")
    r.add_argument("--frames-per-sequence", type=int, default=None, help="frames in each sequence (synthetic default 200)")
    r.add_argument("--train-sequences", type=int, default=None, help="training sequences per scene (default 16)")
    r.add_argument("--test-sequences", type=int, default=None, help="held-out test sequences per scene (default 4)")
    r.add_argument("--image-size", default="64", metavar="SIZE",
                   help="image size in pixels: N (square) or WIDTHxHEIGHT, e.g. 640x480")
    r.add_argument("--supersample", type=int, default=1, help="rays per pixel edge (2 = 4 rays per pixel, anti-aliased)")
    r.add_argument("--samples", type=int, default=32, help="frames in samples.png (0: no grid)")
    r.set_defaults(func=run_render)

    c = sub.add_parser(
        "check", parents=[commands.common], help="validate a dataset folder or label CSV and summarise it",
        description="Validate ROOT: a native 7Scenes layout (scene folders with TrainSplit.txt / TestSplit.txt), "
        "a Cambridge Landmarks layout (scene folders with dataset_train.txt / dataset_test.txt), or with --labels "
        "reference label CSVs whose img_path are relative to ROOT, or with --dataset what a dataset plugin builds. Prints scenes, frames per split and pose extents; "
        "on bad input prints every problem found (file, row, column) and exits with status 1.",
    )
    c.add_argument("root", type=Path, metavar="ROOT", nargs="?", help="dataset root folder (or one scene folder)")
    c.add_argument("--dataset", metavar="NAME[:OPTIONS]",
                   help="check what a dataset plugin builds instead, e.g. 'my-data:root=/data/x' (the documented "
                   "PoseData fields, scene ids, splits, finite poses, image files)")
    c.add_argument("--labels", nargs="+", type=Path, metavar="FILE.csv",
                   help="reference label CSV(s) to check instead of a native layout (image paths relative to ROOT)")
    c.add_argument("--decode", action="store_true", help="also decode every image (slower; finds corrupt files)")
    c.set_defaults(func=run_check)


def run_render(args: argparse.Namespace) -> int:
    from aprbench.harness.cli.commands.data_actions import run_render as render
    from aprbench.harness.errors import BenchError

    if args.samples < 0:
        raise BenchError(f"--samples {args.samples}: must be >= 0 (0: no sample grid)")
    return render(args)


def run_check(args: argparse.Namespace) -> int:
    from aprbench.harness.cli.commands.data_actions import run_check as check

    return check(args)
