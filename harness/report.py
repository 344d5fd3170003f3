"""The report: matplotlib PNGs and an HTML / Markdown page beside the leaderboard.

Plots: cumulative error curves (position m, orientation deg) per scene with
one line per cell; per-scene bars of median errors; median error against
refinement iterations; decoder grids (ground truth beside decoded images).
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path
from typing import Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from harness.leaderboard import display_frame, load_cells, render  # noqa: E402
from harness.store import Store, atomic_path, read_h5  # noqa: E402


def _label(row: pd.Series) -> str:
    parts = [row["teacher"]]
    if row["student"] != "-":
        parts.append(f"{row['student']}/{row['encode']}")
    if row["refiner"] != "-":
        parts.append(f"{row['refiner']}x{row['iterations']}")
    if row["fraction"] != 1.0:
        parts.append(f"{row['fraction']:g}")
    return " ".join(parts)


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def error_curves(store: Store, poses: pd.DataFrame, out: Path) -> list[Path]:
    """One PNG per scene: cumulative distribution of position and orientation errors per cell."""
    paths = []
    per_frame = {}
    for fp in poses["cell"].unique():
        loaded = read_h5(store.cell_path(fp))
        if loaded is not None:
            per_frame[fp] = loaded
    for scene, rows in poses.groupby("scene"):
        fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
        for _, row in rows.iterrows():
            arrays, attrs = per_frame[row["cell"]]
            sid = attrs["scenes"].index(scene)
            mask = arrays["scene_id"] == sid
            for ax, key in ((ax_m, "position_error_m"), (ax_d, "orientation_error_deg")):
                err = np.sort(arrays[key][list(attrs["iterations"]).index(int(row["iterations"]))][mask])
                ax.plot(err, np.arange(1, len(err) + 1) / max(len(err), 1), label=_label(row))
        ax_m.set(xlabel="position error (m)", ylabel="fraction of frames", title=f"{scene}: position")
        ax_d.set(xlabel="orientation error (deg)", title=f"{scene}: orientation")
        for ax in (ax_m, ax_d):
            ax.grid(alpha=0.3)
        ax_d.legend(fontsize=7, loc="lower right")
        paths.append(_save(fig, out / f"cdf-{scene}.png"))
    return paths


def scene_bars(poses: pd.DataFrame, out: Path) -> Path:
    """Median position and orientation error per scene, one bar per cell."""
    frame = poses.assign(label=poses.apply(_label, axis=1))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, col, unit in ((axes[0], "median_m", "m"), (axes[1], "median_deg", "deg")):
        table = frame.pivot_table(index="scene", columns="label", values=col, aggfunc="first")
        table.plot.bar(ax=ax, legend=False, rot=0)
        ax.set(ylabel=f"median error ({unit})", xlabel="scene")
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="upper center", ncol=3, bbox_to_anchor=(0.5, 1.12))
    return _save(fig, out / "scenes.png")


def iteration_curves(poses: pd.DataFrame, out: Path) -> Path | None:
    """Median error against refinement iterations (0 = the teacher alone), per teacher x student x refiner and scene."""
    refined = poses[poses["refiner"] != "-"]
    if refined.empty:
        return None
    fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
    for (teacher, student, encode, refiner, fraction, scene), rows in refined.groupby(
        ["teacher", "student", "encode", "refiner", "fraction", "scene"]
    ):
        base = poses[(poses["teacher"] == teacher) & (poses["student"] == "-") & (poses["refiner"] == "-")
                     & (poses["scene"] == scene) & (poses["fraction"] == fraction)]
        rows = pd.concat([base.assign(iterations=0), rows]).sort_values("iterations")
        label = f"{teacher} {student}/{encode} {refiner} [{scene}]"
        ax_m.plot(rows["iterations"], rows["median_m"], marker="o", label=label)
        ax_d.plot(rows["iterations"], rows["median_deg"], marker="o", label=label)
    ax_m.set(xlabel="iterations", ylabel="median position error (m)")
    ax_d.set(xlabel="iterations", ylabel="median orientation error (deg)")
    for ax in (ax_m, ax_d):
        ax.grid(alpha=0.3)
    ax_d.legend(fontsize=7)
    return _save(fig, out / "iterations.png")


def write_report(store: Store, out: Path, fingerprints: Iterable[str] | None = None, force: bool = False) -> Path:
    """Write every plot and ``index.html`` / ``report.md`` into ``out``; skipped when the cells are unchanged."""
    out.mkdir(parents=True, exist_ok=True)
    fps = list(fingerprints) if fingerprints is not None else None
    poses, decoders = load_cells(store, fps)
    stamp = json.dumps(sorted(poses["cell"].unique().tolist() if not poses.empty else [])
                       + sorted(decoders["cell"].tolist() if not decoders.empty else []))
    stamp_path, index = out / ".cells.json", out / "index.html"
    if not force and index.exists() and stamp_path.exists() and stamp_path.read_text() == stamp:
        return index
    images: list[tuple[str, Path]] = []
    if not poses.empty:
        images += [(f"Cumulative errors: {p.stem[4:]}", p) for p in error_curves(store, poses, out)]
        images.append(("Median error per scene", scene_bars(poses, out)))
        it = iteration_curves(poses, out)
        if it is not None:
            images.append(("Median error against iAPR iterations", it))
    for _, row in decoders.iterrows():
        loaded = read_h5(store.cell_path(row["cell"]))
        if loaded is None:
            continue
        for split, src in loaded[1]["result"].get("grids", {}).items():
            if Path(src).exists():
                dst = out / f"decoder-{row['teacher']}-{row['student']}-{row['encode']}-{split}.png"
                shutil.copyfile(src, dst)
                images.append((f"Decoder {row['teacher']} / {row['student']} ({row['encode']}), {split}: "
                               f"ground truth (left) and decoded (right)", dst))
    table = display_frame(poses)
    body = [
        "<h1>aprbench report</h1>", "<h2>Leaderboard</h2>", render(table, "html"),
    ]
    md = ["# aprbench report", "", "## Leaderboard", "", render(table, "github"), ""]
    if not decoders.empty:
        dec = decoders.drop(columns=["cell", "iterations", "refiner"], errors="ignore")
        body += ["<h2>Decoders</h2>", render(dec, "html")]
        md += ["## Decoders", "", render(dec, "github"), ""]
    for title, path in images:
        body += [f"<h2>{html.escape(title)}</h2>", f'<img src="{path.name}" style="max-width:100%">']
        md += [f"## {title}", "", f"![{title}]({path.name})", ""]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>aprbench report</title>"
            "<style>body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:12px}"
            "td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>" + "\n".join(body) + "</body></html>")
    with atomic_path(index) as tmp:
        tmp.write_text(page)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text("\n".join(md))
    stamp_path.write_text(stamp)
    return index
