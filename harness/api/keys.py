"""Declared model keys: every argument a plugin's model accepts, known before any work.

A model's keys are the named arguments of its factory and of the factory's
``model_class`` (a :class:`~aprbench.harness.api.registry.ModelFamily` factory
carries one), with the defaults of the registered variant, plus what a factory
that forwards ``**kwargs`` declares in a ``declared_keys`` attribute (on the
factory or the model class): ``{key: default}``, e.g. the timm ``create_model``
arguments a teacher passes on to its backbone. ``**kwargs`` alone declares
nothing: a key no part declares is refused, so a typo never passes silently.

Types come from the annotation where it can be read, else from the default's type
(``None``: any value).
"""

from __future__ import annotations

import inspect
import typing
from dataclasses import dataclass
from typing import Any, Callable

NO_DEFAULT = inspect.Parameter.empty
HARNESS_ARGS = ("num_scenes", "latent_dim")  # factory arguments the harness fixes from the data and upstream models


@dataclass(frozen=True)
class Key:
    """One model key: its name, type hint (``None``: any), default (``NO_DEFAULT`` if required) and where it is declared."""

    name: str
    hint: Any
    default: Any
    origin: str

    def type_name(self) -> str:
        """The type as ``bench recipe`` shows it (``float``, ``str | None``, ``any``)."""
        if self.hint is None:
            return "any"
        text = getattr(self.hint, "__name__", None) if not typing.get_args(self.hint) else None
        text = text or str(self.hint).replace("typing.", "").replace("NoneType", "None")
        return text.replace(" | ", " or ")  # a table cell


def _targets(factory: Callable[..., Any]) -> list[Any]:
    model_class = getattr(factory, "model_class", None)
    return [t for t in (factory, model_class) if t is not None]


def _hints(target: Any) -> dict[str, Any]:
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        return typing.get_type_hints(fn)
    except Exception:  # an annotation that cannot be evaluated: fall back to the defaults' types
        return {}


def _signature(target: Any) -> list[inspect.Parameter]:
    try:
        return list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return []


def declared_keys(factory: Callable[..., Any]) -> dict[str, Key]:
    """Every key the model built by ``factory`` declares, with type, default and origin."""
    keys: dict[str, Key] = {}
    for target in _targets(factory):
        label = getattr(target, "__qualname__", type(target).__name__)
        hints = _hints(target)
        for p in _signature(target):
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name == "self":
                continue
            hint = hints.get(p.name, _hint_of(p.default))
            if p.name not in keys or keys[p.name].default is NO_DEFAULT:
                keys[p.name] = Key(p.name, None if hint is Any else hint, p.default, label)
        for name, default in (getattr(target, "declared_keys", None) or {}).items():
            keys.setdefault(name, Key(name, _hint_of(default), default, f"{label}.declared_keys"))
    variant = getattr(factory, "defaults", None) or {}
    for name, value in variant.items():
        old = keys.get(name)
        keys[name] = Key(name, old.hint if old else _hint_of(value), value, "variant")
    return keys


def receives_any(factory: Callable[..., Any]) -> bool:
    """Whether the object that finally takes the arguments accepts arbitrary ``**kwargs`` (the harness's own
    arguments, ``HARNESS_ARGS``, are then passed to it even where it does not name them)."""
    target = getattr(factory, "model_class", None) or factory
    return any(p.kind == p.VAR_KEYWORD for p in _signature(target))


def _hint_of(value: Any) -> Any:
    if value is NO_DEFAULT or value is None:
        return None
    if isinstance(value, (list, tuple)):
        return list | tuple
    return type(value)


def check_value(key: Key, value: Any) -> str | None:
    """``None`` if ``value`` fits ``key``'s type (ints for floats, lists for tuples), else what was expected."""
    if key.hint is None:
        return None
    allowed = typing.get_args(key.hint) if typing.get_origin(key.hint) in (typing.Union, type(int | str)) else (key.hint,)
    for t in allowed:
        if t is Any or _fits(value, typing.get_origin(t) or t):
            return None
    return " or ".join(sorted({_name(t) for t in allowed}))


def _fits(value: Any, base: Any) -> bool:
    if base is type(None):
        return value is None
    if base is bool:
        return isinstance(value, bool)
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if base is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if base in (list, tuple):
        return isinstance(value, (list, tuple))
    if base is dict:
        return isinstance(value, dict)
    if base in (str,) or not isinstance(base, type):
        return isinstance(value, str) if base is str else True
    return isinstance(value, base)


def _name(t: Any) -> str:
    base = typing.get_origin(t) or t
    return "None" if base is type(None) else getattr(base, "__name__", str(base))
