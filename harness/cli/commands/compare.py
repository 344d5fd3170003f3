"""``bench compare A B``: the paired analysis of two leaderboard methods on the same test frames."""

from __future__ import annotations

import argparse
import fnmatch
from pathlib import Path

import numpy as np
from tabulate import tabulate

from aprbench.harness.store.cells import cell_files, identity
from aprbench.harness.errors import BenchError
from aprbench.harness.store.hdf5 import Store, atomic_path


def register(commands) -> None:
    p = commands.top.add_parser(
        "compare", parents=[commands.common], help="paired comparison of two methods (Δ medians, CIs, p-values)",
        description="Compare method A (candidate) with method B (baseline), named as the leaderboard prints them "
        "(e.g. posenet-mobilenet+pae+pae-rpr@3 posenet-mobilenet), on the same test frames: Δ median position (m) and "
        "orientation (deg), A − B so negative is better, with a paired bootstrap interval (seeds resampled as well "
        "when there are several), the Wilcoxon signed-rank p-value and the fractions of frames improved / worsened, "
        "per scene and over all scenes.",
    )
    p.add_argument("a", metavar="A", help="candidate method name")
    p.add_argument("b", metavar="B", help="baseline method name")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=GLOB",
                   help="only cells whose column KEY (dataset, teacher_scenes, fraction, seed, profile, …) matches GLOB "
                   "(repeatable)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default: 2000, the leaderboard's)")
    p.add_argument("--out", type=Path, metavar="PNG", help="plot of the sorted per-frame differences "
                   "(default compare.png in the work directory)")
    p.set_defaults(func=run)


def _filters(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        key, sep, glob = spec.partition("=")
        if not sep or not key:
            raise BenchError(f"--filter {spec!r}: expected KEY=GLOB, e.g. scene=room or seed=0")
        out.append((key, glob))
    return out


def _plot(frames, table, a: str, b: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = table[table["scene"] == "all"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, q, col, unit in ((axes[0], "position", "position_error_m", "m"),
                             (axes[1], "orientation", "orientation_error_deg", "deg")):
        for (setting, part), (_, row) in zip(frames.groupby(["dataset", "teacher_scenes", "fraction"], sort=False),
                                             overall.iterrows()):
            diff = np.sort(part[f"{col}_cand"].to_numpy() - part[f"{col}_base"].to_numpy())
            x = np.linspace(0, 1, len(diff))
            line, = ax.plot(x, diff, label=f"{setting[0]}/{setting[1]}/{setting[2]:g}", lw=1)
            ax.axhspan(row[f"{q}_ci_low"], row[f"{q}_ci_high"], color=line.get_color(), alpha=0.2)
            ax.axhline(row[f"{q}_delta"], color=line.get_color(), ls="--", lw=0.8)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("frames (sorted by difference)")
        ax.set_ylabel(f"{q} error difference A − B ({unit})")
        ax.set_title(f"{q}: Δ median with {float(table['confidence'].iloc[0]) * 100:g} % CI (band)", fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle(f"A = {a}   vs   B = {b}   (negative = A better)", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    store = Store(args.workdir)
    cells = cell_files(store)
    filters = _filters(args.filter)
    if filters:
        def keep(cell) -> bool:
            ident = {**identity(cell), "scene": None}
            for key, glob in filters:
                if key == "scene":
                    continue  # applied to the frames by compare_methods
                if key not in ident:
                    raise BenchError(f"--filter: unknown column {key!r}; known: {', '.join(sorted(ident))}")
                value = ident[key]
                text = f"{value:g}" if isinstance(value, float) else str(value)
                if not fnmatch.fnmatchcase(text, glob):
                    return False
            return True
        cells = [c for c in cells if keep(c)]
    scene_globs = [g for k, g in filters if k == "scene"]
    accept = (lambda s: all(fnmatch.fnmatchcase(s, g) for g in scene_globs)) if scene_globs else None
    from aprbench.harness.results.stats import DEFAULT_RESAMPLES, compare_methods

    args.resamples = args.resamples or DEFAULT_RESAMPLES

    table, frames = compare_methods(cells, args.a, args.b, confidence=args.confidence, n_resamples=args.resamples,
                                    scenes=accept)
    table = table.assign(confidence=args.confidence)
    shown = []
    for _, r in table.iterrows():
        row = {"dataset": r["dataset"], "scenes": r["teacher_scenes"], "fraction": f"{r['fraction']:g}",
               "scene": r["scene"], "n_seeds": r["n_seeds"], "frames": r["frames"]}
        for q, unit, fmt in (("position", "m", ".4f"), ("orientation", "deg", ".3f")):
            mark = " *" if r[f"{q}_significant"] else ""
            row[f"Δ median {unit} [CI]"] = (f"{r[f'{q}_delta']:+{fmt}} [{r[f'{q}_ci_low']:+{fmt}}, "
                                           f"{r[f'{q}_ci_high']:+{fmt}}]{mark}")
            row[f"p ({unit})"] = f"{r[f'{q}_p']:.3g}"
            row[f"better/worse ({unit})"] = f"{r[f'{q}_improved']:.0%}/{r[f'{q}_worsened']:.0%}"
        shown.append(row)
    print(f"A = {args.a}  vs  B = {args.b}: A − B of the median error (negative = A better), "
          f"{args.confidence:.0%} paired bootstrap CI, * = CI excludes 0; p = Wilcoxon signed-rank")
    print(tabulate(shown, headers="keys", tablefmt="github"))
    out = args.out or store.root / "compare.png"
    _plot(frames, table, args.a, args.b, out)
    print(f"wrote {out}")
    return 0
