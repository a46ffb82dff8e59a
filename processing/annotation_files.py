"""Names of the annotation JSON files of each task (official naming, method.md §6.1, §6.3).

Official files fix the frame count in the name (`scannet_det_train_4frames.json`); synthetic data may
use other counts, so files are looked up by pattern. Spatial QA is ours (no official file).
"""

from __future__ import annotations

from pathlib import Path

ANNOTATIONS_SUBDIR = "annotations"

TASK_FILE_TEMPLATES = {
    "reconstruction": "scannet_recons_{split}_{frames}frames.json",
    "detection": "scannet_det_{split}_{frames}frames.json",
    "grounding_stage1": "scanrefer_{split}_{frames}frames_stage1.json",
    "grounding_stage2": "scanrefer_{split}_{frames}frames_stage2.json",
    "captioning": "scan2cap_{split}_{frames}frames.json",
    "spatial_qa": "spatial_qa_{split}_{frames}frames.json",
}
TASKS = tuple(TASK_FILE_TEMPLATES)


def annotation_file_name(task: str, split: str, frames: int | str) -> str:
    if task not in TASK_FILE_TEMPLATES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    return TASK_FILE_TEMPLATES[task].format(split=split, frames=frames)


def find_annotation_file(data_root, task: str, split: str) -> Path:
    """The one annotation file of `task`/`split` under `<data_root>/annotations` (any frame count)."""
    folder = Path(data_root) / ANNOTATIONS_SUBDIR
    matches = sorted(folder.glob(annotation_file_name(task, split, "*")))
    if len(matches) != 1:
        found = ", ".join(p.name for p in matches) or "none"
        raise FileNotFoundError(
            f"expected exactly one {task} annotation file for split {split!r} matching "
            f"{folder / annotation_file_name(task, split, '*')} (found: {found}); pass annotation_file= explicitly"
        )
    return matches[0]
