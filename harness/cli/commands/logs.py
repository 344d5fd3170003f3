"""``bench logs NAME_OR_DIR…``: the learning curves of trained models.

Every training run writes its per-epoch ``log.csv`` (``harness.training.loop``) into
``artifacts/<kind>/<name>-<fp>/logs/[stage<i>/]``, kept when the resumable
checkpoints are removed at the end of the training. This command
finds them by model name (every fingerprint of that name), ``kind/name``,
``name-<fp prefix>`` or a folder, prints the last epochs as a table and plots
the curves to a PNG beside the logs (or into ``--out``, where it replaces only PNGs an earlier
``bench logs`` wrote there, recorded in ``harness.store.manifest``, and refuses to overwrite any other file).

It imports neither torch nor the store, so it answers in well under a second
(matplotlib only when plotting).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from aprbench.harness.errors import BenchError
from aprbench.harness.results.curves import Curves, load_curves, plot, resolve, table_columns
from aprbench.harness.store.manifest import MANIFEST, owned, record


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

    if args.last < 0:
        raise BenchError(f"--last {args.last}: must be >= 0 (0 prints every epoch)")
    root = Path(args.workdir) if args.workdir is not None else Path(os.environ.get("BENCH_WORKDIR", ".bench"))
    found: dict[Path, Curves] = {}
    for target in args.targets:
        for folder in resolve(root, target):
            found.setdefault(folder, load_curves(folder, root))
    pngs = _png_paths(found, args.out) if not args.no_plot else {}
    for i, curves in enumerate(found.values()):
        if i:
            print()
        print(f"{curves.label}: {curves.folder}")
        rows = curves.rows[-args.last:] if args.last > 0 else curves.rows
        columns = table_columns(curves)
        print(tabulate([[r.get(c) for c in columns] for r in rows], headers=columns, tablefmt="github",
                       floatfmt=".4g", missingval=""))
        if not curves.rows:
            print("(no readable epochs)")
        elif curves.folder in pngs:
            plot(curves, pngs[curves.folder])
            print(f"curves: {pngs[curves.folder]}")
    if args.out is not None and pngs:
        record(args.out, "logs", (owned(args.out, "logs") or set()) | {p.name for p in pngs.values()})
    return 0


def _png_paths(found: dict[Path, Curves], out: Path | None) -> dict[Path, Path]:
    """Where each model's curves go: ``curves.png`` beside its logs, or ``out/<kind>-<name>-<fp>.png``. In
    ``out``, a file aprbench's manifest does not list as written by ``bench logs`` is never replaced: BenchError
    naming it, before anything is written."""
    pngs = {folder: (out / f"{folder.parent.name}-{folder.name}.png") if out else folder / "curves.png"
            for folder, curves in found.items() if curves.rows}
    if out is None or not pngs:
        return pngs
    ours = owned(out, "logs")
    if ours is None and (out / MANIFEST).exists():
        raise BenchError(f"{out / MANIFEST} records files another bench command wrote there; nothing was changed "
                         "(choose another --out)")
    for png in pngs.values():
        if (png.exists() or png.is_symlink()) and png.name not in (ours or set()):
            raise BenchError(f"{png} exists and was not written by bench logs; nothing was changed "
                             "(move it, or choose another --out)")
    out.mkdir(parents=True, exist_ok=True)
    return pngs
