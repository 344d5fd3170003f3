"""The baseline of a comparison, chosen by identity, never by date.

Two cells are *the same setting* when they agree on the data they were evaluated on and on the models they share:

* always: ``dataset``, ``teacher_scenes``, ``fraction``, ``seed``, and the provenance ``profile``, ``precision``
  and ``dataset_fingerprint``;
* the models both cells name alike, along their chains (the teacher when both name the same teacher and weight
  file; then the student when both also have the same student and encoding; then the refiner) must be the same
  model: equal fingerprints wherever both cells record them (``upstream``: each model's artifact fingerprint,
  covering its resolved recipe, ``--set`` overrides included, its seed and its data; ``models``: each model's
  own identity, where a store records it);
* when a cell does not record those fingerprints, also ``overrides``, ``recipe_fingerprint`` and ``device``.

A row's teacher baseline is the teacher cell (no student, no refiner) of the same setting. It is looked for
among the cells the user selected (``--filter``) first, then in the whole store. Several candidates are never
decided by date: :func:`pick` refuses, naming them and how to keep one.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from aprbench.harness.errors import BenchError
from aprbench.harness.store.cells import CellFile, identity, method_name

HARD_KEYS = ("dataset", "teacher_scenes", "fraction", "seed", "profile", "precision", "dataset_fingerprint")
# compared only when a cell does not record the fingerprints of its models
FALLBACK_KEYS = ("overrides", "recipe_fingerprint", "device")


def _norm(value: Any) -> str:
    if value in (None, "", [], {}, "-"):
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def model_fingerprints(cell: CellFile) -> dict[str, str]:
    """The fingerprints a cell records of its models: ``{kind: artifact fingerprint}`` from its ``upstream``
    attribute, and ``{"kind:model": fingerprint}`` from a ``models`` attribute (per-model identity) when present."""
    out: dict[str, str] = {}
    up = cell.attrs.get("upstream") or {}
    if isinstance(up, dict):
        out.update({str(k): str(v) for k, v in up.items() if v})
    models = cell.attrs.get("models") or {}
    if isinstance(models, dict):
        out.update({f"{k}:model": str(m["fingerprint"]) for k, m in models.items()
                    if isinstance(m, dict) and m.get("fingerprint")})
    return out


def _shared_kinds(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The models both chains share by name, from the teacher on (a chain that differs stops sharing there)."""
    kinds: list[str] = []
    for kind, keys in (("teacher", ("teacher",)), ("student", ("student", "encode")), ("refiner", ("refiner",))):
        if any(a[k] != b[k] for k in keys) or a[keys[0]] == "-":
            break
        kinds.append(kind)
    return kinds


def same_setting(a: CellFile, b: CellFile) -> bool:
    """Whether cells ``a`` and ``b`` may be compared frame by frame (see the module docstring)."""
    ia, ib = identity(a), identity(b)
    if any(_norm(ia.get(k)) != _norm(ib.get(k)) for k in HARD_KEYS):
        return False
    fa, fb = model_fingerprints(a), model_fingerprints(b)
    recorded = True
    for kind in _shared_kinds(ia, ib):
        both = [k for k in (kind, f"{kind}:model") if k in fa and k in fb]
        if any(fa[k] != fb[k] for k in both):
            return False
        recorded = recorded and bool(both)
    return recorded or all(_norm(ia.get(k)) == _norm(ib.get(k)) for k in FALLBACK_KEYS)


def is_teacher_cell(cell: CellFile) -> bool:
    return cell.kind == "pose" and not cell.attrs["cell"].get("student") and not cell.attrs["cell"].get("refiner")


def describe(cell: CellFile) -> str:
    """One candidate as the refusal lists it: fingerprint and what tells it apart."""
    i = identity(cell)
    parts = [f"{k}={_norm(i.get(k)) or '-'}" for k in ("overrides", "created", "git_commit", "aprbench_version")]
    return f"{cell.attrs['fingerprint']} ({', '.join(parts)})"


def pick(found: list[CellFile], what: str) -> CellFile | None:
    """The one cell of ``found``; None when empty; a BenchError listing them when there are several."""
    if len(found) <= 1:
        return found[0] if found else None
    listed = "; ".join(describe(c) for c in found)
    raise BenchError(f"{what}: {len(found)} cells in the store have its identity, so its baseline would be a guess: "
                     f"{listed}. Keep one with --filter on a provenance column (e.g. created=…, git_commit=…) or "
                     "remove the superseded cell files from WORKDIR/cells")


def teacher_cell(like: CellFile, selected: Iterable[CellFile], store: Iterable[CellFile]) -> CellFile | None:
    """The teacher cell of ``like``'s setting: among ``selected`` (the filtered cells) when one is there, else
    among ``store``; None when there is none; BenchError when several are equally ``like``'s."""
    what = f"{method_name({**identity(like), 'iterations': max(like.iterations)})} seed {identity(like)['seed']}"
    for pool in (selected, store):
        found = {c.attrs["fingerprint"]: c for c in pool if is_teacher_cell(c)
                 and identity(c)["teacher"] == identity(like)["teacher"] and same_setting(c, like)}
        if found:
            return pick(list(found.values()), what)
    return None
