"""Teacher training steps with the backbone in channels-last layout (as ``harness.training.backbones`` builds it) against
the same model in the default contiguous layout (pytest-benchmark).

Quick recipes (64 px, the recipe's batch), randomly initialised, one optimisation step of the pose loss per
round, on one thread (what each ``bench`` worker process runs with) and on every thread torch has. The
samples/s ratio goes to ``extra_info``. Run: ``.venv/bin/pytest benchmarks/test_teacher_train.py --benchmark-only``.
"""

from __future__ import annotations

import os
import statistics
import time

os.environ.setdefault("BENCH_PLUGINS", "none")

import pytest  # noqa: E402
import torch  # noqa: E402

from aprbench.harness.data.images import normalize_images  # noqa: E402
from aprbench.harness.api.manager import get_registry  # noqa: E402
from aprbench.harness.api.recipes import resolve  # noqa: E402
from aprbench.harness.running.stages.context import build_model  # noqa: E402
from aprbench.harness.running.stages.teacher import TeacherTask  # noqa: E402
from aprbench.harness.training.loop import make_optimizer  # noqa: E402

CASES = {"posenet-mobilenet": 1, "mstransformer": 2}  # teacher: scenes
STEPS = 6


def _contiguous(model: torch.nn.Module) -> torch.nn.Module:
    """The model as timm builds it: contiguous weights, no channels-last input hook."""
    model.to(memory_format=torch.contiguous_format)
    for module in model.modules():
        module._forward_pre_hooks.clear()
    return model


def _setup(case: str) -> tuple:
    """``case``'s quick recipe, its teacher (random init, seed 0) with the pose loss, and one random batch."""
    recipe = resolve(get_registry(), "teacher", case, "synthetic", "quick")
    size, bs, scenes = recipe.task.image_size, recipe.train.batch_size, CASES[case]
    g = torch.Generator().manual_seed(0)
    images = normalize_images(torch.randint(0, 256, (bs, 3, size, size), dtype=torch.uint8, generator=g))
    quats = torch.nn.functional.normalize(torch.randn(bs, 4, generator=g), dim=1)
    batch = (images, torch.cat([torch.randn(bs, 3, generator=g), quats], 1), torch.arange(bs) % scenes)
    torch.manual_seed(0)
    return recipe, TeacherTask(build_model(get_registry(), recipe, num_scenes=scenes)), batch


def _steps_per_s(task: TeacherTask, batch: tuple, recipe_train, steps: int = STEPS) -> float:
    opt = make_optimizer(list(task.parameters()), recipe_train)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss, _ = task(batch)
        loss.backward()
        opt.step()

    step()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - t0)


@pytest.mark.parametrize("threads", [1, 0], ids=["1-thread", "all-threads"])
@pytest.mark.parametrize("case", list(CASES))
def test_channels_last_vs_contiguous_training_step(benchmark, case, threads):
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        recipe, task, batch = _setup(case)
        plain = TeacherTask(_contiguous(_setup(case)[1].teacher))
        size, bs = recipe.task.image_size, recipe.train.batch_size
        rates: dict[str, list[float]] = {"contiguous": [], "channels_last": []}
        for _ in range(3):  # alternated, so that a busy spell of the machine hits both
            rates["contiguous"].append(_steps_per_s(plain, batch, recipe.train))
            rates["channels_last"].append(_steps_per_s(task, batch, recipe.train))
        benchmark.pedantic(_steps_per_s, args=(task, batch, recipe.train), rounds=1, iterations=1)
        used = torch.get_num_threads()
    finally:
        torch.set_num_threads(before)
    rate, plain_rate = (statistics.median(rates[k]) for k in ("channels_last", "contiguous"))
    ratio = rate / plain_rate
    benchmark.extra_info.update({"teacher": case, "image_size": size, "batch_size": bs, "threads": used,
                                 "channels_last_samples_per_s": rate * bs, "contiguous_samples_per_s": plain_rate * bs,
                                 "ratio": ratio})
    print(f"\n{case} ({used} thread(s)): channels-last {rate * bs:.0f} samples/s, "
          f"contiguous {plain_rate * bs:.0f} samples/s, ratio {ratio:.2f}x")
    assert ratio > 0


def _rate(case: str, threads: int, steps: int = 12) -> float:
    """Samples/s of ``case``'s quick training step with ``threads`` threads (in whatever process calls it)."""
    torch.set_num_threads(threads)
    recipe, task, batch = _setup(case)
    return _steps_per_s(task, batch, recipe.train, steps) * recipe.train.batch_size


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPU cores")
def test_two_chains_as_one_thread_processes_vs_one_process(benchmark):
    """The default matrix's two teachers trained side by side as two one-thread processes (``bench``'s workers)
    against one after the other in one process with two threads: the time to train both on equal samples."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    before = torch.get_num_threads()
    try:
        serial = {case: _rate(case, 2) for case in CASES}
    finally:
        torch.set_num_threads(before)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_rate, CASES, [1, 1], [2, 2]))  # imports and warm-up in both workers
        side = dict(zip(CASES, benchmark.pedantic(lambda: list(pool.map(_rate, CASES, [1, 1])), rounds=1, iterations=1)))
    samples = 10_000
    one_process = sum(samples / r for r in serial.values())
    two_processes = max(samples / r for r in side.values())
    ratio = one_process / two_processes
    benchmark.extra_info.update({"two_threads_one_process_samples_per_s": serial,
                                 "one_thread_each_side_by_side_samples_per_s": side, "speedup": ratio})
    print(f"\none process, 2 threads: { {k: round(v) for k, v in serial.items()} } samples/s; two 1-thread processes "
          f"side by side: { {k: round(v) for k, v in side.items()} } samples/s; "
          f"both teachers {ratio:.2f}x sooner side by side")
    assert ratio > 0
