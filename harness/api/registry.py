"""``registry.toml``: built-in plugin modules and named training recipes.

Recipes are data, not code. Each ``[[recipe]]`` table names the ``kind`` it
applies to and glob patterns for ``models``, ``datasets`` and ``profiles``;
every matching table is merged in file order, so later, more specific tables
override earlier, general ones.

The file lives at the top of the repository; ``harness/registry.toml`` links
to it, and the build copies it into the package, so a source checkout, an
editable install and an installed wheel all read it as package data through
``importlib.resources``.
"""

from __future__ import annotations

import fnmatch
import inspect
import sys
import tomllib
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Callable

_MATCH_KEYS = {"kind", "models", "datasets", "profiles"}


@lru_cache(maxsize=None)
def load_registry(path: Path | None = None) -> dict[str, Any]:
    """Parse ``registry.toml``: the packaged one (``harness/registry.toml``) unless ``path`` is given."""
    source = resources.files("aprbench.harness").joinpath("registry.toml") if path is None else Path(path)
    try:
        data = source.read_bytes()
        if path is None and data.strip().endswith(b".toml") and b"\n" not in data.strip():
            # a checkout without symbolic links (git core.symlinks=false) stores the link as its target's path
            data = Path(str(source)).parent.joinpath(data.strip().decode()).read_bytes()
        return tomllib.loads(data.decode())
    except FileNotFoundError:
        from aprbench.harness.errors import BenchError

        raise BenchError(f"{source} not found: the registry of built-in plugins and recipes is missing "
                         "(reinstall aprbench, or restore registry.toml in a source checkout)") from None


def builtin_plugin_modules() -> list[str]:
    """Dotted names of the built-in plugin modules, in load order."""
    return list(load_registry()["plugins"]["builtin"])


def profiles() -> list[str]:
    """Every profile name a recipe mentions."""
    names: set[str] = set()
    for table in load_registry().get("recipe", []):
        names.update(p for p in table.get("profiles", []) if "*" not in p)
    return sorted(names)


def matching_tables(kind: str, model: str, dataset: str | None = None, profile: str | None = None,
                    with_index: bool = False) -> list:
    """The ``[[recipe]]`` tables for ``kind`` and ``model`` (and ``dataset`` / ``profile`` when given), in file order.

    With ``with_index``, ``(number, table)`` pairs (1-based table numbers, as ``bench recipe`` shows them).
    """
    out = []
    for number, table in enumerate(load_registry().get("recipe", []), start=1):
        if table.get("kind") != kind or not _matches(model, table.get("models", ["*"])):
            continue
        if dataset is not None and not _matches(dataset, table.get("datasets", ["*"])):
            continue
        if profile is not None and not _matches(profile, table.get("profiles", ["*"])):
            continue
        out.append((number, table) if with_index else table)
    return out


def dataset_defaults(dataset: str, profile: str) -> dict[str, Any]:
    """Dataset options that ``profile`` gives ``dataset`` (``[[dataset]]`` tables matching its ``datasets`` and
    ``profiles`` globs, later tables winning); options in the ``--dataset`` spec win over these."""
    out: dict[str, Any] = {}
    for table in load_registry().get("dataset", []):
        if _matches(dataset, table.get("datasets", ["*"])) and _matches(profile, table.get("profiles", ["*"])):
            out.update({k: v for k, v in table.items() if k not in ("datasets", "profiles")})
    return out


def _matches(value: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def parse_value(raw: str) -> Any:
    """A TOML literal (``10``, ``1e-4``, ``true``, ``["a", "b"]``), else a Python number (``.5``), else the string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    for number in (int, float):
        try:
            return number(raw)
        except ValueError:
            pass
    return raw


class ModelFamily(dict):
    """A plugin family's named models, registered timm-style in the family's own file: configuration is data.

    ``models = ModelFamily()``; ``@models.register("name")`` on a function returning the variant's default
    config (``models["name"]``); the family's hook returns ``models.factories(build)``: ``{name: factory}``,
    where ``factory(**config)`` is ``build(**{**variant, **config})`` and carries ``model_class`` (the class
    whose named arguments are the recipe's model keys; ``build`` itself when it is a class) and ``defaults``
    (the variant's config). Every built-in
    family registers this way, and so can a third party's.
    """

    def __init__(self) -> None:
        super().__init__()
        # the family's module: its factories report it as theirs (its VERSION enters every fingerprint)
        self.module = sys._getframe(1).f_globals.get("__name__", __name__)

    def register(self, name: str) -> Callable[[Callable[[], dict]], Callable[[], dict]]:
        def wrap(fn: Callable[[], dict]) -> Callable[[], dict]:
            self[name] = dict(fn())
            return fn

        return wrap

    def factories(self, build: Callable[..., Any], model_class: type | None = None) -> dict[str, Callable[..., Any]]:
        """The ``{name: factory}`` a ``bench_*`` hook returns."""
        def make(name: str) -> Callable[..., Any]:
            def factory(**config: Any) -> Any:
                return build(**{**self[name], **config})

            factory.model_class = model_class or (build if inspect.isclass(build) else None)  # type: ignore[attr-defined]
            factory.defaults = dict(self[name])  # type: ignore[attr-defined]  # the variant's config
            factory.__doc__ = f"Build {name} ({self[name] or 'defaults'})."
            factory.__module__ = self.module
            return factory

        return {name: make(name) for name in self}
