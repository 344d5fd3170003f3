"""Training: the one training loop, pose losses, batching, timm backbones (pretrained weights from local
files), devices and precision, TensorBoard logging.

Modules: ``loop``, ``losses``, ``batches``, ``backbones``, ``devices``, ``tblog``.
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "fit": ".loop",
    "distributed_env": ".loop",
    "PoseLoss": ".losses",
    "Batches": ".batches",
    "create_backbone": ".backbones",
    "requested_weights": ".backbones",
    "weights_digest": ".backbones",
    "PretrainedMissing": ".backbones",
    "resolve_device": ".devices",
    "autocast": ".devices",
    "check_precision": ".devices",
    "PRECISIONS": ".devices",
    "DEVICES_HELP": ".devices",
    "check_log": ".tblog",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
