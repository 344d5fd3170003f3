"""Data: the reference label format and its checks, native 7Scenes / Cambridge layouts, datasets and
subsets, image decoding and preprocessing, iAPR pair lists.

Modules, one job each:

- ``csv_checks``: CSV tables read and written with every cell checked; errors name file, row and column
- ``label_checks``: reviewer checks on assembled labels (safe names, magnitudes, duplicates, shared sequences)
- ``labels``: the reference label CSV (read, write, image files present)
- ``layouts``: native 7Scenes and Cambridge Landmarks layouts read into labels
- ``datasets``: :class:`PoseData`, dataset specs opened through plugins, scene subsets, training fractions
- ``images``: image loading (resize + centre crop), the image cache, normalisation, augmentation
- ``pair_lists``: iAPR pair lists

The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "data_error": ".csv_checks",
    "check_label_table": ".label_checks",
    "check_label_files": ".label_checks",
    "scene_name_problem": ".label_checks",
    "image_path_problem": ".label_checks",
    "read_labels": ".labels",
    "write_labels": ".labels",
    "check_image_files": ".labels",
    "read_sevenscenes": ".layouts",
    "read_cambridge": ".layouts",
    "make_pose_data": ".datasets",
    "open_dataset": ".datasets",
    "parse_dataset_spec": ".datasets",
    "subset": ".datasets",
    "with_fraction": ".datasets",
    "with_validation": ".datasets",
    "require_frames": ".datasets",
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
