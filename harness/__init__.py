"""aprbench: a plugin-based benchmark harness for camera pose regression.

The core, grouped by concern (each subpackage's ``__init__`` names what the others may use):

- ``api``: the plugin contract (hook specifications, plugin manager, interfaces, model families, recipes)
- ``data``: labels, native layouts, datasets, images, pair lists
- ``training``: the training loop, losses, batches, backbones, devices
- ``store``: the work directory's HDF5 files, cells, replayed output
- ``running``: the matrix, its runner and stages, workers, launcher, progress
- ``results``: metrics, statistics, leaderboard views, tables, report
- ``cli``: the ``bench`` command
- ``poses`` (pose math) and ``errors`` (the errors a user can fix) serve them all

A plugin imports what it implements from here: ``from aprbench.harness import hookimpl, Teacher, Latents``.
"""

from aprbench.harness.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {name: ".api" for name in (
    "hookimpl", "Teacher", "Student", "Refiner", "PoseIndexRefiner", "Decoder", "Latents", "PoseData", "ModelFamily",
)}
_EXPORTS.update({"BenchError": ".errors", "DataError": ".errors", "create_backbone": ".training",
                 "requested_weights": ".training"})
__all__ = ["__version__", *_EXPORTS]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
