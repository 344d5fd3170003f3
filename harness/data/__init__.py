"""Data: the reference label format and its checks, native 7Scenes / Cambridge layouts, datasets and
subsets, image decoding and preprocessing, iAPR pair lists.

Modules: ``labels``, ``images``, ``pair_lists``.
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "read_labels": ".labels",
    "write_labels": ".labels",
    "check_label_files": ".labels",
    "check_image_files": ".labels",
    "read_sevenscenes": ".labels",
    "read_cambridge": ".labels",
    "make_pose_data": ".labels",
    "open_dataset": ".labels",
    "parse_dataset_spec": ".labels",
    "subset": ".labels",
    "with_fraction": ".labels",
    "require_frames": ".labels",
    "load_images": ".images",
    "normalize_images": ".images",
    "augment_images": ".images",
    "Preprocess": ".images",
    "PoseImageDataset": ".images",
    "read_pair_list": ".pair_lists",
    "swap_half": ".pair_lists",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
