"""``bench logs NAME_OR_DIR…``: the learning curves of trained models.

Every training run writes its per-epoch ``log.csv`` (``harness.train``) into
``artifacts/<kind>/<name>-<fp>/logs/[stage<i>/]``, kept when the resumable
checkpoints are removed at the end of the training. This command
finds them by model name (every fingerprint of that name), ``kind/name``,
``name-<fp prefix>`` or a folder, prints the last epochs as a table and plots
the curves to a PNG beside the logs (or into ``--out``).

It imports neither torch nor the store, so it answers in well under a second
(matplotlib only when plotting).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from harness.errors import BenchError

LOG_NAME = "log.csv"  # as harness.train.LOG_NAME (not imported: it would import torch)
_ARTIFACT = re.compile(r"^(?P<name>.+)-(?P<fp>[0-9a-f]{16})$")


@dataclass
class Curves:
    """The logs of one artifact: rows of every stage in training order."""

    label: str
    folder: Path
    rows: list[dict[str, float]]  # each with "stage" (str) and "step" (epochs since the first stage began)
    stages: list[str]
    meta: dict


def register(commands) -> None:
    p = commands.top.add_parser(
        "logs", parents=[commands.common], help="print the last epochs of trained models and plot their learning curves",
        description="Find the per-epoch training logs (log.csv) of trained models in the work directory by model name "
        "(every fingerprint of that name), KIND/NAME, NAME-FP (a fingerprint prefix) or a folder; print the last epochs "
        "(loss and its parts, learned loss weights sx/sq, learning rate, epoch seconds, validation metrics) and write "
        "a PNG of the curves beside each log (or into --out).",
    )
    p.add_argument("targets", nargs="+", metavar="NAME_OR_DIR", help="model name, KIND/NAME, NAME-FP or a folder holding log.csv files")
    p.add_argument("--last", type=int, default=5, metavar="N", help="epochs to print per model (default 5; 0 prints all)")
    p.add_argument("--out", type=Path, metavar="DIR", help="write the PNGs into DIR (default: beside each model's logs)")
    p.add_argument("--no-plot", action="store_true", help="print the tables only")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    root = Path(args.workdir) if args.workdir is not None else Path(os.environ.get("BENCH_WORKDIR", ".bench"))
    found: dict[Path, Curves] = {}
    for target in args.targets:
        for folder in resolve(root, target):
            found.setdefault(folder, load_curves(folder, root))
    for i, curves in enumerate(found.values()):
        if i:
            print()
        print(f"{curves.label}: {curves.folder}")
        rows = curves.rows[-args.last:] if args.last > 0 else curves.rows
        columns = table_columns(curves)
        print(tabulate([[r.get(c) for c in columns] for r in rows], headers=columns, tablefmt="github",
                       floatfmt=".4g", missingval=""))
        if not args.no_plot:
            png = (args.out / f"{curves.folder.parent.name}-{curves.folder.name}.png") if args.out else curves.folder / "curves.png"
            plot(curves, png)
            print(f"curves: {png}")
    return 0


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
        raise BenchError(f"{target}: {len(matches)} trained artifact(s) but no {LOG_NAME} (trained before learning "
                         "curves were logged, or given weights): " + ", ".join(str(m) for m in matches))
    known = sorted({f"{f.parent.name}/{_ARTIFACT.match(f.name)['name']}" for f in artifacts.glob("*/*")
                    if _ARTIFACT.match(f.name) and _logs(f)})
    raise BenchError(f"no trained model {target!r} in {artifacts}; with logs: {', '.join(known) or '(none)'}")


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
        with open(log, newline="") as fh:
            for row in csv.DictReader(fh):
                values = {k: float(v) for k, v in row.items() if v not in ("", None) and k is not None}
                rows.append({**values, "stage": stage, "step": offset + values.get("epoch", 0)})
    meta_file = folder / "weights.json"
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    m = _ARTIFACT.match(folder.name)
    kind = folder.parent.name if folder.parent.parent.name == "artifacts" else ""
    name, fp = (m["name"], m["fp"]) if m else (folder.name, "")
    where = ", ".join(str(x) for x in [meta.get("dataset"), "+".join(meta.get("scenes") or [])] if x)
    label = " ".join(x for x in [kind, name, f"({where})" if where else "", f"fp {fp}" if fp else ""] if x)
    return Curves(label, folder, rows, stages, meta)


def table_columns(curves: Curves) -> list[str]:
    """Columns in the log's order (``harness.train.EpochLog``), with ``stage`` first when there are several."""
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
        "logged parts (epoch means)": [c for c in columns if c not in ("stage", "epoch", "loss", "lr", "seconds")
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
