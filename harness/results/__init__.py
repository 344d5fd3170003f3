"""Results: pose errors and image metrics, paired statistics, the leaderboard's views, table rendering,
published results, learning curves and the HTML report.

Modules: ``metrics``, ``stats`` (inference), ``comparisons`` (tables of paired comparisons), ``baselines``,
``significance`` (markers and legends), ``leaderboard``, ``report``, ``curves``.
The names below are what the rest of aprbench and plugins may use; each imports its module on first use.
"""

from aprbench.harness.lazy import lazy_exports

_EXPORTS = {
    "errors": ".metrics",
    "per_scene": ".metrics",
    "mean_pose_baseline": ".metrics",
    "psnr": ".metrics",
    "ssim": ".metrics",
    "compare_methods": ".comparisons",
    "build": ".leaderboard",
    "write_report": ".report",
    "Curves": ".curves",
    "load_curves": ".curves",
    "plot": ".curves",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
