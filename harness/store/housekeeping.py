"""Store housekeeping: what the work directory holds, whether the loaded code still makes it, and pruning.

Every cell records, per model, the plugin's code identity (``code``: its declared ``VERSION`` or, without
one, its source digest, and the variant's config) and its source digest; trained weights record the same in
their JSON sidecar. Against the plugins loaded now, a stored item is:

* ``current``: the loaded code is the one that made it;
* ``source changed``: same declared ``VERSION`` (so the same fingerprint: it is reused) but another source;
* ``superseded``: the loaded code identity differs (a ``VERSION`` bump, an edit of a plugin without
  ``VERSION``, a changed variant config): no run of the loaded code asks for it again;
* ``not loaded``: its plugin is not loaded in this command (give its ``--plugin``); never pruned;
* ``unknown``: stored before aprbench recorded plugin code; never pruned by itself.

:func:`prune_plan` removes superseded cells, and trained models and teacher outputs that no kept cell needs
and that are superseded themselves or were needed only by removed cells.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from aprbench.harness.store.hdf5 import Store

CHAIN = ["teacher", "student", "refiner", "decoder"]  # a model's downstream kinds follow it here
STATUS_ORDER = ["superseded", "not loaded", "source changed", "unknown", "current"]  # worst first


@dataclass
class StoredModel:
    """Trained weights under ``artifacts/<kind>/<name>-<fp>/``."""

    kind: str
    name: str
    fingerprint: str
    folder: Path
    size: int
    status: str
    version: str = ""
    cells: list[str] = field(default_factory=list)  # fingerprints of the cells that need it


@dataclass
class StoredCell:
    """One cell file (with its grids and failure note) and the status of its models."""

    fingerprint: str
    path: Path
    size: int
    status: str
    describe: str
    models: dict[str, dict[str, Any]]
    upstream: dict[str, str]


@dataclass
class PrunePlan:
    """What :func:`prune` removes."""

    cells: list[StoredCell] = field(default_factory=list)
    models: list[StoredModel] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Bytes freed."""
        return sum(c.size for c in self.cells) + sum(m.size for m in self.models) + \
            sum(p.stat().st_size for p in self.outputs if p.exists())


def code_status(registry: Any, kind: str, name: str, code: str | None, digest: str | None) -> str:
    """The status (module docstring) of something made by ``kind`` ``name`` with code identity ``code`` and
    source ``digest``, against the plugins of ``registry``."""
    from aprbench.harness.api.identity import plugin_identity
    from aprbench.harness.errors import BenchError

    try:
        loaded = plugin_identity(registry, kind, name)
    except BenchError:
        return "not loaded"
    if not code:
        return "unknown"
    if loaded.code() != code:
        return "superseded"
    return "source changed" if digest and loaded.digest != digest else "current"


def _worst(statuses: Iterable[str]) -> str:
    found = list(statuses) or ["unknown"]
    return min(found, key=STATUS_ORDER.index)


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _describe(record: dict[str, Any]) -> str:
    parts = [str(record.get("teacher", "?")), "+".join(record.get("scenes", [])), f"seed {record.get('seed', 0)}"]
    for kind in ("student", "refiner", "decoder"):
        if record.get(kind):
            parts.append(str(record[kind]))
    return " ".join(parts)


def stored_cells(store: Store, registry: Any) -> list[StoredCell]:
    """Every readable cell file of the store with its status."""
    from aprbench.harness.store.cells import cell_files

    out = []
    for cell in cell_files(store):
        fp = str(cell.attrs["fingerprint"])
        models = dict(cell.attrs.get("models") or {})
        extras = [store.failure_path(fp), *store.cell_path(fp).parent.glob(f"{fp}-grid-*.png")]
        statuses = [code_status(registry, k, m.get("name", ""), m.get("code"), m.get("source_digest"))
                    for k, m in models.items()]
        out.append(StoredCell(fp, cell.path, _size(cell.path) + sum(_size(p) for p in extras),
                              _worst(statuses) if models else "unknown", _describe(cell.attrs.get("cell", {})),
                              models, dict(cell.attrs.get("upstream") or {})))
    return out


def stored_models(store: Store, registry: Any, cells: list[StoredCell] | None = None) -> list[StoredModel]:
    """Every trained model folder of the store with its status and the cells that need it."""
    cells = stored_cells(store, registry) if cells is None else cells
    users: dict[tuple[str, str], list[str]] = {}
    for c in cells:
        for kind, fp in c.upstream.items():
            users.setdefault((kind, fp), []).append(c.fingerprint)
    out = []
    for folder in sorted((store.root / "artifacts").glob("*/*")):
        if not folder.is_dir() or "-" not in folder.name:
            continue
        name, fp = folder.name.rsplit("-", 1)
        kind = folder.parent.name
        meta = _meta(folder / "weights.json")
        status = code_status(registry, kind, name, meta.get("code"), meta.get("source_digest"))
        out.append(StoredModel(kind, name, fp, folder, _size(folder), status, str(meta.get("plugin_version", "")),
                               users.get((kind, fp), [])))
    return out


def _meta(path: Path) -> dict[str, Any]:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return {}


def _output_owners(store: Store) -> dict[Path, str]:
    """Teacher output files -> the teacher fingerprint they hold outputs of (their ``fingerprint`` attribute)."""
    import h5py

    owners = {}
    for path in sorted((store.root / "outputs").glob("*.h5")):
        try:
            with h5py.File(path, "r") as fh:
                owners[path] = str(fh.attrs.get("fingerprint", ""))
        except OSError:
            continue
    return owners


def prune_plan(store: Store, registry: Any) -> PrunePlan:
    """Superseded cells; models no kept cell needs that are superseded or were needed only by removed cells;
    the teacher outputs of removed teachers."""
    cells = stored_cells(store, registry)
    models = stored_models(store, registry, cells)
    gone = [c for c in cells if c.status == "superseded"]
    gone_fps = {c.fingerprint for c in gone}
    needed = {(k, fp) for c in cells if c.fingerprint not in gone_fps for k, fp in c.upstream.items()}
    drop = [m for m in models if (m.kind, m.fingerprint) not in needed
            and (m.status == "superseded" or (m.cells and set(m.cells) <= gone_fps))]
    teachers = {m.fingerprint for m in drop if m.kind == "teacher"}
    outputs = [p for p, owner in _output_owners(store).items() if owner in teachers]
    return PrunePlan(gone, drop, outputs)


def prune(store: Store, plan: PrunePlan) -> None:
    """Remove what ``plan`` lists (cells with their grids and failure notes, model folders, output files)."""
    for c in plan.cells:
        c.path.unlink(missing_ok=True)
        store.failure_path(c.fingerprint).unlink(missing_ok=True)
        for grid in c.path.parent.glob(f"{c.fingerprint}-grid-*.png"):
            grid.unlink(missing_ok=True)
    for m in plan.models:
        shutil.rmtree(m.folder, ignore_errors=True)
    for p in plan.outputs:
        p.unlink(missing_ok=True)


def changed_sources(store: Store, registry: Any, fps: Iterable[str]) -> dict[tuple[str, str], int]:
    """``(kind, name) -> number of stored cells`` among ``fps`` whose model of that name was made by another
    source under the same declared VERSION (they are reused)."""
    from aprbench.harness.store.cells import cell_files

    found: dict[tuple[str, str], int] = {}
    for cell in cell_files(store, [fp for fp in fps if store.cell_path(fp).is_file()]):
        for kind, m in (cell.attrs.get("models") or {}).items():
            status = code_status(registry, kind, m.get("name", ""), m.get("code"), m.get("source_digest"))
            if status == "source changed":
                key = (kind, str(m.get("name")))
                found[key] = found.get(key, 0) + 1
    return found


def forget(store: Store, fps: Iterable[str], names: Iterable[str]) -> tuple[int, int]:
    """Remove the stored cells among ``fps`` that use a model named in ``names``, with the trained weights of that
    model and of the models downstream of it in those cells (and the outputs of a removed teacher), so the next
    run computes them again. Returns ``(cells, models)`` removed."""
    from aprbench.harness.store.cells import cell_files

    names = set(names)
    cells, models = 0, set()
    for cell in cell_files(store, [fp for fp in fps if store.cell_path(fp).is_file()]):
        used = {k: str(m.get("name")) for k, m in (cell.attrs.get("models") or {}).items()}
        hit = [k for k in CHAIN if used.get(k) in names]
        if not hit:
            continue
        first = CHAIN.index(hit[0])
        for kind, fp in (cell.attrs.get("upstream") or {}).items():
            if kind in CHAIN and CHAIN.index(kind) >= first and kind in used:
                models.add((kind, used[kind], fp))
        prune(store, PrunePlan([StoredCell(str(cell.attrs["fingerprint"]), cell.path, 0, "", "", {}, {})]))
        cells += 1
    teachers = {fp for kind, _, fp in models if kind == "teacher"}
    for kind, name, fp in models:
        shutil.rmtree(store.artifact_dir(kind, name, fp), ignore_errors=True)
    for path, owner in _output_owners(store).items():
        if owner in teachers:
            path.unlink(missing_ok=True)
    return cells, len(models)


__all__ = ["StoredCell", "StoredModel", "PrunePlan", "code_status", "stored_cells", "stored_models", "prune_plan",
           "prune", "changed_sources", "forget"]
