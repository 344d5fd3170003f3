"""Recipe tables: the built-in ``[[recipe]]`` tables of ``registry.toml``, then the ones plugins return from
``bench_recipes()``, matched to a model and labelled with where they came from.

A plugin's tables have ``registry.toml``'s form (``kind``, optional ``models``,
``datasets``, ``profiles`` glob lists, then values) and merge after the
built-in ones, in plugin load order, so a plugin can tune its own models and
the built-ins' tables never need to know about it. A table whose ``models``
are all ``"*"`` is *generic*: its values configure the training loop and the
kind's task, but never replace a model's own defaults (only tables that name
the model, ``--set`` and a student's ``from_teacher`` keys reach its factory).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

from aprbench.harness.errors import BenchError

MATCH_KEYS = ("kind", "models", "datasets", "profiles")
RECIPE_KINDS = ("teacher", "student", "refiner", "decoder")


@dataclass(frozen=True)
class Table:
    """One recipe table: its keys as written, the label sources name it by, and the plugin that gave it."""

    table: dict[str, Any]
    label: str
    plugin: str | None = None  # None: registry.toml

    @property
    def settings(self) -> dict[str, Any]:
        """The values it sets (the match keys left out)."""
        return {k: v for k, v in self.table.items() if k not in MATCH_KEYS}

    @property
    def generic(self) -> bool:
        """Whether it matches every model (``models`` absent or all ``"*"``)."""
        return all(p == "*" for p in self.table.get("models", ["*"]))

    def matches(self, kind: str, model: str, dataset: str | None = None, profile: str | None = None) -> bool:
        t = self.table
        return (t.get("kind") == kind and _matches(model, t.get("models", ["*"]))
                and (dataset is None or _matches(dataset, t.get("datasets", ["*"])))
                and (profile is None or _matches(profile, t.get("profiles", ["*"]))))


def label(table: dict[str, Any], where: str) -> str:
    """``registry.toml recipe #4 (kind=teacher models=posenet* profiles=quick)``."""
    parts = [f"kind={table.get('kind')}"]
    parts += [f"{key}={','.join(table[key])}" for key in ("models", "datasets", "profiles") if key in table]
    return f"{where} ({' '.join(parts)})"


def builtin_tables() -> list[Table]:
    from aprbench.harness.api.registry import load_registry

    return [Table(t, label(t, f"registry.toml recipe #{n}")) for n, t in enumerate(load_registry().get("recipe", []), 1)]


def plugin_tables(source: str, provided: Any) -> list[Table]:
    """A plugin's ``bench_recipes()`` result checked and labelled (``BenchError`` naming the plugin and table)."""
    if provided is None:
        return []
    if isinstance(provided, dict):
        provided = [provided]
    if not isinstance(provided, (list, tuple)):
        raise BenchError(f"plugin {source}: bench_recipes() must return a list of recipe tables (dicts), "
                         f"got {type(provided).__name__}")
    out = []
    for n, table in enumerate(provided, 1):
        where = f"plugin {source}: bench_recipes() table #{n}"
        if not isinstance(table, dict):
            raise BenchError(f"{where}: expected a dict like a [[recipe]] table, got {type(table).__name__}")
        if table.get("kind") not in RECIPE_KINDS:
            raise BenchError(f"{where}: 'kind' must be one of {', '.join(RECIPE_KINDS)}, got {table.get('kind')!r}")
        for key in MATCH_KEYS[1:]:
            value = table.get(key, ["*"])
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise BenchError(f"{where}: {key!r} must be a list of glob patterns, e.g. [\"my-apr\"], got {value!r}")
        out.append(Table(dict(table), label(table, f"plugin {source} recipe #{n}"), source))
    return out


def recipe_tables(registry: Any, kind: str, model: str, dataset: str | None = None,
                  profile: str | None = None) -> list[Table]:
    """The tables matching ``kind`` and ``model`` (and ``dataset`` / ``profile`` when given): built-in ones in
    file order, then plugins' in load order."""
    tables = builtin_tables() + list(getattr(registry, "recipes", []) or [])
    return [t for t in tables if t.matches(kind, model, dataset, profile)]


def known_profiles(registry: Any = None) -> list[str]:
    """Every profile a built-in or plugin table names (glob patterns left out)."""
    tables = builtin_tables() + list(getattr(registry, "recipes", []) or [])
    return sorted({p for t in tables for p in t.table.get("profiles", []) if "*" not in p})


def has_own_recipe(registry: Any, kind: str, model: str, dataset: str, profile: str) -> bool:
    """Whether a table naming ``model`` (not only ``"*"``) matches it under ``profile``."""
    return any(not t.generic for t in recipe_tables(registry, kind, model, dataset, profile))


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)
