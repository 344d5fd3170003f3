"""Options and set-up shared by the commands that train or evaluate models."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    import torch

from aprbench.harness.api.manager import get_registry
from aprbench.harness.api.recipes import check_overrides, check_profile, parse_sets
from aprbench.harness.store.hdf5 import Store

if TYPE_CHECKING:
    from aprbench.harness.running.stages.context import Context

SET_HELP = ("override a recipe value: KIND.KEY=VALUE for one kind (teacher.epochs=2) or KEY=VALUE for every kind "
            "that has the key (TOML syntax; repeatable; `bench recipe KIND NAME` lists the keys)")


def add_command(subparsers, name: str, parents: list, help: str, description: str,
                options: Callable[[argparse.ArgumentParser], None], func: Callable) -> argparse.ArgumentParser:
    """One sub-command: its parser (with ``options`` added) and the function that runs it."""
    parser = subparsers.add_parser(name, parents=parents, help=help, description=description)
    options(parser)
    parser.set_defaults(func=func)
    return parser


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """``--profile`` and ``--set``, the same in every command."""
    parser.add_argument("--profile", default="quick", help="recipe profile from registry.toml: quick (minutes on a CPU) or paper (default quick)")
    parser.add_argument("--set", action="append", default=[], metavar="[KIND.]KEY=VALUE", help=SET_HELP)


def add_device_options(parser: argparse.ArgumentParser) -> None:
    """``--device`` and ``--precision``, the same in every command that trains or evaluates (``harness.training.devices``)."""
    from aprbench.harness.training.devices import DEVICES_HELP, PRECISIONS

    parser.add_argument("--device", default="auto", help=f"where models train and run: {DEVICES_HELP} "
                        "(default auto: the first CUDA GPU when there is one, else the CPU)")
    parser.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                        help="autocast precision of training and evaluation: fp32 (default), bf16 (CPU or GPU), "
                        "fp16 (CUDA only); results of another precision are other cells")
    parser.add_argument("--log", default="csv", choices=["csv", "tensorboard"],
                        help="per-epoch training logs: csv (default, logs/log.csv beside the weights) or tensorboard "
                        "(also an events file there; pip install 'aprbench[tensorboard]')")


def device_from_args(args: argparse.Namespace) -> tuple["torch.device", str]:
    """The checked ``(device, precision)`` the options name (BenchError when this machine lacks them)."""
    from aprbench.harness.training.devices import check_precision, resolve_device

    from aprbench.harness.training.tblog import check_log

    check_log(getattr(args, "log", "csv"))
    device = resolve_device(getattr(args, "device", "auto"))
    return device, check_precision(getattr(args, "precision", "fp32"), device)


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--scenes``, ``--fraction``, ``--seed``, ``--profile``, ``--set``, ``--device``,
    ``--precision``, ``--no-progress``, ``--quiet``."""
    parser.add_argument(
        "--dataset", default="synthetic",
        help="dataset plugin name with options, e.g. 'synthetic', 'sevenscenes:root=/data/7Scenes', "
        "'cambridge:root=/data/Cambridge', 'labels:root=DIR,labels=FILE.csv' (default: synthetic)",
    )
    parser.add_argument("--scenes", nargs="+", metavar="SCENE", help="restrict to these scenes (default: all the dataset has)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of each scene's training frames to use (default 1.0)")
    parser.add_argument("--seed", type=int, default=None, help="training seed of every model (default: each recipe's, 0)")
    add_recipe_options(parser)
    add_device_options(parser)
    add_progress_options(parser)


def add_progress_options(parser: argparse.ArgumentParser) -> None:
    """``--no-progress`` (lines instead of bars) and ``--quiet`` (neither), see :mod:`harness.running.progress`."""
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars, one line per finished step instead (as when output is not a terminal)")
    parser.add_argument("--quiet", action="store_true", help="no progress at all: only errors and final results")


def make_context(args: argparse.Namespace, used: dict[str, list[str]]) -> Context:
    """Open the store, load plugins and the dataset named by ``args``; ``used`` (kind -> names) checks ``--set``.

    Options are checked before the dataset is opened (rendered): profile, ``--set`` keys, fraction,
    device and precision.
    """
    from aprbench.harness.data.datasets import open_dataset, with_fraction
    from aprbench.harness.running.stages.context import Context
    from aprbench.harness.errors import BenchError
    from aprbench.harness.running.progress import mode_from_args

    registry = get_registry(args.plugin)
    device, precision = device_from_args(args)
    check_profile(args.profile, registry)
    overrides = parse_sets(args.set)
    check_overrides(registry, overrides, used)
    if not 0 < args.fraction <= 1:
        raise BenchError(f"--fraction {args.fraction}: must be in (0, 1]")
    ctx = Context(store=Store(args.workdir), registry=registry, data=None, dataset=args.dataset.split(":", 1)[0],
                  profile=args.profile, progress=mode_from_args(args), overrides=overrides, seed=args.seed,
                  device=device, precision=precision, log=getattr(args, "log", "csv"))
    for kind, names in used.items():  # every recipe resolves (types, ranges, kind-specific keys) before any work
        for name in names:
            ctx.recipe(kind, name)
    ctx.dataset, data = open_dataset(args.dataset, ctx.store, registry, scenes=args.scenes,
                                    profile=args.profile)
    ctx.data = with_fraction(data, args.fraction, args.seed or 0) if args.fraction != 1.0 else data
    return ctx
