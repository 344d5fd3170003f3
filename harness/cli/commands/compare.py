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
        "orientation (deg), A − B so negative is better, per scene and over all scenes. B's cell of each seed is the "
        "one of A's setting (same data, and the same models where both name the same ones). With several seeds the "
        "interval and p-value are a t-interval and t-test over the per-seed Δs; with one seed a paired bootstrap "
        "interval over the test frames and the p-value of that bootstrap. p-values are Holm-adjusted over the call's "
        "comparisons; --margin adds equivalence tests (TOST).",
    )
    p.add_argument("a", metavar="A", help="candidate method name")
    p.add_argument("b", metavar="B", help="baseline method name")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=GLOB",
                   help="only cells whose column KEY (dataset, teacher_scenes, fraction, seed, profile, …) matches GLOB "
                   "(repeatable)")
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the intervals (default 0.95)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples with one seed "
                   "(default: 2000, the leaderboard's)")
    p.add_argument("--margin", metavar="PCT%|Mm,Ddeg", help="equivalence test (TOST) within this margin: a percentage "
                   "of B's median error (5%%) or absolute (0.01m,0.1deg)")
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

    overall = table.groupby(["dataset", "teacher_scenes", "fraction"], sort=False).tail(1)  # "all", or its one scene
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, q, col, unit in ((axes[0], "position", "position_error_m", "m"),
                             (axes[1], "orientation", "orientation_error_deg", "deg")):
        d = f"delta_{q}_{unit}"
        for (setting, part), (_, row) in zip(frames.groupby(["dataset", "teacher_scenes", "fraction"], sort=False),
                                             overall.iterrows()):
            diff = np.sort(part[f"{col}_cand"].to_numpy() - part[f"{col}_base"].to_numpy())
            x = np.linspace(0, 1, len(diff))
            line, = ax.plot(x, diff, label=f"{setting[0]}/{setting[1]}/{setting[2]:g}", lw=1)
            ax.axhspan(row[f"delta_{q}_ci_low"], row[f"delta_{q}_ci_high"], color=line.get_color(), alpha=0.2)
            ax.axhline(row[d], color=line.get_color(), ls="--", lw=0.8)
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


def _shown(table, margin) -> list[dict]:
    """The comparison table for people: per setting and scene, Δ [CI] with its marker, p / Holm-adjusted p,
    the fractions of frames improved / worsened, the per-seed Δs, and the equivalence verdicts."""
    from aprbench.harness.results.significance import marker

    shown = []
    for _, r in table.iterrows():
        row = {"dataset": r["dataset"], "scenes": r["teacher_scenes"], "fraction": f"{r['fraction']:g}",
               "scene": r["scene"], "n_seeds": r["n_seeds"], "frames": r["frames"], "basis": r["ci_basis"]}
        for q, unit, fmt in (("position", "m", ".4f"), ("orientation", "deg", ".3f")):
            d = f"delta_{q}_{unit}"
            row[f"Δ median {unit} [CI]"] = (f"{r[d]:+{fmt}} [{r[f'delta_{q}_ci_low']:+{fmt}}, "
                                           f"{r[f'delta_{q}_ci_high']:+{fmt}}]{marker(r, q)}")
            row[f"p / p_adj ({unit})"] = f"{r[f'delta_{q}_p']:.3g} / {r[f'delta_{q}_p_adj']:.3g}"
            row[f"better/worse ({unit})"] = f"{r[f'improved_{q}']:.0%}/{r[f'worsened_{q}']:.0%}"
            if int(r["n_seeds"]) > 1:
                row[f"per-seed Δ ({unit})"] = ", ".join(f"{float(v):+{fmt}}" for v in r[f"delta_{q}_seeds"].split(","))
            if margin is not None:
                row[f"equivalent ({unit})"] = r[f"equivalence_{q}"]
        shown.append(row)
    return shown


def run(args: argparse.Namespace) -> int:
    if not 0 < args.confidence < 1:
        raise BenchError(f"--confidence {args.confidence}: must be in (0, 1), e.g. 0.95")
    if args.resamples is not None and args.resamples < 1:
        raise BenchError(f"--resamples {args.resamples}: must be >= 1 (default 2000)")
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
    from aprbench.harness.results.comparisons import compare_methods
    from aprbench.harness.results.significance import legend_lines
    from aprbench.harness.results.stats import DEFAULT_RESAMPLES, parse_margin

    margin = parse_margin(args.margin)
    args.resamples = args.resamples or DEFAULT_RESAMPLES
    table, frames = compare_methods(cells, args.a, args.b, confidence=args.confidence, n_resamples=args.resamples,
                                    scenes=accept, margin=margin)
    print(f"A = {args.a}  vs  B = {args.b}: A − B of the median error (negative = A better)")
    print(tabulate(_shown(table, margin), headers="keys", tablefmt="github", disable_numparse=True))
    print("\n".join(legend_lines(table, "this bench compare call", margin)))
    out = args.out or store.root / "compare.png"
    _plot(frames, table, args.a, args.b, out)
    print(f"wrote {out}")
    return 0
