"""Evaluation with the official GAP-MLLM semantics: oriented 3D box IoU, task metrics, task runners.

Conventions and the official-compat differences: README.md in this folder. Heavy dependencies
(pycocoevalcap, matplotlib, the model) are imported only where they are used, the task metrics below on first use.
The task runners (`gap_mllm.evaluation.runner.run_evaluation`) read annotation files through the `datasets`
builders, so they are not imported here: the metrics stay importable without `datasets`.
"""

import importlib

# light (numpy only): the oriented box IoU, exported as the functions
from gap_mllm.processing.scoring.box_iou import box_iou, box_iou_matrix, box_iou_pairs, box_volume, intersection_volume
from gap_mllm.processing.tasks import package_tasks

from .category_lists import CLEAN_SPLITS, OFFICIAL_SPLITS

# exported name -> the module of this package that defines it; imported on first use (PEP 562), so that a light
# module of the package (folder_lock.py, benchmark_names.py: what a command's argument check reads) imports no metric
_EXPORTS = {
    **dict.fromkeys(("DetectionEvaluator", "match_sample"), "detection_metrics"),
}
# ... and the metric functions of the task modules (`PackageTask.exports`, gap_mllm.processing.tasks), found on use

__all__ = ["box_iou", "box_iou_matrix", "box_iou_pairs", "box_volume", "intersection_volume", "CLEAN_SPLITS",
           "OFFICIAL_SPLITS", *_EXPORTS]


def __getattr__(name: str):
    """The exported metrics, imported from their module on first use (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        value = next((task.exports[name] for task in package_tasks() if name in task.exports), None)
        if value is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | {name for task in package_tasks() for name in task.exports})
