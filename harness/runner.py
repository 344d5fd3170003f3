"""Running a matrix plan: each cell obtained from the store or computed, written atomically.

A cell that raises is recorded (``cells/<fp>.failed.json``) and the rest of the
matrix goes on; the next run retries it. Two processes on one work directory
take a per-cell lock and re-check the store after taking it, so no cell (and,
through the stages' own locks, no artifact) is computed twice.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from harness.data import subset  # noqa: F401  (the data layer owns subsets; re-exported)
from harness.interfaces import PoseData
from harness.matrix import Cell, Plan, cell_fingerprint, file_hash, recipes_for, shard, software_versions
from harness.metrics import errors, per_scene
from harness.plugins import BenchPluginManager
from harness.stages.context import Context
from harness.store import Store, atomic_path, read_h5, write_h5


@dataclass
class RunSummary:
    """What one ``bench run`` did."""

    total: int = 0
    cached: int = 0
    computed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


class MatrixRunner:
    """Evaluates the cells of a plan against one store."""

    def __init__(self, store: Store, manager: BenchPluginManager, data: PoseData, dataset: str, profile: str,
                 overrides: dict[str, dict[str, Any]] | None = None, progress: bool = True) -> None:
        self.store, self.manager, self.data, self.dataset = store, manager, data, dataset
        self.registry = manager.registry()
        self.profile, self.overrides, self.progress = profile, overrides or {}, progress
        self._contexts: dict[tuple, Context] = {}
        self._ckpt_hashes: dict[Any, str | None] = {}

    # -- identity ---------------------------------------------------------
    def context(self, cell: Cell) -> Context:
        key = (cell.scenes, cell.fraction)
        if key not in self._contexts:
            self._contexts[key] = Context(
                store=self.store, registry=self.registry, data=subset(self.data, cell.scenes, cell.fraction),
                dataset=self.dataset, profile=self.profile, progress=self.progress, overrides=self.overrides,
            )
        return self._contexts[key]

    def fingerprint(self, cell: Cell) -> str:
        ckpt = cell.teacher.checkpoint
        if ckpt not in self._ckpt_hashes:
            self._ckpt_hashes[ckpt] = file_hash(ckpt)
        data_fp = self.context(cell).data.fingerprint()
        return cell_fingerprint(cell, data_fp, recipes_for(cell, self.profile, self.overrides), self._ckpt_hashes[ckpt])

    # -- running ----------------------------------------------------------
    def run(self, plan: Plan, shard_spec: str | None = None) -> tuple[RunSummary, list[str]]:
        """Evaluate this shard's cells; return the summary and the fingerprints of every cell of the plan."""
        start = time.perf_counter()
        fps = [self.fingerprint(c) for c in plan.cells]
        mine = shard(plan.cells, fps, shard_spec)
        summary = RunSummary(total=len(mine))
        bar = tqdm(total=len(mine), desc="cells", unit="cell", disable=not self.progress)
        for k in mine:
            cell, fp = plan.cells[k], fps[k]
            bar.set_postfix_str(cell.describe())
            path = self.store.cell_path(fp)
            if read_h5(path) is not None:
                summary.cached += 1
                bar.update(1)
                continue
            with self.store.lock(f"cell-{fp}"):
                if read_h5(path) is not None:  # another process finished it meanwhile
                    summary.cached += 1
                    bar.update(1)
                    continue
                try:
                    self._compute(cell, fp)
                    summary.computed += 1
                    self.failure_path(fp).unlink(missing_ok=True)
                except KeyboardInterrupt:
                    raise
                except Exception as exc:
                    message = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    summary.failed.append((cell.describe(), message))
                    self._record_failure(cell, fp, exc)
            bar.update(1)
        bar.close()
        summary.seconds = time.perf_counter() - start
        return summary, fps

    def failure_path(self, fp: str):
        return self.store.cell_path(fp).with_suffix(".failed.json")

    def _record_failure(self, cell: Cell, fp: str, exc: BaseException) -> None:
        record = {"cell": cell.record(), "error": f"{type(exc).__name__}: {exc}",
                  "traceback": traceback.format_exc(), "time": time.time()}
        with atomic_path(self.failure_path(fp)) as tmp:
            tmp.write_text(json.dumps(record, indent=2, default=str))

    def _compute(self, cell: Cell, fp: str) -> None:
        from harness.stages.teacher import obtain_teacher, teacher_outputs

        ctx = self.context(cell)
        teacher = obtain_teacher(ctx, cell.teacher.name, checkpoint=cell.teacher.checkpoint)
        outs = teacher_outputs(ctx, teacher, "test")
        fingerprints = {"teacher": teacher.fingerprint, "data": ctx.data.fingerprint()}
        stored_bytes = _weights_bytes(teacher)
        extra: dict[str, Any] = {}
        est, time_s = outs["pose_est"], float(np.mean(outs["time_s"]))
        if cell.student:
            from harness.stages.student import obtain_student, student_outputs

            student = obtain_student(ctx, cell.student, teacher, encode=cell.encode or "estimate")
            fingerprints["student"] = student.fingerprint
            if cell.decoder:
                self._decoder_cell(ctx, cell, fp, teacher, student, fingerprints)
                return
            if cell.refiner is None:
                s_out = student_outputs(ctx, student, teacher, "test")
                est, time_s = s_out["pose_est"], float(np.mean(s_out["time_s"]))
                extra["latent_mse"] = float(np.mean(s_out["latent_mse"]))
                stored_bytes = _weights_bytes(teacher) + _weights_bytes(student)
        else:
            student = None
        if cell.refiner:
            from harness.stages.refiner import obtain_refiner, refine

            refiner = obtain_refiner(ctx, cell.refiner, teacher, student)
            fingerprints["refiner"] = refiner.fingerprint
            res = refine(ctx, refiner, teacher, student, "test", cell.iterations)
            est, time_s = res["poses"][-1], float(res["time_s"][-1])
            stored_bytes = _weights_bytes(teacher) + int(res["stored_bytes"])
            extra["iteration_median_m"] = [float(np.median(errors(p, res["pose_gt"])[0])) for p in res["poses"]]
            extra["iteration_median_deg"] = [float(np.median(errors(p, res["pose_gt"])[1])) for p in res["poses"]]
        gt, scene_id = outs["pose_gt"], outs["scene_id"]
        pos, ori = errors(est, gt)
        scenes = per_scene(est, gt, scene_id, ctx.data.scenes).to_dict(orient="records")
        result = {"ms_per_frame": 1000.0 * time_s, "stored_bytes": int(stored_bytes), "per_scene": scenes, **extra}
        if teacher.model is not None and getattr(teacher.model, "multi_scene", False):
            result["scene_accuracy"] = float(np.mean(outs["scene_logp"].argmax(1) == scene_id))
        write_h5(
            self.store.cell_path(fp),
            {"pose_est": est, "pose_gt": gt, "scene_id": scene_id, "position_error_m": pos,
             "orientation_error_deg": ori, "time_s": np.full(len(gt), time_s)},
            {"kind": "pose", "cell": cell.record(), "fingerprint": fp, "upstream": fingerprints,
             "result": result, "scenes": ctx.data.scenes, "iteration": cell.iterations, "profile": self.profile,
             "versions": software_versions(), "created": time.time()},
        )
        self.manager.pm.hook.bench_cell_finished(cell=cell.record(), result=result)

    def _decoder_cell(self, ctx: Context, cell: Cell, fp: str, teacher, student, fingerprints: dict) -> None:
        from harness.stages.decoder import decoder_scores, obtain_decoder, write_grid

        decoder = obtain_decoder(ctx, cell.decoder, teacher, student)
        fingerprints["decoder"] = decoder.fingerprint
        scores = {split: decoder_scores(ctx, decoder, teacher, student, split) for split in ("train", "test")}
        grids = {}
        for split in ("train", "test"):
            out = self.store.cell_path(fp).with_name(f"{fp}-grid-{split}.png")
            write_grid(ctx, decoder, teacher, student, split, out)
            grids[split] = str(out)
        result = {f"{split}_{k}": float(v) for split, s in scores.items() for k, v in s.items()}
        result["grids"] = grids
        result["stored_bytes"] = _weights_bytes(decoder)
        write_h5(
            self.store.cell_path(fp), {"psnr": np.array([scores["train"]["psnr"], scores["test"]["psnr"]])},
            {"kind": "decoder", "cell": cell.record(), "fingerprint": fp, "upstream": fingerprints, "result": result,
             "scenes": ctx.data.scenes, "profile": self.profile, "versions": software_versions(), "created": time.time()},
        )
        self.manager.pm.hook.bench_cell_finished(cell=cell.record(), result=result)


def _weights_bytes(artifact) -> int:
    """Bytes of an artifact's parameters and buffers (what must be kept at test time)."""
    model = getattr(artifact, "model", None)
    if model is None:
        return 0
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))

