"""Learning curves of trained models: find each artifact's per-epoch ``log.csv`` files, read them into one
sequence of epochs and plot them (``bench logs`` and the report).

Every training run writes its ``log.csv`` (``harness.training.loop``) into
``artifacts/<kind>/<name>-<fp>/logs/[stage<i>/]``. Imports neither torch nor the store (matplotlib only when
plotting).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from aprbench.harness.errors import BenchError

LOG_NAME = "log.csv"  # as harness.training.loop.LOG_NAME (not imported: it would import torch)
_ARTIFACT = re.compile(r"^(?P<name>.+)-(?P<fp>[0-9a-f]{16})$")


@dataclass
class Curves:
    """The logs of one artifact: rows of every stage in training order."""

    label: str
    folder: Path
    rows: list[dict[str, float]]  # each with "stage" (str) and "step" (epochs since the first stage began)
    stages: list[str]
    meta: dict


def resolve(root: Path, target: str) -> list[Path]:
    """Artifact folders named by ``target`` (a folder, ``name``, ``kind/name``, ``name-<fp prefix>``) that hold logs."""
    path = Path(target)
    if path.is_dir():
        if not _logs(path):
            raise BenchError(f"{target}: no {LOG_NAME} in this folder or below it")
        return [path]
    artifacts = root / "artifacts"
    kind, _, rest = target.rpartition("/")
    matches = []
    for folder in sorted(artifacts.glob("*/*")):
        m = _ARTIFACT.match(folder.name)
        if not folder.is_dir() or not m or (kind and folder.parent.name != kind):
            continue
        if rest == m["name"] or (folder.name.startswith(rest) and len(rest) > len(m["name"]) + 1):
            matches.append(folder)
    with_logs = [f for f in matches if _logs(f)]
    if with_logs:
        return with_logs
    if matches:
        untrained = [m for m in matches if _epochs(m) == 0]
        if len(untrained) == len(matches):
            raise BenchError(f"{target}: {matches[0].parent.name} {target.rpartition('/')[2]} has no training loop "
                             "(it is built without epochs, e.g. an index of training poses), so it has no learning "
                             "curve: " + ", ".join(str(m) for m in matches))
        raise BenchError(f"{target}: {len(matches)} trained artifact(s) but no {LOG_NAME} (trained before learning "
                         "curves were logged, or given weights): " + ", ".join(str(m) for m in matches))
    known = sorted({f"{f.parent.name}/{_ARTIFACT.match(f.name)['name']}" for f in artifacts.glob("*/*")
                    if _ARTIFACT.match(f.name) and _logs(f)})
    raise BenchError(f"no trained model {target!r} in {artifacts}; with logs: {', '.join(known) or '(none)'}")


def _epochs(folder: Path) -> int | None:
    """The epochs an artifact's sidecar records (``None`` without one)."""
    meta = folder / "weights.json"
    try:
        return int(json.loads(meta.read_text()).get("epochs", -1))
    except (OSError, ValueError, TypeError):
        return None


def _logs(folder: Path) -> list[Path]:
    return sorted(folder.rglob(LOG_NAME))


def load_curves(folder: Path, root: Path) -> Curves:
    """Read every ``log.csv`` under ``folder`` (stages in name order) into one sequence of epochs."""
    rows: list[dict[str, float]] = []
    stages = []
    for log in _logs(folder):
        stage = str(log.parent.relative_to(folder))
        stages.append(stage)
        offset = rows[-1]["step"] if rows else 0
        for values in _log_rows(log):
            rows.append({**values, "stage": stage, "step": offset + values.get("epoch", 0)})
    meta = _sidecar(folder / "weights.json")
    m = _ARTIFACT.match(folder.name)
    kind = folder.parent.name if folder.parent.parent.name == "artifacts" else ""
    name, fp = (m["name"], m["fp"]) if m else (folder.name, "")
    scenes = meta.get("scenes") if isinstance(meta.get("scenes"), list) else []
    where = ", ".join(str(x) for x in [meta.get("dataset"), "+".join(map(str, scenes))] if x)
    label = " ".join(x for x in [kind, name, f"({where})" if where else "", f"fp {fp}" if fp else ""] if x)
    return Curves(label, folder, rows, stages, meta)


def _log_rows(log: Path) -> list[dict[str, float]]:
    """The numeric rows of one ``log.csv``; a damaged line (a value that is not a number, a truncated row)
    is left out with a warning naming the file and line, an unreadable file with one naming the file."""
    rows: list[dict[str, float]] = []
    bad: list[int] = []
    try:
        with open(log, newline="", errors="replace") as fh:
            reader = csv.DictReader(fh)
            for row in reader:
                try:
                    if None in row or any(v is None for v in row.values()):
                        raise ValueError("wrong number of values")
                    values = {k: float(v) for k, v in row.items() if v != ""}
                except (ValueError, TypeError):
                    bad.append(reader.line_num)
                    continue
                rows.append(values)
    except (OSError, csv.Error, UnicodeError) as exc:
        warnings.warn(f"{log}: unreadable learning curve ({exc}); left out")
        return []
    if bad:
        warnings.warn(f"{log}: damaged line(s) {', '.join(map(str, bad[:5]))}{' …' if len(bad) > 5 else ''} "
                      "(not numbers); left out")
    return rows


def _sidecar(path: Path) -> dict:
    """A weights sidecar (JSON object); a damaged one is warned about and read as empty."""
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict):
            raise ValueError(f"a JSON {type(meta).__name__}, not an object")
    except (OSError, ValueError, UnicodeError) as exc:
        warnings.warn(f"{path}: damaged sidecar ({str(exc).splitlines()[0]}); ignored")
        return {}
    return meta


def table_columns(curves: Curves) -> list[str]:
    """Columns in the log's order (``harness.training.loop.EpochLog``), with ``stage`` first when there are several."""
    columns: list[str] = []
    for row in curves.rows:
        columns += [k for k in row if k not in columns and k not in ("stage", "step")]
    return (["stage"] if len(curves.stages) > 1 else []) + columns


def plot(curves: Curves, png: Path) -> Path:
    """One panel per group of columns (loss, the other logged parts, learned weights, learning rate, validation)
    against the epoch, log-scaled where all values are positive; stage boundaries are dashed lines. Written
    atomically (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    columns = table_columns(curves)
    groups = {
        "loss": ["loss"] if "loss" in columns else [],
        "logged parts (epoch means)": [c for c in columns if c not in ("stage", "epoch", "loss", "lr", "seconds", "cpu_seconds")
                                       and not c.startswith("val_") and c.rpartition(".")[2] not in ("sx", "sq")],
        "learned loss weights (sx, sq)": [c for c in columns if c.rpartition(".")[2] in ("sx", "sq")],
        "learning rate": [c for c in columns if c == "lr"],
        "validation": [c for c in columns if c.startswith("val_")],
    }
    groups = {k: v for k, v in groups.items() if v}
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.4 * len(groups)), sharex=True, squeeze=False)
    steps = [r["step"] for r in curves.rows]
    for ax, (title, cols) in zip(axes[:, 0], groups.items()):
        for c in cols:
            ax.plot(steps, [r.get(c, math.nan) for r in curves.rows], marker="." if len(steps) < 50 else None, label=c)
        ax.set_title(title, fontsize=9)
        if title != "learned loss weights (sx, sq)" and all(r.get(c, 1) > 0 for r in curves.rows for c in cols):
            ax.set_yscale("log")
        ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        for r0, r1 in zip(curves.rows, curves.rows[1:]):
            if r0["stage"] != r1["stage"]:
                ax.axvline(r0["step"] + 0.5, color="grey", linestyle="--", linewidth=0.8)
    axes[-1, 0].set_xlabel("epoch")
    axes[-1, 0].xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    fig.suptitle(curves.label if len(curves.label) < 90 else curves.label[:87] + "…", fontsize=9)
    height = 2.4 * len(groups)  # fixed margins in inches: tight_layout measured every label and doubled the cost
    fig.subplots_adjust(left=0.1, right=0.98, top=1 - 0.45 / height, bottom=0.5 / height, hspace=0.35)
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png
