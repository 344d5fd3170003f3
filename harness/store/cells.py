"""Cell files: what one evaluated matrix cell stores, and reading them back.

A *pose cell* file (``cells/<fingerprint>.h5``) holds, for the N test frames::

    pose_gt               (N, 7)     ground truth [tx, ty, tz, qw, qx, qy, qz], metres, unit quaternion
    scene_id              (N,)       index into the ``scenes`` attribute
    img_path              (N,)       image path relative to the dataset root
    pose_est              (I, N, 7)  estimates; I = len(attrs["iterations"]), one per stored iteration
    position_error_m      (I, N)
    orientation_error_deg (I, N)

Attributes: ``kind = "pose"``, ``cell`` (the axes, :meth:`harness.running.matrix.Cell.record`),
``iterations`` (the iteration of each stored estimate: ``[0]`` for a teacher or
student cell, ``[0, 1, …, K]`` for a refiner cell, where 0 is the teacher's
estimate), ``scenes``, ``fingerprint``, ``upstream`` (kind -> artifact fingerprint), ``result``
(``per_iteration``: one ``{"iteration", "per_scene": [summary rows], "ms_per_frame"}``
per stored iteration; ``stored_bytes``; optional ``scene_accuracy``, ``latent_mse``),
``models`` (kind -> ``name``, ``version``, ``origin``, ``source_digest``, ``code``,
``fingerprint``, ``recipe_fingerprint``, ``threads``:
:meth:`harness.running.runner.MatrixRunner.models`) and ``provenance``
(:data:`PROVENANCE_KEYS` and :data:`MACHINE_KEYS`). A *decoder cell* has ``kind = "decoder"``.

Read back (:func:`identity`), each model kind K of the cell gives the columns ``K_version``,
``K_origin`` and ``K_fingerprint`` (:data:`MODEL_FIELDS`): the model's fingerprint is the same for
every seed and changes with anything else that determines its numbers (recipe values, plugin code,
variant config, threads, precision, device kind); ``models_fingerprint`` hashes them all, so cells
that differ in it never merge into one row.

A refiner cell runs K iterations once; the leaderboard shows one row per
requested iteration ``>= 1`` (``cell["iterations"]`` lists them) and the
teacher's own cell supplies iteration 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd

from aprbench.harness.store.hdf5 import Damaged, Store, read_h5, require

# what every cell records of how it was produced (attrs["provenance"])
PROVENANCE_KEYS = ["profile", "overrides", "models_fingerprint", "aprbench_version", "git_commit",
                   "dataset_fingerprint", "device", "precision", "created"]
# where a cell was computed (recorded, shown in the cells view and exports; rows of one identity still merge)
MACHINE_KEYS = ["torch", "cpu", "threads"]
# the model kinds of a chain and, per model, the columns K_<field> a cell's rows carry
MODEL_KINDS = ["teacher", "student", "refiner", "decoder"]
MODEL_FIELDS = ["version", "origin", "fingerprint"]
MODEL_COLUMNS = [f"{kind}_{f}" for kind in MODEL_KINDS for f in MODEL_FIELDS]
# columns that identify a cell (besides its per-scene / per-iteration expansion)
IDENTITY_COLUMNS = ["dataset", "teacher", "teacher_scenes", "fraction", "seed", "student", "encode", "refiner"]


@dataclass
class CellFile:
    """One cell file read back: its arrays and attributes."""

    path: Path
    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.attrs.get("kind", "pose"))

    @property
    def iterations(self) -> list[int]:
        """The iteration of each stored estimate (``pose_est`` axis 0)."""
        return [int(k) for k in self.attrs.get("iterations", [0])]

    def frames(self, iteration: int | None = None) -> pd.DataFrame:
        """Per-frame table (one row per frame and stored iteration, or only ``iteration``):
        ``iteration, scene, img_path, est_t1…est_q4, gt_t1…gt_q4, position_error_m, orientation_error_deg``."""
        scenes = list(self.attrs.get("scenes", []))
        gt, est = self.arrays["pose_gt"], self.arrays["pose_est"]
        names = ["t1", "t2", "t3", "q1", "q2", "q3", "q4"]
        parts = []
        for i, k in enumerate(self.iterations):
            if iteration is not None and k != iteration:
                continue
            f = pd.DataFrame({"iteration": k,
                              "scene": [scenes[int(s)] for s in self.arrays["scene_id"]],
                              "img_path": self.arrays.get("img_path", np.full(len(gt), ""))})
            for j, n in enumerate(names):
                f[f"est_{n}"] = est[i][:, j]
            for j, n in enumerate(names):
                f[f"gt_{n}"] = gt[:, j]
            f["position_error_m"] = self.arrays["position_error_m"][i]
            f["orientation_error_deg"] = self.arrays["orientation_error_deg"][i]
            parts.append(f)
        return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


POSE_ARRAYS = ["pose_gt", "scene_id", "pose_est", "position_error_m", "orientation_error_deg"]


def check_cell(arrays: dict[str, Any], attrs: dict[str, Any]) -> None:
    """Raise :class:`harness.store.hdf5.Damaged` naming what a cell file lacks: its identity and result
    attributes, and for a pose cell the arrays of the module docstring with consistent shapes."""
    cell, result = attrs.get("cell"), attrs.get("result")
    if not isinstance(cell, dict) or not all(k in cell for k in ("dataset", "teacher", "scenes", "fraction")):
        raise Damaged("attribute 'cell' is missing or lacks dataset/teacher/scenes/fraction")
    if not isinstance(result, dict) or "fingerprint" not in attrs:
        raise Damaged("attribute 'result' or 'fingerprint' is missing")
    if str(attrs.get("kind", "pose")) != "pose":
        return
    require(arrays, POSE_ARRAYS)
    if not isinstance(result.get("per_iteration"), list) or "stored_bytes" not in result:
        raise Damaged("attribute 'result' lacks per_iteration/stored_bytes")
    n, k = len(arrays["pose_gt"]), len(attrs.get("iterations", [0]))
    shapes = {"pose_gt": (n, 7), "scene_id": (n,), "pose_est": (k, n, 7), "position_error_m": (k, n),
              "orientation_error_deg": (k, n)}
    wrong = [f"{name} {np.shape(arrays[name])} (expected {shape})" for name, shape in shapes.items()
             if np.shape(arrays[name]) != shape]
    if wrong:
        raise Damaged("array shapes do not fit: " + ", ".join(wrong))
    scenes = attrs.get("scenes", [])
    if n and (int(np.min(arrays["scene_id"])) < 0 or int(np.max(arrays["scene_id"])) >= len(scenes)):
        raise Damaged(f"scene_id outside the {len(scenes)} stored scenes")


def read_cell(path: Path) -> CellFile | None:
    """The cell file at ``path`` (``None`` when absent, busy or damaged: see :func:`check_cell`)."""
    loaded = read_h5(path, check=check_cell)
    if loaded is None:
        return None
    arrays, attrs = loaded
    return CellFile(Path(path), arrays, attrs)


def cell_files(store: Store, fingerprints: Iterable[str] | None = None) -> list[CellFile]:
    """Every readable cell of the store (or those of ``fingerprints``), in file-name order."""
    paths = [store.cell_path(fp) for fp in dict.fromkeys(fingerprints)] if fingerprints is not None \
        else store.cell_paths()  # a fingerprint named twice is one cell, read and counted once
    cells = [c for c in (read_cell(p) for p in paths) if c is not None]
    return [c for c in cells if c.attrs.get("fingerprint") == c.path.stem]  # a file copied over another is not it


def identity(cell: CellFile) -> dict[str, Any]:
    """The identifying columns of a cell (see :data:`IDENTITY_COLUMNS`) plus provenance, each model's
    provenance (:data:`MODEL_COLUMNS`, empty for a kind the cell lacks or a cell stored before they were
    recorded) and the cell fingerprint."""
    c = cell.attrs["cell"]
    prov = cell.attrs.get("provenance", {})
    models = cell.attrs.get("models") or {}
    teacher = c["teacher"] + (f"={c['checkpoint']}" if c.get("checkpoint") else "")
    return {
        "dataset": c["dataset"] + (" (validation)" if c.get("evaluated_on") == "validation" else ""),
        "teacher": given_label(cell, "teacher", teacher),
        "teacher_scenes": "+".join(c["scenes"]),
        "fraction": float(c["fraction"]), "seed": int(c.get("seed", 0)),
        "student": given_label(cell, "student", c.get("student")), "encode": c.get("encode") or "-",
        "refiner": given_label(cell, "refiner", c.get("refiner")),
        **{k: prov.get(k) for k in PROVENANCE_KEYS},
        **{k: prov.get(k) for k in MACHINE_KEYS},
        **{f"{kind}_{f}": str((models.get(kind) or {}).get(f) or "") for kind in MODEL_KINDS for f in MODEL_FIELDS},
        "cell": cell.attrs["fingerprint"],
    }


def given_label(cell: CellFile, kind: str, spec: str | None) -> str:
    """How a model of a cell is named in rows: ``NAME``, or for given weights ``NAME=FILE#DIGEST`` (the weights'
    content hash, so two files of the same name are two models, and one file by two paths is one)."""
    if not spec:
        return "-"
    name, sep, path = str(spec).partition("=")
    if not sep:
        return name
    digest = (cell.attrs.get("weights") or {}).get(kind) or (cell.attrs.get("upstream") or {}).get(kind) or ""
    return f"{name}={Path(path).name}" + (f"#{str(digest)[:8]}" if digest else "")


def pose_rows(cells: Iterable[CellFile], iterations: Iterable[int] | None = None) -> pd.DataFrame:
    """One row per pose cell, scene and *shown* iteration: identity, ``scene``, ``iterations``, the
    :func:`harness.results.metrics.summarize` columns, ``ms_per_frame``, ``stored_bytes`` (int), extras.

    A refiner cell shows the stored iterations >= 1 among ``iterations`` (default: those requested when
    it was computed, ``cell["shown_iterations"]``); other cells show iteration 0.
    """
    rows = []
    for cell in cells:
        if cell.kind != "pose":
            continue
        base = identity(cell)
        result = cell.attrs["result"]
        if cell.attrs["cell"].get("refiner"):
            wanted = iterations if iterations is not None else cell.attrs["cell"].get("shown_iterations", [])
            shown = [int(k) for k in wanted if int(k) >= 1]
        else:
            shown = [0]
        for entry in result["per_iteration"]:
            if int(entry["iteration"]) not in shown:
                continue
            for scene_row in entry["per_scene"]:
                row = {**base, "iterations": int(entry["iteration"]), **scene_row,
                       "ms_per_frame": entry["ms_per_frame"], "stored_bytes": int(result["stored_bytes"])}
                for extra in ("scene_accuracy", "latent_mse"):
                    if extra in result:
                        row[extra] = result[extra]
                rows.append(row)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["dataset", "scene", "fraction", "seed", "teacher", "student", "encode", "refiner",
                                   "iterations"], ignore_index=True)
    return frame


def decoder_rows(cells: Iterable[CellFile]) -> pd.DataFrame:
    """One row per decoder cell: identity, ``decoder``, ``scene`` (the teacher's scenes), PSNR/SSIM per split."""
    rows = []
    for cell in cells:
        if cell.kind != "decoder":
            continue
        base = identity(cell)
        result = {k: v for k, v in cell.attrs["result"].items() if k != "grids"}
        rows.append({**base, "decoder": cell.attrs["cell"]["decoder"], "scene": base["teacher_scenes"], **result})
    return pd.DataFrame(rows)


def method_name(row: dict[str, Any] | pd.Series) -> str:
    """The name a leaderboard row is known by: ``teacher[+student[(gt)]][+refiner@K]``,
    e.g. ``posenet-mobilenet+pae+pae-rpr@3`` (a student trained on ground-truth poses shows ``(gt)``)."""
    name = str(row["teacher"])
    student = row.get("student", "-")
    if student not in ("-", None, ""):
        name += f"+{student}" + ("(gt)" if row.get("encode") == "ground_truth" else "")
    refiner = row.get("refiner", "-")
    if refiner not in ("-", None, ""):
        name += f"+{refiner}@{int(row['iterations'])}"
    return name
