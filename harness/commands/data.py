"""``bench data render`` and ``bench data check``: export synthetic scenes or twins, validate datasets."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from harness.data import (
    check_image_files, check_label_files, make_pose_data, read_cambridge, read_labels, read_sevenscenes, require_frames,
)
from harness.images import load_images
from harness.errors import BenchError, DataError
from harness.plugins import get_registry


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
        "reference label CSVs whose img_path are relative to ROOT. Prints scenes, frames per split and pose extents; "
        "on bad input prints every problem found (file, row, column) and exits with status 1.",
    )
    c.add_argument("root", type=Path, metavar="ROOT", help="dataset root folder (or one scene folder)")
    c.add_argument("--labels", nargs="+", type=Path, metavar="FILE.csv",
                   help="reference label CSV(s) to check instead of a native layout (image paths relative to ROOT)")
    c.add_argument("--decode", action="store_true", help="also decode every image (slower; finds corrupt files)")
    c.set_defaults(func=run_check)


# --------------------------------------------------------------------------- summaries
def summary_table(labels: pd.DataFrame) -> str:
    """Scenes, frames and sequences per split, position extents (metres)."""
    rows = []
    for (scene, split), g in labels.groupby(["scene", "split"], sort=True):
        t = g[["t1", "t2", "t3"]].to_numpy()
        rows.append([scene, split, len(g), g["seq"].nunique(),
                     *[f"{lo:.2f} .. {hi:.2f}" for lo, hi in zip(t.min(0), t.max(0))]])
    return tabulate(rows, headers=["scene", "split", "frames", "sequences", "t1 (m)", "t2 (m)", "t3 (m)"], tablefmt="github")


def save_samples(labels: pd.DataFrame, root: Path, out: Path, count: int = 32, cols: int = 8) -> Path | None:
    """A grid PNG of ``count`` frames spread evenly over ``labels`` (tiles shown at least 128 px)."""
    from PIL import Image

    if count <= 0 or len(labels) == 0:
        return None
    pick = np.unique(np.linspace(0, len(labels) - 1, min(count, len(labels))).round().astype(int))
    data = make_pose_data("samples", root, labels.iloc[pick].reset_index(drop=True))
    size = 64
    images = load_images(data, size).permute(0, 2, 3, 1).numpy()
    cols = min(cols, len(images))
    rows = -(-len(images) // cols)
    gap = 2
    grid = np.full((rows * (size + gap) - gap, cols * (size + gap) - gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[r * (size + gap):r * (size + gap) + size, c * (size + gap):c * (size + gap) + size] = img
    im = Image.fromarray(grid)
    im = im.resize((im.width * 2, im.height * 2), Image.NEAREST)
    im.save(out)
    return out


# --------------------------------------------------------------------------- render
def _synthetic_factory(args: argparse.Namespace):
    factory = get_registry(args.plugin).get("dataset", "synthetic").factory
    if not hasattr(factory, "export") or not hasattr(factory, "render_twin"):
        raise BenchError("the registered 'synthetic' dataset plugin cannot export scenes or render twins")
    return factory


def run_render(args: argparse.Namespace) -> int:
    factory = _synthetic_factory(args)
    out: Path = args.out
    if args.poses:
        frames = [read_labels(p) for p in args.poses]
        labels = pd.concat(frames, ignore_index=True)
        if labels["img_path"].duplicated().any():
            dup = labels["img_path"][labels["img_path"].duplicated()].iloc[0]
            raise DataError(f"{', '.join(map(str, args.poses))}: img_path {dup!r} appears more than once")
        print(f"rendering a synthetic twin of {len(labels)} poses ({', '.join(sorted(labels['scene'].unique()))}) into {out}")
        labels = factory.render_twin(labels, out, image_size=args.image_size, seed=args.seed, supersample=args.supersample)
        where = f"{out / 'labels.csv'}"
    else:
        options = {"image_size": args.image_size, "supersample": args.supersample}
        for key in ("frames_per_sequence", "train_sequences", "test_sequences"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
        scenes = args.scene or list(factory.scenes)
        print(f"rendering synthetic scene(s) {', '.join(scenes)} (seed {args.seed}) into {out}")
        factory.export(out, scenes, seed=args.seed, **options)
        labels = read_sevenscenes(out, scenes)
        where = f"{out} (7Scenes layout: --dataset 'sevenscenes:root={out}')"
    print(summary_table(labels))
    grid = save_samples(labels, out, out / "samples.png", args.samples)
    print(f"wrote {len(labels)} frames to {where}" + (f"; sample grid {grid}" if grid else ""))
    return 0


# --------------------------------------------------------------------------- check
def _print_warnings(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        print(f"bench data check: warning: {w.message}", file=sys.stderr)


def _detect(root: Path) -> tuple[str, Path, list[str] | None]:
    """``(layout, root, scenes)`` of a folder: a dataset root or a single scene folder."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for layout, markers in (("7scenes", ("TrainSplit.txt", "TestSplit.txt")), ("cambridge", ("dataset_train.txt", "dataset_test.txt"))):
        if any((root / m).is_file() for m in markers):
            return layout, root.parent, [root.name]
        if any(any((d / m).is_file() for m in markers) for d in root.iterdir() if d.is_dir()):
            return layout, root, None
    raise DataError(
        f"{root}: no dataset found: expected scene folders with TrainSplit.txt/TestSplit.txt (7Scenes) "
        "or dataset_train.txt/dataset_test.txt (Cambridge), or pass --labels FILE.csv"
    )


def _check(args: argparse.Namespace) -> tuple[str, pd.DataFrame, Path]:
    root: Path = args.root
    if args.labels:
        errors: list[str] = []
        frames = []
        for path in args.labels:
            try:
                frames.append(read_labels(path, root, check_images=True))
            except DataError as exc:
                errors += getattr(exc, "errors", [str(exc)])
        if errors:
            exc = DataError("\n".join(errors))
            exc.errors = errors  # type: ignore[attr-defined]
            raise exc
        return "label CSV", check_label_files(list(zip(args.labels, frames))), root
    layout, base, scenes = _detect(root)
    labels = read_sevenscenes(base, scenes) if layout == "7scenes" else read_cambridge(base, scenes)
    data = make_pose_data(layout, base, labels)
    for split in ("train", "test"):  # a native scene must have both splits
        require_frames(data, split)
    check_image_files(labels, base, source=f"{root} ({layout} layout) frame list")
    return f"{layout} layout", labels, base


def _empty_splits(labels: pd.DataFrame) -> list[str]:
    """``split S of scene X has no frames`` for every scene of ``labels`` missing a split."""
    data = make_pose_data("check", ".", labels)
    out = []
    for split in ("train", "test"):
        try:
            require_frames(data, split)
        except DataError as exc:
            out += getattr(exc, "errors", [str(exc)])
    return out


def run_check(args: argparse.Namespace) -> int:
    """Validate a dataset; problems (file, row, column) go to stderr with status 1, warnings to stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            kind, labels, base = _check(args)
            if args.decode:
                load_images(make_pose_data("check", base, labels), 64)
        except DataError as exc:
            _print_warnings(caught)
            errors = getattr(exc, "errors", None) or str(exc).splitlines()
            print(f"bench data check: {len(errors)} problem(s) in {args.root}:", file=sys.stderr)
            for line in errors:
                print(f"  {line}", file=sys.stderr)
            return 1
    _print_warnings(caught)
    for line in _empty_splits(labels):  # label CSVs may hold one split only: said, not refused
        print(f"bench data check: warning: {line}", file=sys.stderr)
    print(f"{args.root}: {kind}, {labels['scene'].nunique()} scene(s), {len(labels)} frames")
    print(summary_table(labels))
    print("OK")
    return 0
