"""Hook specifications: what a plugin (built-in or third-party) may implement.

Every factory hook returns ``{name: factory}``; the factory is called with the
resolved config as keyword arguments (only the keys the model declares,
``harness.api.keys``) and returns the object the kind's interface
(``harness.api.interfaces``) describes; a third-party model is probed once
after it is built (``harness.api.contracts``).
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("bench")
hookimpl = pluggy.HookimplMarker("bench")


@hookspec
def bench_datasets():
    """Return ``{name: factory}``; ``factory(store=Store, **options) -> PoseData``."""


@hookspec
def bench_teachers():
    """Return ``{name: factory}``; ``factory(num_scenes=int, **config) -> Teacher`` (an APR)."""


@hookspec
def bench_students():
    """Return ``{name: factory}``; ``factory(latent_dim=int, num_scenes=int, **config) -> Student`` (a pose auto-encoder)."""


@hookspec
def bench_refiners():
    """Return ``{name: factory}``; ``factory(latent_dim=int, **config) -> Refiner``."""


@hookspec
def bench_decoders():
    """Return ``{name: factory}``; ``factory(latent_dim=int, **config) -> Decoder`` (latents to images)."""


@hookspec
def bench_recipes():
    """Return recipe tables for this plugin's models: a list of dicts in ``registry.toml``'s ``[[recipe]]`` form
    (``kind``, optional ``models`` / ``datasets`` / ``profiles`` glob lists, then values), merged after the
    built-in tables."""


@hookspec
def bench_cell_finished(cell, result):
    """Observe one evaluated matrix cell (``cell``: its config dict, ``result``: its summary dict)."""


@hookspec
def bench_leaderboard_columns(frame):
    """Return ``{column: values}`` to add to the leaderboard ``frame`` (a pandas DataFrame), or None."""
