"""The matrix: teacher x student x encode x refiner x iterations x fraction x seed, expanded into cells.

A *cell* is one evaluated combination on the test split. Expansion rules:

- a single-scene teacher is trained per scene (``NAME@room`` pins scenes, as
  ``NAME@room+site`` does for a multi-scene one); a multi-scene teacher sees
  every chosen scene at once;
- ``student = none`` is the teacher alone; with a student and no refiner the
  cell is the PAE's reproduction of the teacher (estimate encoded, decoded by
  the teacher's heads);
- a refiner cell runs ``K = max(iterations)`` steps once and stores every
  iteration (0 is the teacher's estimate); the leaderboard shows each
  requested iteration >= 1. Without ``--iterations`` K is the refiner
  recipe's ``iterations``; ``--iterations 0`` alone with a refiner is refused
  (no refinement asked for), never dropped silently. Refiners whose
  neighbours come from the student need one;
- a decoder (``NAME`` or ``NAME@TEACHER``, limiting it to one teacher) is
  scored on each teacher x student, the student trained with the first
  ``encode`` value;
- every cell is repeated per seed: the seed of every model in its chain
  (a student or refiner of seed s is distilled from the teacher of seed s);
- incompatible combinations (``harness.api.compat``: latent sizes, single- vs
  multi-scene) are refused before any work, with the reason.

A model name may carry weights: ``NAME=FILE.pth`` (their file hash enters the fingerprint).
The cell fingerprint is computed from the axes, the resolved recipes (values
and plugin versions), weight-file hashes and the data fingerprint alone, so a
finished cell is found in the store without building or training anything.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from aprbench.harness.api.compat import Incompatible, check_decoder, check_refiner, check_student, uses_student
from aprbench.harness.errors import BenchError
from aprbench.harness.api.manager import Registry
from aprbench.harness.api.recipes import ENCODES, Override, Recipe, resolve
from aprbench.harness.running.stages.chain import split_name
from aprbench.harness.store.hdf5 import fingerprint

if TYPE_CHECKING:
    from aprbench.harness.api.interfaces import PoseData

NONE = "none"


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher axis value: ``NAME[@scene+scene][=CHECKPOINT]``."""

    name: str
    scenes: tuple[str, ...] | None = None
    checkpoint: Path | None = None

    @classmethod
    def parse(cls, text: str) -> "TeacherSpec":
        name, _, ckpt = text.partition("=")
        name, _, scenes = name.partition("@")
        checkpoint = Path(ckpt) if ckpt else None
        if checkpoint is not None and not checkpoint.is_file():
            raise BenchError(f"--teacher {text}: checkpoint {checkpoint} does not exist")
        return cls(name.strip(), tuple(s for s in scenes.split("+") if s) or None, checkpoint)

    def label(self) -> str:
        return self.name + (f"={self.checkpoint.name}" if self.checkpoint else "")


@dataclass(frozen=True)
class Cell:
    """One combination to evaluate on the test split."""

    dataset: str
    scenes: tuple[str, ...]
    fraction: float
    teacher: TeacherSpec
    student: str | None = None  # NAME or NAME=WEIGHTS
    encode: str | None = None
    refiner: str | None = None  # NAME or NAME=WEIGHTS
    iterations: int = 0  # K: refinement steps the cell runs and stores (0 for a teacher or student cell)
    decoder: str | None = None  # a decoder cell scores images decoded from the student's latents
    seed: int = 0
    shown: tuple[int, ...] = ()  # iterations (>= 1) the leaderboard shows of a refiner cell; not fingerprinted

    def describe(self) -> str:
        parts = [self.teacher.label(), "+".join(self.scenes), f"{self.fraction:g}", f"seed {self.seed}"]
        if self.student:
            parts.append(f"{self.student}/{self.encode}")
        if self.refiner:
            parts.append(f"{self.refiner}x{self.iterations}")
        if self.decoder:
            parts.append(self.decoder)
        return " ".join(parts)

    def record(self) -> dict[str, Any]:
        """A flat, JSON-serialisable description (stored as the cell file's ``cell`` attribute)."""
        d = asdict(self)
        d["teacher"] = self.teacher.name
        d["checkpoint"] = str(self.teacher.checkpoint) if self.teacher.checkpoint else None
        d["scenes"] = list(self.scenes)
        d["shown_iterations"] = list(d.pop("shown"))
        return d

    def chain(self) -> tuple:
        """The teacher chain the cell belongs to: cells with equal chains share their teacher (and often a
        student), so a shard keeps them together."""
        return (self.dataset, self.scenes, self.fraction, self.teacher.label(), str(self.teacher.checkpoint), self.seed)

    def identity(self) -> dict[str, Any]:
        """What the fingerprint hashes of the axes (not how the leaderboard shows them)."""
        d = self.record()
        d.pop("shown_iterations")
        d.pop("checkpoint")  # by content: the file hash is hashed instead
        return d


@dataclass
class Plan:
    """The expanded matrix: cells to run and combinations refused with their reason."""

    cells: list[Cell] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Axes:
    """The values of every axis, as given on the command line."""

    dataset: str
    teachers: list[str]
    students: list[str] = field(default_factory=lambda: [NONE])
    encodes: list[str] = field(default_factory=lambda: ["estimate"])
    refiners: list[str] = field(default_factory=lambda: [NONE])
    iterations: list[int] | None = None  # None: each refiner recipe's default K
    fractions: list[float] = field(default_factory=lambda: [1.0])
    decoders: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])


def validate(axes: Axes, registry: Registry) -> None:
    """Refuse unknown plugin names and impossible axis values (cheap: before any data is opened)."""
    for text in axes.teachers:
        registry.get("teacher", TeacherSpec.parse(text).name)
    for kind, names in (("student", axes.students), ("refiner", axes.refiners), ("decoder", axes.decoders)):
        for n in names:
            if n != NONE:
                registry.get(kind, split_name(n.partition("@")[0])[0])
                _weights_exist(kind, n)
    for enc in axes.encodes:
        if enc not in ENCODES:
            raise BenchError(f"--encode {enc!r}: expected estimate or ground_truth")
    for it in axes.iterations or []:
        if it < 0:
            raise BenchError(f"--iterations {it}: must be >= 0")
    for frac in axes.fractions:
        if not 0 < frac <= 1:
            raise BenchError(f"--fraction {frac}: must be in (0, 1]")
    for seed in axes.seeds:
        if seed < 0:
            raise BenchError(f"--seeds {seed}: seeds must be >= 0")


def _weights_exist(kind: str, spec: str) -> None:
    _, path = split_name(spec)
    if path is not None and not path.is_file():
        raise BenchError(f"--{kind} {spec}: weights file {path} does not exist")


class _Probe:
    """Untrained models built once per (kind, name, shape), to read latent sizes and scene kinds."""

    def __init__(self, registry: Registry, dataset: str, profile: str, overrides: list[Override]) -> None:
        self.registry, self.dataset, self.profile, self.overrides = registry, dataset, profile, overrides
        self.built: dict[tuple, Any] = {}
        self.recipes: dict[tuple[str, str], Recipe] = {}

    def recipe(self, kind: str, name: str) -> Recipe:
        if (kind, name) not in self.recipes:
            self.recipes[kind, name] = resolve(self.registry, kind, name, self.dataset, self.profile, self.overrides)
        return self.recipes[kind, name]

    def __call__(self, kind: str, name: str, **fixed: Any) -> Any:
        key = (kind, name, tuple(sorted(fixed.items())))
        if key not in self.built:
            from aprbench.harness.running.stages.context import build_model

            self.built[key] = build_model(self.registry, self.recipe(kind, name), **fixed)
        return self.built[key]


def expand(axes: Axes, data: PoseData, registry: Registry, profile: str,
           overrides: list[Override] | None = None) -> Plan:
    """Every compatible cell of ``axes`` (in a deterministic order) and the refused combinations."""
    validate(axes, registry)
    plan = Plan()
    probe = _Probe(registry, axes.dataset, profile, overrides or [])
    for text in axes.teachers:
        spec = TeacherSpec.parse(text)
        scenes = list(spec.scenes or data.scenes)
        unknown = [s for s in scenes if s not in data.scenes]
        if unknown:
            raise BenchError(f"--teacher {text}: unknown scene(s) {', '.join(unknown)}; known: {', '.join(data.scenes)}")
        teacher = probe("teacher", spec.name, num_scenes=len(scenes))
        groups = [tuple(scenes)] if bool(getattr(teacher, "multi_scene", False)) else [(s,) for s in scenes]
        for seed in axes.seeds:
            for frac in axes.fractions:
                for group in groups:
                    base = Cell(axes.dataset, group, frac, spec, seed=seed)
                    plan.cells.append(base)
                    for student in axes.students:
                        _expand_student(plan, base, student, axes, teacher, probe)
    return plan


def _refiner_cells(plan: Plan, cell: Cell, refiner: str, axes: Axes, probe: _Probe) -> None:
    """The one refiner cell of ``refiner`` on top of ``cell`` (K = max requested iteration)."""
    name = split_name(refiner)[0]
    wanted = sorted({k for k in axes.iterations if k >= 1}) if axes.iterations is not None else \
        list(range(1, probe.recipe("refiner", name).task.iterations + 1))
    if not wanted:
        plan.refused.append((f"{cell.describe()} {refiner}", f"--iterations {','.join(map(str, axes.iterations))} "
                             "asks for no refinement step (give --iterations 1 or more, e.g. 0,1,3)"))
        return
    plan.cells.append(replace(cell, refiner=refiner, iterations=max(wanted), shown=tuple(wanted)))


def _add_refiner(plan: Plan, cell: Cell, refiner: str, model: Any, axes: Axes, probe: _Probe, teacher: Any,
                 student_name: str | None, student: Any | None) -> None:
    """The refiner cell on top of ``cell``, or the refused combination with its reason."""
    try:
        check_refiner(refiner, model, cell.teacher.name, teacher, student_name, student)
    except Incompatible as exc:
        plan.refused.append((f"{cell.describe()} {refiner}", str(exc)))
        return
    _refiner_cells(plan, cell, refiner, axes, probe)


def _expand_student(plan: Plan, base: Cell, student: str, axes: Axes, teacher: Any, probe: _Probe) -> None:
    latent = int(getattr(teacher, "latent_dim", 256))
    if student == NONE:
        for refiner in axes.refiners:
            if refiner == NONE:
                continue
            ref = probe("refiner", split_name(refiner)[0], latent_dim=latent)
            if uses_student(ref):
                if any(s != NONE for s in axes.students):
                    continue  # the student rows of this teacher carry this refiner
                plan.refused.append((f"{base.describe()} {refiner}", f"{refiner} encodes poses with a student; student 'none' given"))
                continue
            _add_refiner(plan, base, refiner, ref, axes, probe, teacher, None, None)
        return
    s_name = split_name(student)[0]
    multi = bool(getattr(teacher, "multi_scene", False))
    stud = probe("student", s_name, latent_dim=latent, num_scenes=len(base.scenes), multi_scene=multi)
    try:
        check_student(s_name, stud, base.teacher.name, teacher, len(base.scenes))
    except Incompatible as exc:
        plan.refused.append((f"{base.describe()} {student}", str(exc)))
        return
    for enc in axes.encodes:
        cell = replace(base, student=student, encode=enc)
        plan.cells.append(cell)
        for dec in axes.decoders:
            name, _, only = dec.partition("@")
            if enc == axes.encodes[0] and only in ("", base.teacher.name):
                check_decoder(name, base.teacher.name, teacher, s_name, stud)
                plan.cells.append(replace(cell, decoder=name))
        for refiner in axes.refiners:
            if refiner == NONE:
                continue
            ref = probe("refiner", split_name(refiner)[0], latent_dim=latent)
            _add_refiner(plan, cell, refiner, ref, axes, probe, teacher, s_name, stud)


def cell_fingerprint(cell: Cell, data_fp: str, recipes: dict[str, str], weights: dict[str, str | None],
                     precision: str = "fp32", models: dict[str, str] | None = None) -> str:
    """Stable identity of a cell: its axes, the fingerprints of the recipes it uses (values and plugin code
    identity), its models' fingerprints (``models``, kind -> :meth:`harness.api.recipes.Recipe.model_fingerprint`:
    code, threads, precision, device kind), the hashes of given weight files, the data it sees and its autocast
    precision (fp32, the plain run, adds nothing: ``harness.training.devices.precision_part``)."""
    from aprbench.harness.training.devices import precision_part

    extra = precision_part(precision)
    return fingerprint("cell", cell.identity(), data_fp, recipes, weights, models or {}, *([extra] if extra else []))


def shard(cells: list[Cell], fps: list[str], spec: str | None) -> list[int]:
    """Indices of the cells this process runs under ``--shard i/n`` (0 <= i < n; deterministic).

    With at least ``n`` teacher chains (:meth:`Cell.chain`), whole chains go to shards, the largest first to
    the shard with the fewest cells, so no shard waits for a model another one trains; with fewer, the cells
    are dealt out one by one in fingerprint order."""
    order = sorted(range(len(cells)), key=lambda k: fps[k])
    if not spec:
        return order
    try:
        i_text, n_text = spec.split("/")
        i, n = int(i_text), int(n_text)
    except ValueError:
        raise BenchError(f"--shard {spec!r}: expected i/n with integers, e.g. 0/4") from None
    if n < 1 or not 0 <= i < n:
        raise BenchError(f"--shard {spec!r}: need n >= 1 and 0 <= i < n")
    chains: dict[tuple, list[int]] = {}
    for k in order:
        chains.setdefault(cells[k].chain(), []).append(k)
    if len(chains) < n:
        return [k for pos, k in enumerate(order) if pos % n == i]
    load, owner = [0] * n, {}
    for members in sorted(chains.values(), key=lambda ks: (-len(ks), fps[ks[0]])):
        j = min(range(n), key=lambda j: (load[j], j))
        load[j] += len(members)
        owner.update(dict.fromkeys(members, j))
    return [k for k in order if owner[k] == i]


def software_versions() -> dict[str, str]:
    """Versions recorded with every cell."""
    import h5py
    import numpy
    import timm
    import torch

    import aprbench.harness as harness

    return {
        "aprbench": harness.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": numpy.__version__, "h5py": h5py.__version__, "python": platform.python_version(),
    }


def parse_list(text: str, kind: type = str, option: str = "") -> list:
    """Comma-separated axis values, e.g. ``0,1,3``; ``option`` (``--iterations``) names where they were given."""
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        where = f"{option} {text}: " if option else ""
        raise BenchError(f"{where}could not read {text!r} as a comma-separated list of {kind.__name__}") from None


def flatten(values: Iterable[str]) -> list[str]:
    """Axis values given as repeated options and/or comma lists."""
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out
