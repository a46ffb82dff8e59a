"""Evaluation with the official GAP-MLLM semantics: oriented 3D box IoU, task metrics, task runners.

Conventions and the official-compat differences: README.md in this folder. Heavy dependencies
(pycocoevalcap, matplotlib, the model) are imported only where they are used, the task metrics below on first use.
The task runners (`gap_mllm.evaluation.runner.run_evaluation`) read annotation files through the `datasets`
builders, so they are not imported here: the metrics stay importable without `datasets`.
"""

# light (numpy only), exported (`__all__`, built on use below): the oriented box IoU functions, the category lists
from gap_mllm.processing.scoring.box_iou import (  # noqa: F401
    box_iou,
    box_iou_matrix,
    box_iou_pairs,
    box_volume,
    intersection_volume,
)
from gap_mllm.processing.scoring.category_lists import CLEAN_SPLITS, OFFICIAL_SPLITS  # noqa: F401
from gap_mllm.processing.tasks import package_tasks

# ... and the metric functions of the task modules (`PackageTask.exports`, gap_mllm.processing.tasks), found on first
# use (PEP 562), so that a light module of the package (folder_lock.py, benchmark_names.py: what a command's argument
# check reads) imports no metric
_LIGHT = ["box_iou", "box_iou_matrix", "box_iou_pairs", "box_volume", "intersection_volume", "CLEAN_SPLITS",
          "OFFICIAL_SPLITS"]


def _task_exports() -> dict[str, object]:
    return {name: value for task in package_tasks() for name, value in task.exports.items()}


def __getattr__(name: str):
    """The task modules' metric functions, and `__all__` with them, on first use (PEP 562)."""
    if name == "__all__":  # `from gap_mllm.evaluation import *`
        return [*_LIGHT, *_task_exports()]
    exports = _task_exports()
    if name not in exports:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = exports[name]
    return exports[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_task_exports()))
