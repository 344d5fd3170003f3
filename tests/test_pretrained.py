"""Pretrained backbones, offline: timm weights from a Hugging Face-style cache or a given file, never downloaded;
the file's hash in the fingerprint; clear errors; the paper profile's fall-back to random initialisation."""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

from aprbench.harness.cli.main import main
from aprbench.harness.errors import BenchError
from aprbench.harness.api.manager import get_registry
from aprbench.harness.api.recipes import parse_sets, resolve
from aprbench.harness.running.stages.context import build_model

REPO = "timm/test_convnext.r160_in1k"  # timm's default weights of test_convnext (a 0.27 M-parameter model)
SMALL = ["teacher.backbone=test_convnext"]


def saved_weights(seed: int) -> dict[str, torch.Tensor]:
    """An ImageNet-style state dict of test_convnext (classifier included) that is not timm's random init."""
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in timm.create_model("test_convnext").state_dict().items()}


def hf_cache(root, weights: dict[str, torch.Tensor], revision: str = "0123456789abcdef") -> None:
    """Write ``weights`` where the Hugging Face hub cache keeps REPO's model.safetensors."""
    folder = root / ("models--" + REPO.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    save_file(weights, str(folder / "snapshots" / revision / "model.safetensors"))


def recipe(*sets: str, name: str = "posenet", profile: str = "quick"):
    return resolve(get_registry(), "teacher", name, "synthetic", profile, parse_sets([*SMALL, *sets]))


def same_backbone(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Every tensor of the backbone is the saved one of the same name (the classifier is not in a backbone;
    timm's feature extractor names ``stem.0`` ``stem_0``)."""
    own = model.state_dict()

    def name(key: str) -> str:
        head, _, rest = key.partition(".")
        return key if key in weights else f"{head.replace('_', '.')}.{rest}"

    assert own and not [k for k in own if name(k) not in weights]
    for k in own:
        assert torch.equal(own[k], weights[name(k)]), k


def test_weights_load_from_the_hugging_face_cache_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    weights = saved_weights(1)
    hf_cache(tmp_path / "hub", weights)
    r = recipe("teacher.pretrained=true")
    assert r.model["pretrained"] is True and len(r.weights["pretrained"]) == 16
    posenet = build_model(get_registry(), r, num_scenes=1)
    same_backbone(posenet.backbone, weights)
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # and it stays so
    random = build_model(get_registry(), recipe(), num_scenes=1)
    assert not torch.equal(random.backbone.state_dict()["stem.0.weight"], weights["stem.0.weight"])

    # the multi-scene teacher takes the same weights into its feature extractor
    mst = recipe("teacher.pretrained=true", "teacher.d_model=32", "teacher.heads=2", "teacher.ffn=64",
                 "teacher.enc_layers=1", "teacher.dec_layers=1", name="mstransformer")
    model = build_model(get_registry(), mst, num_scenes=2)
    same_backbone(model.backbone, weights)


def test_a_given_file_loads_and_its_content_is_the_fingerprint(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    weights = saved_weights(2)
    first, copy, other = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save(weights, first)
    shutil.copy(first, copy)
    torch.save(saved_weights(3), other)
    r = recipe(f"teacher.pretrained_file={first}")  # a file implies pretrained = true
    assert r.weights == {"pretrained": hashlib.sha256(first.read_bytes()).hexdigest()[:16]}
    assert "sha256" in r.sources["pretrained_file"] and str(first) in r.sources["pretrained_file"]
    model = build_model(get_registry(), r, num_scenes=1)
    same_backbone(model.backbone, weights)
    assert recipe(f"teacher.pretrained_file={copy}").fingerprint() == r.fingerprint()  # same bytes elsewhere
    assert recipe(f"teacher.pretrained_file={other}").fingerprint() != r.fingerprint()
    assert recipe().fingerprint() != r.fingerprint()


def test_missing_weights_say_where_they_were_looked_for_and_how_to_provide_them(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    with pytest.raises(BenchError) as info:
        recipe("teacher.pretrained=true")
    text = str(info.value)
    assert f"in the Hugging Face cache {cache / 'models--timm--test_convnext.r160_in1k'}" in text
    assert "model.safetensors or pytorch_model.bin of timm/test_convnext.r160_in1k" in text
    assert "--set teacher.pretrained_file=PATH" in text and "hf download timm/test_convnext.r160_in1k" in text
    # a variant's own backbone is the one looked for
    with pytest.raises(BenchError, match="timm model 'resnet50' on this machine: .* timm/resnet50.a1_in1k"):
        resolve(get_registry(), "teacher", "posenet-resnet50", "synthetic", "quick", parse_sets(["pretrained=true"]))
    # on the command line: one line, exit 2, before any work
    work = tmp_path / "work"
    assert main(["--workdir", str(work), "train", "teacher", "posenet", "--set", f"teacher.pretrained_file={tmp_path}/x.pth",
                 "--set", "teacher.backbone=test_convnext"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pretrained_file {tmp_path}/x.pth: no such file" in err
    assert not (work / "data").exists()


def test_the_paper_profile_falls_back_to_random_init_with_one_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    first = recipe(profile="paper")
    again = recipe(profile="paper")  # resolved once per cell: still one line
    err = capsys.readouterr().err
    assert err.count("bench: warning:") == 1 and err.count("\n") == 1
    assert "profile 'paper' asks for ImageNet-pretrained weights, but found none" in err
    assert "results will not be comparable to the paper's" in err and str(tmp_path / "hub") in err
    assert first.model["pretrained"] is False and not first.weights and first.fingerprint() == again.fingerprint()
    assert "random initialisation" in first.sources["pretrained"]
    with pytest.raises(BenchError, match="no ImageNet weights"):  # asked for explicitly: an error
        recipe("teacher.pretrained=true", profile="paper")

    weights = saved_weights(4)
    hf_cache(tmp_path / "hub", weights)
    found = recipe(profile="paper")
    assert found.model["pretrained"] is True and found.weights and found.fingerprint() != first.fingerprint()
    assert capsys.readouterr().err == ""
