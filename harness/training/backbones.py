"""timm backbones with ImageNet weights, offline: from the local Hugging Face cache or a given file, never downloaded.

A utility for teacher plugins (the built-in PoseNet and MS-Transformer, and any
third party's), not a model: :func:`create_backbone` is ``timm.create_model``
that loads pretrained weights only from disk, and :func:`find_pretrained` says
which file it would load, or raises :class:`PretrainedMissing` naming where it
looked and how to provide the weights.

Where weights come from:

* ``pretrained_file=PATH``: a timm state dict (``.safetensors``, ``.pth``,
  ``.bin``; read ``weights_only``), handed to timm as
  ``pretrained_cfg_overlay=dict(file=PATH)`` so that timm's own adaptation
  (classifier dropped, ``features_only``) applies;
* otherwise the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``,
  else ``~/.cache/huggingface/hub``), in the repository timm's pretrained
  config names for the model (``resnet50`` -> ``timm/resnet50.a1_in1k``; a
  tagged name such as ``resnet50.tv_in1k`` picks another), file
  ``model.safetensors`` or ``pytorch_model.bin``: what
  ``timm.create_model(name, pretrained=True)`` stores there on a machine
  with internet (or ``hf download timm/resnet50.a1_in1k``).

``HF_HUB_OFFLINE=1`` is set before any creation and left set, so neither timm
nor huggingface_hub reaches the network from this process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from aprbench.harness.errors import BenchError

SAFE_NAME, TORCH_NAME = "model.safetensors", "pytorch_model.bin"
HOW = ("--set teacher.pretrained_file=PATH (a timm state dict), or put the weights in the Hugging Face cache "
       "(timm.create_model(NAME, pretrained=True) or `hf download REPO` on a machine with internet, then copy the "
       "cache folder here)")


class PretrainedMissing(BenchError):
    """Pretrained weights were asked for but are not on this machine (the message says where they were looked
    for and how to provide them; ``where``: the short form, the model and the places looked at)."""

    def __init__(self, message: str, where: str = "") -> None:
        super().__init__(message)
        self.where = where or message


def go_offline() -> None:
    """Forbid downloads from the Hugging Face hub in this process (``HF_HUB_OFFLINE=1``, kept)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as constants  # read at its import: set the live value too
    except ImportError:  # pragma: no cover - timm depends on it
        return
    constants.HF_HUB_OFFLINE = True


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment now (``HF_HUB_CACHE``, ``HF_HOME``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return base / "huggingface" / "hub"


def hub_location(model_name: str) -> tuple[str, str | None, list[str]]:
    """``(repo_id, revision, file names)`` of a timm model's default (or tagged) ImageNet weights on the hub;
    PretrainedMissing when timm registers none for it."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(model_name)
    except RuntimeError as exc:  # a tag the architecture does not have
        raise PretrainedMissing(f"timm model {model_name!r}: {exc}; give weights with {HOW}",
                                f"timm model {model_name!r}: {exc}") from None
    if cfg is None or not cfg.hf_hub_id:
        raise PretrainedMissing(f"timm registers no ImageNet weights for {model_name!r} on the Hugging Face hub; "
                                f"give weights with --set teacher.pretrained_file=PATH",
                                f"timm registers no ImageNet weights for {model_name!r}")
    repo, _, revision = cfg.hf_hub_id.partition("@")
    name = cfg.hf_hub_filename or TORCH_NAME
    # timm prefers the .safetensors twin of a .bin file when the repository has one
    safe = {TORCH_NAME: SAFE_NAME, "open_clip_pytorch_model.bin": "open_clip_model.safetensors"}.get(
        name, name.removesuffix(".bin") + ".safetensors" if name.endswith(".bin") else None)
    return repo, revision or None, [n for n in (safe, name) if n]


def find_pretrained(model_name: str, pretrained_file: str | Path | None = None) -> Path:
    """The file of ImageNet weights for timm model ``model_name``: ``pretrained_file`` when given, else the one in
    the Hugging Face cache (see the module note). PretrainedMissing, naming the places looked at, when absent."""
    if pretrained_file:
        path = Path(pretrained_file).expanduser()
        if not path.is_file():
            raise PretrainedMissing(f"pretrained_file {pretrained_file}: no such file (pretrained weights for timm "
                                    f"model {model_name!r} were looked for there only)",
                                    f"no file {pretrained_file} (weights for timm model {model_name!r})")
        return path.resolve()
    from huggingface_hub import try_to_load_from_cache

    repo, revision, names = hub_location(model_name)
    cache = hf_cache_dir()
    for name in names:
        found = try_to_load_from_cache(repo, name, cache_dir=cache, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    folder = cache / ("models--" + repo.replace("/", "--"))
    raise PretrainedMissing(f"no ImageNet weights for timm model {model_name!r} on this machine: looked for "
                            f"{' or '.join(names)} of {repo} in the Hugging Face cache {folder} (downloads are off); "
                            f"provide them with {HOW.replace('NAME', repr(model_name)).replace('REPO', repo)}",
                            f"no weights for timm model {model_name!r} in the Hugging Face cache {folder}")


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_digest(path: str | Path) -> str:
    """SHA-256 prefix of a weights file's bytes (remembered per path, size, inode and modification and change
    times: a file rewritten in place with its old time set back is read again)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino, stat.st_ctime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


TIMM_KEYS: dict[str, Any] = {"drop_rate": 0.0, "drop_path_rate": 0.0}
"""``timm.create_model`` arguments a teacher may pass on to its backbone (declared model keys, ``harness.api.keys``):
dropout before the pooled features, stochastic depth."""


def create_backbone(model_name: str, pretrained: bool = False, pretrained_file: str | Path | None = None,
                    **kwargs: Any) -> nn.Module:
    """``timm.create_model(model_name, **kwargs)``, with ImageNet weights from :func:`find_pretrained` when
    ``pretrained`` is true or ``pretrained_file`` is given (never downloaded). ``kwargs``: timm's
    (``num_classes=0``, ``features_only=True``, ``out_indices``, ...). BenchError when timm cannot build the
    model, PretrainedMissing when the weights are not on this machine, BenchError when they do not fit.

    The backbone runs in channels-last memory layout (:func:`channels_last`): the same values, 1.2-1.6x
    faster teacher training steps on a CPU (``benchmarks/test_teacher_train.py``)."""
    import timm

    go_offline()
    path = find_pretrained(model_name, pretrained_file) if (pretrained or pretrained_file) else None
    try:
        model = timm.create_model(model_name, pretrained=False, **kwargs)
    except Exception as exc:  # unknown names, bad keyword arguments
        raise BenchError(f"timm cannot build {model_name!r}: {exc}".splitlines()[0]) from None
    if path is not None:
        try:  # timm adapts the file to the model it builds (classifier dropped, feature extraction)
            model = timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
        except Exception as exc:
            first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
            raise BenchError(f"pretrained weights {path} do not fit timm model {model_name!r}: {first}") from None
    return channels_last(model)


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    first, *rest = args
    if isinstance(first, torch.Tensor) and first.dim() == 4:
        first = first.contiguous(memory_format=torch.channels_last)
    return (first, *rest)


def channels_last(model: nn.Module) -> nn.Module:
    """``model`` with its 4-d weights and every 4-d input in channels-last (NHWC) memory layout: the values
    and the state dict's keys and shapes are unchanged, only the strides differ."""
    model.to(memory_format=torch.channels_last)
    model.register_forward_pre_hook(_to_channels_last)
    return model


__all__ = ["PretrainedMissing", "channels_last", "create_backbone", "find_pretrained", "requested_weights", "hf_cache_dir", "hub_location", "weights_digest",
           "go_offline"]


def requested_weights(config: dict[str, Any], default_backbone: str) -> Path | None:
    """The ImageNet weights file a teacher's model config asks for (``pretrained``, ``pretrained_file``; its
    ``backbone``, else ``default_backbone``), ``None`` when it asks for none (:func:`find_pretrained`)."""
    if not (config.get("pretrained") or config.get("pretrained_file")):
        return None
    return find_pretrained(config.get("backbone", default_backbone), config.get("pretrained_file"))
