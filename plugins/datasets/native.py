"""Real datasets read from their native layouts or from reference label CSVs.

- ``sevenscenes:root=DIR``: Microsoft 7Scenes (``<scene>/seq-XX/frame-*.color.png`` + ``.pose.txt``).
- ``cambridge:root=DIR``: Cambridge Landmarks (``<Scene>/dataset_train.txt`` / ``dataset_test.txt``).
- ``labels:root=DIR,labels=FILE.csv`` (or ``train=A.csv,test=B.csv``): any reference label CSV(s),
  image paths relative to ``root`` (default: the CSV's folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from aprbench.harness.data.datasets import make_pose_data
from aprbench.harness.data.label_checks import check_label_files
from aprbench.harness.data.labels import read_labels
from aprbench.harness.data.layouts import read_cambridge, read_sevenscenes
from aprbench.harness.errors import BenchError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.interfaces import PoseData


def _root(name: str, root: Any) -> Path:
    if root is None:
        raise BenchError(f"dataset {name!r} needs root=DIR, e.g. --dataset '{name}:root=/data/{name}'")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise BenchError(f"dataset {name!r}: root {path} is not a folder")
    return path


def _no_extra(name: str, options: dict[str, Any], known: str) -> None:
    if options:
        raise BenchError(f"dataset {name!r}: unknown option(s) {', '.join(sorted(options))}; known options: {known}")


def sevenscenes(store=None, root: str | None = None, scenes: Iterable[str] | None = None, **options: Any) -> PoseData:
    """7Scenes from its native layout under ``root``."""
    _no_extra("sevenscenes", options, "root, scenes")
    path = _root("sevenscenes", root)
    labels = read_sevenscenes(path, scenes)
    return make_pose_data("sevenscenes", path, labels, scenes, {"root": str(path)})


def cambridge(store=None, root: str | None = None, scenes: Iterable[str] | None = None, **options: Any) -> PoseData:
    """Cambridge Landmarks from its native layout under ``root``."""
    _no_extra("cambridge", options, "root, scenes")
    path = _root("cambridge", root)
    labels = read_cambridge(path, scenes)
    return make_pose_data("cambridge", path, labels, scenes, {"root": str(path)})


def labels(
    store=None, root: str | None = None, labels: str | None = None, train: str | None = None,
    test: str | None = None, scenes: Iterable[str] | None = None, check_images: bool = False, **options: Any,
) -> PoseData:
    """Reference label CSV(s): ``labels=ALL.csv`` and/or ``train=A.csv,test=B.csv``; images under ``root``."""
    _no_extra("labels", options, "root, labels, train, test, scenes, check_images")
    files = [f for f in (labels, train, test) if f]
    if not files:
        raise BenchError("dataset 'labels' needs labels=FILE.csv or train=FILE.csv,test=FILE.csv")
    base = _root("labels", root) if root is not None else Path(str(files[0])).expanduser().resolve().parent
    paths = [Path(str(f)).expanduser() for f in files]
    table = check_label_files([(p, read_labels(p, base, check_images=check_images)) for p in paths])
    opts = {"root": str(base), "files": [str(f) for f in files]}
    return make_pose_data("labels", base, table, scenes, opts)


@hookimpl
def bench_datasets():
    return {"sevenscenes": sevenscenes, "cambridge": cambridge, "labels": labels}
