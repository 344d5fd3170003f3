"""The report: ``index.html`` and ``report.md`` with the provenance, the leaderboard tables and captioned PNGs.

Figures (one colour per series, legends beside the axes, never on the data):

- cumulative error curves per scene (position m, orientation deg), one line per method, frames of every seed pooled;
- median errors per scene and method as bars, with the standard deviation over seeds as error bars;
- median error against refinement iterations, one figure per scene, integer ticks, the band of ± one standard
  deviation over seeds where there are several;
- decoder grids redrawn from the grid PNG each decoder cell stores (``torchvision.utils.save_image`` layout:
  ground truth and decoded image side by side, 8 tiles a row): rows labelled ground truth / decoded, columns by
  frame, PSNR (dB) and SSIM of each decoded image computed from the 8-bit PNG.

The pages and figures are drawn into a temporary folder inside the output folder and moved into place;
only files an earlier report wrote (``harness.store.manifest``) are replaced or removed as stale, and a
file of the same name the user put there stops the report before anything changes.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from aprbench.harness.results import leaderboard as lb  # noqa: E402
from aprbench.harness.errors import BenchError  # noqa: E402
from aprbench.harness.store.hdf5 import Store, atomic_path  # noqa: E402
from aprbench.harness.store.manifest import legacy_report_files, owned, record  # noqa: E402


def colours(n: int) -> list:
    """``n`` distinct colours: tab10 up to 10, tab20 up to 20, evenly spaced hues beyond."""
    if n <= 10:
        return [plt.get_cmap("tab10")(i) for i in range(n)]
    if n <= 20:
        return [plt.get_cmap("tab20")(i) for i in range(n)]
    return [plt.get_cmap("hsv")(i / n) for i in range(n)]


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def series_labels(poses: pd.DataFrame) -> pd.Series:
    """One legend label per row: the method (with ``@scenes`` / training fraction where needed) and its recipe."""
    if poses.empty:
        return pd.Series([], dtype=str)
    labels = lb.row_labels(poses)
    recipes = lb.recipe_labels(poses)
    return labels.where(recipes == "", labels + " [" + recipes + "]")


def _legend_right(ax) -> None:
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)


def error_curves(board: lb.Board, poses: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """One PNG per dataset and scene: the fraction of frames within each error, one line per method."""
    figures = []
    poses = poses.assign(label=series_labels(poses))
    for (dataset, scene), rows in poses.groupby(["dataset", "scene"], sort=False):
        labels = list(dict.fromkeys(rows["label"]))
        fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
        for colour, label in zip(colours(len(labels)), labels):
            pos, ori = [], []
            for _, r in rows[rows["label"] == label].iterrows():
                p, o = board.errors(r["cell"], scene, int(r["iterations"]))
                pos.append(p)
                ori.append(o)
            for ax, err in ((ax_m, np.sort(np.concatenate(pos))), (ax_d, np.sort(np.concatenate(ori)))):
                ax.step(err, np.arange(1, len(err) + 1) / max(len(err), 1), where="post", color=colour, label=label)
        ax_m.set(xlabel="position error (m)", ylabel="fraction of test frames within", title=f"{scene}: position")
        ax_d.set(xlabel="orientation error (°)", title=f"{scene}: orientation")
        for ax in (ax_m, ax_d):
            ax.grid(alpha=0.3)
            ax.set_ylim(0, 1.02)
        _legend_right(ax_d)
        seeds = rows.groupby("label")["seed"].nunique().max()
        caption = (f"{dataset} / {scene}: cumulative distribution of the position (left) and orientation (right) "
                   f"errors over the test frames, one line per method"
                   + (f"; frames of all {seeds} seeds pooled" if seeds > 1 else "") + ". Higher and further left is better.")
        figures.append((caption, _save(fig, out / f"cdf-{_slug(dataset, scene)}.png")))
    return figures


def scene_bars(board: lb.Board, poses: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """One PNG per dataset: median position and orientation error per scene, one bar per method (± std over seeds)."""
    figures = []
    tidy = lb.scenes_frame(board, poses)
    if tidy.empty:
        return figures
    tidy = tidy.assign(label=series_labels(tidy.assign(seed=0)))
    for dataset, part in tidy.groupby("dataset", sort=False):
        scenes = list(dict.fromkeys(part["scene"]))
        labels = list(dict.fromkeys(part["label"]))
        fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(scenes) * 2), 4.2))
        width = 0.8 / max(len(labels), 1)
        for ax, col, unit in ((axes[0], "median_m", "m"), (axes[1], "median_deg", "°")):
            for i, (colour, label) in enumerate(zip(colours(len(labels)), labels)):
                rows = part[part["label"] == label].set_index("scene").reindex(scenes)
                x = np.arange(len(scenes)) + (i - (len(labels) - 1) / 2) * width
                ax.bar(x, rows[col], width, yerr=rows[f"{col}_std"].where(rows["n_seeds"] > 1), color=colour,
                       label=label, capsize=2)
            ax.set_xticks(np.arange(len(scenes)), scenes)
            ax.set(ylabel=f"median error ({unit})")
            ax.grid(axis="y", alpha=0.3)
        _legend_right(axes[1])
        caption = (f"{dataset}: median position (left, m) and orientation (right, °) error per scene and the Average "
                   f"(mean of the per-scene medians), one bar per method; error bars: standard deviation over seeds "
                   f"where there are several. Lower is better.")
        figures.append((caption, _save(fig, out / f"scenes-{_slug(dataset)}.png")))
    return figures


def iteration_frame(board: lb.Board, poses: pd.DataFrame) -> pd.DataFrame:
    """Per refiner cell, scene and *stored* iteration (0 = the teacher's estimate): median errors."""
    rows = []
    refined = poses[poses["refiner"] != "-"]
    for fp, cell_rows in refined.groupby("cell", sort=False):
        cell = board.cells[fp]
        first = cell_rows.iloc[0]
        for entry in cell.attrs["result"]["per_iteration"]:
            for scene_row in entry["per_scene"]:
                if scene_row["scene"] not in set(cell_rows["scene"]):
                    continue
                rows.append({**{k: first[k] for k in lb.GROUP_KEYS if k not in ("iterations", "method")},
                             "chain": lb.method_name({**first, "refiner": "-"}) + f"+{first['refiner']}",
                             "seed": first["seed"], "scene": scene_row["scene"], "iteration": int(entry["iteration"]),
                             "median_m": scene_row["median_m"], "median_deg": scene_row["median_deg"]})
    return pd.DataFrame(rows)


def iteration_curves(board: lb.Board, poses: pd.DataFrame, out: Path) -> list[tuple[str, Path]]:
    """One PNG per dataset and scene: median error against refinement iterations, one line per refiner chain."""
    frame = iteration_frame(board, poses)
    figures = []
    if frame.empty:
        return figures
    frame["recipe"] = lb.recipe_labels(frame)
    frame["label"] = frame["chain"].where(frame["recipe"] == "", frame["chain"] + " [" + frame["recipe"] + "]")
    frac = frame["fraction"].astype(float)
    frame["label"] = frame["label"].where(frac == 1.0, frame["label"] + (frac * 100).map(lambda f: f" ({f:g} % train)"))
    for (dataset, scene), part in frame.groupby(["dataset", "scene"], sort=False):
        labels = list(dict.fromkeys(part["label"]))
        fig, (ax_m, ax_d) = plt.subplots(1, 2, figsize=(11, 4))
        several = False
        for colour, label in zip(colours(len(labels)), labels):
            series = part[part["label"] == label].groupby("iteration")[["median_m", "median_deg"]]
            mean, std, n = series.mean(), series.std(ddof=1).fillna(0.0), series.size()
            for ax, col in ((ax_m, "median_m"), (ax_d, "median_deg")):
                ax.plot(mean.index, mean[col], marker="o", color=colour, label=label)
                if n.max() > 1:
                    several = True
                    ax.fill_between(mean.index, mean[col] - std[col], mean[col] + std[col], color=colour, alpha=0.2,
                                    linewidth=0)
        for ax, unit in ((ax_m, "position error (m)"), (ax_d, "orientation error (°)")):
            ax.set(xlabel="refinement iterations (0 = teacher estimate)", ylabel=f"median {unit}")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        ax_m.set_title(f"{scene}: position")
        ax_d.set_title(f"{scene}: orientation")
        _legend_right(ax_d)
        caption = (f"{dataset} / {scene}: median position (left) and orientation (right) error of the test frames "
                   f"after each refinement iteration, one line per teacher + student + refiner"
                   + ("; band: ± one standard deviation over seeds" if several else "") + ".")
        figures.append((caption, _save(fig, out / f"iterations-{_slug(dataset, scene)}.png")))
    return figures


def _ssim_fn():
    try:
        from aprbench.harness.results.metrics import ssim  # type: ignore[attr-defined]
    except ImportError:
        from aprbench.harness.running.stages.decoder import ssim
    return ssim


def grid_pairs(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (ground truth, decoded) image pairs of a decoder grid PNG (``save_image(nrow=8, padding=2)`` layout,
    tiles alternating truth, decoded); empty padding slots are skipped. Images as float arrays in [0, 1], HWC."""
    from PIL import Image

    img = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0
    H, W, _ = img.shape
    for across in range(8, 0, -1):
        size = (W - 2) / across - 2
        if size > 0 and size.is_integer() and (H - 2) % (size + 2) == 0:
            break
    else:
        return []
    size, down = int(size), (H - 2) // (int(size) + 2)
    tiles = [img[2 + r * (size + 2): 2 + r * (size + 2) + size, 2 + c * (size + 2): 2 + c * (size + 2) + size]
             for r in range(down) for c in range(across)]
    pairs = []
    for truth, decoded in zip(tiles[0::2], tiles[1::2]):
        if np.all(truth == 1.0) and np.all(decoded == 1.0):
            continue
        pairs.append((truth, decoded))
    return pairs


def decoder_figure(path: Path, out: Path, title: str) -> tuple[Path, list[tuple[float, float]]] | None:
    """Redraw a grid with row labels (ground truth / decoded), frame numbers and PSNR / SSIM under each decoded
    image; returns the PNG and the ``(psnr dB, ssim)`` of each pair."""
    import torch

    pairs = grid_pairs(path)
    if not pairs:
        return None
    ssim = _ssim_fn()
    scores = []
    for truth, decoded in pairs:
        mse = max(float(np.mean((truth - decoded) ** 2)), 1e-12)
        t, d = (torch.from_numpy(a).permute(2, 0, 1)[None] for a in (truth, decoded))
        scores.append((10 * np.log10(1.0 / mse), float(ssim(d, t).reshape(-1)[0])))
    per_row = min(8, len(pairs))
    blocks = -(-len(pairs) // per_row)
    fig, axes = plt.subplots(2 * blocks, per_row, figsize=(1.45 * per_row + 0.6, 3.3 * blocks), squeeze=False)
    for k in range(blocks * per_row):
        b, c = divmod(k, per_row)
        ax_t, ax_d = axes[2 * b, c], axes[2 * b + 1, c]
        for ax in (ax_t, ax_d):
            ax.set_xticks([])
            ax.set_yticks([])
        if k >= len(pairs):
            ax_t.axis("off")
            ax_d.axis("off")
            continue
        ax_t.imshow(pairs[k][0])
        ax_d.imshow(pairs[k][1])
        ax_t.set_title(f"frame {k + 1}", fontsize=8)
        ax_d.set_xlabel(f"{scores[k][0]:.1f} dB\nSSIM {scores[k][1]:.2f}", fontsize=7)
        if c == 0:
            ax_t.set_ylabel("ground truth", fontsize=8)
            ax_d.set_ylabel("decoded", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return _save(fig, out), scores


def decoder_grids(board: lb.Board, out: Path) -> list[tuple[str, Path]]:
    figures = []
    for _, row in board.decoders.iterrows():
        cell = board.cells.get(row["cell"])
        grids = cell.attrs["result"].get("grids", {}) if cell is not None else {}
        for split, src in grids.items():
            if not Path(src).exists():
                continue
            name = f"decoder-{_slug(row['method'], row['decoder'], split)}.png"
            drawn = decoder_figure(Path(src), out / name, f"{row['decoder']} on {row['method']}, {split} split")
            if drawn is None:
                continue
            mean = (f"; mean over the whole split: PSNR {row[f'{split}_psnr']:.2f} dB, SSIM {row[f'{split}_ssim']:.3f}"
                    if f"{split}_psnr" in row and f"{split}_ssim" in row else "")
            caption = (f"Decoder {row['decoder']} on the latents of {row['method']} ({row['scene']}), {split} split: "
                       f"{len(drawn[1])} frames evenly spaced over the split, ground truth (upper row) above the "
                       f"decoded image (lower row), with the PSNR (dB) and SSIM of each decoded image computed from "
                       f"the 8-bit grid{mean}.")
            figures.append((caption, drawn[0]))
    return figures


PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>aprbench report</title><style>"
        "body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:12px}"
        "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right} td:first-child,th:first-child{text-align:left}"
        "figure{margin:1.5em 0} figcaption{font-size:13px;color:#333;max-width:900px}"
        "img{max-width:100%}</style></head><body>\n{body}\n</body></html>")


def learning_curves(store: Store, out: Path) -> list[tuple[str, Path]]:
    """The per-epoch curves of every model trained in the store (``bench logs``' figure), one PNG each."""
    from aprbench.harness.results.curves import load_curves, plot

    figures = []
    for folder in sorted((store.root / "artifacts").glob("*/*")):
        curves = load_curves(folder, store.root)
        if curves.rows:
            path = plot(curves, out / f"curves-{folder.parent.name}-{folder.name}.png")
            figures.append((f"Learning curves of {curves.label} (bench logs {folder.parent.name}/{folder.name}).", path))
    return figures


def write_report(store: Store, out: Path, fingerprints: Iterable[str] | None = None, force: bool = False,
                 manager: Any = None, filters: Iterable[str] = (), board: lb.Board | None = None) -> Path:
    """Write the figures, ``index.html`` and ``report.md`` into ``out`` for the store's cells (all, or
    ``fingerprints``, narrowed by ``filters``); skipped when the same cells were reported last time.
    ``board``: those cells' board when the caller has built it already (``bench run``'s leaderboard)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    filters = list(filters)
    if board is None:
        board = lb.build(store, manager, list(fingerprints) if fingerprints is not None else None, filters)
    used = sorted(set(board.poses.get("cell", [])) | set(board.decoders.get("cell", [])))
    stamp = json.dumps({"cells": used, "filters": filters, "hooks": board.hook_columns})
    stamp_path, index = out / ".cells.json", out / "index.html"
    if not force and index.exists() and _read_stamp(stamp_path) == stamp:
        return index
    # two runs finishing together in one work directory write one report after the other
    with store.lock("report-" + hashlib.sha256(str(out.resolve()).encode()).hexdigest()[:16]):
        ours = owned(out, "report")
        ours = legacy_report_files(out) if ours is None else ours | {".cells.json"}
        _refuse_clashes(out, ["index.html", "report.md", ".cells.json"], ours)
        staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
        try:
            _write_pages(store, board, staging)
            new = sorted(p.name for p in staging.iterdir())
            _refuse_clashes(out, new, ours)
            for name in ours - set(new) - {".cells.json"}:  # no stale figures of an earlier report; nothing else
                (out / name).unlink(missing_ok=True)
            for name in new:
                os.replace(staging / name, out / name)
            stamp_path.write_text(stamp)
            record(out, "report", [*new, ".cells.json"])
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return index


def _read_stamp(path: Path) -> str | None:
    """The cells an earlier report showed (``.cells.json``); ``None`` when absent or unreadable."""
    try:
        return path.read_text()
    except (OSError, UnicodeError):
        return None


def _refuse_clashes(out: Path, names: Iterable[str], ours: set[str]) -> None:
    """A report never overwrites a file it did not write (BenchError naming the first)."""
    for name in names:
        if (out / name).exists() and name not in ours:
            raise BenchError(f"{out / name} exists and was not written by bench report; nothing was changed "
                             "(move it, or choose another --out)")


def _write_pages(store: Store, board: lb.Board, out: Path) -> None:
    """The figures, ``index.html`` and ``report.md`` of ``board`` into the (empty) folder ``out``."""
    figures: list[tuple[str, Path]] = []
    if not board.poses.empty:
        figures += scene_bars(board, board.poses, out)
        figures += error_curves(board, board.poses, out)
        figures += iteration_curves(board, board.poses, out)
    figures += decoder_grids(board, out)
    figures += learning_curves(store, out)
    body = ["<h1>aprbench report</h1>", "<h2>Provenance</h2>", _provenance_html(board)]
    md = ["# aprbench report", "", "## Provenance", "", *_provenance_md(board), ""]
    if not board.poses.empty:
        for title, view in (("Median errors per scene", "scenes"), ("Recall within thresholds", "recall")):
            body += [f"<h2>{title}</h2>", lb.text(board, view, "html", decoders=False, header=view == "scenes")]
            md += [f"## {title}", "", lb.text(board, view, "github", decoders=False, header=view == "scenes"), ""]
    if not board.decoders.empty:
        body += ["<h2>Decoders</h2>", lb.render_table(lb.decoders_table(board, "html"), "html")]
        md += ["## Decoders", "", lb.render_table(lb.decoders_table(board, "github"), "github"), ""]
    if figures:
        body.append("<h2>Figures</h2>")
        md += ["## Figures", ""]
    for i, (caption, path) in enumerate(figures, 1):
        body.append(f'<figure><img src="{html.escape(path.name)}" alt="figure {i}">'
                    f"<figcaption><b>Figure {i}.</b> {html.escape(caption)}</figcaption></figure>")
        md += [f"![figure {i}]({path.name})", "", f"*Figure {i}.* {caption}", ""]
    if board.poses.empty and board.decoders.empty:
        body.append("<p>No cells in the store match: run <code>bench run</code> first, or loosen --filter.</p>")
    (out / "index.html").write_text(PAGE.replace("{body}", "\n".join(body)))
    (out / "report.md").write_text("\n".join(md))


def _provenance_rows(board: lb.Board) -> list[tuple[str, str]]:
    frame = pd.concat([board.poses, board.decoders], ignore_index=True)
    if frame.empty:
        return []

    def vals(key: str) -> str:
        v = sorted({str(x) for x in frame[key] if str(x) not in ("", "None", "nan")}) if key in frame else []
        return ", ".join(v) or "–"

    dates = sorted(d for d in frame["created"] if d)
    recipes = frame[lb.MERGE_KEYS].drop_duplicates()
    scenes = ", ".join(dict.fromkeys(board.poses["scene"])) if not board.poses.empty else "–"
    return [("datasets", vals("dataset")), ("scenes", scenes), ("profiles", vals("profile")),
            ("--set overrides", vals("overrides")), ("aprbench version", vals("aprbench_version")),
            ("git commit", vals("git_commit")), ("dataset fingerprint", vals("dataset_fingerprint")),
            ("device / precision", f"{vals('device')} / {vals('precision')}"),
            ("torch / CPU / threads", f"{vals('torch')} / {vals('cpu')} / {vals('threads')}"),
            ("models (plugin version, source)", _models_text(frame)),
            ("seeds", ", ".join(map(str, sorted(frame["seed"].unique())))),
            ("created (UTC)", f"{dates[0]} … {dates[-1]}" if dates else "–"),
            ("cells", str(frame["cell"].nunique())), ("recipes", str(len(recipes)))]


def _models_text(frame: pd.DataFrame) -> str:
    """Every model of the rows with its plugin version and where it came from: ``pae 1 (built-in …)``."""
    from aprbench.harness.store.cells import MODEL_KINDS

    seen: dict[str, None] = {}
    for kind in MODEL_KINDS:
        cols = [kind, f"{kind}_version", f"{kind}_origin"]
        if not all(c in frame for c in cols):
            continue
        for name, version, origin in frame[cols].drop_duplicates().itertuples(index=False):
            if version:
                seen[f"{name} {version} ({origin})"] = None
    return "; ".join(seen) or "–"


def _provenance_html(board: lb.Board) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _provenance_rows(board))
    return f"<table>{rows}</table>"


def _provenance_md(board: lb.Board) -> list[str]:
    return [f"- **{k}**: {v}" for k, v in _provenance_rows(board)]
