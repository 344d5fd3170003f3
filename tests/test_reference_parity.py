"""Reference checkpoints import into aprbench models and give the reference's outputs (CPU float32, 1e-5).

Each test builds a state dict in the reference's layout from an independent
module written here (a minimal forward pass of the reference architecture on
torchvision / efficientnet_pytorch / plain torch modules, random weights),
imports it with the model's ``from_reference_state_dict`` and
``harness.store.hdf5.load_into``, and compares outputs.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aprbench.harness.errors import BenchError
from aprbench.harness.store.hdf5 import load_into, load_state
from aprbench.plugins import reference_checkpoints as rc
from aprbench.plugins.decoders.image_decoder import MLPDecoder
from aprbench.plugins.refiners.pae_rpr import TransformerRPR
from aprbench.plugins.students.pae import PAE
from aprbench.plugins.teachers.mstransformer import MSTransformer
from aprbench.plugins.teachers.posenet import PoseNet

TOL = 1e-5


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BatchNorm statistics, so that every mapped tensor matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if t.dtype.is_floating_point:
                if name.endswith("running_var"):
                    t.copy_(0.5 + torch.rand(t.shape, generator=g))
                elif t.dim() == 1 and name.endswith("weight"):  # norm scales
                    t.copy_(1.0 + 0.3 * torch.randn(t.shape, generator=g))
                else:  # fan-in scaled, so that activations stay O(1) through deep backbones
                    scale = (t[0].numel() ** -0.5) if t.dim() > 1 else 0.1
                    t.copy_(torch.randn(t.shape, generator=g) * scale)
    return module.eval()


def _pe(x: torch.Tensor, n: int = 6) -> torch.Tensor:
    return torch.cat([x] + [f(x * 2.0**i) for i in range(n) for f in (torch.sin, torch.cos)], dim=-1)


def _import(model: nn.Module, state: dict) -> int:
    converted = model.from_reference_state_dict(state)
    load_into(model, converted, source="reference")
    return len(converted)


# ------------------------------------------------------------------------------------------ PoseNet
class RefPoseNet(nn.Module):
    """The reference PoseNet: avgpool(backbone) -> x_latent_fc (orientation!), q_latent_fc (position)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        import torchvision

        self.kind = kind
        if kind == "efficientnet":
            from efficientnet_pytorch import EfficientNet

            self.backbone, dim = EfficientNet.from_name("efficientnet-b0"), 1280
        elif kind == "mobilenet":
            self.backbone, dim = nn.Sequential(*list(torchvision.models.mobilenet_v2().children())[:-1]), 1280
        else:
            self.backbone, dim = nn.Sequential(*list(torchvision.models.resnet18().children())[:-2]), 512
        self.x_latent_fc, self.q_latent_fc = nn.Linear(dim, 32), nn.Linear(dim, 32)
        self.x_reg, self.q_reg = nn.Linear(32, 3), nn.Linear(32, 4)

    def forward(self, img):
        u = self.backbone.extract_features(img) if self.kind == "efficientnet" else self.backbone(img)
        u = F.adaptive_avg_pool2d(u, 1).flatten(1)
        latent_q, latent_x = F.relu(self.x_latent_fc(u)), F.relu(self.q_latent_fc(u))
        return torch.cat([self.x_reg(latent_x), self.q_reg(latent_q)], 1), latent_x, latent_q


@pytest.mark.parametrize("kind,backbone", [("mobilenet", "mobilenetv2_100"), ("resnet", "resnet18"),
                                           ("efficientnet", "tf_efficientnet_b0")])
def test_posenet_reference_import(kind, backbone):
    pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    ref = _randomise(RefPoseNet(kind))
    state = ref.state_dict()
    if kind == "efficientnet":
        assert any(k.startswith("backbone._fc.") for k in state)  # the unused classifier is in the file
    model = PoseNet(backbone=backbone, latent_dim=32).eval()
    n = _import(model, state)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pose, lx, lq = ref(img)
        got, lat = model(img)
    assert pose.abs().max() > 1e-2 and lx.abs().max() > 1e-2 and lq.abs().max() > 1e-2  # a forward pass that matters
    for a, b in ((got, pose), (lat.x, lx), (lat.q, lq)):
        assert (a - b).abs().max().item() < TOL
    print(f"posenet-{kind}: {n} keys, max diff {max((got - pose).abs().max(), (lat.x - lx).abs().max()).item():.2e}")


# ------------------------------------------------------------------------------------------ MS-Transformer
class RefEncLayer(nn.Module):
    def __init__(self, d, h, ffn):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, h)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src, pos):  # (L, B, d), pre-norm, GELU
        s2 = self.norm1(src)
        src = src + self.self_attn(s2 + pos, s2 + pos, s2)[0]
        return src + self.linear2(F.gelu(self.linear1(self.norm2(src))))


class RefDecLayer(nn.Module):
    def __init__(self, d, h, ffn):
        super().__init__()
        self.self_attn, self.multihead_attn = nn.MultiheadAttention(d, h), nn.MultiheadAttention(d, h)
        self.linear1, self.linear2 = nn.Linear(d, ffn), nn.Linear(ffn, d)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt, memory, pos, qpos):
        t2 = self.norm1(tgt)
        tgt = tgt + self.self_attn(t2 + qpos, t2 + qpos, t2)[0]
        t2 = self.norm2(tgt)
        tgt = tgt + self.multihead_attn(t2 + qpos, memory + pos, memory)[0]
        return tgt + self.linear2(F.gelu(self.linear1(self.norm3(tgt))))


class RefStack(nn.Module):
    def __init__(self, layer, n, d):
        super().__init__()
        self.layers = nn.ModuleList([layer() for _ in range(n)])
        self.norm = nn.LayerNorm(d)


class RefTransformer(nn.Module):
    def __init__(self, d, h, ffn, n_enc, n_dec):
        super().__init__()
        self.encoder = RefStack(lambda: RefEncLayer(d, h, ffn), n_enc, d)
        self.decoder = RefStack(lambda: RefDecLayer(d, h, ffn), n_dec, d)

    def forward(self, src, query, pos):  # src (B, d, h, w), pos (B, d, h, w)
        B = src.shape[0]
        src, pos = src.flatten(2).permute(2, 0, 1), pos.flatten(2).permute(2, 0, 1)
        qpos = query.unsqueeze(1).repeat(1, B, 1)
        memory = src
        for layer in self.encoder.layers:
            memory = layer(memory, pos)
        memory = self.encoder.norm(memory)
        tgt = torch.zeros_like(qpos)
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, pos, qpos)
        return self.decoder.norm(tgt).transpose(0, 1)  # (B, S, d)


class RefPos(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.row_embed, self.col_embed = nn.Embedding(50, d // 2), nn.Embedding(50, d // 2)

    def forward(self, x):
        h, w = x.shape[-2:]
        pos = torch.cat([self.col_embed.weight[:w].unsqueeze(0).repeat(h, 1, 1),
                         self.row_embed.weight[:h].unsqueeze(1).repeat(1, w, 1)], -1)
        return pos.permute(2, 0, 1).unsqueeze(0).repeat(x.shape[0], 1, 1, 1)


class RefBody(nn.Module):
    def __init__(self):
        super().__init__()
        from efficientnet_pytorch import EfficientNet

        self.body = EfficientNet.from_name("efficientnet-b0")


class RefHead(nn.Module):
    def __init__(self, d, out):
        super().__init__()
        self.fc_h, self.fc_o = nn.Linear(d, 1024), nn.Linear(1024, out)

    def forward(self, x):
        return self.fc_o(F.gelu(self.fc_h(x)))


class RefEMSTransPoseNet(nn.Module):
    """The reference EMS-Transformer: efficientnet_pytorch endpoints 4 (stride 16) and 3 (stride 8)."""

    def __init__(self, scenes=3, d=32, h=8, ffn=32, n_enc=1, n_dec=1):
        super().__init__()
        self.backbone = nn.Sequential(RefBody(), RefPos(d))
        self.transformer_t = RefTransformer(d, h, ffn, n_enc, n_dec)
        self.transformer_rot = RefTransformer(d, h, ffn, n_enc, n_dec)
        self.input_proj_t, self.input_proj_rot = nn.Conv2d(112, d, 1), nn.Conv2d(40, d, 1)
        self.query_embed_t, self.query_embed_rot = nn.Embedding(scenes, d), nn.Embedding(scenes, d)
        self.scene_embed = nn.Linear(2 * d, 1)
        self.regressor_head_t, self.regressor_head_rot = RefHead(d, 3), RefHead(d, 4)

    def latents(self, img, scene=None):
        """Per-scene latents ``(B, scenes, d)`` of both branches, scene log-probabilities, the chosen scenes."""
        ends = self.backbone[0].body.extract_endpoints(img)
        f_t, f_rot = ends["reduction_4"], ends["reduction_3"]
        pos = self.backbone[1]
        lt = self.transformer_t(self.input_proj_t(f_t), self.query_embed_t.weight, pos(f_t))
        lr = self.transformer_rot(self.input_proj_rot(f_rot), self.query_embed_rot.weight, pos(f_rot))
        logp = F.log_softmax(self.scene_embed(torch.cat([lt, lr], 2)), dim=1).squeeze(2)
        return lt, lr, logp, logp.argmax(1) if scene is None else scene

    def forward(self, img, scene=None):
        lt, lr, logp, idx = self.latents(img, scene)
        gx, gq = lt[torch.arange(len(idx)), idx], lr[torch.arange(len(idx)), idx]
        return torch.cat([self.regressor_head_t(gx), self.regressor_head_rot(gq)], 1), gx, gq, logp


def _mst(shared: bool = True) -> MSTransformer:
    return MSTransformer(num_scenes=3, backbone="tf_efficientnet_b0", d_model=32, heads=8, ffn=32, enc_layers=1,
                         dec_layers=1, head_hidden=1024, max_hw=50, activation="gelu", shared_pos_embed=shared).eval()


@pytest.mark.parametrize("shared", [True, False])
def test_mstransformer_reference_import(shared):
    pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    ref = _randomise(RefEMSTransPoseNet())
    model = _mst(shared)
    n = _import(model, ref.state_dict())
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pose, gx, gq, logp = ref(img)
        got, lat = model(img)
        pose_gt, gx_gt, _, _ = ref(img, torch.tensor([2, 0]))
        got_gt, lat_gt = model(img, torch.tensor([2, 0]))
    diffs = [(got - pose), (lat.x - gx), (lat.q - gq), (lat.scene_logp - logp), (got_gt - pose_gt), (lat_gt.x - gx_gt)]
    worst = max(d.abs().max().item() for d in diffs)
    assert pose.abs().max() > 1e-2 and logp.std() > 1e-4
    print(f"mstransformer (shared={shared}): {n} keys, max diff {worst:.2e}")
    assert worst < TOL


class RefMSTransPoseNet(RefEMSTransPoseNet):
    """The reference MSTransPoseNet: one head pair per scene (``regressor_head_t.<i>``), chosen frame by frame."""

    def __init__(self, scenes=3, d=32):
        super().__init__(scenes, d)
        self.regressor_head_t = nn.Sequential(*[RefHead(d, 3) for _ in range(scenes)])
        self.regressor_head_rot = nn.Sequential(*[RefHead(d, 4) for _ in range(scenes)])

    def forward(self, img, scene=None):
        lt, lr, logp, idx = self.latents(img, scene)
        rows = []
        for i, k in enumerate(idx.tolist()):
            rows.append(torch.cat([self.regressor_head_t[k](lt[i, k][None]), self.regressor_head_rot[k](lr[i, k][None])], 1))
        return torch.cat(rows), logp


def test_ms_transposenet_reference_import_selects_each_frames_scene_head():
    pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    ref = _randomise(RefMSTransPoseNet())
    model = MSTransformer(num_scenes=3, backbone="tf_efficientnet_b0", d_model=32, heads=8, ffn=32, enc_layers=1,
                          dec_layers=1, head_hidden=1024, max_hw=50, activation="gelu", shared_pos_embed=True,
                          per_scene_heads=True).eval()
    assert any(k.startswith("regressor_head_t.2.") for k in ref.state_dict())
    _import(model, ref.state_dict())
    img = torch.randn(4, 3, 64, 64)
    scene = torch.tensor([2, 0, 1, 2])
    with torch.no_grad():
        pose, logp = ref(img)
        got, lat = model(img)
        pose_gt, _ = ref(img, scene)
        got_gt, _ = model(img, scene)
        other, _ = model(img, (scene + 1) % 3)
    worst = max((got - pose).abs().max().item(), (got_gt - pose_gt).abs().max().item(),
                (lat.scene_logp - logp).abs().max().item())
    assert worst < TOL
    assert (other - got_gt).abs().max() > 1e-2  # another scene's head gives another pose


# ------------------------------------------------------------------------------------------ PAE
class RefPAE(nn.Module):
    def __init__(self, multi: bool):
        super().__init__()
        s = 13 if multi else 0
        mk = lambda i: nn.Sequential(nn.Linear(i, 64), nn.ReLU(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 256),
                                     nn.ReLU(), nn.Linear(256, 32))
        self.x_encoder, self.q_encoder, self.multi = mk(39 + s), mk(52 + s), multi

    def forward(self, pose, scene=None):  # scene: (B, 1) float, as the reference passes it
        ex, eq = _pe(pose[:, :3]), _pe(pose[:, 3:])
        if self.multi:
            es = _pe(scene)
            ex, eq = torch.cat([ex, es], 1), torch.cat([eq, es], 1)
        return self.x_encoder(ex), self.q_encoder(eq)


@pytest.mark.parametrize("multi", [False, True])
def test_pae_reference_import(multi):
    ref = _randomise(RefPAE(multi))
    model = PAE(latent_dim=32, num_scenes=3, multi_scene=multi).eval()
    n = _import(model, ref.state_dict())
    poses, scene = torch.randn(5, 7), torch.tensor([0, 1, 2, 1, 0])
    with torch.no_grad():
        rx, rq = ref(poses, scene.float().unsqueeze(1))
        gx, gq = model(poses, scene if multi else None)
    worst = max((gx - rx).abs().max().item(), (gq - rq).abs().max().item())
    print(f"pae (multi={multi}): {n} keys, max diff {worst:.2e}")
    assert worst < TOL


# ------------------------------------------------------------------------------------------ PAE-RPR
class RefVTRPR(nn.Module):
    """The reference VTRPR's RPR part (seq-first post-norm encoder, one shared LayerNorm ``ln``)."""

    def __init__(self, d=32, heads=4, ffn=64, layers=2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, heads, ffn, 0.1, activation="gelu")
        self.rpr_transformer_encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.rel_x_token, self.rel_q_token = nn.Parameter(torch.zeros(1, d)), nn.Parameter(torch.zeros(1, d))
        self.rel_regressor_x, self.rel_regressor_q = RefHead(d, 3), RefHead(d, 4)
        self.pae = RefPAE(True)

    def forward(self, qx, qq, nx, nq):
        B = qx.shape[0]
        src = torch.cat([self.rel_x_token.unsqueeze(1).repeat(1, B, 1), self.rel_q_token.unsqueeze(1).repeat(1, B, 1),
                         qx[None], qq[None], nx[None], nq[None]])
        out = self.rpr_transformer_encoder(src)
        return torch.cat([self.rel_regressor_x(self.ln(out[0])), self.rel_regressor_q(self.ln(out[1]))], 1)


def test_pae_rpr_reference_import_and_split():
    ref = _randomise(RefVTRPR())
    state = ref.state_dict()
    parts = rc.split_pae_rpr(state)
    assert set(parts["student"]) == set(ref.pae.state_dict())
    model = TransformerRPR(latent_dim=32, d_model=32, layers=2, heads=4, ffn=64, reference_layout=True).eval()
    n = _import(model, {k: v for k, v in state.items() if not k.startswith("pae.")})  # the RPR part (whole file: tests/test_iapr_protocol.py)
    pae = PAE(latent_dim=32, num_scenes=3, multi_scene=True).eval()
    load_into(pae, parts["student"])
    lat = [torch.randn(4, 32) for _ in range(2)]
    poses, scene = torch.randn(4, 7), torch.tensor([0, 2, 1, 1])
    with torch.no_grad():
        nx, nq = ref.pae(poses, scene.float().unsqueeze(1))
        rel = ref(*lat, nx, nq)
        px, pq = pae(poses, scene)
        got = model(*lat, px, pq)
    worst = max((got - rel).abs().max().item(), (px - nx).abs().max().item())
    print(f"pae-rpr: {n} keys (+{len(parts['student'])} pae), max diff {worst:.2e}")
    assert worst < TOL


# ------------------------------------------------------------------------------------------ decoder
def test_decoder_reference_import():
    class Ref(nn.Module):
        def __init__(self):
            super().__init__()
            self.decoder = nn.Sequential(nn.Linear(64, 512), nn.ReLU(), nn.Linear(512, 1024), nn.ReLU(),
                                         nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 3 * 16 * 16), nn.Sigmoid())

    ref = _randomise(Ref())
    model = MLPDecoder(latent_dim=32, image_size=16).eval()
    n = _import(model, ref.state_dict())
    lx, lq = torch.randn(3, 32), torch.randn(3, 32)
    with torch.no_grad():
        want = ref.decoder(torch.cat([lx, lq], 1)).reshape(3, 3, 16, 16)
        got = model(lx, lq)
    print(f"decoder: {n} keys, max diff {(got - want).abs().max().item():.2e}")
    assert (got - want).abs().max().item() < TOL


# ------------------------------------------------------------------------------------------ refusals
def test_mismatched_reference_checkpoints_are_refused_naming_keys():
    pytest.importorskip("efficientnet_pytorch")
    ref = RefEMSTransPoseNet(scenes=3).state_dict()
    # wrong number of scenes: the shapes are named
    model = MSTransformer(num_scenes=4, backbone="tf_efficientnet_b0", d_model=32, heads=8, ffn=32, enc_layers=1,
                          dec_layers=1, max_hw=50, activation="gelu", shared_pos_embed=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BenchError, match=r"query_embed_t.weight \(3, 32\) vs \(4, 32\)"):
        _import(model, ref)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing loaded
    # a missing layer and an extra one are named
    bad = {k: v for k, v in ref.items() if not k.startswith("scene_embed.")}
    bad["extra_layer.weight"] = torch.zeros(1)
    with pytest.raises(BenchError, match=r"missing keys: scene_embed.weight.*unexpected keys: extra_layer.weight"):
        _import(_mst(), bad)
    # wrong kind: a PoseNet file into the MS-Transformer
    with pytest.raises(BenchError, match="does not fit MSTransformer"):
        _import(_mst(), RefPoseNet("mobilenet").state_dict())


def test_legacy_serialisation_loads_weights_only(tmp_path):
    ref = RefPAE(False).state_dict()
    path = tmp_path / "legacy.pth"
    torch.save(ref, path, _use_new_zipfile_serialization=False)
    state = load_state(path)
    assert set(state) == set(ref) and all(torch.equal(state[k], ref[k]) for k in ref)


# ------------------------------------------------------------------------------------------ the paper profile
def test_paper_profile_builds_the_reference_architectures():
    """The ``paper`` recipes give models that take full-size reference state dicts (every key and shape)."""
    pytest.importorskip("efficientnet_pytorch")
    from aprbench.harness.api.manager import get_registry
    from aprbench.harness.api.recipes import resolve as resolve_in
    from aprbench.plugins.refiners.pae_rpr import MODELS as rpr_models

    def resolve_recipe(kind: str, name: str, dataset: str, profile: str):
        return resolve_in(get_registry(), kind, name, dataset, profile)

    recipe = resolve_recipe("teacher", "mstransformer", "sevenscenes", "paper")
    assert recipe.train.eps == 1e-10
    model = MSTransformer(num_scenes=7, **recipe.model)
    ref = RefEMSTransPoseNet(scenes=7, d=256, h=8, ffn=256, n_enc=6, n_dec=6).state_dict()
    _import(model, ref)
    assert model.transformer_t.encoder[0].self_attn.num_heads == 8
    rpr = rpr_models.factories(TransformerRPR)["pae-rpr"](latent_dim=256, **resolve_recipe("refiner", "pae-rpr", "sevenscenes", "paper").model)
    _import(rpr, {k: v for k, v in RefVTRPR(d=256, heads=4, ffn=2048, layers=2).state_dict().items()
                  if not k.startswith("pae.")})
    assert resolve_recipe("refiner", "pae-rpr", "sevenscenes", "paper").task.protocol == "reference"
    assert resolve_recipe("student", "pae", "sevenscenes", "paper").task.raw_quaternion is True
    eff = resolve_recipe("teacher", "posenet-efficientnet", "cambridge", "paper")
    assert eff.model["backbone"] == "tf_efficientnet_b0"
    dec = resolve_recipe("decoder", "image-decoder", "sevenscenes", "paper").values()
    assert (dec["batch_size"], dec["lr"], dec["step_size"], dec["gamma"], dec["epochs"]) == (8, 1e-2, 20, 0.1, 20)


def test_raw_quaternion_student_inputs_are_the_teachers_unnormalised_heads():
    """``raw_quaternion``: the PAE encodes ``teacher.decode(stored latents)``, not the normalised estimate."""
    import numpy as np

    from aprbench.harness.poses import normalize_quat
    from aprbench.harness.running.stages.student import student_inputs

    teacher = _randomise(PoseNet(backbone="resnet18", latent_dim=32))
    lx, lq = torch.rand(6, 32), torch.rand(6, 32)
    with torch.no_grad():
        raw = teacher.decode(lx, lq)
    est = torch.cat([raw[:, :3], normalize_quat(raw[:, 3:])], 1)
    out = {"pose_est": est.numpy(), "latent_x": lx.numpy(), "latent_q": lq.numpy(), "scene_id": np.zeros(6, np.int64),
           "pose_gt": est.numpy()}
    got, _ = student_inputs(out, teacher, "estimate", raw_quaternion=True)
    assert (got - raw).abs().max() < 1e-6 and (raw[:, 3:].norm(dim=1) - 1).abs().max() > 1e-2
    got_norm, _ = student_inputs(out, teacher, "estimate")
    assert torch.allclose(got_norm, est)
