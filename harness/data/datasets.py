"""Datasets: :class:`PoseData` from labels, dataset specs opened through their plugins, scene subsets and
training-frame fractions.

A :class:`PoseData` holds ``LABEL_COLUMNS`` plus ``scene_id`` (the index into
its sorted scene list); poses are metres and scalar-first camera-to-world
quaternions.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS, PoseData
from aprbench.harness.data.csv_checks import data_error
from aprbench.harness.store.hdf5 import Store

def make_pose_data(
    name: str, root: Path | str, labels: pd.DataFrame, scenes: Iterable[str] | None = None,
    options: dict | None = None,
) -> PoseData:
    """A :class:`PoseData` of ``labels`` restricted to ``scenes`` (default: all, sorted).

    Adds ``scene_id`` (index into the sorted scene list). An unknown scene is a
    :class:`DataError` listing the known ones.
    """
    known = sorted(labels["scene"].unique().tolist())
    if scenes is not None:
        scenes = list(dict.fromkeys(scenes))
        unknown = [s for s in scenes if s not in known]
        if unknown:
            raise data_error([f"dataset {name!r}: unknown scene(s) {', '.join(unknown)}; known scenes: {', '.join(known) or '(none)'}"])
        labels = labels[labels["scene"].isin(scenes)]
        chosen = sorted(scenes)
    else:
        chosen = known
    labels = labels[LABEL_COLUMNS].reset_index(drop=True).copy()
    labels["scene_id"] = labels["scene"].map({s: i for i, s in enumerate(chosen)}).astype(np.int64)
    return PoseData(name=name, root=Path(root), labels=labels, scenes=chosen, options=dict(options or {}))


def parse_dataset_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME:key=value,key=value`` -> ``(NAME, options)``.

    Values are parsed as TOML literals (``3`` -> int, ``0.5`` -> float,
    ``true`` -> bool) and otherwise kept as strings (paths). Values cannot
    contain commas.
    """
    import tomllib

    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise BenchError(f"dataset spec {spec!r}: expected NAME or NAME:key=value,key=value")
    options: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in rest.split(","))) if rest else []:
        key, eq, raw = item.partition("=")
        if not eq or not key.strip():
            raise BenchError(f"dataset spec {spec!r}: {item!r} is not key=value")
        try:
            options[key.strip()] = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = raw.strip()
    if rest.strip() == "" and ":" in spec:
        raise BenchError(f"dataset spec {spec!r}: nothing after ':'; expected NAME:key=value,...")
    return name, options


def open_dataset(spec: str, store: Store, registry: Any, scenes: Iterable[str] | None = None,
                 profile: str | None = None) -> tuple[str, PoseData]:
    """Build the dataset named by ``spec`` (see :func:`parse_dataset_spec`) through its plugin.

    ``fraction=F`` (and ``fraction_seed=S``) in the spec is applied here with
    :func:`with_fraction`; every other option goes to the plugin's factory as
    a keyword argument, with ``store`` and (when given) ``scenes``. With a
    ``profile``, the options ``registry.toml``'s ``[[dataset]]`` tables give
    that profile come first (:func:`harness.api.registry.dataset_defaults`), the spec's win.
    Returns ``(NAME, data)``.
    """
    from aprbench.harness.api.registry import dataset_defaults

    name, options = parse_dataset_spec(spec)
    if profile is not None:
        options = {**dataset_defaults(name, profile), **options}
    fraction = options.pop("fraction", 1.0)
    fraction_seed = options.pop("fraction_seed", 0)
    validation = options.pop("validation", False)
    if not isinstance(validation, bool):
        raise BenchError(f"dataset spec {spec!r}: validation must be true or false, got {validation!r}")
    if scenes is not None:
        options["scenes"] = list(scenes)
    data = registry.build("dataset", name, store=store, **options)
    from aprbench.harness.api.contracts import check_dataset  # the documented fields (one line naming the plugin)

    check_dataset(name, registry.get("dataset", name).source, data)
    check_plugin_data(name, data)  # then the checks the built-in readers apply (names, paths, magnitudes, duplicates)
    if scenes is not None and set(data.scenes) - set(scenes):
        data = make_pose_data(data.name, data.root, data.labels, scenes, data.options)
    if validation:
        data = with_validation(data)
    if not isinstance(fraction, (int, float)):
        raise BenchError(f"dataset spec {spec!r}: fraction must be a number, got {fraction!r}")
    if fraction != 1.0:
        data = with_fraction(data, float(fraction), int(fraction_seed))
    return name, data


def check_plugin_data(name: str, data: PoseData) -> None:
    """The checks the built-in readers apply, on what a dataset plugin returned: every label column present,
    pose values finite numbers, no zero quaternion, splits ``train``/``test``, then
    :func:`harness.data.label_checks.check_label_table` (names, image paths, magnitudes, duplicates, sequences).
    A :class:`DataError` names the plugin, the label row and the column."""
    from aprbench.harness.data.label_checks import SPLITS, check_label_table

    labels = data.labels
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise data_error([f"dataset plugin {name!r}: labels lack column(s) {', '.join(missing)}"])
    where = lambda i, col: f"dataset plugin {name!r}, labels row {i + 1}" + (f", column {col!r}" if col else "")  # noqa: E731
    errors: list[str] = []
    values = np.full((len(labels), len(POSE_COLUMNS)), np.nan)
    for j, col in enumerate(POSE_COLUMNS):
        numbers = pd.to_numeric(labels[col], errors="coerce").to_numpy(np.float64)
        values[:, j] = numbers
        for i in np.flatnonzero(~np.isfinite(numbers))[:20]:
            value = labels[col].iloc[i]
            shown = repr(value) if isinstance(value, str) else str(value)
            errors.append(f"{where(int(i), col)}: not a finite number ({shown[:40]})")
    zero = np.isfinite(values[:, 3:]).all(1) & (np.abs(values[:, 3:]).sum(1) < 1e-8)
    errors += [f"{where(int(i), 'q1')}: zero quaternion" for i in np.flatnonzero(zero)[:20]]
    bad_split = ~labels["split"].isin(SPLITS).to_numpy()
    errors += [f"{where(int(i), 'split')}: {labels['split'].iloc[i]!r} is not one of {', '.join(SPLITS)}"
               for i in np.flatnonzero(bad_split)[:20]]
    if errors:
        raise data_error(errors)
    table = labels[LABEL_COLUMNS].reset_index(drop=True).astype({c: str for c in ("scene", "split", "seq", "img_path")})
    check_label_table(table, where)


def with_validation(data: PoseData) -> PoseData:
    """The validation split: each scene's last training sequence (in label order) becomes the evaluated
    ``test`` split and the original test frames are left out, so recipes are chosen without the test split.

    A scene whose training frames form one sequence (or name none) holds out its last eighth, a contiguous
    block of frames. Deterministic; ``options["validation"]`` is set, so the data fingerprint (and every
    cell's) differs from the full dataset's and the leaderboard labels the rows ``NAME (validation)``.
    Refused on data already reduced by a fraction (the held-out frames would depend on the fraction).
    """
    if data.options.get("validation"):
        return data
    if data.options.get("fraction", 1.0) != 1.0:
        raise BenchError(f"dataset {data.name!r}: carve the validation split before reducing the training frames")
    labels = data.labels[data.labels["split"] == "train"].copy()
    if labels.empty:
        raise data_error([f"dataset {data.name!r}: no training frames to carve a validation split from"])
    held = np.zeros(len(labels), dtype=bool)
    for scene in data.scenes:
        rows = np.flatnonzero((labels["scene"] == scene).to_numpy())
        if len(rows) < 2:
            raise data_error([f"dataset {data.name!r}: scene {scene} has {len(rows)} training frame(s); "
                              "a validation split needs at least 2"])
        seqs = labels["seq"].iloc[rows].astype(str)
        names = list(dict.fromkeys(seqs))
        if len(names) >= 2 and names[-1] != "":
            held[rows[(seqs == names[-1]).to_numpy()]] = True
        else:
            held[rows[len(rows) - max(1, len(rows) // 8):]] = True
    labels.loc[held, "split"] = "test"
    options = {**data.options, "validation": True}
    return PoseData(data.name, data.root, labels.reset_index(drop=True), data.scenes, options)


def _stable_seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little")


def _refuse_reduced(data: PoseData, fraction: float) -> None:
    applied = data.options.get("fraction", 1.0)
    if applied != 1.0:
        raise BenchError(
            f"dataset {data.name!r} is already reduced to fraction {applied:g} of its training frames "
            f"(fraction= in --dataset); a further fraction {fraction:g} would stack: give the fraction in one place only"
        )


def subset(data: PoseData, scenes: Iterable[str], fraction: float = 1.0, seed: int = 0) -> PoseData:
    """The frames of ``scenes`` (re-indexed), the training split reduced to ``fraction`` (see :func:`with_fraction`).

    The frames kept depend on ``(seed, scene)`` only. Data already reduced by a
    fraction is refused, whatever ``fraction`` is asked for: a matrix cell
    would otherwise report a nominal fraction different from the real one.
    """
    _refuse_reduced(data, fraction)
    labels = data.labels[data.labels["scene"].isin(list(scenes))].drop(columns=["scene_id"])
    sub = make_pose_data(data.name, data.root, labels.reset_index(drop=True), scenes=list(scenes), options=data.options)
    return with_fraction(sub, fraction, seed) if fraction < 1.0 else sub


def require_frames(data: PoseData, split: str) -> None:
    """Raise :class:`DataError` ("split test of scene X has no frames") for each scene of ``data`` without ``split`` frames."""
    have = set(data.labels.loc[data.labels["split"] == split, "scene"].tolist())
    empty = [s for s in data.scenes if s not in have]
    if empty:
        raise data_error([f"dataset {data.name!r}: split {split} of scene {s} has no frames" for s in empty])


def with_fraction(data: PoseData, fraction: float, seed: int = 0) -> PoseData:
    """Keep ``round(fraction * n)`` (at least 1) training frames of each scene; test frames untouched.

    The choice for a scene depends only on ``(seed, scene)`` and its frame list,
    and smaller fractions are subsets of larger ones (one permutation per
    scene, its first k frames). Label order is preserved. The applied
    fraction and seed are recorded in ``options``; data already reduced is
    refused (fractions never stack, so the fraction reported is the real one).
    """
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise BenchError(f"fraction must be a number in (0, 1], got {fraction!r}")
    _refuse_reduced(data, fraction)
    labels = data.labels
    keep = np.ones(len(labels), dtype=bool)
    for scene in data.scenes:
        idx = np.flatnonzero(((labels["scene"] == scene) & (labels["split"] == "train")).to_numpy())
        if len(idx) == 0:
            continue
        k = max(1, int(round(fraction * len(idx))))
        perm = np.random.default_rng(_stable_seed("fraction", seed, scene)).permutation(len(idx))
        keep[idx] = False
        keep[idx[perm[:k]]] = True
    options = {**data.options, "fraction": fraction, "fraction_seed": seed}
    return PoseData(data.name, data.root, labels[keep].reset_index(drop=True), data.scenes, options)
