"""Running the matrix: axes expanded into cells, the runner and its stages (teacher, student, refiner,
decoder chains), worker processes, the Slurm / local launcher, progress and stage times.

Modules: ``matrix``, ``runner``, ``workers``, ``launch``, ``progress``.
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "Axes": ".matrix",
    "TeacherSpec": ".matrix",
    "expand": ".matrix",
    "validate": ".matrix",
    "shard": ".matrix",
    "MatrixRunner": ".runner",
    "RunSummary": ".runner",
    "Interrupted": ".runner",
    "run_workers": ".workers",
    "auto_jobs": ".workers",
    "cpu_cores": ".workers",
    "launch": ".launch",
    "EpochProgress": ".progress",
    "StageTimes": ".progress",
    "say": ".progress",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
