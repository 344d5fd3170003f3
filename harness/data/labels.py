"""The data layer: label files, native dataset layouts, :class:`PoseData`, dataset specs and subsets.

Images live in :mod:`harness.data.images`, pose math in :mod:`harness.poses`.

Conventions: a pose is ``[t1, t2, t3, q1, q2, q3, q4]`` =
position in metres and a scalar-first unit quaternion of the camera-to-world
rotation; cameras use the OpenCV frame (x right, y down, looking along +z).
Image paths in label files are relative to a dataset root.

Every reader validates what it reads and raises :class:`DataError` whose
message names the file, the 1-based data row (and the file line), and the
column. The exception carries ``errors``, the list of every problem found.
"""

from __future__ import annotations

import hashlib
import math
import posixpath
import re
import warnings
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError, DataError
from aprbench.harness.api.interfaces import LABEL_COLUMNS, POSE_COLUMNS, PoseData
from aprbench.harness.store.hdf5 import Store, atomic_path

SPLITS = ("train", "test")
STRING_COLUMNS = ["scene", "split", "seq", "img_path"]
MAX_LISTED_ERRORS = 20


# =========================================================================== errors
def data_error(errors: Sequence[str]) -> DataError:
    """One :class:`DataError` listing ``errors`` (the first ``MAX_LISTED_ERRORS``); ``.errors`` holds all."""
    shown = list(errors[:MAX_LISTED_ERRORS])
    if len(errors) > MAX_LISTED_ERRORS:
        shown.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
    exc = DataError("\n".join(shown))
    exc.errors = list(errors)  # type: ignore[attr-defined]
    return exc


def _where(path: Path | str, row: int, column: str | None = None) -> str:
    """``file, row R (line L), column 'c'`` for a 0-based data row of a CSV with one header line."""
    col = f", column {column!r}" if column else ""
    return f"{path}, row {row + 1} (line {row + 2}){col}"


# =========================================================================== table validation
def _read_csv(path: Path | str) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise data_error([f"{path}: no such file"])
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise data_error([f"{path}: not a readable CSV file ({str(exc).splitlines()[0]})"]) from None


def _require_columns(df: pd.DataFrame, required: Sequence[str], path: Path | str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise data_error([
            f"{path}: missing column(s) {', '.join(missing)} "
            f"(expected {','.join(required)}; found {','.join(map(str, df.columns)) or 'none'})"
        ])


def _numeric(df: pd.DataFrame, columns: Sequence[str], path: Path | str, errors: list[str]) -> np.ndarray:
    """``(N, len(columns))`` float64; every non-numeric, NaN or infinite cell appended to ``errors``."""
    out = np.empty((len(df), len(columns)), dtype=np.float64)
    for j, col in enumerate(columns):
        raw = df[col].astype(str).str.strip()
        values = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64)
        for i in np.flatnonzero(~np.isfinite(values)):
            errors.append(f"{_where(path, i, col)}: not a finite number ({raw.iloc[i]!r})")
        out[:, j] = values
    return out


def _quaternions(q: np.ndarray, path: Path | str, columns: Sequence[str], errors: list[str]) -> np.ndarray:
    """Normalise ``(N, 4)`` quaternions; zero (or not finite) ones are errors."""
    norm = np.linalg.norm(q, axis=1)
    bad = np.isfinite(norm) & (norm < 1e-8)
    for i in np.flatnonzero(bad):
        errors.append(f"{_where(path, i, ','.join(columns))}: zero quaternion")
    # rows already unit length (to 1e-9) are kept bit for bit, so files round-trip exactly
    scale = np.where((norm > 1e-8) & (np.abs(norm - 1.0) > 1e-9), norm, 1.0)
    return q / scale[:, None]


def _non_empty(df: pd.DataFrame, columns: Sequence[str], path: Path | str, errors: list[str]) -> None:
    for col in columns:
        for i in np.flatnonzero(df[col].astype(str).str.strip().to_numpy() == ""):
            errors.append(f"{_where(path, i, col)}: empty value")


# =========================================================================== reviewer checks
MAX_ABS_VALUE = 1e6  # metres (or quaternion units): larger pose values are refused, not normalised away
QUAT_NORM_WARN = 0.05  # warn when | |q| - 1 | exceeds this (typically t and q columns swapped)
SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
Where = Callable[[int, "str | None"], str]


def _csv_where(path: Path | str) -> Where:
    return lambda i, col: _where(path, i, col)


def scene_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a scene name (it becomes part of file names), or ``None``.

    Allowed: letters, digits, ``_``, ``-`` and ``.``, not starting with ``.``
    and without ``..``.
    """
    if not SAFE_NAME.fullmatch(name):
        return f"scene name {name!r} has characters outside [A-Za-z0-9_.-]"
    if name.startswith(".") or ".." in name:
        return f"scene name {name!r} starts with '.' or contains '..'"
    return None


def image_path_problem(path: str) -> str | None:
    """Why ``path`` cannot be an image path relative to a dataset root (absolute, or escaping with ``..``), or ``None``."""
    if PurePosixPath(path).is_absolute() or PureWindowsPath(path).is_absolute() or PureWindowsPath(path).drive:
        return f"image path {path!r} is absolute (paths are relative to the dataset root)"
    norm = posixpath.normpath(path.replace("\\", "/"))
    if norm == ".." or norm.startswith("../"):
        return f"image path {path!r} leaves the dataset root"
    return None


def _check_names(df: pd.DataFrame, where: Where, errors: list[str]) -> None:
    """Scene names safe as file names and image paths inside the root, each problem with its row."""
    for i, name in enumerate(df["scene"].tolist()):
        problem = scene_name_problem(name) if name else None
        if problem:
            errors.append(f"{where(i, 'scene')}: {problem}")
    for i, path in enumerate(df["img_path"].tolist()):
        problem = image_path_problem(path) if path else None
        if problem:
            errors.append(f"{where(i, 'img_path')}: {problem}")


def _check_magnitudes(values: np.ndarray, columns: Sequence[str], where: Where, errors: list[str]) -> None:
    """Finite pose values larger than ``MAX_ABS_VALUE`` in magnitude are errors (non-finite ones are reported elsewhere)."""
    big = np.isfinite(values) & (np.abs(values) > MAX_ABS_VALUE)
    for i, j in zip(*np.nonzero(big)):
        errors.append(f"{where(int(i), columns[j])}: value {values[i, j]:g} is beyond {MAX_ABS_VALUE:g} in magnitude")


def _warn_quaternion_norms(q: np.ndarray, where: Where, columns: str) -> None:
    """Warn (naming rows) when quaternion norms are far from 1: the t and q columns may be swapped."""
    norm = np.linalg.norm(q, axis=1)
    far = np.flatnonzero(np.isfinite(norm) & (norm > 1e-8) & (np.abs(norm - 1.0) > QUAT_NORM_WARN))
    if len(far):
        shown = "; ".join(f"{where(int(i), columns)}: |q| = {norm[i]:.4g}" for i in far[:5])
        more = f" (and {len(far) - 5} more rows)" if len(far) > 5 else ""
        warnings.warn(
            f"{len(far)} quaternion(s) with norm far from 1 (normalised; are the t and q columns swapped?): {shown}{more}",
            UserWarning, stacklevel=3,
        )


def _check_consistency(df: pd.DataFrame, where: Where, errors: list[str]) -> None:
    """The same image twice, or one sequence of a scene in both train and test, are errors naming the rows."""
    paths = df["img_path"].to_numpy()
    dup = pd.Series(paths).duplicated(keep=False).to_numpy() & (paths != "")
    if dup.any():
        first: dict[str, int] = {}
        for i in np.flatnonzero(dup):
            p = paths[i]
            if p in first:
                errors.append(f"{where(int(i), 'img_path')}: image {p!r} appears more than once (first at {where(first[p], None)})")
            else:
                first[p] = int(i)
    has_seq = df[(df["seq"] != "") & df["split"].isin(SPLITS)]
    for (scene, seq), g in has_seq.groupby(["scene", "seq"], sort=True):
        if g["split"].nunique() > 1:
            i_train = int(g.index[g["split"] == "train"][0])
            i_test = int(g.index[g["split"] == "test"][0])
            errors.append(
                f"{where(i_test, 'seq')}: sequence {seq!r} of scene {scene!r} is in both train "
                f"({where(i_train, None)}) and test: a test sequence must not be trained on"
            )


def check_label_table(df: pd.DataFrame, where: Where) -> None:
    """Reviewer checks on assembled labels (``LABEL_COLUMNS``); raise :class:`DataError` naming every problem.

    ``where(i, column)`` names row ``i``'s origin (file, row or line, column).
    Refused: unsafe scene names, absolute or escaping image paths, pose values
    beyond ``MAX_ABS_VALUE``, the same image twice, a sequence in both splits.
    Quaternion norms far from 1 are warned about (:class:`UserWarning`).
    """
    errors: list[str] = []
    df = df.reset_index(drop=True)
    _check_names(df, where, errors)
    _check_magnitudes(df[POSE_COLUMNS].to_numpy(np.float64), POSE_COLUMNS, where, errors)
    _check_consistency(df, where, errors)
    if errors:
        raise data_error(errors)


def check_label_files(tables: Sequence[tuple[Path | str, pd.DataFrame]]) -> pd.DataFrame:
    """Concatenate label tables read from CSV files and run the cross-file checks (duplicates, shared sequences)."""
    frames = [t for _, t in tables]
    origin = [(src, i) for src, t in tables for i in range(len(t))]
    table = pd.concat(frames, ignore_index=True) if frames else _concat([])
    errors: list[str] = []
    _check_consistency(table, lambda i, col: _where(origin[i][0], origin[i][1], col), errors)
    if errors:
        raise data_error(errors)
    return table


# =========================================================================== labels
def read_labels(path: Path | str, root: Path | str | None = None, check_images: bool = False) -> pd.DataFrame:
    """Read a reference label CSV (``scene,split,seq,img_path,t1,t2,t3,q1,q2,q3,q4``).

    Positions in metres, quaternions scalar first (camera-to-world); non-unit
    quaternions are normalised (their sign is kept). ``split`` must be
    ``train`` or ``test``. With ``check_images``, every ``root / img_path``
    must exist. Returns exactly ``LABEL_COLUMNS`` (strings, float64 poses).
    Raises :class:`DataError` listing every problem with file, row and column.
    """
    path = Path(path)
    df = _read_csv(path)
    _require_columns(df, LABEL_COLUMNS, path)
    errors: list[str] = []
    out = df[STRING_COLUMNS].apply(lambda s: s.str.strip()).reset_index(drop=True)
    _non_empty(out, ["scene", "split", "img_path"], path, errors)
    for i in np.flatnonzero(~out["split"].isin(SPLITS).to_numpy() & (out["split"] != "").to_numpy()):
        errors.append(f"{_where(path, i, 'split')}: unknown split {out['split'].iloc[i]!r} (expected train or test)")
    if len(df) == 0:
        raise data_error([f"{path}: header only, no data rows (expected one row per image)"])
    values = _numeric(df, POSE_COLUMNS, path, errors)
    where = _csv_where(path)
    _check_magnitudes(values, POSE_COLUMNS, where, errors)
    _warn_quaternion_norms(values[:, 3:], where, ",".join(POSE_COLUMNS[3:]))
    values[:, 3:] = _quaternions(values[:, 3:], path, POSE_COLUMNS[3:], errors)
    _check_names(out, where, errors)
    _check_consistency(out, where, errors)
    if errors:
        raise data_error(errors)
    out[POSE_COLUMNS] = values
    if check_images:
        check_image_files(out, root if root is not None else path.parent, source=path)
    return out[LABEL_COLUMNS]


def _write_csv(df: pd.DataFrame, columns: list[str], path: Path | str, what: str) -> Path:
    """Write ``columns`` of ``df`` as CSV atomically, floats at full precision."""
    _require_columns(df, columns, what)
    with atomic_path(Path(path)) as tmp:
        df[columns].to_csv(tmp, index=False, float_format="%.17g")
    return Path(path)


def write_labels(df: pd.DataFrame, path: Path | str) -> Path:
    """Write ``LABEL_COLUMNS`` of ``df`` as a reference label CSV (atomically, full float precision)."""
    return _write_csv(df, LABEL_COLUMNS, path, "labels to write")


def check_image_files(labels: pd.DataFrame, root: Path | str, source: Path | str = "labels") -> None:
    """Raise :class:`DataError` naming every ``root / img_path`` that is not a file (with its label row)."""
    root = Path(root)
    errors = [
        f"{_where(source, i, 'img_path')}: image file {root / p} does not exist"
        for i, p in enumerate(labels["img_path"].tolist())
        if not (root / p).is_file()
    ]
    if errors:
        raise data_error(errors)


# =========================================================================== native layouts
def _scene_dirs(root: Path, marker: Sequence[str], scenes: Iterable[str] | None, layout: str) -> list[Path]:
    """Scene folders under ``root`` holding any of ``marker``; requested ``scenes`` must exist."""
    if not root.is_dir():
        raise data_error([f"{root}: dataset root is not a folder"])
    known = sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / m).is_file() for m in marker))
    if not known:
        raise data_error([f"{root}: no {layout} scene folders (a scene folder holds {' or '.join(marker)})"])
    if scenes is None:
        return [root / s for s in known]
    unknown = [s for s in scenes if s not in known]
    if unknown:
        raise data_error([f"{root}: unknown scene(s) {', '.join(unknown)}; known scenes: {', '.join(known)}"])
    return [root / s for s in scenes]


def _read_numbers(path: Path) -> np.ndarray:
    try:
        return np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        return np.array([np.nan])


_SEQUENCE = re.compile(r"^sequence(\d+)$")


def read_sevenscenes(root: Path | str, scenes: Iterable[str] | None = None) -> pd.DataFrame:
    """Labels of a native 7Scenes layout.

    ``<root>/<scene>/TrainSplit.txt`` and ``TestSplit.txt`` list ``sequenceN``
    (one a line); frames are ``<scene>/seq-NN/frame-XXXXXX.pose.txt`` (a 4x4
    camera-to-world matrix, metres) with ``frame-XXXXXX.color.png`` beside
    them. Image existence is not checked here (see :func:`check_image_files`).
    """
    root = Path(root)
    rows: list[pd.DataFrame] = []
    errors: list[str] = []
    origins: list[str] = []
    for scene_dir in _scene_dirs(root, ["TrainSplit.txt", "TestSplit.txt"], scenes, "7Scenes"):
        for split, fname in (("train", "TrainSplit.txt"), ("test", "TestSplit.txt")):
            split_file = scene_dir / fname
            if not split_file.is_file():
                errors.append(f"{split_file}: missing split file")
                continue
            for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
                line = line.strip()
                if not line:
                    continue
                m = _SEQUENCE.match(line)
                if not m:
                    errors.append(f"{split_file}, line {line_no}: expected 'sequenceN', got {line!r}")
                    continue
                seq = f"seq-{int(m.group(1)):02d}"
                seq_dir = scene_dir / seq
                if not seq_dir.is_dir():
                    errors.append(f"{split_file}, line {line_no}: sequence folder {seq_dir} does not exist")
                    continue
                pose_files = sorted(seq_dir.glob("frame-*.pose.txt"))
                if not pose_files:
                    errors.append(f"{seq_dir}: no frame-*.pose.txt files")
                    continue
                mats = []
                for pf in pose_files:
                    numbers = _read_numbers(pf)
                    if numbers.size != 16 or not np.isfinite(numbers).all():
                        errors.append(f"{pf}: expected a 4x4 matrix of 16 finite numbers")
                        numbers = np.eye(4).ravel()
                    elif (problem := P.rotation_problem(numbers.reshape(4, 4))) is not None:
                        errors.append(f"{pf}: not a camera-to-world rigid transform: {problem}")
                        numbers = np.eye(4).ravel()
                    mats.append(numbers.reshape(4, 4))
                    origins.append(f"{pf} (listed at {split_file.name}, line {line_no})")
                poses = P.matrices_to_poses(np.stack(mats))
                names = [pf.name[: -len(".pose.txt")] + ".color.png" for pf in pose_files]
                frame = pd.DataFrame({
                    "scene": scene_dir.name, "split": split, "seq": seq,
                    "img_path": [f"{scene_dir.name}/{seq}/{n}" for n in names],
                })
                frame[POSE_COLUMNS] = poses
                rows.append(frame)
    if errors:
        raise data_error(errors)
    return _checked(rows, origins)


def _checked(rows: list[pd.DataFrame], origins: list[str]) -> pd.DataFrame:
    """Concatenated native-layout labels after :func:`check_label_table` (``origins[i]``: where row ``i`` comes from)."""
    table = _concat(rows)
    check_label_table(table, lambda i, col: origins[i] + (f", column {col!r}" if col else ""))
    return table


def _looks_like_cambridge_row(line: str) -> bool:
    """``seqN/frameNNNNN.png X Y Z W P Q R``: a path and seven numbers."""
    fields = line.split()
    if len(fields) != 8:
        return False
    try:
        [float(f) for f in fields[1:]]
    except ValueError:
        return False
    return True


def read_cambridge(root: Path | str, scenes: Iterable[str] | None = None) -> pd.DataFrame:
    """Labels of a native Cambridge Landmarks layout.

    ``<root>/<Scene>/dataset_train.txt`` / ``dataset_test.txt``: three header
    lines, then ``seqN/frameNNNNN.png X Y Z W P Q R`` (camera position in
    metres, camera-to-world quaternion scalar first). Non-unit quaternions
    are normalised; errors name the file, line and column.
    """
    root = Path(root)
    rows: list[pd.DataFrame] = []
    errors: list[str] = []
    names = ["X", "Y", "Z", "W", "P", "Q", "R"]
    origins: list[str] = []
    for scene_dir in _scene_dirs(root, ["dataset_train.txt", "dataset_test.txt"], scenes, "Cambridge"):
        for split in SPLITS:
            txt = scene_dir / f"dataset_{split}.txt"
            if not txt.is_file():
                errors.append(f"{txt}: missing split file")
                continue
            paths, values, lines = [], [], []
            text = txt.read_text().splitlines()
            for line_no, line in enumerate(text[:3], start=1):
                if _looks_like_cambridge_row(line):
                    errors.append(
                        f"{txt}, line {line_no}: a data line where the three header lines belong "
                        "(expected 'Visual Landmark Dataset V1', 'ImageFile, Camera Position [X Y Z W P Q R]', "
                        "a blank line); without them the first data lines would be dropped"
                    )
                    break
            for line_no, line in enumerate(text[3:], start=4):
                fields = line.split()
                if not fields:
                    continue
                if len(fields) != 8:
                    errors.append(f"{txt}, line {line_no}: expected 'seqN/frameNNNNN.png X Y Z W P Q R' (8 fields), got {len(fields)}")
                    continue
                row = []
                for name, value in zip(names, fields[1:]):
                    try:
                        v = float(value)
                    except ValueError:
                        v = math.nan
                    if not math.isfinite(v):
                        errors.append(f"{txt}, line {line_no}, column {name}: not a finite number ({value!r})")
                    row.append(v)
                if math.fsum(abs(v) for v in row[3:] if math.isfinite(v)) < 1e-8:
                    errors.append(f"{txt}, line {line_no}, columns W,P,Q,R: zero quaternion")
                paths.append(fields[0])
                values.append(row)
                lines.append(line_no)
            if not paths:
                continue
            v = np.array(values, dtype=np.float64)
            at = [f"{txt}, line {n}" for n in lines]
            _warn_quaternion_norms(v[:, 3:], lambda i, col: f"{at[i]}, columns {col}", "W,P,Q,R")
            origins += at
            norm = np.linalg.norm(v[:, 3:], axis=1, keepdims=True)
            v[:, 3:] /= np.where((norm > 1e-8) & (np.abs(norm - 1.0) > 1e-9), norm, 1.0)
            frame = pd.DataFrame({
                "scene": scene_dir.name, "split": split,
                "seq": [p.split("/")[0] if "/" in p else "" for p in paths],
                "img_path": [f"{scene_dir.name}/{p}" for p in paths],
            })
            frame[POSE_COLUMNS] = v
            rows.append(frame)
    if errors:
        raise data_error(errors)
    return _checked(rows, origins)


def _concat(rows: list[pd.DataFrame]) -> pd.DataFrame:
    if not rows:
        return pd.DataFrame({c: pd.Series(dtype=object if c in STRING_COLUMNS else np.float64) for c in LABEL_COLUMNS})
    return pd.concat(rows, ignore_index=True)[LABEL_COLUMNS]


# =========================================================================== PoseData
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
    if scenes is not None:
        options["scenes"] = list(scenes)
    data = registry.build("dataset", name, store=store, **options)
    if not isinstance(data, PoseData):
        raise BenchError(f"dataset plugin {name!r} returned {type(data).__name__}, expected PoseData")
    if scenes is not None and set(data.scenes) - set(scenes):
        data = make_pose_data(data.name, data.root, data.labels, scenes, data.options)
    if not isinstance(fraction, (int, float)):
        raise BenchError(f"dataset spec {spec!r}: fraction must be a number, got {fraction!r}")
    if fraction != 1.0:
        data = with_fraction(data, float(fraction), int(fraction_seed))
    return name, data


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
