"""The matrix: teacher x student x encode x refiner x iterations x fraction, expanded into cells.

A *cell* is one evaluated combination on the test split. Expansion rules:

- a single-scene teacher is trained per scene (``NAME@room`` pins scenes, as
  ``NAME@room+site`` does for a multi-scene one); a multi-scene teacher sees
  every chosen scene at once;
- ``student = none`` is the teacher alone; with a student and no refiner the
  cell is the PAE's reproduction of the teacher (estimate encoded, decoded by
  the teacher's heads);
- a refiner runs for each ``iterations`` value >= 1 (iteration 0 is the
  teacher row); refiners whose neighbours come from the student need one;
- a decoder (``NAME`` or ``NAME@TEACHER``, limiting it to one teacher) is
  scored on each teacher x student, the student trained with the first
  ``encode`` value;
- incompatible combinations (latent sizes, single- vs multi-scene) are
  refused before any work, with the reason.

The cell fingerprint is computed from names, resolved recipes, checkpoint
hashes and the data fingerprint alone, so a finished cell is found in the
store without building or training anything.
"""

from __future__ import annotations

import hashlib
import platform
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

from harness.errors import BenchError
from harness.interfaces import PoseData
from harness.plugins import Registry
from harness.registry import resolve_recipe
from harness.store import fingerprint

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
    student: str | None = None
    encode: str | None = None
    refiner: str | None = None
    iterations: int = 0
    decoder: str | None = None  # a decoder cell scores images decoded from the student's latents

    def describe(self) -> str:
        parts = [self.teacher.label(), "+".join(self.scenes), f"{self.fraction:g}"]
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
    iterations: list[int] = field(default_factory=lambda: [0])
    fractions: list[float] = field(default_factory=lambda: [1.0])
    decoders: list[str] = field(default_factory=list)


def _probe(registry: Registry, kind: str, name: str, **kwargs: Any) -> Any:
    """Build a plugin with default config, to read its ``multi_scene`` / ``latent_dim`` / ``neighbours``."""
    try:
        return registry.build(kind, name, **kwargs)
    except BenchError:
        raise
    except Exception as exc:
        raise BenchError(f"{kind} {name!r} could not be built: {type(exc).__name__}: {exc}") from None


def _model_config(kind: str, name: str, dataset: str, profile: str, registry: Registry) -> dict[str, Any]:
    """Recipe keys the factory accepts (everything except training settings), for probing."""
    from harness.train import TrainConfig

    recipe = resolve_recipe(kind, name, dataset, profile)
    skip = set(TrainConfig.__dataclass_fields__) | {"stages", "sx", "sq", "image_size", "pairs", "encode", "finetune"}
    return {k: v for k, v in recipe.items() if k not in skip}


def validate(axes: Axes, registry: Registry) -> None:
    """Refuse unknown plugin names and impossible axis values (cheap: before any data is opened)."""
    for text in axes.teachers:
        registry.get("teacher", TeacherSpec.parse(text).name)
    for kind, names in (("student", axes.students), ("refiner", axes.refiners), ("decoder", axes.decoders)):
        for n in names:
            if n != NONE:
                registry.get(kind, n.partition("@")[0])
    for enc in axes.encodes:
        if enc not in ("estimate", "ground_truth"):
            raise BenchError(f"--encode {enc!r}: expected estimate or ground_truth")
    for it in axes.iterations:
        if it < 0:
            raise BenchError(f"--iterations {it}: must be >= 0")
    for frac in axes.fractions:
        if not 0 < frac <= 1:
            raise BenchError(f"--fraction {frac}: must be in (0, 1]")


def expand(axes: Axes, data: PoseData, registry: Registry, profile: str) -> Plan:
    """Every compatible cell of ``axes`` (in a deterministic order) and the refused combinations."""
    validate(axes, registry)
    plan = Plan()
    probes: dict[tuple[str, str], Any] = {}

    def probe(kind: str, name: str, **kw: Any) -> Any:
        key = (kind, name + repr(sorted(kw.items())))
        if key not in probes:
            cfg = _model_config(kind, name, axes.dataset, profile, registry)
            try:
                probes[key] = _probe(registry, kind, name, **{**cfg, **kw})
            except BenchError:
                probes[key] = _probe(registry, kind, name, **kw)
        return probes[key]

    for text in axes.teachers:
        spec = TeacherSpec.parse(text)
        registry.get("teacher", spec.name)
        scenes = list(spec.scenes or data.scenes)
        unknown = [s for s in scenes if s not in data.scenes]
        if unknown:
            raise BenchError(f"--teacher {text}: unknown scene(s) {', '.join(unknown)}; known: {', '.join(data.scenes)}")
        teacher = probe("teacher", spec.name, num_scenes=len(scenes))
        multi = bool(getattr(teacher, "multi_scene", False))
        groups = [tuple(scenes)] if multi else [(s,) for s in scenes]
        latent = int(getattr(teacher, "latent_dim", 256))
        for frac in axes.fractions:
            for group in groups:
                base = Cell(axes.dataset, group, frac, spec)
                plan.cells.append(base)
                for student in axes.students:
                    _expand_student(plan, base, student, axes, teacher, multi, latent, group, probe)
    return plan


def _expand_student(plan: Plan, base: Cell, student: str, axes: Axes, teacher: Any, multi: bool, latent: int,
                    group: tuple[str, ...], probe) -> None:
    if student == NONE:
        for refiner in axes.refiners:
            if refiner == NONE:
                continue
            ref = probe("refiner", refiner, latent_dim=latent)
            if getattr(ref, "neighbours", "student") != "retrieval":
                if any(s != NONE for s in axes.students):
                    continue  # the student rows of this teacher carry this refiner
                plan.refused.append((f"{base.describe()} {refiner}", f"{refiner} encodes poses with a student; student 'none' given"))
                continue
            for it in axes.iterations:
                if it >= 1:
                    plan.cells.append(replace(base, refiner=refiner, iterations=it))
        return
    stud = probe("student", student, latent_dim=latent, num_scenes=len(group), multi_scene=multi)
    s_latent = int(getattr(stud, "latent_dim", latent))
    if s_latent != latent:
        plan.refused.append((f"{base.describe()} {student}", f"student latent size {s_latent} != teacher latent size {latent}"))
        return
    if bool(getattr(stud, "multi_scene", False)) != multi:
        kind = "multi-scene" if getattr(stud, "multi_scene", False) else "single-scene"
        plan.refused.append((f"{base.describe()} {student}", f"{kind} student under a {'multi' if multi else 'single'}-scene teacher"))
        return
    for enc in axes.encodes:
        cell = replace(base, student=student, encode=enc)
        plan.cells.append(cell)
        for dec in axes.decoders:
            name, _, only = dec.partition("@")
            if enc == axes.encodes[0] and only in ("", base.teacher.name):
                plan.cells.append(replace(cell, decoder=name))
        for refiner in axes.refiners:
            if refiner == NONE:
                continue
            ref = probe("refiner", refiner, latent_dim=latent)
            if int(getattr(ref, "latent_dim", latent)) != latent:
                plan.refused.append((f"{cell.describe()} {refiner}", f"refiner latent size {ref.latent_dim} != teacher latent size {latent}"))
                continue
            for it in axes.iterations:
                if it >= 1:
                    plan.cells.append(replace(cell, refiner=refiner, iterations=it))


def file_hash(path: Path | None) -> str | None:
    """SHA-256 prefix of a file's bytes (checkpoints enter fingerprints by content)."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def cell_fingerprint(cell: Cell, data_fp: str, recipes: dict[str, dict[str, Any]], ckpt_hash: str | None) -> str:
    """Stable identity of a cell: its axes, the resolved recipes it uses and the data it sees."""
    return fingerprint("cell", cell.record(), data_fp, recipes, ckpt_hash)


def recipes_for(cell: Cell, profile: str, overrides: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The resolved recipe of every model the cell uses (command-line overrides applied)."""
    used = {"teacher": cell.teacher.name, "student": cell.student, "refiner": cell.refiner, "decoder": cell.decoder}
    return {
        kind: {**resolve_recipe(kind, name, cell.dataset, profile), **overrides.get(kind, {})}
        for kind, name in used.items()
        if name
    }


def shard(cells: list[Cell], fps: list[str], spec: str | None) -> list[int]:
    """Indices of the cells this process runs under ``--shard i/n`` (0 <= i < n; by fingerprint, deterministic)."""
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
    return [k for pos, k in enumerate(order) if pos % n == i]


def software_versions() -> dict[str, str]:
    """Versions recorded with every cell."""
    import h5py
    import numpy
    import timm
    import torch

    import harness

    return {
        "aprbench": harness.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "numpy": numpy.__version__, "h5py": h5py.__version__, "python": platform.python_version(),
    }


def parse_list(text: str, kind: type = str) -> list:
    """Comma-separated axis values, e.g. ``0,1,3``."""
    try:
        return [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        raise BenchError(f"could not read {text!r} as a comma-separated list of {kind.__name__}") from None


def flatten(values: Iterable[str]) -> list[str]:
    """Axis values given as repeated options and/or comma lists."""
    out: list[str] = []
    for v in values:
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return out
