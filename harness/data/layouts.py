"""Native dataset layouts read into reference labels: 7Scenes and Cambridge Landmarks.

Poses come out as ``[t1, t2, t3, q1, q2, q3, q4]`` (metres, scalar-first
camera-to-world quaternion); image paths are relative to the dataset root.
Every problem names the file and line; the assembled table then passes the
reviewer checks of :func:`harness.data.label_checks.check_label_table`.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from aprbench.harness import poses as P
from aprbench.harness.api.interfaces import POSE_COLUMNS
from aprbench.harness.data.csv_checks import data_error
from aprbench.harness.data.label_checks import SPLITS, check_label_table, concat_labels, warn_quaternion_norms

_SEQUENCE = re.compile(r"^sequence(\d+)$")
CAMBRIDGE_COLUMNS = ["X", "Y", "Z", "W", "P", "Q", "R"]


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


def _outside(path: Path, roots: Sequence[Path]) -> bool:
    """Whether ``path`` resolves (symbolic links followed) outside every folder of ``roots`` (the dataset root
    and the scene folder, each resolved): such a file is never read, so its content is never echoed."""
    real = path.resolve()
    return not any(real == r or r in real.parents for r in roots)


def _refuse_outside(path: Path, roots: Sequence[Path], errors: list[str], what: str = "file") -> bool:
    """Add an error naming ``path`` when it resolves outside ``roots`` (see :func:`_outside`); True if it does."""
    if _outside(path, roots):
        errors.append(f"{path}: {what} resolves outside the dataset root {roots[0]} (a symbolic link out of it?); "
                      "refused, not read")
        return True
    return False


def _checked(rows: list[pd.DataFrame], origins: list[str]) -> pd.DataFrame:
    """Concatenated native-layout labels after :func:`check_label_table` (``origins[i]``: where row ``i`` comes from)."""
    table = concat_labels(rows)
    check_label_table(table, lambda i, col: origins[i] + (f", column {col!r}" if col else ""))
    return table


# =========================================================================== 7Scenes
def _read_numbers(path: Path) -> np.ndarray:
    try:
        return np.array(path.read_text().split(), dtype=np.float64)
    except ValueError:
        return np.array([np.nan])


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
        roots = (root.resolve(), scene_dir.resolve())
        for split, fname in (("train", "TrainSplit.txt"), ("test", "TestSplit.txt")):
            rows += _sevenscenes_split(scene_dir / fname, split, errors, origins, roots)
    if errors:
        raise data_error(errors)
    return _checked(rows, origins)


def _sevenscenes_split(split_file: Path, split: str, errors: list[str], origins: list[str],
                       roots: Sequence[Path]) -> list[pd.DataFrame]:
    """The frames of every sequence ``split_file`` lists (one table per sequence); problems go to ``errors``.
    ``roots``: the resolved dataset root and scene folder, which every file read must resolve inside."""
    if not split_file.is_file():
        errors.append(f"{split_file}: missing split file")
        return []
    if _refuse_outside(split_file, roots, errors, "split file"):
        return []
    frames = []
    for line_no, line in enumerate(split_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        seq_dir = _listed_sequence(split_file, line_no, line, errors)
        if seq_dir is None or _refuse_outside(seq_dir, roots, errors, "sequence folder"):
            continue
        frame = _sequence_frames(seq_dir, split, f"{split_file.name}, line {line_no}", errors, origins, roots)
        if frame is not None:
            frames.append(frame)
    return frames


def _listed_sequence(split_file: Path, line_no: int, line: str, errors: list[str]) -> Path | None:
    """The ``seq-NN`` folder a split file's ``sequenceN`` line names, or ``None`` (with an error) when malformed or absent."""
    m = _SEQUENCE.match(line)
    if not m:
        shown = repr(line) if len(line) <= 40 else repr(line[:40]) + " …"
        errors.append(f"{split_file}, line {line_no}: expected 'sequenceN', got {shown}")
        return None
    seq_dir = split_file.parent / f"seq-{int(m.group(1)):02d}"
    if not seq_dir.is_dir():
        errors.append(f"{split_file}, line {line_no}: sequence folder {seq_dir} does not exist")
        return None
    return seq_dir


def _sequence_frames(seq_dir: Path, split: str, listed_at: str, errors: list[str], origins: list[str],
                     roots: Sequence[Path]) -> pd.DataFrame | None:
    """Labels of one 7Scenes sequence folder (``listed_at``: the split file and line naming it), or ``None`` if it
    has no poses. A colour frame without its pose file is an error naming the frame (never silently dropped)."""
    pose_files = sorted(seq_dir.glob("frame-*.pose.txt"))
    posed = {pf.name[: -len(".pose.txt")] for pf in pose_files}
    for image in sorted(seq_dir.glob("frame-*.color.png")):
        if image.name[: -len(".color.png")] not in posed:
            errors.append(f"{image}: frame without its pose file {image.name[: -len('.color.png')]}.pose.txt "
                          f"(listed at {listed_at})")
    if not pose_files:
        errors.append(f"{seq_dir}: no frame-*.pose.txt files")
        return None
    outside = [pf for pf in pose_files if _refuse_outside(pf, roots, errors, "pose file")]
    if outside:
        return None
    poses = P.matrices_to_poses(_pose_matrices(pose_files, listed_at, errors, origins))
    scene, seq = seq_dir.parent.name, seq_dir.name
    names = [pf.name[: -len(".pose.txt")] + ".color.png" for pf in pose_files]
    frame = pd.DataFrame({
        "scene": scene, "split": split, "seq": seq,
        "img_path": [f"{scene}/{seq}/{n}" for n in names],
    })
    frame[POSE_COLUMNS] = poses
    return frame


def _pose_matrices(pose_files: list[Path], listed_at: str, errors: list[str], origins: list[str]) -> np.ndarray:
    """``(N, 4, 4)`` camera-to-world matrices; an unreadable or non-rigid one is an error (and the identity here)."""
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
        origins.append(f"{pf} (listed at {listed_at})")
    return np.stack(mats)


# =========================================================================== Cambridge Landmarks
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
    origins: list[str] = []
    for scene_dir in _scene_dirs(root, ["dataset_train.txt", "dataset_test.txt"], scenes, "Cambridge"):
        for split in SPLITS:
            frame = _cambridge_split(scene_dir, split, errors, origins, (root.resolve(), scene_dir.resolve()))
            if frame is not None:
                rows.append(frame)
    if errors:
        raise data_error(errors)
    return _checked(rows, origins)


def _cambridge_split(scene_dir: Path, split: str, errors: list[str], origins: list[str],
                     roots: Sequence[Path]) -> pd.DataFrame | None:
    """Labels of one ``dataset_<split>.txt`` (``None`` when missing or without data lines); problems go to ``errors``.
    ``roots``: the resolved dataset root and scene folder, which the file must resolve inside."""
    txt = scene_dir / f"dataset_{split}.txt"
    if not txt.is_file():
        errors.append(f"{txt}: missing split file")
        return None
    if _refuse_outside(txt, roots, errors, "split file"):
        return None
    text = txt.read_text().splitlines()
    _check_cambridge_header(txt, text[:3], errors)
    paths, values, at = [], [], []
    for line_no, line in enumerate(text[3:], start=4):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 8:
            errors.append(f"{txt}, line {line_no}: expected 'seqN/frameNNNNN.png X Y Z W P Q R' (8 fields), got {len(fields)}")
            continue
        paths.append(fields[0])
        values.append(_cambridge_values(fields[1:], f"{txt}, line {line_no}", errors))
        at.append(f"{txt}, line {line_no}")
    if not paths:
        return None
    v = np.array(values, dtype=np.float64)
    warn_quaternion_norms(v[:, 3:], lambda i, col: f"{at[i]}, columns {col}", "W,P,Q,R", stacklevel=4)
    origins += at
    norm = np.linalg.norm(v[:, 3:], axis=1, keepdims=True)
    v[:, 3:] /= np.where((norm > 1e-8) & (np.abs(norm - 1.0) > 1e-9), norm, 1.0)
    frame = pd.DataFrame({
        "scene": scene_dir.name, "split": split,
        "seq": [p.split("/")[0] if "/" in p else "" for p in paths],
        "img_path": [f"{scene_dir.name}/{p}" for p in paths],
    })
    frame[POSE_COLUMNS] = v
    return frame


def _check_cambridge_header(txt: Path, head: list[str], errors: list[str]) -> None:
    """A data line among the first three lines (where the header belongs) is an error: it would be dropped."""
    for line_no, line in enumerate(head, start=1):
        if _looks_like_cambridge_row(line):
            errors.append(
                f"{txt}, line {line_no}: a data line where the three header lines belong "
                "(expected 'Visual Landmark Dataset V1', 'ImageFile, Camera Position [X Y Z W P Q R]', "
                "a blank line); without them the first data lines would be dropped"
            )
            break


def _cambridge_values(fields: list[str], at: str, errors: list[str]) -> list[float]:
    """The seven numbers ``X Y Z W P Q R`` of a data line; non-finite values and a zero quaternion are errors."""
    row = []
    for name, value in zip(CAMBRIDGE_COLUMNS, fields):
        try:
            v = float(value)
        except ValueError:
            v = math.nan
        if not math.isfinite(v):
            errors.append(f"{at}, column {name}: not a finite number ({value!r})")
        row.append(v)
    if math.fsum(abs(v) for v in row[3:] if math.isfinite(v)) < 1e-8:
        errors.append(f"{at}, columns W,P,Q,R: zero quaternion")
    return row
