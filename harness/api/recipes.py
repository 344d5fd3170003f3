"""Recipes: how one model is trained, resolved in one place into typed parts.

A recipe is resolved from ``(kind, name, dataset, profile, overrides)``:

1. the defaults of the kind's dataclasses (:class:`TrainConfig`
   and the kind's task config below);
2. every ``[[recipe]]`` table of ``registry.toml`` matching the kind, model,
   dataset and profile, in file order (later, more specific tables win), then
   the tables plugins return from ``bench_recipes()`` (:mod:`harness.api.tables`);
   a *generic* table (``models = ["*"]``) sets only train and task keys;
3. for a student, the keys its ``from_teacher`` list copies from its teacher's recipe;
4. the ``--set [KIND.|NAME.]KEY=VALUE`` overrides (:func:`parse_sets`; the more specific win), and the seed
   of the matrix cell;
5. pretrained weights (model keys ``pretrained``, ``pretrained_file``), settled
   through the plugin's ``model_class.pretrained_weights`` (see
   :meth:`harness.api.interfaces.Teacher.pretrained_weights`): the weights file's
   hash enters the fingerprint in place of its path (``Recipe.weights``). A
   ``pretrained = true`` from ``registry.toml`` (the ``paper`` profile's) is a
   wish: where no weights are on this machine, the recipe becomes
   ``pretrained = false`` and one warning line says that results will not be
   comparable to the paper's. Asked for on the command line (``--set``), or with
   a ``pretrained_file``, missing weights are an error.

Each value remembers where it came from (``Recipe.sources``). Keys are checked
here, before any work: an unknown key is refused with the closest known one,
a value of the wrong type or out of range names the key and what is accepted.
The resolved values plus the plugin's code identity (``harness.api.identity``: its
declared ``VERSION`` or a digest of its source, and the registered variant's
config) are the recipe's fingerprint, which both artifact and cell fingerprints
hash. ``threads`` (a training key of every kind) is the number of CPU threads
the model trains and evaluates with (``harness.training.devices.model_threads``):
a value, not a guess from the machine, so the numbers do not depend on how many
processes run side by side.
A model's keys are the ones it declares (:mod:`harness.api.keys`); its factory
receives only those, and only values that a table naming the model, ``--set``
or ``from_teacher`` gave (``Recipe.model``): otherwise its own defaults hold.
"""

from __future__ import annotations

import difflib
import sys
import types
import typing
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Union

from aprbench.harness.errors import BenchError
from aprbench.harness.api.keys import HARNESS_ARGS, NO_DEFAULT, Key, check_value, declared_keys
from aprbench.harness.api.registry import parse_value
from aprbench.harness.api.tables import known_profiles, recipe_tables
from aprbench.harness.store.hdf5 import fingerprint

KINDS = ("teacher", "student", "refiner", "decoder")
ENCODES = ("estimate", "ground_truth")
PAIRS = ("nearest", "virtual", "both")
PROTOCOLS = ("aprbench", "reference")


def _f(default: Any, *, low: float | None = None, high: float | None = None, strict: bool = False,
       choices: tuple | None = None, doc: str = "") -> Any:
    """A dataclass field whose value is checked: ``low`` (``> low`` when ``strict``), ``high``, ``choices``."""
    meta = {"low": low, "high": high, "strict": strict, "choices": choices, "doc": doc}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class TeacherConfig:
    """Task settings of an APR's training and evaluation (the rest of a recipe is the optimiser's or the model's)."""

    sx: float = _f(0.0, doc="initial position loss weight (Kendall's learned weighting)")
    sq: float = _f(0.0, doc="initial orientation loss weight")
    learn_weights: bool = _f(True, doc="learn sx, sq")
    nll_weight: float = _f(1.0, low=0.0, doc="weight of the scene-classification NLL (multi-scene teachers)")
    image_size: int = _f(64, low=8, doc="square input size in pixels")
    augment: bool = _f(True, doc="colour jitter and shifts while training")
    resize: int = _f(0, low=0, doc="shorter side resized to this before the crop (0: image_size; the reference: 256)")
    train_crop: str = _f("shift", choices=("shift", "random", "center"),
                         doc="training crop: shift (+-image_size/16 px, edge replicated), random (RandomCrop of the "
                             "resized image, the reference) or center")
    jitter: list = _f([0.2, 0.2, 0.2, 0.0], doc="ColorJitter brightness, contrast, saturation, hue while training")
    scene_balanced: bool = _f(False, doc="draw scenes uniformly, then frames")
    stages: list = _f([], doc="fine-tuning stages after the first: [{train = GLOB, epochs = N, ...}]")
    eval_batch_size: int = _f(64, low=1, doc="frames per forward pass when evaluating")
    init_bias: bool = _f(True, doc="start the output biases at the mean training pose")
    description: str = _f("", doc="free text")


@dataclass(frozen=True)
class StudentConfig:
    """Task settings of a PAE's distillation from its teacher's stored outputs."""

    sx: float = _f(0.0)
    sq: float = _f(0.0)
    learn_weights: bool = _f(True)
    latent_weight: float = _f(1.0, low=0.0, doc="weight of the latent MSE")
    pose_weight: Union[float, dict] = _f(1.0, doc="weight of the pose loss through the teacher's heads; a number "
                                         "or a table by encode, {estimate = 0.0, ground_truth = 1.0}")
    from_teacher: list = _f([], doc="recipe keys copied from the teacher's resolved recipe")
    raw_quaternion: bool = _f(False, doc="encode the teacher's estimate with its raw, unnormalised quaternion "
                                        "(the reference)")
    description: str = _f("")


@dataclass(frozen=True)
class RefinerConfig:
    """Task settings of a relative pose regressor's training and of the refinement loop."""

    iterations: int = _f(3, low=1, doc="refinement steps K a refiner cell runs (and stores) by default")
    pairs: str = _f("nearest", choices=PAIRS, doc="training pairs: nearest frames, virtual poses, or both")
    k: int = _f(4, low=1, doc="nearest training frames per query")
    virtual: int = _f(4, low=1, doc="virtual neighbours per query and epoch")
    orientation_weight: float = _f(1.0, low=0.0, doc="metres per radian in pose distances")
    spread_scale: float = _f(1.0, low=0.0, strict=True, doc="virtual spread = scale x teacher's training RMS error")
    std_m: float = _f(0.0, low=0.0, doc="fixed virtual spread in metres per axis (0: from the teacher)")
    std_deg: float = _f(0.0, low=0.0, doc="fixed virtual spread in degrees per axis (0: from the teacher)")
    min_std_m: float = _f(0.01, low=0.0)
    min_std_deg: float = _f(0.5, low=0.0)
    sx: float = _f(0.0)
    sq: float = _f(-3.0)
    learn_weights: bool = _f(True)
    finetune: bool = _f(False, doc="train a copy of the teacher's image encoder with the RPR")
    augment: bool = _f(True)
    eval_batch_size: int = _f(1024, low=1)
    init_bias: bool = _f(True)
    standardize: bool = _f(True, doc="standardise input latents with the teacher's training statistics")
    protocol: str = _f("aprbench", choices=PROTOCOLS,
                       doc="reference: the reference's iAPR (RPR + encoder + PAE fine-tuned on pairs, w >= 0 updates)")
    pairs_file: str = _f("", doc="the reference's pair list (CSV: img_path_a, ..., q4_ab) for protocol = reference")
    description: str = _f("")


@dataclass(frozen=True)
class DecoderConfig:
    """Task settings of an image decoder."""

    eval_batch_size: int = _f(256, low=1)
    resize: int = _f(0, low=0, doc="target images: shorter side resized to this, then CenterCrop(image_size) "
                                   "(0: image_size; the reference: 72 for 64)")
    description: str = _f("")


TASK_CONFIGS: dict[str, type] = {"teacher": TeacherConfig, "student": StudentConfig, "refiner": RefinerConfig,
                                 "decoder": DecoderConfig}
@dataclass
class TrainConfig:
    """Optimisation settings of one recipe: Adam, a per-epoch schedule, epochs, batch size.

    ``schedule``: ``step`` (StepLR every ``step_size`` epochs by ``gamma``;
    ``step_size`` 0 keeps the rate constant), ``cosine`` (cosine annealing
    from ``lr`` to ``lr * gamma`` over ``epochs``) or ``onecycle`` (torch's
    OneCycleLR, stepped every batch: a warm-up from ``lr / 25`` to ``lr`` over
    the first ``warmup`` fraction of the steps, then cosine annealing to
    ``lr * gamma``, Adam's beta1 cycled 0.95 -> 0.85 -> 0.95). ``grad_clip`` > 0 clips
    the gradient norm. ``eps`` is Adam's (the reference uses 1e-10). ``ema`` > 0 keeps an exponential
    moving average of the weights and batch-norm statistics, updated after every step with that decay
    (torch's ``AveragedModel``); it is what validation sees and what the training returns.
    """

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    step_size: int = 0  # StepLR period in epochs; 0 = constant learning rate
    gamma: float = 0.1
    schedule: str = "step"
    grad_clip: float = 0.0
    checkpoint_every: int = 1
    seed: int = 0
    eps: float = 1e-8  # Adam's epsilon
    threads: int = 1  # CPU threads (torch.set_num_threads) while this model trains and is evaluated on a CPU
    warmup: float = 0.25  # onecycle: the fraction of steps spent warming up
    ema: float = 0.0  # per-step decay of an exponential moving average of the weights, the trained model (0: none)

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any]) -> "TrainConfig":
        """Pick this class's fields out of a recipe dict (other keys are the model's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in recipe.items() if k in names})


# TrainConfig's accepted ranges (its fields are declared above)
TRAIN_RULES: dict[str, dict[str, Any]] = {
    "epochs": {"low": 0}, "batch_size": {"low": 1}, "lr": {"low": 0.0, "strict": True}, "eps": {"low": 0.0, "strict": True},
    "weight_decay": {"low": 0.0}, "step_size": {"low": 0}, "gamma": {"low": 0.0, "strict": True},
    "schedule": {"choices": ("step", "cosine", "onecycle")}, "grad_clip": {"low": 0.0}, "checkpoint_every": {"low": 1},
    "seed": {"low": 0}, "threads": {"low": 1}, "warmup": {"low": 0.0, "high": 1.0, "strict": True},
    "ema": {"low": 0.0, "high": 0.99999},
}
# keys the harness passes to factories itself (never from a recipe)


# =========================================================================== --set
@dataclass(frozen=True)
class Override:
    """One ``--set [KIND.|NAME.]KEY=VALUE``: ``kind`` None applies to every kind that knows ``key``; ``model``
    (a registered name) to that model only."""

    kind: str | None
    key: str
    value: Any
    text: str
    model: str | None = None

    @property
    def rank(self) -> int:
        """0 for ``KEY``, 1 for ``KIND.KEY``, 2 for ``NAME.KEY``: the more specific wins."""
        return 2 if self.model is not None else int(self.kind is not None)

    def applies(self, kind: str, name: str) -> bool:
        return (self.kind is None or self.kind == kind) and (self.model is None or self.model == name)


def parse_sets(pairs: list[str] | None) -> list[Override]:
    """``["teacher.epochs=2", "posenet-mobilenet.lr=1e-3", "lr=1e-4"]`` -> overrides (values in TOML literal
    syntax, else strings). A prefix that is not a kind is a model name (checked by :func:`check_overrides`)."""
    out = []
    for pair in pairs or []:
        if "=" not in pair:
            raise BenchError(f"--set {pair!r}: expected [KIND.|NAME.]KEY=VALUE, e.g. teacher.epochs=2")
        key, raw = (s.strip() for s in pair.split("=", 1))
        prefix, dot, rest = key.rpartition(".")
        if not dot:
            out.append(Override(None, key, parse_value(raw), pair))
        elif not prefix or not rest:
            raise BenchError(f"--set {pair!r}: expected [KIND.|NAME.]KEY=VALUE, e.g. teacher.epochs=2")
        elif prefix in KINDS:
            out.append(Override(prefix, rest, parse_value(raw), pair))
        else:
            out.append(Override(None, rest, parse_value(raw), pair, model=prefix))
    return out


def as_overrides(value: list[Override] | dict[str, dict[str, Any]] | None) -> list[Override]:
    """Overrides from a list, or from ``{kind: {key: value}}`` (as Python callers write them)."""
    if value is None:
        return []
    if isinstance(value, dict):
        return [Override(kind, k, v, f"{kind}.{k}={v}") for kind, table in value.items() for k, v in table.items()]
    return list(value)


def overrides_text(overrides: list[Override]) -> str:
    """The overrides as the user wrote them, sorted (``""`` for none): part of a cell's provenance."""
    return ",".join(sorted(o.text for o in overrides))


# =========================================================================== the recipe
@dataclass(frozen=True)
class Recipe:
    """A resolved recipe: the training loop's config, the kind's task config and the model's config."""

    kind: str
    name: str
    dataset: str
    profile: str
    train: TrainConfig
    task: Any
    model: dict[str, Any]
    sources: dict[str, str]
    version: str = "0"  # the plugin's declared VERSION, or src:<digest> (harness.api.identity.PluginIdentity.label)
    weights: dict[str, str] = field(default_factory=dict)  # pretrained weights' file hashes (model key -> hash)
    code: str = ""  # the plugin's code identity (harness.api.identity.PluginIdentity.code)

    def values(self) -> dict[str, Any]:
        """Every value as one flat dict (train, task, model)."""
        return {**_asdict(self.train), **_asdict(self.task), **self.model}

    def fingerprint(self) -> str:
        """Hash of the kind, name, plugin code identity and every resolved value; with pretrained weights, their
        file's hash instead of its path (the same weights anywhere are the same recipe)."""
        return fingerprint("recipe", self.kind, self.name, self.code or self.version, *self._identified())

    def model_fingerprint(self, precision: str = "fp32", device: str = "cpu") -> str:
        """The model's identity across seeds: everything :meth:`fingerprint` hashes but the seed, plus the
        autocast ``precision`` and the ``device`` kind (``cpu``, ``cuda``, ``mps``). Cells whose every model
        fingerprint is equal differ only in seed; a leaderboard row never merges cells whose differ."""
        values, *weights = self._identified()
        values = {k: v for k, v in values.items() if k != "seed"}
        return fingerprint("model", self.kind, self.name, self.code or self.version, values, *weights, precision,
                           device)

    def _identified(self) -> list[Any]:
        if not self.weights:
            return [self.values()]
        return [{k: v for k, v in self.values().items() if k != "pretrained_file"}, self.weights]

    @classmethod
    def of(cls, kind: str, name: str, values: dict[str, Any] | None = None) -> "Recipe":
        """A recipe from flat ``values`` alone (no registry, no checks): the kind's defaults plus ``values``,
        split into parts by field name (for models built outside the registry)."""
        values = dict(values or {})
        train_keys = {f.name for f in fields(TrainConfig)}
        task_keys = {f.name for f in fields(TASK_CONFIGS[kind])}
        train = TrainConfig(**{k: v for k, v in values.items() if k in train_keys})
        task = TASK_CONFIGS[kind](**{k: v for k, v in values.items() if k in task_keys})
        model = {k: v for k, v in values.items() if k not in train_keys | task_keys}
        return cls(kind, name, "", "", train, task, model, {k: "given" for k in values})

    def with_train(self, **changes: Any) -> "Recipe":
        """The same recipe with ``TrainConfig`` fields changed (e.g. one fine-tuning stage's)."""
        return replace(self, train=replace(self.train, **changes))


def _asdict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def plugin_version(registry: Any, kind: str, name: str) -> str:
    """The declared ``VERSION`` of the plugin that registered ``name`` (class attribute, else module-level),
    or ``src:<digest>`` when it declares none (:mod:`harness.api.identity`)."""
    from aprbench.harness.api.identity import plugin_identity

    return plugin_identity(registry, kind, name).label()


def model_key_table(registry: Any, kind: str, name: str) -> dict[str, Key]:
    """Every key the model ``name`` declares (:func:`harness.api.keys.declared_keys`), with type and default."""
    return declared_keys(registry.get(kind, name).factory)


def model_keys(registry: Any, kind: str, name: str) -> tuple[set[str], bool]:
    """``(keys, open)``: the model keys a plugin declares beside the train and task keys; ``open`` is always
    False now (``**kwargs`` alone declares nothing, see :mod:`harness.api.keys`)."""
    task = {f.name for f in fields(TASK_CONFIGS[kind])} | set(TRAIN_RULES)
    return set(model_key_table(registry, kind, name)) - task, False


def known_keys(registry: Any, kind: str, name: str) -> set[str]:
    """Every key a recipe of this plugin may set."""
    return set(TRAIN_RULES) | {f.name for f in fields(TASK_CONFIGS[kind])} | set(model_key_table(registry, kind, name))


def resolve(registry: Any, kind: str, name: str, dataset: str, profile: str,
            overrides: list[Override] | None = None, seed: int | None = None,
            teacher: Recipe | None = None) -> Recipe:
    """The recipe of ``name`` (kind ``kind``) on ``dataset`` under ``profile``, checked and typed.

    ``teacher``: the teacher's recipe, for a student's ``from_teacher`` keys.
    ``seed``: the matrix cell's seed (wins over every other source).
    """
    if kind not in KINDS:
        raise BenchError(f"unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    check_profile(profile, registry)
    registry.get(kind, name)  # unknown names are refused with the known ones
    declared = model_key_table(registry, kind, name)
    parts = set(TRAIN_RULES) | {f.name for f in fields(TASK_CONFIGS[kind])}  # checked by their dataclasses
    known = parts | set(declared)
    values, sources, own = _table_values(registry, kind, name, dataset, profile, parts)
    inherit = values.get("from_teacher") or []
    if teacher is not None:
        for key in [inherit] if isinstance(inherit, str) else inherit:
            if teacher.sources.get(key, "default") != "default":  # a value the teacher's recipe sets
                values[key], sources[key] = teacher.values()[key], f"teacher {teacher.name} recipe (from_teacher)"
                own.add(key)
    for o in sorted(overrides or [], key=lambda o: o.rank):  # stable: KEY, then KIND.KEY, then NAME.KEY
        if not o.applies(kind, name):
            continue
        if o.key not in known:
            if o.kind is None and o.model is None:
                continue  # a kind-less key applies where it is known (checked across kinds by check_overrides)
            raise BenchError(_unknown_key(o, known, kind, name))
        if o.key in declared and o.key not in parts:
            _check_model_value(declared[o.key], o.value, values.get(o.key), f"--set {o.text}", kind, name)
        values[o.key], sources[o.key] = o.value, f"--set {o.text}"
        own.add(o.key)
    if seed is not None:
        values["seed"], sources["seed"] = int(seed), "--seeds"
        own.add("seed")
    unknown = sorted(set(values) - known)
    if unknown:  # a table naming this model sets a key no part accepts
        raise BenchError(f"{kind} {name!r}: recipe key(s) {', '.join(unknown)} ({sources[unknown[0]]}) are not known"
                         f"{suggest(unknown[0], known)}")
    train = _build(TrainConfig, values, sources, kind, name, TRAIN_RULES)
    task = _build(TASK_CONFIGS[kind], values, sources, kind, name)
    model = {k: v for k, v in values.items() if k in declared and (k not in parts or k in own)}
    for key, value in model.items():
        if not sources[key].startswith("--set "):  # table values (--set ones were checked above)
            _check_model_value(declared[key], value, None, sources[key], kind, name)
    for f in fields(TrainConfig):
        sources.setdefault(f.name, "default")
    for f in fields(task):
        sources.setdefault(f.name, "default")
    model, weights = _settle_pretrained(registry, kind, name, profile, model, sources)
    from aprbench.harness.api.identity import plugin_identity

    code = plugin_identity(registry, kind, name)
    return Recipe(kind, name, dataset, profile, train, task, model, sources, code.label(), weights, code.code())


def _table_values(registry: Any, kind: str, name: str, dataset: str, profile: str,
                  parts: set[str]) -> tuple[dict[str, Any], dict[str, str], set[str]]:
    """``(values, sources, own)`` merged from the matching tables; ``own``: keys last set by a table naming the
    model. A generic table (``models = ["*"]``) sets train and task keys only: model keys it holds are meant
    for other models, and it never replaces a model's own defaults."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    own: set[str] = set()
    for table in recipe_tables(registry, kind, name, dataset, profile):
        for key, value in table.settings.items():
            if table.generic and key not in parts:
                continue
            values[key], sources[key] = value, table.label
            (own.discard if table.generic else own.add)(key)
    return values, sources, own


def _check_model_value(key: Key, value: Any, current: Any, source: str, kind: str, name: str) -> None:
    """A model key's value against its declared type (or, where it declares none, the type it has so far)."""
    expected = check_value(key, value)
    if expected is None and key.hint is None and current is not None:
        _same_type(Override(kind, key.name, value, source.removeprefix("--set ")), current, kind, name)
        return
    if expected is not None:
        default = "" if key.default is NO_DEFAULT else f" (default {key.default!r})"
        raise BenchError(f"{source}: {kind} {name}: {key.name} expects a {expected}{default}, got "
                         f"{type(value).__name__} {value!r}")


_WARNED: set[str] = set()  # pretrained fall-backs already reported in this process


def _settle_pretrained(registry: Any, kind: str, name: str, profile: str, model: dict[str, Any],
                       sources: dict[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(model, weights)``: the model keys with pretrained weights settled, and the hash of their file.

    ``sources`` is updated in place (the file found, or the fall-back to random initialisation)."""
    if not (model.get("pretrained") or model.get("pretrained_file")):
        return model, {}
    factory = registry.get(kind, name).factory
    locate = getattr(getattr(factory, "model_class", None), "pretrained_weights", None)
    if locate is None:
        return model, {}
    from aprbench.harness.training.backbones import PretrainedMissing, weights_digest

    try:
        path = locate({**getattr(factory, "defaults", {}), **model})
    except PretrainedMissing as exc:
        wished = sources.get("pretrained", "").startswith(("registry.toml", "plugin ")) and not model.get("pretrained_file")
        if not wished:
            raise BenchError(f"{kind} {name}: {exc}") from None
        message = (f"bench: warning: {kind} {name}: profile {profile!r} asks for ImageNet-pretrained weights, but "
                   f"found none ({exc.where}); training from random initialisation, so results "
                   f"will not be comparable to the paper's (provide weights: --set {kind}.pretrained_file=PATH, or "
                   "put them in that cache)")
        if message not in _WARNED:
            _WARNED.add(message)
            print(message, file=sys.stderr)
        sources["pretrained"] += " (no weights on this machine: random initialisation)"
        return {**model, "pretrained": False}, {}
    if path is None:
        return model, {}
    digest = weights_digest(path)
    if model.get("pretrained_file"):
        model = {**model, "pretrained_file": str(path)}
    key = "pretrained_file" if model.get("pretrained_file") else "pretrained"
    sources[key] = f"{sources.get(key, 'default')}; weights {path} (sha256 {digest})"
    return model, {"pretrained": digest}


def check_overrides(registry: Any, overrides: list[Override], used: dict[str, list[str]]) -> None:
    """Refuse a ``--set`` that would change nothing: a kind the command does not use, or a kind-less
    ``KEY=VALUE`` that no plugin in ``used`` (kind -> names) knows. Kind-specific keys are checked by :func:`resolve`."""
    for o in overrides:
        if o.model is not None:
            names = sorted({n for ns in used.values() for n in ns})
            if o.model not in names:
                raise BenchError(f"--set {o.text}: {o.model!r} is neither a kind ({', '.join(KINDS)}) nor a model "
                                 f"this command uses ({', '.join(names) or 'none'}){suggest(o.model, [*KINDS, *names])}")
            continue
        if o.kind is not None:
            if not used.get(o.kind):
                raise BenchError(f"--set {o.text}: this command uses no {o.kind} (it uses "
                                 f"{', '.join(k for k, v in used.items() if v) or 'no model'})")
            continue
        known: set[str] = set()
        for kind, names in used.items():
            for n in names:
                known |= known_keys(registry, kind, n)
        if o.key not in known:
            close = difflib.get_close_matches(o.key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise BenchError(f"--set {o.text}: no model of this command has a recipe key {o.key!r}{hint} "
                             f"(known: {', '.join(sorted(known))})")


def check_profile(profile: str, registry: Any = None) -> None:
    """Refuse a profile no recipe table (built-in, or of a plugin in ``registry``) mentions."""
    known = known_profiles(registry)
    if profile not in known:
        raise BenchError(f"--profile {profile!r}: unknown profile; known: {', '.join(known)}")


def suggest(key: str, known: Any) -> str:
    """``"; did you mean 'epochs'?"`` for the closest known key, or ``""``."""
    close = difflib.get_close_matches(key, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(o: Override, known: set[str], kind: str, name: str) -> str:
    close = difflib.get_close_matches(o.key, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"--set {o.text}: {kind} {name} has no recipe key {o.key!r}{hint} (known: {', '.join(sorted(known))})"


def _same_type(o: Override, current: Any, kind: str, name: str) -> None:
    """A model key set on the command line keeps the type its recipe gives it (int and float mix)."""
    numbers = (int, float)
    same = isinstance(o.value, type(current)) or (
        isinstance(o.value, numbers) and isinstance(current, numbers) and not isinstance(o.value, bool)
        and not isinstance(current, bool))
    if not same:
        raise BenchError(f"--set {o.text}: {kind} {name}: {o.key} expects a {type(current).__name__} like "
                         f"{current!r}, got {type(o.value).__name__} {o.value!r}")


def _build(cls: type, values: dict[str, Any], sources: dict[str, str], kind: str, name: str,
           rules: dict[str, dict[str, Any]] | None = None) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in fields(cls):
        if f.name not in values:
            continue
        rule = (rules or {}).get(f.name, f.metadata)
        kwargs[f.name] = _check(values[f.name], hints[f.name], rule, f"{kind} {name}: {f.name}", sources.get(f.name, ""))
    return cls(**kwargs)


def _check(value: Any, hint: Any, rule: dict[str, Any], what: str, source: str) -> Any:
    """``value`` converted to ``hint`` (int -> float allowed) and checked against ``rule``; else a BenchError."""
    where = f" (from {source})" if source else ""
    allowed = typing.get_args(hint) if typing.get_origin(hint) in (Union, types.UnionType) else (hint,)
    converted = _convert(value, allowed)
    if converted is _BAD:
        names = " or ".join(getattr(t, "__name__", str(t)) for t in allowed)
        raise BenchError(f"{what} = {value!r}{where}: expected {names}")
    value = converted
    choices = rule.get("choices")
    if choices and value not in choices:
        raise BenchError(f"{what} = {value!r}{where}: expected one of {', '.join(map(str, choices))}")
    low, high, strict = rule.get("low"), rule.get("high"), rule.get("strict")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value != value or value in (float("inf"), float("-inf")):
            raise BenchError(f"{what} = {value!r}{where}: expected a finite number")
        if low is not None and (value <= low if strict else value < low):
            raise BenchError(f"{what} = {value!r}{where}: must be {'>' if strict else '>='} {low}")
        if high is not None and value > high:
            raise BenchError(f"{what} = {value!r}{where}: must be <= {high}")
    return value


_BAD = object()


def _convert(value: Any, allowed: tuple) -> Any:
    for t in allowed:
        base = typing.get_origin(t) or t
        if base is bool:
            if isinstance(value, bool):
                return value
        elif base is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif base is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        elif base is type(None):
            if value is None:
                return value
        elif isinstance(value, base):
            return value
    return _BAD


def describe(recipe: Recipe, keys: dict[str, Key] | None = None) -> list[dict[str, Any]]:
    """Rows ``part, key, type, value, default, source`` of a resolved recipe (for ``bench recipe``): every train
    and task key, and every model key ``keys`` declares (:func:`model_key_table`), set or not."""
    rows = []
    for part, obj in (("train", recipe.train), ("task", recipe.task)):
        hints = typing.get_type_hints(type(obj))
        for f in fields(obj):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            rows.append({"part": part, "key": f.name, "type": Key(f.name, hints[f.name], None, "").type_name(),
                         "value": getattr(obj, f.name), "default": default,
                         "source": recipe.sources.get(f.name, "default")})
    keys = keys or {}
    for key in sorted(set(keys) | set(recipe.model)):
        k = keys.get(key, Key(key, None, NO_DEFAULT, "?"))
        default = "(required)" if k.default is NO_DEFAULT else k.default
        if key in recipe.model:
            value, source = recipe.model[key], recipe.sources.get(key, "default")
        else:
            value = default
            source = "the harness (from the data and upstream models)" if key in HARNESS_ARGS else f"default ({k.origin})"
        rows.append({"part": "model", "key": key, "type": k.type_name(), "value": value, "default": default,
                     "source": source})
    return rows


__all__ = [
    "Recipe", "Override", "TeacherConfig", "StudentConfig", "RefinerConfig", "DecoderConfig", "TASK_CONFIGS",
    "resolve", "parse_sets", "check_overrides", "check_profile", "describe", "known_keys", "plugin_version",
    "overrides_text", "ENCODES", "PAIRS", "KINDS",
]
