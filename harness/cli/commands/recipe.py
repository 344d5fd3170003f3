"""``bench recipe KIND NAME``: the resolved recipe of one model and where each value came from."""

from __future__ import annotations

import argparse

from aprbench.harness.cli.commands.common import add_recipe_options


def register(commands) -> None:
    p = commands.top.add_parser(
        "recipe", parents=[commands.common], help="print the resolved recipe of a model and where each value came from",
        description="Resolve a model's recipe (registry.toml tables for the dataset and profile, defaults, --set) "
        "and print every key with its part (train: the optimiser loop; task: the kind's training and evaluation "
        "settings; model: every argument the model declares), type, value, default and source (a registry.toml "
        "table, a plugin's bench_recipes table, --set, or the default). Nothing is trained or rendered.",
    )
    p.add_argument("kind", choices=["teacher", "student", "refiner", "decoder"], help="kind of model")
    p.add_argument("name", metavar="NAME", help="registered name, e.g. posenet-mobilenet, pae, pae-rpr")
    p.add_argument("--dataset", default="synthetic", help="dataset plugin name the recipe is for (default synthetic)")
    add_recipe_options(p)
    p.add_argument("--teacher", metavar="T", help="for a student: the teacher whose recipe its from_teacher keys copy")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.api.recipes import check_overrides, describe, model_key_table, parse_sets, resolve
    from aprbench.harness.api.tables import has_own_recipe

    registry = get_registry(args.plugin)
    overrides = parse_sets(args.set)
    check_overrides(registry, overrides, {args.kind: [args.name]})
    dataset = args.dataset.split(":", 1)[0]
    teacher = None
    if args.teacher:
        teacher = resolve(registry, "teacher", args.teacher, dataset, args.profile, overrides)
    recipe = resolve(registry, args.kind, args.name, dataset, args.profile, overrides, teacher=teacher)
    print(f"{args.kind} {args.name} on {dataset}, profile {args.profile} (plugin version {recipe.version}; "
          f"fingerprint {recipe.model_fingerprint('fp32', 'cpu')} on a CPU in fp32, the {args.kind}_fingerprint of "
          "its cells: the same for every seed)")
    shown = lambda v: repr(v) if isinstance(v, (str, type(None))) else v  # noqa: E731  (strings quoted, None shown)
    rows = [{**r, "value": shown(r["value"]), "default": shown(r["default"]) if r["default"] != "(required)" else
             r["default"]} for r in describe(recipe, model_key_table(registry, args.kind, args.name))]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    builtin = registry.get(args.kind, args.name).source.startswith("builtin:")  # the generic tables are theirs
    if not builtin and not has_own_recipe(registry, args.kind, args.name, dataset, args.profile):
        print(f"no recipe table names {args.kind} {args.name} for profile {args.profile!r}: it gets the generic "
              f"{args.kind} recipe (a plugin adds its own with the bench_recipes hook)")
    return 0
