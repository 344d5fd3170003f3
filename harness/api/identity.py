"""What a registered model's code is: its plugin's declared ``VERSION``, a digest of its source, its origin.

A model's results are identified (``harness.api.recipes.Recipe.code``) by:

* the registered variant's config (``factory.defaults`` of a :class:`harness.api.registry.ModelFamily`);
* the plugin's declared ``VERSION``: a ``VERSION`` class attribute of the model class wins over a
  module-level ``VERSION`` (of the factory's module, then of the plugin module that registered it);
* when no ``VERSION`` is declared, a SHA-256 digest of the plugin's source instead, so an edit is a new
  identity.

The source digest is always recorded (a declared ``VERSION`` is the author's contract: a source that changed
under an unchanged ``VERSION`` reuses stored results, and ``bench run`` says so). It covers the plugin module,
the factory's and model class's modules (and those of the class's bases) and, transitively, every module they
reference that lives in the plugin's own folder (a helper module the plugin imports).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aprbench.harness.store.hdf5 import fingerprint


@dataclass(frozen=True)
class PluginIdentity:
    """The code behind one registered name."""

    version: str | None  # the declared VERSION (None: none declared)
    digest: str  # SHA-256 prefix of the source files (``files``)
    origin: str  # built-in MODULE, entry point DIST VERSION (NAME), file PATH (sha256 …), module NAME
    variant: dict[str, Any] = field(default_factory=dict)  # the registered variant's config
    files: tuple[str, ...] = ()

    def code(self) -> str:
        """What enters fingerprints: the declared VERSION (else the source digest) and the variant's config."""
        return fingerprint("code", self.version if self.version is not None else f"source:{self.digest}", self.variant)

    def label(self) -> str:
        """``VERSION``, or ``src:<digest>`` when none is declared."""
        return self.version if self.version is not None else f"src:{self.digest[:8]}"


def plugin_identity(registry: Any, kind: str, name: str) -> PluginIdentity:
    """The :class:`PluginIdentity` of the registered ``kind`` ``name`` (its source files are read once per
    registry entry; the declared VERSION is looked up every time)."""
    entry = registry.get(kind, name)
    factory = entry.factory
    plugin = getattr(entry, "plugin", None)
    cls = getattr(factory, "model_class", None) or (factory if inspect.isclass(factory) else None)
    factory_module = sys.modules.get(getattr(factory, "__module__", "") or "")
    source = getattr(entry, "_source", None)
    if source is None:
        source = _source(entry, cls, factory_module)
        object.__setattr__(entry, "_source", source)
    digest, origin, files, helpers = source
    variant = dict(getattr(factory, "defaults", {}) or {})
    version = _declared(cls, factory_module, plugin)
    if version is None:  # the model and its VERSION may live in a helper module the plugin imports
        found = {v for v in (_declared(None, sys.modules.get(h)) for h in helpers) if v is not None}
        version = found.pop() if len(found) == 1 else None
    return PluginIdentity(version, digest, origin, variant, files)


def _source(entry: Any, cls: type | None, factory_module: Any) -> tuple[str, str, tuple[str, ...], tuple[str, ...]]:
    """``(digest, origin, files, module names)`` of a registry entry's plugin."""
    plugin = getattr(entry, "plugin", None)
    home = _home(plugin if isinstance(plugin, types.ModuleType) else factory_module)
    modules = [m for m in (plugin, factory_module) if isinstance(m, types.ModuleType)]
    if cls is not None:  # the model class and its bases, where they are plugin code (not torch's, not the core's)
        builtin = _home(sys.modules.get("aprbench.plugins"))
        for c in cls.__mro__:
            path = _file(sys.modules.get(c.__module__))
            if path is not None and any(h is not None and path.is_relative_to(h) for h in (home, builtin)):
                modules.append(sys.modules[c.__module__])
    found = _source_modules(modules, home)
    files = sorted({_file(m) for m in found} - {None})
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    names = tuple(m.__name__ for m in found if m not in modules)
    return digest.hexdigest()[:16], _origin(entry, plugin), tuple(str(p) for p in files), names


def _declared(cls: type | None, *modules: Any) -> str | None:
    """The declared VERSION: the model class's attribute, else the factory module's, else the plugin module's.

    A factory that is neither a class nor carries ``model_class`` (a lambda, a function) names no class: the
    class attribute counted is then that of the one class defined in the factory's (else the plugin's) module
    that declares ``VERSION`` itself."""
    if cls is None:
        for module in modules:
            declaring = {str(c.VERSION) for c in vars(module).values() if inspect.isclass(c)
                         and c.__module__ == getattr(module, "__name__", None) and "VERSION" in vars(c)} \
                if isinstance(module, types.ModuleType) else set()
            if len(declaring) == 1:
                return declaring.pop()
    for owner in (cls, *modules):
        value = getattr(owner, "VERSION", None) if owner is not None else None
        if value is not None and not isinstance(value, types.ModuleType):
            return str(value)
    return None


def _home(module: types.ModuleType | None) -> Path | None:
    """The folder of a plugin: its package's folder, or the folder of a single-file plugin."""
    path = getattr(module, "__file__", None)
    return Path(path).resolve().parent if path else None


def _file(module: Any) -> Path | None:
    path = getattr(module, "__file__", None)
    return Path(path).resolve() if path and str(path).endswith(".py") and Path(path).is_file() else None


def _source_modules(start: list[types.ModuleType], home: Path | None) -> list[types.ModuleType]:
    """``start`` and every module they reference (as a module, or as the module of a class or function they hold)
    that lives under ``home``, transitively (modules with a ``.py`` file only)."""
    seen: list[types.ModuleType] = []
    todo = list(start)
    visited: set[int] = set()
    while todo:
        module = todo.pop()
        if id(module) in visited:
            continue
        visited.add(id(module))
        if _file(module) is None:
            continue
        seen.append(module)
        for value in list(vars(module).values()):
            ref = value if isinstance(value, types.ModuleType) else sys.modules.get(_module_name(value))
            if not isinstance(ref, types.ModuleType) or id(ref) in visited:
                continue
            ref_path = _file(ref)
            if ref_path is not None and home is not None and ref_path.is_relative_to(home):
                todo.append(ref)
    return seen


def _module_name(value: Any) -> str:
    """The ``__module__`` of a class or function (``""`` for anything else, or an object that refuses to say)."""
    try:
        name = getattr(value, "__module__", "")
    except Exception:  # a lazy proxy may raise anything on attribute access
        return ""
    return name if isinstance(name, str) else ""


def _origin(entry: Any, plugin: Any) -> str:
    """Where the plugin came from, as people say it."""
    source = str(entry.source)
    if source.startswith("builtin:"):
        return f"built-in {source.split(':', 1)[1]}"
    if source.startswith("entrypoint:"):
        _, dist, ep_name = (source.split(":", 2) + ["", ""])[:3]
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return f"entry point {dist} {version} ({ep_name})"
    if source.startswith("--plugin:"):
        spec = source.split(":", 1)[1]
        path = _file(plugin)
        if path is not None and (spec.endswith(".py") or Path(spec).is_file()):
            return f"file {path} (sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]})"
        return f"module {spec}"
    return source


__all__ = ["PluginIdentity", "plugin_identity"]
