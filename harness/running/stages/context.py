"""The stage skeleton: what every stage needs (:class:`Context`) and the one way to obtain a model (:func:`obtain`).

Each ``stages/<kind>.py`` describes its kind with a :class:`Stage` — how to
build the model for its upstream artifacts, check that they combine, train it
(its task, its data pipeline) — and :func:`obtain` does the rest, the same for
every kind: resolve the recipe, build through the registry, fingerprint, load
given weights or train once under the store's lock, write the metadata.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from aprbench.harness.training.devices import model_threads, precision_part
from aprbench.harness.errors import BenchError
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.api.manager import Registry
from aprbench.harness.api.recipes import Override, Recipe, as_overrides, resolve
from aprbench.harness.store.hdf5 import Store, fingerprint, load_into, load_state, save_state


CHECKPOINTS = "checkpoints"  # resumable training state under an artifact's folder


def default_device() -> torch.device:
    """``cuda:0`` when present, else the CPU (``--device auto``)."""
    from aprbench.harness.training.devices import resolve_device

    return resolve_device("auto")


@dataclass
class Context:
    """Shared state of one command or matrix cell: where things are stored and how models are trained.

    ``data`` holds every split of the chosen scenes (the training split already
    reduced to the chosen fraction); ``dataset`` is the dataset plugin name
    that recipes match on (``synthetic``, ``sevenscenes``, ``cambridge``, ...);
    ``seed`` (the matrix cell's) overrides every recipe's seed. ``device`` and
    ``precision`` (``fp32``, ``bf16``, ``fp16``: autocast of every forward pass,
    :mod:`harness.training.devices`) are where and how models train and run; a reduced
    precision enters the fingerprint of every artifact obtained under it.
    """

    store: Store
    registry: Registry
    data: PoseData
    dataset: str
    profile: str = "quick"
    device: torch.device = field(default_factory=default_device)
    progress: bool | str = True  # a mode of harness.running.progress
    precision: str = "fp32"
    log: str = "csv"  # per-epoch logs: csv, or tensorboard as well (harness.training.tblog)
    overrides: list[Override] = field(default_factory=list)  # also accepted as {kind: {key: value}}
    seed: int | None = None
    artifacts: dict[str, "Artifact"] = field(default_factory=dict, repr=False)  # obtained in this process, by fingerprint

    def __post_init__(self) -> None:
        self.overrides = as_overrides(self.overrides)

    def recipe(self, kind: str, name: str, teacher: Recipe | None = None) -> Recipe:
        """The resolved recipe of a model (see :func:`harness.api.recipes.resolve`)."""
        return resolve(self.registry, kind, name, self.dataset, self.profile, self.overrides, self.seed, teacher)


@dataclass
class Artifact:
    """A trained (or loaded) model with what identifies it in the store."""

    kind: str
    name: str
    fingerprint: str
    recipe: Recipe
    model: nn.Module
    path: Path | None = None
    upstream: dict[str, str] = field(default_factory=dict)  # kind -> fingerprint of what it was built on
    options: dict[str, Any] = field(default_factory=dict)  # fingerprinted choices besides the recipe (encode)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe, Recipe):  # a flat dict of values (models built outside the registry)
            self.recipe = Recipe.of(self.kind, self.name, self.recipe)

    @property
    def config(self) -> dict[str, Any]:
        """The recipe's values as one flat dict."""
        return self.recipe.values()


@dataclass(frozen=True)
class Stage:
    """What one kind of model adds to the skeleton.

    ``interface``: the class its models must be. ``build_args(ctx, upstream)``:
    factory arguments the harness fixes (scene count, latent size). ``check(ctx,
    recipe, model, upstream)``: refuse an incompatible combination. ``prepare``
    (optional, same arguments): complete the model before its weights are loaded.
    ``train(ctx, artifact, upstream, out_dir) -> (history, meta)``: train
    ``artifact.model`` in place (``artifact.options``: fingerprinted choices
    such as what a student encodes).
    """

    kind: str
    interface: type
    build_args: Callable[[Context, dict[str, Artifact]], dict[str, Any]]
    check: Callable[[Context, Recipe, nn.Module, dict[str, Artifact]], None]
    train: Callable[..., tuple[list[dict[str, float]], dict[str, Any]]]
    prepare: Callable[[Context, Recipe, nn.Module, dict[str, Artifact]], None] | None = None


def build_model(registry: Registry, recipe: Recipe, interface: type | None = None, **fixed: Any) -> nn.Module:
    """The untrained model of ``recipe`` (its model part plus the ``fixed`` arguments the harness sets, passed where
    the model declares them or takes ``**kwargs``), type-checked."""
    from aprbench.harness.api.keys import declared_keys, receives_any

    factory = registry.get(recipe.kind, recipe.name).factory
    declared, open_ = declared_keys(factory), receives_any(factory)
    config = {**{k: v for k, v in fixed.items() if k in declared or open_}, **recipe.model}
    try:
        model = registry.build(recipe.kind, recipe.name, **config)
    except BenchError:
        raise
    except TypeError as exc:
        from aprbench.harness.api.recipes import known_keys, suggest

        bad = str(exc).rsplit("'", 2)[-2] if str(exc).count("'") >= 2 else ""
        hint = suggest(bad, known_keys(registry, recipe.kind, recipe.name)) if bad else ""
        raise BenchError(f"{recipe.kind} {recipe.name!r}: bad recipe option ({exc}){hint}; model options given: "
                         f"{sorted(recipe.model)}") from None
    except Exception as exc:
        raise BenchError(f"{recipe.kind} {recipe.name!r} could not be built: {type(exc).__name__}: {exc}") from None
    if interface is not None and not isinstance(model, interface):
        raise BenchError(f"{recipe.kind} plugin {recipe.name!r} built a {type(model).__name__}, not a harness "
                         f"{interface.__name__}")
    return model


def probe_plugin(registry: Registry, recipe: Recipe, model: nn.Module) -> None:
    """Probe a third-party plugin's freshly built model once on a tiny batch (:mod:`harness.api.contracts`);
    the built-in ones are covered by their tests."""
    from aprbench.harness.api.contracts import probe

    source = registry.get(recipe.kind, recipe.name).source
    if not source.startswith("builtin:"):
        probe(recipe.kind, recipe.name, source, model, int(getattr(recipe.task, "image_size", 64)))


def build_named(registry: Registry, kind: str, name: str, dataset: str = "synthetic", profile: str = "quick",
                overrides: list[Override] | dict | None = None, **fixed: Any) -> nn.Module:
    """The untrained model ``name`` with its resolved recipe (and ``fixed`` factory arguments)."""
    return build_model(registry, resolve(registry, kind, name, dataset, profile, as_overrides(overrides)), **fixed)


def under_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run a stage function ``fn(ctx, artifact, ...)`` at the artifact's recipe thread count on a CPU
    (:func:`harness.training.devices.model_threads`), so its outputs do not depend on the process's setting."""

    @functools.wraps(fn)
    def wrapper(ctx: Context, artifact: "Artifact", *args: Any, **kwargs: Any) -> Any:
        with model_threads(artifact.recipe, ctx.device):
            return fn(ctx, artifact, *args, **kwargs)

    return wrapper


def file_hash(path: Path | None) -> str | None:
    """SHA-256 prefix of a file's bytes (given weights enter fingerprints by content)."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def artifact_fingerprint(recipe: Recipe, upstream: dict[str, str], options: dict[str, Any] | None = None) -> str:
    """Identity of an artifact: its recipe (values and plugin version), what it was built on, and options."""
    return fingerprint(recipe.kind, recipe.name, recipe.fingerprint(), upstream, options or {})


def checkpoint_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from a user checkpoint (``weights_only``): plain, or nested under ``state_dict`` /
    ``model`` / ``model_state_dict``, or one of our training checkpoints (its model's entries)."""
    state = load_state(path)
    if "task" in state and isinstance(state["task"], dict):  # harness.training.loop checkpoint: the task's first module
        task = state["task"]
        prefix = next((k.split(".", 1)[0] + "." for k in task if "." in k and not k.startswith("loss.")), "")
        state = {k.removeprefix(prefix): v for k, v in task.items() if k.startswith(prefix)}
    for key in ("state_dict", "model_state_dict", "model"):
        if key in state and isinstance(state[key], dict):
            state = state[key]
    bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise BenchError(f"checkpoint {path}: not a state dict of tensors (entries {bad[:5]} are not tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def obtain(ctx: Context, stage: Stage, name: str, upstream: dict[str, Artifact] | None = None,
           checkpoint: Path | None = None, options: dict[str, Any] | None = None) -> Artifact:
    """The model ``name`` of ``stage``'s kind for ``upstream`` (kind -> artifact), from the store, from
    ``checkpoint``, or trained with its recipe on ``ctx.data``'s training split.

    Fingerprint: the recipe (values, ``threads`` among them, and the plugin's
    code identity), the upstream artifacts' fingerprints, the training split's
    fingerprint, ``options``, the checkpoint's file hash, the device kind
    (``cpu``, ``cuda``, ``mps``) and ``ctx.precision`` unless it is fp32 (an
    artifact trained, or given weights evaluated, under autocast is another
    artifact). Training runs at the recipe's ``threads`` on a CPU.
    Training runs under a store lock (re-checked once taken), so two processes
    never train the same artifact; an interrupted training resumes from
    ``<artifact>/checkpoints``.
    """
    upstream = upstream or {}
    teacher = upstream.get("teacher")
    recipe = ctx.recipe(stage.kind, name, teacher.recipe if (teacher is not None and stage.kind == "student") else None)
    train = ctx.data.split("train")
    ids = {k: a.fingerprint for k, a in upstream.items()}
    ids["data"] = train.fingerprint()
    if checkpoint is not None:
        checkpoint = Path(checkpoint)
        if not checkpoint.is_file():
            raise BenchError(f"{stage.kind} checkpoint {checkpoint} does not exist")
        ids["checkpoint"] = file_hash(checkpoint)
    options = {**(options or {}), **precision_part(ctx.precision), "device": ctx.device.type}
    fp = artifact_fingerprint(recipe, ids, options)
    if fp in ctx.artifacts:  # already built and loaded for an earlier cell of this context
        return ctx.artifacts[fp]
    torch.manual_seed(recipe.train.seed)
    fixed = stage.build_args(ctx, upstream)
    state = None
    if checkpoint is not None:  # given weights define the shapes they fix
        state = checkpoint_state(checkpoint)
        fixed = {**fixed, **_shapes_from_checkpoint(ctx, recipe, fixed, state, checkpoint)}
    model = build_model(ctx.registry, recipe, stage.interface, **fixed)
    probe_plugin(ctx.registry, recipe, model)
    stage.check(ctx, recipe, model, upstream)
    if stage.prepare is not None:
        stage.prepare(ctx, recipe, model, upstream)
    out_dir = ctx.store.artifact_dir(stage.kind, name, fp)
    art = Artifact(stage.kind, name, fp, recipe, model, out_dir / "weights.pth", ids, dict(options or {}))
    if checkpoint is not None:
        _load_given(ctx, art, state, checkpoint)
    else:
        if len(train.labels) == 0:
            raise BenchError(f"dataset {ctx.dataset!r} has no training frames for scenes {', '.join(ctx.data.scenes)}")
        train_once(ctx, art, lambda: _train_and_save(ctx, stage, art, upstream, out_dir))
    ctx.artifacts[fp] = art
    return art


def _load_given(ctx: Context, art: Artifact, state: dict, checkpoint: Path) -> None:
    """Load the given weights into ``art.model`` (through the plugin's own layout converter, if it has one)."""
    model = art.model
    convert = getattr(model, "from_reference_state_dict", None)  # a plugin's own layout (e.g. the reference's)
    load_into(model, convert(state) if convert is not None else state, source=f"checkpoint {checkpoint}")
    model.to(ctx.device).eval()
    art.path = checkpoint


def _train_and_save(ctx: Context, stage: Stage, art: Artifact, upstream: dict[str, Artifact], out_dir: Path) -> None:
    """Train ``art`` at its recipe's threads, say how long it took, save its weights and drop the resumable
    checkpoints (rank 0 only under torchrun)."""
    from aprbench.harness.training.loop import distributed_env

    from aprbench.harness.running.progress import TIMES, resolve_mode, say, duration

    t0 = time.perf_counter()
    with model_threads(art.recipe, ctx.device):
        history, meta = stage.train(ctx, art, upstream, out_dir)
    if distributed_env()[0] != 0:
        return
    took = time.perf_counter() - t0
    TIMES.add(f"{art.kind} {art.name}", took)
    if resolve_mode(ctx.progress) != "quiet":
        say(f"{art.kind} {art.name} ({', '.join(ctx.data.scenes)}) trained in {duration(took)} "
            f"({len(history)} epoch{'' if len(history) == 1 else 's'})")
    save_state(art.path, art.model.state_dict(), meta=_metadata(ctx, art, history, time.perf_counter() - t0, meta))
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # complete: resumable state no longer needed


_SAID: set[tuple] = set()  # shapes taken from checkpoints, said once per process


def _shapes_from_checkpoint(ctx: Context, recipe: Recipe, fixed: dict[str, Any], state: dict[str, torch.Tensor],
                            checkpoint: Path) -> dict[str, Any]:
    """The factory arguments ``checkpoint`` fixes (the model class's ``shapes_from_state``), said where they differ
    from what the data would give (e.g. a 7-scene model evaluated on one scene's label file)."""
    model_class = getattr(ctx.registry.get(recipe.kind, recipe.name).factory, "model_class", None)
    shapes = dict(getattr(model_class, "shapes_from_state", lambda state: {})(state) or {})
    changed = {k: v for k, v in shapes.items() if fixed.get(k, recipe.model.get(k)) != v}
    said = (recipe.kind, recipe.name, str(checkpoint), tuple(sorted(changed.items())))
    if changed and said not in _SAID:
        _SAID.add(said)
        parts = ", ".join(f"{k} = {v}" for k, v in changed.items())
        scenes = f" (the data has {len(ctx.data.scenes)} scene(s): {', '.join(ctx.data.scenes)})" if "num_scenes" in changed else ""
        print(f"bench: {recipe.kind} {recipe.name}: {parts} from the weights in {checkpoint}{scenes}", file=sys.stderr)
    return shapes


def training_paths(out_dir: Path, stage: int | None = None) -> dict[str, Path]:
    """Where one training of an artifact keeps its resumable state (removed once the artifact is complete) and
    its per-epoch log (kept, ``bench logs``); ``stage`` numbers the fine-tuning stages of a staged recipe."""
    sub = f"stage{stage}" if stage is not None else ""
    return {"checkpoint_dir": out_dir / CHECKPOINTS / sub, "log_path": out_dir / "logs" / sub / "log.csv"}


def _metadata(ctx: Context, art: Artifact, history: list[dict[str, float]], seconds: float,
              extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON sidecar of trained weights: what made them (recipe and its sources, data, upstream) and how it went."""
    from aprbench.harness.api.identity import plugin_identity

    code = plugin_identity(ctx.registry, art.kind, art.name)
    return {
        "kind": art.kind, "name": art.name, "source": ctx.registry.get(art.kind, art.name).source,
        "recipe": art.recipe.values(), "recipe_sources": art.recipe.sources, "plugin_version": art.recipe.version,
        "origin": code.origin, "source_digest": code.digest, "code": code.code(), "fingerprint": art.fingerprint,
        "model_fingerprint": art.recipe.model_fingerprint(ctx.precision, ctx.device.type),
        "options": art.options, "dataset": ctx.dataset, "scenes": ctx.data.scenes,
        "train_frames": len(ctx.data.split("train").labels), "upstream": art.upstream, "epochs": len(history),
        "train_seconds": sum(h.get("seconds", 0.0) for h in history), "wall_seconds": seconds,
        "first": history[0] if history else {}, "final": history[-1] if history else {}, "torch": torch.__version__,
        "device": str(ctx.device), "precision": ctx.precision,
        **extra,
    }


def train_once(ctx: Context, art: Artifact, train: Callable[[], None]) -> None:
    """Run ``train()`` unless the artifact's weights exist, then load them into its model (eval mode, on the device).

    Training runs under a store lock, re-checked once taken, so two processes
    sharing a work directory never train the same artifact twice. Under
    torchrun the ranks train together (one job): no lock between them, and
    every rank waits for rank 0's weights.
    """
    from aprbench.harness.training.loop import distributed_env

    weights = art.path
    _, world = distributed_env()
    for attempt in (1, 2):
        if not weights.exists():
            lock = ctx.store.lock(f"{art.kind}-{art.name}-{art.fingerprint}") if world == 1 else contextlib.nullcontext()
            with lock:
                if not weights.exists():  # another process may have trained it while we waited
                    train()
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.barrier()
        try:
            load_into(art.model, load_state(weights), source=f"stored weights {weights}")
            break
        except BenchError as exc:
            if attempt == 2 or world > 1:
                raise
            aside = weights.with_name(f"{weights.name}.corrupt-{int(time.time())}")
            weights.replace(aside)  # kept for inspection; the next attempt trains again
            print(f"bench: warning: {exc}; moved aside to {aside.name}, training {art.kind} {art.name} again",
                  file=sys.stderr)
    art.model.to(ctx.device).eval()
