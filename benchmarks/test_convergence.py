"""Convergence of the quick recipes: validation error against CPU-seconds and epochs, beside the same
architectures trained at 4x the budget, in one run (pytest-benchmark).

Both runs train the default matrix's models on the synthetic dataset's validation split
(``--dataset synthetic:validation=true``: each scene's last training sequence held out, the test split never
read): the teachers (posenet-mobilenet on room, the MS-Transformer on room and site), a PAE on each teacher's
estimates and pae-rpr. The 4x run multiplies every model's epochs by 4 (its schedule stretched with them);
everything else is the quick recipe. Per model and epoch the curves (``val_*`` of each ``log.csv``: median
metres and degrees for a teacher, the held-out loss for a PAE or refiner, with cumulative CPU-seconds) go to
``extra_info`` and to ``convergence.csv`` in ``$BENCH_CONVERGENCE_OUT`` (default ``.benchmarks/convergence``),
and a table of the final values is printed. A PAE or refiner of the 4x run learns from the 4x teacher: compare
where its curve flattens with the quick one's, not its values. Seed 0 unless ``$BENCH_CONVERGENCE_SEED``; about
13 min on an idle 2-core CPU. Run: ``.venv/bin/pytest benchmarks/test_convergence.py --benchmark-only -s``.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aprbench.harness.api.manager import get_registry
from aprbench.harness.api.recipes import resolve

DATASET = "synthetic:validation=true"
MODELS = {"teacher": ["posenet-mobilenet", "mstransformer"], "student": ["pae"], "refiner": ["pae-rpr"]}
MATRIX = ["--teacher", "posenet-mobilenet@room,mstransformer", "--student", "pae", "--encode", "estimate",
          "--refiner", "pae-rpr", "--iterations", "1", "--jobs", "2", "--no-progress", "--no-report"]
SCALE = 4


def _bench(workdir: Path, *args: str) -> None:
    env = {**os.environ, "BENCH_WORKDIR": str(workdir)}
    seed = os.environ.get("BENCH_CONVERGENCE_SEED", "0")
    proc = subprocess.run([sys.executable, "-m", "aprbench.harness", "run", "--dataset", DATASET, "--seeds", f"{seed},",
                           *MATRIX, *args], env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _scaled_sets() -> list[str]:
    """``--set NAME.epochs=4N`` for every model of the matrix (N: its quick recipe's epochs)."""
    sets = []
    for kind, names in MODELS.items():
        for name in names:
            epochs = resolve(get_registry(), kind, name, "synthetic", "quick").train.epochs
            sets += ["--set", f"{name}.epochs={SCALE * epochs}"]
    return sets


def _curves(workdir: Path, budget: str) -> list[dict]:
    """One row per model and epoch: kind, model (``NAME<-TEACHER`` below a teacher), epoch, cumulative CPU and
    wall seconds, and every ``val_*`` value."""
    rows = []
    names = [d.name.rsplit("-", 1) for d in (workdir / "artifacts" / "teacher").iterdir()]
    teachers = {fp: name for name, fp in names}  # fingerprint -> name
    for log in sorted((workdir / "artifacts").glob("*/*/logs/log.csv")):
        kind, model = log.parts[-4], log.parts[-3].rsplit("-", 1)[0]
        meta = log.parent.parent / "weights.json"
        teacher = json.loads(meta.read_text()).get("upstream", {}).get("teacher") if meta.is_file() else None
        model += f"<-{teachers.get(teacher, teacher)}" if teacher and kind != "teacher" else ""
        cpu = wall = 0.0
        with open(log, newline="") as fh:
            for r in csv.DictReader(fh):
                cpu += float(r.get("cpu_seconds") or 0)
                wall += float(r.get("seconds") or 0)
                vals = {k: float(v) for k, v in r.items() if k.startswith("val_") and v not in ("", None)}
                rows.append({"budget": budget, "kind": kind, "model": model, "dir": log.parts[-3],
                             "epoch": int(r["epoch"]), "cpu_s": round(cpu, 2), "wall_s": round(wall, 2), **vals})
    return rows


def _final(rows: list[dict]) -> list[dict]:
    last: dict[tuple, dict] = {}
    for r in rows:
        last[r["budget"], r["dir"]] = r
    return list(last.values())


def test_quick_recipes_against_4x_budget(benchmark, tmp_path):
    quick, long = tmp_path / "quick", tmp_path / "x4"
    benchmark.pedantic(_bench, args=(quick,), rounds=1, iterations=1)
    _bench(long, *_scaled_sets())
    rows = _curves(quick, "quick") + _curves(long, f"{SCALE}x")
    out = Path(os.environ.get("BENCH_CONVERGENCE_OUT", ".benchmarks/convergence"))
    out.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "convergence.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    finals = _final(rows)
    kinds = {(r["kind"], r["model"]) for r in finals}
    assert len(kinds) >= 4 and all(any(k.startswith("val_") for k in r) for r in finals), finals
    by_dir = {(r["budget"], r["kind"], r["model"]): r for r in finals}
    print("\nfinal validation values (synthetic validation split, quick profile):")
    for r in sorted(finals, key=lambda r: (r["kind"], r["model"], r["budget"])):
        vals = ", ".join(f"{k[4:]} {v:.3g}" for k, v in r.items() if k.startswith("val_"))
        print(f"  {r['kind']:8} {r['model']:22} {r['budget']:5} {r['epoch']:4} epochs {r['cpu_s']:7.1f} CPU-s  {vals}")
    ratios = {}
    for (budget, kind, model), r in by_dir.items():
        other = by_dir.get((f"{SCALE}x", kind, model))
        if budget == "quick" and other is not None:
            keys = [k for k in r if k.startswith(("val_m", "val_deg"))] or ["val_loss"]  # errors, per scene
            for key in (k for k in keys if k in r and k in other and other[k]):
                ratios[f"{kind}/{model} {key} quick/{SCALE}x"] = round(r[key] / other[key], 3)
            if other["cpu_s"]:
                ratios[f"{kind}/{model} CPU-s quick/{SCALE}x"] = round(r["cpu_s"] / other["cpu_s"], 3)
    benchmark.extra_info.update({"ratios": ratios, "final": finals, "csv": str(out / "convergence.csv")})
    print("ratios:", ratios)


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "--benchmark-only", "-s"])
