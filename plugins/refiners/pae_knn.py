"""Test-time position refinement from PAE-encoded *training* poses (the paper's second PAE use).

For every query (all frames of a split at once, one batched problem):

1. the APR gives the estimate ``p`` (B, 7) and the image latents (B, D);
2. the ``k`` nearest **training** poses to ``p`` (same predicted scene) by
   ``sqrt(|t - t_i|^2 + (orientation_weight * angle_i)^2)`` (metres; the
   weight in metres per radian, ``harness.poses.pose_distance``);
3. their PAE encodings, computed once for the whole training split and stored
   with the index (standardised per dimension by the index's own statistics);
4. weights ``w = softmax(s)`` over the ``k`` neighbours, with scores
   ``s_i = -d_i / temperature + f(z_i - z)``: ``d_i`` the RMS per-dimension
   distance between neighbour ``i``'s encoding ``z_i`` and the query latent
   ``z``, ``f`` a small scoring function with per-query parameters (a
   ``Linear(D, hidden) + ReLU + Linear(hidden, 1)`` MLP, ``scorer = "mlp"``,
   whose weights are ``(B, hidden, D)`` batched tensors; or free per-query
   offsets, ``scorer = "logits"``), fitted for ``steps`` AdamW steps so that
   ``sum_i w_i z_i`` matches ``z`` (mean squared error per query, summed over
   queries: each query's gradient only touches its own slice). ``f`` starts at
   0 (last layer zero), so ``steps = 0`` is the closed form
   ``w = softmax(-d / temperature)``;
5. the refined position is ``sum_i w_i t_i``: a convex combination of training
   positions, inside their convex hull. Orientation stays the estimate's, or
   (``refine_orientation = true``) the normalised weighted sum of the
   neighbours' quaternions, signs aligned with the estimate.

Further iterations repeat the refinement from the refined estimate (the image
latents do not change). The index holds only what ``build_index`` is given:
the stage passes the training split's labels, so a test pose can never be
selected. Hyper-parameters (recipe, see ``OPTIONS``): ``k``, ``steps``, ``lr``,
``weight_decay``, ``orientation_weight``, ``temperature``,
``refine_orientation``, ``scorer``, ``hidden``, ``latents`` (``"position"``:
match the position latent; ``"both"``: both latents), ``seed``, ``chunk``
(queries per batched problem, bounds memory only).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from aprbench.harness import poses as P
from aprbench.harness.errors import BenchError
from aprbench.harness.api.hookspecs import hookimpl
from aprbench.harness.api.registry import ModelFamily
from aprbench.harness.api.interfaces import PoseIndexRefiner

VERSION = "2"  # 2: the estimate's orientation is kept bit for bit (not normalised again)

OPTIONS: dict[str, Any] = {
    "k": 3, "steps": 3, "lr": 0.01, "weight_decay": 0.01, "orientation_weight": 1.0, "temperature": 0.1,
    "refine_orientation": False, "scorer": "mlp", "hidden": 16, "latents": "position", "seed": 0, "chunk": 2048,
}
SCORERS = ("mlp", "logits")
LATENTS = ("position", "both")


# =========================================================================== the batched algorithm
def knn_indices(poses: Tensor, index_pose: Tensor, index_scene: Tensor, scene: Tensor | None, k: int,
                orientation_weight: float, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """``(idx (B, k) int64, valid (B, k) bool)``: the ``k`` index poses nearest each pose, nearest first.

    Only index poses of the query's ``scene`` are candidates (all of them where ``scene`` is None, or where
    the scene has none); a query with fewer than ``k`` candidates gets ``valid = False`` fill-ins.
    """
    from aprbench.harness.poses import pose_distance

    M = len(index_pose)
    if M == 0:
        raise BenchError("the index of training poses is empty")
    k = min(int(k), M)
    idx_out, valid_out = [], []
    for s in range(0, len(poses), chunk):
        d = pose_distance(poses[s : s + chunk], index_pose, orientation_weight)  # (b, M) float64
        if scene is not None:
            same = scene[s : s + chunk, None].to(index_scene.device) == index_scene[None, :]
            same |= ~same.any(1, keepdim=True)  # a scene without training frames: search all
            d = d.masked_fill(~same, float("inf"))
        dist, idx = torch.topk(d, k, dim=1, largest=False)
        idx_out.append(idx)
        valid_out.append(torch.isfinite(dist))
    if not idx_out:
        return poses.new_zeros(0, k, dtype=torch.int64), poses.new_zeros(0, k, dtype=torch.bool)
    return torch.cat(idx_out), torch.cat(valid_out)


def init_scorer(batch: int, k: int, dim: int, scorer: str, hidden: int, seed: int,
                device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Per-query scorer parameters, each with a leading batch dimension ``B``.

    ``mlp``: ``w1 (B, hidden, D)`` (one random matrix, ``N(0, 1/D)`` from ``seed``, copied to every query),
    ``b1 (B, hidden)`` and ``w2 (B, hidden)`` zeros (the scorer starts at 0). ``logits``: ``delta (B, k)`` zeros.
    """
    if scorer == "logits":
        return {"delta": torch.zeros(batch, k, device=device, dtype=dtype)}
    g = torch.Generator().manual_seed(int(seed))
    w1 = torch.randn(hidden, dim, generator=g) / dim**0.5  # float32 draw: the same matrix in every dtype
    return {"w1": w1.to(device, dtype).expand(batch, hidden, dim).clone(),
            "b1": torch.zeros(batch, hidden, device=device, dtype=dtype),
            "w2": torch.zeros(batch, hidden, device=device, dtype=dtype)}


def scores(params: dict[str, Tensor], feats: Tensor, base: Tensor) -> Tensor:
    """Logits ``(B, k)``: ``base + f(feats)`` with features ``(B, k, D)`` and the per-query scorer ``params``."""
    if "delta" in params:
        return base + params["delta"]
    h = torch.relu(torch.einsum("bkd,bhd->bkh", feats, params["w1"]) + params["b1"][:, None, :])
    return base + torch.einsum("bkh,bh->bk", h, params["w2"])


def fit_weights(neigh: Tensor, query: Tensor, valid: Tensor, temperature: float, steps: int, lr: float,
                weight_decay: float, scorer: str = "mlp", hidden: int = 16, seed: int = 0) -> Tensor:
    """Weights ``(B, k)`` (>= 0, rows sum to 1) over neighbour encodings ``(B, k, D)`` for query latents ``(B, D)``.

    Closed form (``steps = 0``): ``softmax(-d / temperature)``, ``d`` the RMS per-dimension distance; then
    ``steps`` AdamW steps (``lr``, ``weight_decay``) on the per-query scorer, minimising
    ``sum_b mean_d (sum_i w_bi neigh_bid - query_bd)^2``. Invalid neighbours get weight 0.
    """
    with torch.inference_mode(False), torch.enable_grad():
        neigh, query, valid = neigh.detach().clone(), query.detach().clone(), valid.clone()
        feats = neigh - query[:, None, :]
        dist = feats.pow(2).mean(-1).sqrt()  # (B, k)
        base = (-dist / temperature).masked_fill(~valid, float("-inf"))
        B, k, D = neigh.shape
        params = init_scorer(B, k, D, scorer, hidden, seed, neigh.device, neigh.dtype)
        if steps > 0 and B > 0:
            for t in params.values():
                t.requires_grad_(True)
            opt = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=weight_decay)
            for _ in range(int(steps)):
                opt.zero_grad(set_to_none=True)
                w = torch.softmax(scores(params, feats, base), dim=1)
                recon = torch.einsum("bk,bkd->bd", w, neigh)
                loss = (recon - query).pow(2).mean(-1).sum()
                loss.backward()
                opt.step()
        with torch.no_grad():
            return torch.softmax(scores(params, feats, base), dim=1).detach()


def combine(weights: Tensor, neigh_pose: Tensor, estimate: Tensor, refine_orientation: bool) -> Tensor:
    """Refined poses ``(B, 7)``: position ``sum_i w_i t_i``; orientation the estimate's (unchanged, bit for bit),
    or (``refine_orientation``) the normalised weighted sum of the neighbours' quaternions with signs aligned to
    the estimate."""
    t = torch.einsum("bk,bkc->bc", weights, neigh_pose[..., :3])
    if not refine_orientation:
        return P.join_pose(t, estimate[:, 3:])  # the estimate's quaternion bit for bit (it is unit already)
    q_est = P.normalize_quat(estimate[:, 3:])
    qn = neigh_pose[..., 3:]
    qn = torch.where((qn * q_est[:, None, :]).sum(-1, keepdim=True) < 0, -qn, qn)
    q = torch.einsum("bk,bkc->bc", weights, qn)
    q = torch.where(q.norm(dim=-1, keepdim=True) > 1e-8, q, q_est)  # opposite quaternions cancelling: keep the estimate
    return P.join_pose(t, P.normalize_quat(q))


# =========================================================================== the refiner
class PaeKnn(PoseIndexRefiner):
    """``pae-knn``: refinement from the k nearest PAE-encoded training poses (see the module docstring).

    State (what it keeps at test time, no PAE needed): ``index_pose (M, 7)``, ``index_scene (M,)``,
    ``index_x``/``index_q (M, D)`` (PAE encodings), ``latent_mean``/``latent_std (2, D)``.
    """

    declared_keys = OPTIONS  # the recipe keys `configure` reads (harness.api.keys)

    def __init__(self, latent_dim: int = 256) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.options: dict[str, Any] = dict(OPTIONS)
        self.reserve_index(0)

    def configure(self, recipe: dict) -> None:
        opts = {**OPTIONS, **{k: v for k, v in recipe.items() if k in OPTIONS}}
        for key in ("k", "hidden", "chunk"):
            if int(opts[key]) < 1:
                raise BenchError(f"pae-knn: {key} must be >= 1, got {opts[key]!r}")
        if int(opts["steps"]) < 0:
            raise BenchError(f"pae-knn: steps must be >= 0, got {opts['steps']!r}")
        if not float(opts["temperature"]) > 0:
            raise BenchError(f"pae-knn: temperature must be > 0, got {opts['temperature']!r}")
        if float(opts["orientation_weight"]) < 0:
            raise BenchError(f"pae-knn: orientation_weight (metres per radian) must be >= 0, got {opts['orientation_weight']!r}")
        if opts["scorer"] not in SCORERS:
            raise BenchError(f"pae-knn: scorer must be one of {', '.join(SCORERS)}, got {opts['scorer']!r}")
        if opts["latents"] not in LATENTS:
            raise BenchError(f"pae-knn: latents must be one of {', '.join(LATENTS)}, got {opts['latents']!r}")
        self.options = opts

    def reserve_index(self, n: int) -> None:
        D = self.latent_dim
        self.register_buffer("index_pose", torch.zeros(n, 7))
        self.register_buffer("index_scene", torch.zeros(n, dtype=torch.int64))
        self.register_buffer("index_x", torch.zeros(n, D))
        self.register_buffer("index_q", torch.zeros(n, D))
        self.register_buffer("latent_mean", torch.zeros(2, D))
        self.register_buffer("latent_std", torch.ones(2, D))

    @torch.no_grad()
    def build_index(self, poses: Tensor, scene: Tensor, student: nn.Module, chunk: int = 8192) -> None:
        poses = P.join_pose(poses[:, :3].float(), P.normalize_quat(poses[:, 3:].float()))
        multi = bool(getattr(student, "multi_scene", False))
        dev = next(iter(student.parameters()), poses).device
        xs, qs = [], []
        for i in range(0, len(poses), chunk):
            lx, lq = student(poses[i : i + chunk].to(dev), scene[i : i + chunk].to(dev) if multi else None)
            xs.append(lx.float().cpu())
            qs.append(lq.float().cpu())
        lat_x = torch.cat(xs) if xs else torch.zeros(0, self.latent_dim)
        lat_q = torch.cat(qs) if qs else torch.zeros(0, self.latent_dim)
        if lat_x.shape[1] != self.latent_dim:
            raise BenchError(f"pae-knn: the student encodes to {lat_x.shape[1]} dims, the refiner expects {self.latent_dim}")
        self.reserve_index(len(poses))
        self.index_pose.copy_(poses)
        self.index_scene.copy_(scene.to(torch.int64))
        self.index_x.copy_(lat_x)
        self.index_q.copy_(lat_q)
        if len(poses) > 1:
            for row, lat in enumerate((lat_x, lat_q)):
                std = lat.std(0)
                self.latent_mean[row] = lat.mean(0)
                self.latent_std[row] = torch.where(std > 1e-6, std, torch.ones_like(std))

    def _standard(self, x: Tensor, q: Tensor) -> Tensor:
        """Standardised latents ``(..., D)`` x 2 -> the matched features (position latent, or both)."""
        zx = (x - self.latent_mean[0]) / self.latent_std[0]
        if self.options["latents"] == "position":
            return zx
        return torch.cat([zx, (q - self.latent_mean[1]) / self.latent_std[1]], dim=-1)

    def refine_batch(self, poses: Tensor, query_x: Tensor, query_q: Tensor, scene: Tensor | None) -> Tensor:
        o = self.options
        dev = self.index_pose.device
        poses = poses.detach().clone().float().to(dev)
        idx, valid = knn_indices(poses, self.index_pose, self.index_scene, scene, int(o["k"]),
                                 float(o["orientation_weight"]), int(o["chunk"]))
        self.last_neighbours = idx  # (B, k) indices into the index of training poses (inspection, tests)
        out, weights = [], []
        C = int(o["chunk"])
        for s in range(0, len(poses), C):  # independent batched problems: bounds memory, same result
            i = idx[s : s + C]
            neigh = self._standard(self.index_x[i], self.index_q[i])  # (b, k, D')
            query = self._standard(query_x[s : s + C].to(dev).float(), query_q[s : s + C].to(dev).float())
            w = fit_weights(neigh, query, valid[s : s + C], float(o["temperature"]), int(o["steps"]), float(o["lr"]),
                            float(o["weight_decay"]), str(o["scorer"]), int(o["hidden"]), int(o["seed"]))
            weights.append(w)
            out.append(combine(w, self.index_pose[i], poses[s : s + C], bool(o["refine_orientation"])))
        self.last_weights = torch.cat(weights) if weights else torch.zeros(0, idx.shape[1], device=dev)  # (B, k)
        return torch.cat(out) if out else poses.new_zeros(0, 7)

    def forward(self, query_x: Tensor, query_q: Tensor, ref_x: Tensor, ref_q: Tensor) -> Tensor:
        raise BenchError("pae-knn regresses no relative pose: the refiner stage calls refine_batch")


MODELS = ModelFamily()


@MODELS.register("pae-knn")
def _pae_knn() -> dict:
    return {}  # its settings are recipes (registry.toml)


@MODELS.register("pae-knn-closed")
def _pae_knn_closed() -> dict:
    return {}  # the same refiner; its recipe sets steps = 0


def factory(latent_dim: int = 256, **config: Any) -> PoseIndexRefiner:
    """``pae-knn``: :class:`PaeKnn`. Its hyper-parameters come from the recipe through ``configure`` (keys of
    ``OPTIONS``, declared as the model's keys)."""
    model = PaeKnn(latent_dim)
    model.configure(config)
    return model


@hookimpl
def bench_refiners() -> dict[str, Callable[..., PoseIndexRefiner]]:
    return MODELS.factories(factory, PaeKnn)
