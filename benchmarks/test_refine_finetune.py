"""One fine-tuning step of pae-rpr (image encoder trained with the RPR): query frames encoded once per
batch for all their pairs, against once per pair (pytest-benchmark).

Same pairs, same models (randomly initialised quick recipes, 64x64, the
multi-scene MS-Transformer), forward + backward + Adam step. Each frame has
``PAIRS_PER_FRAME`` pairs (the quick recipe's 2 nearest + 2 virtual
neighbours). The ratio goes to ``extra_info``. Run:
``.venv/bin/pytest benchmarks/test_refine_finetune.py --benchmark-only``.
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("BENCH_PLUGINS", "none")

import torch  # noqa: E402

from aprbench.harness.running.stages import refiner as refiner_stage  # noqa: E402

from test_refine_cost import build, interleaved_seconds  # noqa: E402

PAIRS_PER_FRAME = 4
BATCH = 128  # pairs per batch
FRAMES = 64


def test_finetune_step_grouped_vs_per_pair(benchmark):
    teacher, _, rpr = build("quick", "mstransformer")
    rpr.add_module("image_encoder", copy.deepcopy(teacher).train())
    task = refiner_stage.RPRTask(rpr.train())
    opt = torch.optim.Adam(task.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (FRAMES, 3, 64, 64), dtype=torch.uint8, generator=g)
    n = FRAMES * PAIRS_PER_FRAME
    frames = torch.arange(FRAMES).repeat_interleave(PAIRS_PER_FRAME)
    d = rpr.latent_dim

    def make(epoch):
        return {"images": frames, "scene": frames % 2, "rx": torch.randn(n, d, generator=g),
                "rq": torch.randn(n, d, generator=g), "rel": torch.randn(n, 7, generator=g)}

    grouped = next(iter(refiner_stage.pair_batches(make, BATCH, images=images, augment=False)(0)))
    per_pair = {**grouped, "images": grouped["images"][grouped["image_rows"]], "image_rows": torch.arange(BATCH)}

    def step(batch):
        def run():
            loss, _ = task(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return run

    benchmark.pedantic(step(grouped), rounds=2, warmup_rounds=0)
    t_grouped, t_pair = (min(t) for t in interleaved_seconds([step(grouped), step(per_pair)], repeat=5))
    ratio = t_pair / t_grouped
    benchmark.extra_info.update({
        "pairs_per_batch": BATCH, "frames_per_batch": len(grouped["images"]),
        "grouped_ms_per_pair": 1000 * t_grouped / BATCH, "per_pair_ms_per_pair": 1000 * t_pair / BATCH,
        "per_pair_over_grouped": ratio,
    })
    print(f"\nfine-tuning step, {BATCH} pairs of {len(grouped['images'])} frames: grouped "
          f"{1000 * t_grouped / BATCH:.2f} ms/pair, per pair {1000 * t_pair / BATCH:.2f} ({ratio:.2f}x)")
    assert len(grouped["images"]) == BATCH // PAIRS_PER_FRAME
    assert ratio > 1.0
