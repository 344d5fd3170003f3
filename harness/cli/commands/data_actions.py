"""What ``bench data render`` and ``bench data check`` do (their options are in ``harness.cli.commands.data``)."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from aprbench.harness.data.datasets import make_pose_data, require_frames
from aprbench.harness.data.label_checks import check_label_files
from aprbench.harness.data.labels import check_image_files, read_labels
from aprbench.harness.data.layouts import read_cambridge, read_sevenscenes
from aprbench.harness.data.images import load_images
from aprbench.harness.errors import BenchError, DataError
from aprbench.harness.api.manager import get_registry
from aprbench.harness.store.manifest import is_empty, owned, record


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


def check_render_out(out: Path, poses: list[Path], scenes: list[str]) -> None:
    """Refuse an ``--out`` that holds a ``--poses`` file (the dataset being read), or a non-empty
    folder ``bench data render`` did not write (its manifest, or only scene folders and ``samples.png``)."""
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file, not a folder")
    target = out.resolve()
    for path in poses:
        source = Path(path).resolve()
        if target in source.parents:
            raise BenchError(f"--out {out} holds --poses {path}, the dataset being read: a twin rendered there would "
                             "overwrite its images and labels; nothing was written (choose another --out)")
    if is_empty(out) or owned(out, "render") is not None:
        return
    entries = [p.name for p in out.iterdir()]
    if not poses and all(name in scenes or name == "samples.png" or name.startswith(".") for name in entries):
        return  # scenes an earlier `bench data render --scene` exported
    raise BenchError(f"--out {out} is not empty and was not written by bench data render ({', '.join(sorted(entries)[:3])}"
                     f"{' …' if len(entries) > 3 else ''}); nothing was written (choose a new or empty folder)")


def run_render(args: argparse.Namespace) -> int:
    factory = _synthetic_factory(args)
    out: Path = args.out
    check_render_out(out, list(args.poses or []), list(factory.scenes))
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
    written = {Path(p).parts[0] for p in labels["img_path"]} if args.poses else set(labels["scene"])
    record(out, "render", [*(owned(out, "render") or set()), *written, "labels.csv" if args.poses else "",
                           "samples.png" if grid else ""])
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


def _check_plugin(args: argparse.Namespace) -> tuple[str, pd.DataFrame, Path]:
    """``--dataset SPEC``: the dataset as its plugin builds it, checked against the dataset contract
    (:func:`harness.api.contracts.check_dataset`) and for image files that exist."""
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.data.datasets import open_dataset
    from aprbench.harness.store.hdf5 import Store

    from aprbench.harness.api.contracts import ContractError

    registry = get_registry(args.plugin)
    args.root = args.dataset  # what the problems are said to be in
    try:
        name, data = open_dataset(args.dataset, Store(args.workdir), registry)
    except ContractError as exc:  # listed as a problem (status 1), like a bad label file
        raise DataError(str(exc)) from None
    source = registry.get("dataset", name).source
    check_image_files(data.labels, Path(data.root), source=f"dataset {name} ({source})")
    args.root = Path(data.root)
    return f"dataset {name} ({source})", data.labels, Path(data.root)


def _check(args: argparse.Namespace) -> tuple[str, pd.DataFrame, Path]:
    if getattr(args, "dataset", None):
        return _check_plugin(args)
    root: Path = args.root
    if root is None:
        raise DataError("bench data check: give ROOT (a dataset folder) or --dataset NAME[:OPTIONS] (a dataset plugin)")
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
