"""Running a matrix plan: each cell obtained from the store or computed, written atomically.

A cell that raises is recorded (``cells/<fp>.failed.json``) and the rest of the
matrix goes on; the next run retries it. Two processes on one work directory
take a per-cell lock and re-check the store after taking it, so no cell (and,
through the stages' own locks, no artifact) is computed twice. The file
format is :mod:`harness.store.cells`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprbench.harness.errors import BenchError
from aprbench.harness.data.datasets import require_frames, subset
from aprbench.harness.training.devices import check_precision, resolve_device
from aprbench.harness.api.interfaces import PoseData
from aprbench.harness.running.matrix import Cell, Plan, cell_fingerprint, shard, software_versions
from aprbench.harness.results.metrics import errors, per_scene
from aprbench.harness.api.manager import BenchPluginManager, call_observers
from aprbench.harness.running.progress import TIMES, CellProgress, duration, load_estimates, resolve_mode, say
from aprbench.harness.api.recipes import Override, Recipe, overrides_text, resolve
from aprbench.harness.api.registry import load_registry
from aprbench.harness.running.stages.chain import Chain, obtain_chain, split_name
from aprbench.harness.running.stages.context import Context, file_hash
from aprbench.harness.store.cells import check_cell
from aprbench.harness.store.hdf5 import Store, atomic_path, fingerprint, read_h5, write_h5


@dataclass
class RunSummary:
    """What one ``bench run`` did."""

    total: int = 0
    cached: int = 0
    computed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def git_commit() -> str | None:
    """The commit of the checkout aprbench runs from (``None`` when installed from a wheel)."""
    root = Path(__file__).resolve().parents[2]  # harness/running/runner.py -> the checkout
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor` or the machine type)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class MatrixRunner:
    """Evaluates the cells of a plan against one store."""

    def __init__(self, store: Store, manager: BenchPluginManager, data: PoseData, dataset: str, profile: str,
                 overrides: list[Override] | None = None, progress: bool | str = True, device: torch.device | None = None,
                 precision: str = "fp32", log: str = "csv") -> None:
        """``device`` (default: ``--device auto``) and ``precision`` (``harness.training.devices``) are those of every
        cell; a precision other than fp32 is part of every cell's fingerprint. ``progress``: a mode of
        :mod:`harness.running.progress`. ``log``: training logs (csv, tensorboard)."""
        self.store, self.manager, self.data, self.dataset = store, manager, data, dataset
        self.device = device if device is not None else resolve_device("auto")
        self.precision = check_precision(precision, self.device)
        self.registry = manager.registry()
        self.profile, self.overrides, self.progress, self.log = profile, overrides or [], progress, log
        self._contexts: dict[tuple, Context] = {}
        self._hashes: dict[Path, str | None] = {}
        self._commit = git_commit()
        self._dataset_fp = data.fingerprint()  # the whole dataset (a cell's own subset is in its fingerprint)
        # what the recipes of this run come from (the same for every cell of it, whatever its models and seed):
        # the registry's tables, the profile and the --set overrides
        tables = load_registry().get("recipe", []) + [t.table for t in getattr(self.registry, "recipes", [])]  # plugins' after
        self._recipe_source = fingerprint("recipes", tables, profile, overrides_text(self.overrides))

    # -- identity ---------------------------------------------------------
    def context(self, cell: Cell) -> Context:
        """The context of a cell's scenes, fraction and seed (shared by the cells that have them in common)."""
        key = (cell.scenes, cell.fraction, cell.seed)
        if key not in self._contexts:
            self._contexts[key] = Context(
                store=self.store, registry=self.registry, data=subset(self.data, cell.scenes, cell.fraction, cell.seed),
                dataset=self.dataset, profile=self.profile, progress=self.progress, overrides=self.overrides,
                seed=cell.seed, device=self.device, precision=self.precision, log=self.log,
            )
        return self._contexts[key]

    def _hash(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in self._hashes:
            self._hashes[path] = file_hash(path)
        return self._hashes[path]

    def resolved(self, cell: Cell) -> dict[str, Recipe]:
        """The resolved recipes of every model the cell uses (kind -> recipe), with the cell's seed."""
        args = (self.registry,)
        rest = (self.dataset, self.profile, self.overrides, cell.seed)
        teacher = resolve(*args, "teacher", cell.teacher.name, *rest)
        out = {"teacher": teacher}
        if cell.student:
            out["student"] = resolve(*args, "student", split_name(cell.student)[0], *rest, teacher=teacher)
        for kind in ("refiner", "decoder"):
            name = getattr(cell, kind)
            if name:
                out[kind] = resolve(*args, kind, split_name(name)[0], *rest)
        return out

    def recipes(self, cell: Cell, resolved: dict[str, Recipe] | None = None) -> dict[str, str]:
        """The fingerprints of the recipes of every model the cell uses, resolved with the cell's seed."""
        return {kind: recipe.fingerprint() for kind, recipe in (resolved or self.resolved(cell)).items()}

    def models(self, cell: Cell, resolved: dict[str, Recipe] | None = None) -> dict[str, dict[str, Any]]:
        """What identifies each model of the cell (kind -> ``name``, ``version``, ``origin``, ``source_digest``,
        ``fingerprint`` (:meth:`harness.api.recipes.Recipe.model_fingerprint`: the same for every seed),
        ``recipe_fingerprint`` (this seed's recipe), ``threads``): stored as the cell's ``models`` attribute."""
        from aprbench.harness.api.identity import plugin_identity

        out = {}
        for kind, recipe in (resolved or self.resolved(cell)).items():
            code = plugin_identity(self.registry, kind, recipe.name)
            out[kind] = {"name": recipe.name, "version": code.label(), "origin": code.origin,
                         "source_digest": code.digest, "code": code.code(),
                         "fingerprint": recipe.model_fingerprint(self.precision, self.device.type),
                         "recipe_fingerprint": recipe.fingerprint(), "threads": recipe.train.threads}
        return out

    def fingerprint(self, cell: Cell) -> str:
        weights = {"teacher": self._hash(cell.teacher.checkpoint)}
        for kind in ("student", "refiner", "decoder"):
            name = getattr(cell, kind)
            if name:
                weights[kind] = self._hash(split_name(name)[1])
        resolved = self.resolved(cell)
        models = {kind: m["fingerprint"] for kind, m in self.models(cell, resolved).items()}
        return cell_fingerprint(cell, self.context(cell).data.fingerprint(), self.recipes(cell, resolved), weights,
                                self.precision, models)

    def _given_weights(self, cell: Cell) -> dict[str, str]:
        """Content hashes of the weight files the cell's models were given (kind -> hash)."""
        given = {"teacher": cell.teacher.checkpoint}
        given.update({kind: split_name(getattr(cell, kind))[1] for kind in ("student", "refiner", "decoder")
                      if getattr(cell, kind)})
        return {kind: self._hash(path) for kind, path in given.items() if path is not None}

    def provenance(self, cell: Cell, models: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
        """What produced a cell (:data:`harness.store.cells.PROVENANCE_KEYS`; the run's own recipe tables, profile
        and overrides are ``recipes_digest``) and where (:data:`harness.store.cells.MACHINE_KEYS`)."""
        import aprbench.harness as harness

        ctx = self.context(cell)
        models = self.models(cell) if models is None else models
        return {
            "profile": self.profile, "overrides": overrides_text(self.overrides),
            "models_fingerprint": fingerprint("models", {k: m["fingerprint"] for k, m in models.items()}),
            "recipes_digest": self._recipe_source, "aprbench_version": harness.__version__,
            "git_commit": self._commit, "dataset_fingerprint": self._dataset_fp, "device": str(ctx.device),
            "precision": ctx.precision, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "cpu": cpu_model(), "threads": models["teacher"]["threads"],
        }

    # -- running ----------------------------------------------------------
    def run(self, plan: Plan, shard_spec: str | None = None, announce: bool = True,
            first_run: str = "") -> tuple[RunSummary, list[str]]:
        """Evaluate this shard's cells; return the summary and the fingerprints of every cell of the plan.
        ``announce``: say the plan first (unless quiet; ``first_run``: :meth:`plan_text`'s)."""
        start = time.perf_counter()
        fps = [self.fingerprint(c) for c in plan.cells]
        mine = shard(plan.cells, fps, shard_spec)
        summary = RunSummary(total=len(mine))
        mode = resolve_mode(self.progress)
        stored = [self._stored(self.store.cell_path(fps[k]), fps[k]) for k in mine]
        todo = [plan.cells[k] for k, done in zip(mine, stored) if not done]
        if todo and mode != "quiet" and announce:
            say(self.plan_text(todo, len(mine) - len(todo), first_run=first_run))
        display = CellProgress(len(mine), len(mine) - len(todo), mode)
        for k, done in zip(mine, stored):
            cell, fp = plan.cells[k], fps[k]
            path = self.store.cell_path(fp)
            if done:
                summary.cached += 1
                continue
            with self.store.lock(f"cell-{fp}"):
                if self._stored(path, fp):  # another process finished it meanwhile
                    summary.cached += 1
                    display.cached(cell.describe())
                    continue
                display.start(cell.describe())
                t0, trained = time.perf_counter(), TIMES.training()
                try:
                    result = self._compute(cell, fp)
                except KeyboardInterrupt:
                    display.close()
                    raise Interrupted(summary, self.store) from None
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    summary.failed.append((cell.describe(), message))
                    self._record_failure(cell, fp, exc)
                    failed = True
                else:
                    summary.computed += 1
                    self.failure_path(fp).unlink(missing_ok=True)
                    call_observers(self.manager, "bench_cell_finished", cell=cell.record(), result=result)
                    failed = False
                took = time.perf_counter() - t0
                TIMES.add("evaluation", max(took - (TIMES.training() - trained), 0.0))
                display.done(cell.describe(), took, failed)
        display.close()
        summary.seconds = time.perf_counter() - start
        return summary, fps

    def plan_text(self, todo: list[Cell], stored: int, jobs: int = 1, first_run: str = "") -> str:
        """What a run with cells ``todo`` to compute will do and, from earlier runs' times, roughly how long
        (shared by ``jobs`` worker processes side by side); ``first_run``: what to say when there are none."""
        models: dict[str, list[str]] = {}
        trained: set[tuple[str, str]] = set()  # (kind, name) trained with a recipe, not given weights
        for cell in todo:
            names = {"teacher": cell.teacher.name, "student": cell.student, "refiner": cell.refiner,
                     "decoder": cell.decoder}
            for kind, name in names.items():
                if name and name != "none":
                    name, given = split_name(name)
                    if name not in models.setdefault(kind, []):
                        models[kind].append(name)
                    if given is None and not (kind == "teacher" and cell.teacher.checkpoint):
                        trained.add((kind, name))
        lines = [f"plan: {len(todo)} cell(s) to compute, {stored} from the store; models they need "
                 "(trained unless already stored):"]
        lines += [f"  {kind}: {', '.join(names)}" for kind, names in models.items()]
        lines += self._generic_recipe_notes([(k, n) for k, names in models.items() for n in names if (k, n) in trained])
        known = load_estimates(self.store.timings_path())
        per_cell = known.get("evaluation per cell")
        times = [known.get(f"{kind} {name}") for kind, names in models.items() for name in names]
        if per_cell is None or any(t is None for t in times):
            lines.append(f"  time: {first_run or 'no earlier run here to estimate from'}; the cell bar shows an ETA "
                         "after the first cell, and a training longer than 15 min says its length after a few steps")
        else:
            rough = (sum(times) + per_cell * len(todo)) / max(1, jobs)
            side = f", {jobs} worker processes side by side" if jobs > 1 else ""
            lines.append(f"  time: roughly {duration(rough)} (from earlier runs in this work directory{side}; "
                         "less when models are already stored)")
        return "\n".join(lines)

    def _generic_recipe_notes(self, models: list[tuple[str, str]]) -> list[str]:
        """One line per plugin model (not a built-in) that no recipe table names under this profile."""
        from aprbench.harness.api.tables import has_own_recipe

        lines = []
        for kind, name in models:
            if self.registry.get(kind, name).source.startswith("builtin:"):
                continue  # the built-in tables are written for the built-in models, the generic ones included
            if not has_own_recipe(self.registry, kind, name, self.dataset, self.profile):
                lines.append(f"  note: no recipe names {kind} {name} for profile {self.profile!r}: it trains with the "
                             f"generic {kind} recipe (`bench recipe {kind} {name}`; a plugin ships its own with "
                             "the bench_recipes hook)")
        return lines

    @staticmethod
    def _stored(path: Path, fp: str) -> bool:
        """Whether ``path`` holds the finished cell ``fp``; a file whose stored fingerprint differs (copied or
        renamed over it) is reported and removed, so the cell is computed again."""
        loaded = read_h5(path, check=check_cell)
        if loaded is None:
            return False
        if loaded[1].get("fingerprint") != fp:
            print(f"bench: warning: {path} holds cell {loaded[1].get('fingerprint')}, not {fp} (copied or renamed?); "
                  "computing it again", file=sys.stderr)
            path.unlink(missing_ok=True)
            return False
        return True

    def failure_path(self, fp: str) -> Path:
        return self.store.failure_path(fp)

    def _record_failure(self, cell: Cell, fp: str, exc: BaseException) -> None:
        record = {"cell": cell.record(), "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "time": time.time()}
        with atomic_path(self.failure_path(fp)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, default=str))

    def _compute(self, cell: Cell, fp: str) -> dict[str, Any]:
        ctx = self.context(cell)
        require_frames(ctx.data, "test")
        teacher_text = cell.teacher.name + (f"={cell.teacher.checkpoint}" if cell.teacher.checkpoint else "")
        chain = obtain_chain(ctx, teacher_text, cell.student, cell.encode or "estimate", cell.refiner, cell.decoder)
        models = self.models(cell)
        record = {**cell.record(), "evaluated_on": "validation" if ctx.data.options.get("validation") else "test"}
        attrs = {"cell": record, "fingerprint": fp, "scenes": ctx.data.scenes,
                 "upstream": {k: a.fingerprint for k, a in vars(chain).items() if a is not None},
                 "models": models, "profile": self.profile, "provenance": self.provenance(cell, models),
                 "versions": software_versions(), "weights": self._given_weights(cell)}
        if cell.decoder:
            return self._decoder_cell(ctx, chain, fp, attrs)
        return self._pose_cell(ctx, chain, cell, fp, attrs)

    def _pose_cell(self, ctx: Context, chain: Chain, cell: Cell, fp: str, attrs: dict[str, Any]) -> dict[str, Any]:
        from aprbench.harness.running.stages.teacher import teacher_outputs

        outs = teacher_outputs(ctx, chain.teacher, "test")
        gt, scene_id = outs["pose_gt"], outs["scene_id"]
        stored_bytes = _weights_bytes(chain.teacher)
        extra: dict[str, Any] = {}
        if chain.refiner is not None:
            from aprbench.harness.running.stages.refiner import refine

            res = refine(ctx, chain.refiner, chain.teacher, chain.student, "test", cell.iterations)
            estimates, seconds = list(res["poses"]), [float(t) for t in res["time_s"]]
            stored_bytes += int(res["stored_bytes"])
        elif chain.student is not None:
            from aprbench.harness.running.stages.student import student_outputs

            s_out = student_outputs(ctx, chain.student, chain.teacher, "test")
            # a student row stands for teacher + PAE: its cost per frame is both
            estimates, seconds = [s_out["pose_est"]], [float(np.mean(outs["time_s"])) + float(np.mean(s_out["time_s"]))]
            extra["latent_mse"] = float(np.mean(s_out["latent_mse"]))
            stored_bytes += _weights_bytes(chain.student)
        else:
            estimates, seconds = [outs["pose_est"]], [float(np.mean(outs["time_s"]))]
        _require_finite(estimates, cell.describe())
        errs = [errors(est, gt) for est in estimates]
        per_iteration = [
            {"iteration": k, "ms_per_frame": 1000.0 * seconds[k],
             "per_scene": per_scene(est, gt, scene_id, ctx.data.scenes).to_dict(orient="records")}
            for k, est in enumerate(estimates)
        ]
        result = {"per_iteration": per_iteration, "stored_bytes": int(stored_bytes),
                  "timing_batch": int(chain.teacher.recipe.task.eval_batch_size), **extra}
        if getattr(chain.teacher.model, "multi_scene", False):
            from aprbench.harness.api.compat import model_scene_index

            index = model_scene_index(list(ctx.data.scenes), int(outs["scene_logp"].shape[1]))
            if index is not None:  # the model's own scene index of each frame's scene (given weights: maybe more)
                truth = np.asarray(index)[np.asarray(scene_id, dtype=np.int64)]
                result["scene_accuracy"] = float(np.mean(outs["scene_logp"].argmax(1) == truth))
        write_h5(
            self.store.cell_path(fp),
            {"pose_est": np.stack(estimates).astype(np.float32), "pose_gt": gt, "scene_id": scene_id,
             "img_path": list(outs["img_path"]), "position_error_m": np.stack([e[0] for e in errs]),
             "orientation_error_deg": np.stack([e[1] for e in errs])},
            {**attrs, "kind": "pose", "iterations": list(range(len(estimates))), "result": result},
        )
        return result

    def _decoder_cell(self, ctx: Context, chain: Chain, fp: str, attrs: dict[str, Any]) -> dict[str, Any]:
        from aprbench.harness.running.stages.decoder import decoder_scores, write_grid

        teacher, student, decoder = chain.teacher, chain.student, chain.decoder
        scores = {split: decoder_scores(ctx, decoder, teacher, student, split) for split in ("train", "test")}
        grids = {}
        for split in ("train", "test"):
            grids[split] = str(write_grid(ctx, decoder, teacher, student, split, self.store.grid_path(fp, split)))
        result: dict[str, Any] = {f"{split}_{k}": float(v) for split, s in scores.items() for k, v in s.items()}
        result["grids"] = grids
        result["stored_bytes"] = _weights_bytes(decoder)
        write_h5(self.store.cell_path(fp), {"psnr": np.array([scores["train"]["psnr"], scores["test"]["psnr"]])},
                 {**attrs, "kind": "decoder", "result": result})
        return result


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a matrix: says what was saved and how to resume."""

    def __init__(self, summary: RunSummary, store: Store) -> None:
        super().__init__(f"interrupted: {summary.computed} cell(s) computed in this run and every finished model are "
                         f"saved in {store.root}; run the same command again to resume")


def _require_finite(estimates: list[np.ndarray], what: str) -> None:
    """Refuse estimates with NaN or infinite values (a cell is never written with them)."""
    for k, est in enumerate(estimates):
        bad = ~np.isfinite(np.asarray(est)).all(axis=1)
        if bad.any():
            step = f" after {k} refinement step(s)" if k else ""
            raise BenchError(f"{what}: {int(bad.sum())} of {len(bad)} test estimates are not finite (NaN or inf){step}")


def _weights_bytes(artifact) -> int:
    """Bytes of an artifact's parameters and buffers (what must be kept at test time)."""
    model = getattr(artifact, "model", None)
    if model is None:
        return 0
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
