"""Options and set-up shared by the commands that train or evaluate models."""

from __future__ import annotations

import argparse

from harness.plugins import get_registry
from harness.registry import parse_overrides
from harness.stages.context import Context
from harness.store import Store


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--scenes``, ``--fraction``, ``--profile``, ``--set``, ``--no-progress``."""
    parser.add_argument(
        "--dataset", default="synthetic",
        help="dataset plugin name with options, e.g. 'synthetic', 'sevenscenes:root=/data/7Scenes', "
        "'cambridge:root=/data/Cambridge', 'labels:root=DIR,labels=FILE.csv' (default: synthetic)",
    )
    parser.add_argument("--scenes", nargs="+", metavar="SCENE", help="restrict to these scenes (default: all the dataset has)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each scene's training frames to use (default 1.0)")
    parser.add_argument("--profile", default="quick", help="recipe profile from registry.toml: quick (minutes on a CPU) or paper (default quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. --set epochs=5 (TOML syntax; repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def make_context(args: argparse.Namespace, kind: str) -> Context:
    """Open the store, load plugins and the dataset named by ``args``; ``--set`` values go to ``kind``'s recipe."""
    from harness.data import open_dataset, with_fraction

    store = Store(args.workdir)
    registry = get_registry(args.plugin)
    name, data = open_dataset(args.dataset, store, registry, scenes=args.scenes)
    if args.fraction != 1.0:
        data = with_fraction(data, args.fraction)
    return Context(
        store=store, registry=registry, data=data, dataset=name, profile=args.profile,
        progress=not args.no_progress, overrides={kind: parse_overrides(args.set)},
    )
