"""The plugin manager: built-ins from ``registry.toml``, then entry points in
group ``bench``, then modules or files given with ``--plugin``.

``BENCH_PLUGINS`` limits which *installed* (entry-point) plugins load: unset
loads all, ``none`` (or empty) loads none, ``a,b`` loads only those names.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pluggy

from aprbench.harness.api import hookspecs
from aprbench.harness.errors import BenchError
from aprbench.harness.api.registry import builtin_plugin_modules

KINDS = {
    "dataset": "bench_datasets",
    "teacher": "bench_teachers",
    "student": "bench_students",
    "refiner": "bench_refiners",
    "decoder": "bench_decoders",
}


@dataclass
class Entry:
    """One registered name: its factory and the plugin that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    source: str
    plugin: Any = None  # the registered plugin object (usually its module)


@dataclass
class Registry:
    """Every registered name by kind, plus the plugins that failed to load."""

    entries: dict[str, dict[str, Entry]] = field(default_factory=lambda: {k: {} for k in KINDS})
    broken: dict[str, str] = field(default_factory=dict)
    recipes: list = field(default_factory=list)  # plugins' recipe tables (harness.api.tables.Table), in load order

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def get(self, kind: str, name: str) -> Entry:
        if kind not in self.entries:
            raise BenchError(f"unknown plugin kind {kind!r}; kinds: {', '.join(self.entries)}")
        try:
            return self.entries[kind][name]
        except KeyError:
            known = ", ".join(self.names(kind)) or "(none)"
            raise BenchError(f"unknown {kind} {name!r}; known {kind}s: {known}") from None

    def build(self, kind: str, name: str, **config: Any) -> Any:
        """Build the named plugin object with ``config`` as keyword arguments."""
        return self.get(kind, name).factory(**config)


class BenchPluginManager:
    """Loads plugins and collects their registrations (like pytest's and Datasette's)."""

    def __init__(self, extra: list[str] | None = None, entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("bench")
        self.pm.add_hookspecs(hookspecs)
        self.broken: dict[str, str] = {}
        self.sources: dict[int, str] = {}
        for module in builtin_plugin_modules():
            self._register_module(module, f"builtin:{module}")
        if entry_points:
            self._load_entry_points()
        for spec in extra or []:
            self._register_spec(spec)
        self._registry: Registry | None = None

    # -- loading ---------------------------------------------------------
    def _register_module(self, dotted: str, source: str) -> None:
        try:
            module = importlib.import_module(dotted)
        except (Exception, SystemExit) as exc:  # a broken plugin must not break the rest
            self.broken[source] = _short_error(exc)
            return
        self._register(module, source)

    def _register(self, obj: Any, source: str) -> None:
        if self.pm.is_registered(obj):
            return
        try:
            self.pm.register(obj, name=source)
        except Exception as exc:
            self.broken[source] = _short_error(exc)
            return
        self.sources[id(obj)] = source

    def _load_entry_points(self) -> None:
        allowed = os.environ.get("BENCH_PLUGINS")
        wanted = None if allowed is None else {n.strip() for n in allowed.split(",") if n.strip() and n.strip() != "none"}
        for ep in importlib.metadata.entry_points(group="bench"):
            if wanted is not None and ep.name not in wanted:
                continue
            dist = ep.dist.name if ep.dist else "?"
            source = f"entrypoint:{dist}:{ep.name}"
            try:
                obj = ep.load()
            except (Exception, SystemExit) as exc:
                self.broken[source] = _short_error(exc)
                continue
            self._register(obj, source)

    def _register_spec(self, spec: str) -> None:
        """``spec`` is a dotted module name or a path to a ``.py`` file."""
        source = f"--plugin:{spec}"
        path = Path(spec)
        if spec.endswith(".py") or path.is_file():  # a folder named like a package is still a module name
            if not path.is_file():
                raise BenchError(f"--plugin {spec}: no such file")
            name = file_module_name(path)
            folder = str(path.resolve().parent)
            added = folder not in sys.path
            if added:  # a helper module beside the plugin file imports as it would from that folder
                sys.path.insert(0, folder)
            try:
                module_spec = importlib.util.spec_from_file_location(name, path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[name] = module
                module_spec.loader.exec_module(module)
            except (Exception, SystemExit) as exc:
                sys.modules.pop(name, None)
                self.broken[source] = _short_error(exc)
                return
            finally:
                if added and folder in sys.path:
                    sys.path.remove(folder)
            self._register(module, source)
        else:
            self._register_module(spec, source)

    # -- registrations ---------------------------------------------------
    def registry(self) -> Registry:
        """Collect ``{name: factory}`` from every plugin; a duplicate name is an error naming both."""
        if self._registry is not None:
            return self._registry
        reg = Registry(broken=dict(self.broken))
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():  # registration order (pluggy *calls* them in reverse)
                source = impl.plugin_name
                try:
                    provided = impl.function() or {}
                except (Exception, SystemExit) as exc:
                    reg.broken[source] = _short_error(exc)
                    continue
                for name, factory in provided.items():
                    if name in reg.entries[kind]:
                        other = reg.entries[kind][name].source
                        raise BenchError(f"{kind} {name!r} is registered twice: by {other} and by {source}")
                    reg.entries[kind][name] = Entry(kind, name, factory, source, impl.plugin)
        reg.recipes = self._recipe_tables(reg)
        self._registry = reg
        return reg

    def _recipe_tables(self, reg: Registry) -> list:
        """The tables every plugin's ``bench_recipes()`` returns (a malformed one is an error naming the plugin)."""
        from aprbench.harness.api.tables import plugin_tables

        tables = []
        for impl in self.pm.hook.bench_recipes.get_hookimpls():
            try:
                provided = impl.function()
            except (Exception, SystemExit) as exc:
                reg.broken[impl.plugin_name] = _short_error(exc)
                continue
            tables += plugin_tables(impl.plugin_name, provided)
        return tables

    def plugin_hooks(self) -> list[tuple[str, list[str]]]:
        """Every loaded plugin with the hooks it implements."""
        rows = []
        for name, plugin in self.pm.list_name_plugin():
            hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
            rows.append((name, hooks))
        return rows


def file_module_name(path: Path) -> str:
    """The module name a ``--plugin`` file is loaded under: its stem plus a hash of its absolute path, so two
    files of the same name in different folders are two modules."""
    import hashlib

    where = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:10]
    return f"bench_plugin_{Path(path).stem}_{where}"


def _short_error(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


_MANAGER: BenchPluginManager | None = None


def get_manager(extra: list[str] | None = None, refresh: bool = False, strict: bool = True) -> BenchPluginManager:
    """The process-wide plugin manager (rebuilt when ``extra`` plugins or ``refresh`` are given).

    ``strict``: a ``--plugin`` the user asked for that fails to load is an error naming the file and the
    cause (``bench plugins`` lists it as broken instead).
    """
    global _MANAGER
    if _MANAGER is None or refresh or extra:
        _MANAGER = BenchPluginManager(extra=extra)
    if strict:
        failed = {s: e for s, e in _MANAGER.broken.items() if s.startswith("--plugin:")}
        if failed:
            source, error = next(iter(failed.items()))
            raise BenchError(f"{source.replace(':', ' ', 1)} failed to load: {error} (`bench plugins` lists every plugin)")
    return _MANAGER


def forget_manager() -> None:
    """Drop the process-wide plugin manager; the next :func:`get_manager` builds a new one. ``main`` calls this
    first, so the ``--plugin`` options and ``BENCH_PLUGINS`` of one call never carry into the next in a process."""
    global _MANAGER
    _MANAGER = None


def call_observers(manager: BenchPluginManager, hook: str, **kwargs: Any) -> list[Any]:
    """Call an observer hook plugin by plugin: one that raises (or exits) is reported on stderr with its
    name and skipped; the others still run. Returns the results of those that succeeded."""
    results = []
    for impl in reversed(getattr(manager.pm.hook, hook).get_hookimpls()):
        try:
            results.append(impl.function(**{k: kwargs[k] for k in impl.argnames}))
        except (Exception, SystemExit) as exc:
            print(f"bench: warning: plugin {impl.plugin_name} failed in {hook}: {_short_error(exc)}", file=sys.stderr)
    return results


def get_registry(extra: list[str] | None = None, strict: bool = True) -> Registry:
    """Shortcut: the registry of the process-wide plugin manager."""
    return get_manager(extra, strict=strict).registry()
