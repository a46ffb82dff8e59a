"""Names of the annotation JSON files of each task (official naming, docs/method.md §7.1, §7.3), and the reading of
their human turns (`segments_from_placeholders`, `extract_query`).

Official files fix the frame count in the name (`scannet_det_train_4frames.json`); synthetic data may
use other counts, so files are looked up by pattern. Tasks are the registry's (`gap_mllm.tasks_gap_mllm`); each task
module names its file (`PackageTask.annotation_file`, gap_mllm.processing.tasks), and a task run in stages reads
the files of its stages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from gap_mllm.tasks_gap_mllm import IMAGE_PLACEHOLDER, TaskSpec, resolve_task

from .tasks import LiveMapping, in_data_order, package_task, package_task_names, package_tasks

ANNOTATIONS_SUBDIR = "annotations"

# task -> its file-name template (`PackageTask.annotation_file`), the tasks registered since import included
TASK_FILE_TEMPLATES: Mapping[TaskSpec, str] = LiveMapping(lambda: {
    entry.spec: entry.annotation_file for entry in package_tasks(stages=True) if entry.annotation_file is not None})


def file_template(task: str | TaskSpec) -> str | None:
    """The file-name template (`{split}`, `{frames}`) of a task's annotation files, None when it has none."""
    spec = resolve_task(task)
    return package_task(spec).annotation_file if spec.name in package_task_names(stages=True) else None


def tasks_with_files() -> tuple[str, ...]:
    """The tasks that have annotation files, in the order of their data."""
    return tuple(name for name in in_data_order(package_task_names(stages=True)) if file_template(name) is not None)


def segments_from_placeholders(prompt: str, num_images: int) -> list[str | None]:
    """`"Frame-0: <image>Frame-1: <image>\\nText"` → `["Frame-0: ", None, "Frame-1: ", None, "\\nText"]`; ValueError
    when the `<image>` count differs from `num_images`."""
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != num_images:
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given"
        )
    segments: list[str | None] = []
    for index, piece in enumerate(pieces):
        if piece:
            segments.append(piece)
        if index < num_images:
            segments.append(None)
    return segments


def extract_query(prompt: str) -> str:
    """The description in a grounding prompt: the text between `Text:` and `Output a JSON`, stripped (ValueError
    without them)."""
    start, end = prompt.find("Text:"), prompt.find("Output a JSON")
    if start < 0 or end < 0 or end < start:
        raise ValueError("prompt has no 'Text: ... Output a JSON' description")
    return prompt[start + len("Text:") : end].strip()


def annotation_file_name(task: str | TaskSpec, split: str, frames: int | str) -> str:
    spec = resolve_task(task)
    template = file_template(spec)
    if template is None:
        stages = f"; its stages {', '.join(spec.stages)} have files" if spec.stages else ""
        raise ValueError(f"task {spec.name!r} has no annotation file{stages} (tasks with files: "
                         f"{', '.join(tasks_with_files())})")
    return template.format(split=split, frames=frames)


def find_annotation_file(data_root, task: str | TaskSpec, split: str, file_option: str | None = "--annotation-file") -> Path:
    """The one annotation file of `task`/`split` under `<data_root>/annotations` (any frame count).

    Raises:
        FileNotFoundError: none or several match; the message lists the splits that have files of `task` and names
            the command-line options that choose another (`--split`, and `file_option` when the command has one).
    """
    spec = resolve_task(task)
    folder = Path(data_root) / ANNOTATIONS_SUBDIR
    matches = sorted(folder.glob(annotation_file_name(spec, split, "*")))
    if len(matches) == 1:
        return matches[0]
    give_file = f" (or give the file with {file_option} FILE)" if file_option else ""
    if matches:
        raise FileNotFoundError(f"{len(matches)} {spec.name} annotation files for split {split!r} in {folder} "
                                f"({', '.join(p.name for p in matches)}); keep one{give_file}")
    splits = ", ".join(annotation_splits(data_root, spec)) or "none"
    raise FileNotFoundError(f"no {spec.name} annotation file for split {split!r} in {folder} (expected "
                            f"{annotation_file_name(spec, split, '*')}); splits with {spec.name} files there: {splits}. "
                            f"Choose one with --split{give_file}")


def annotation_splits(data_root, task: str | TaskSpec) -> list[str]:
    """The splits that have an annotation file of `task` under `<data_root>/annotations`, sorted."""
    spec = resolve_task(task)
    template = annotation_file_name(spec, "{split}", "{frames}")
    pattern = re.escape(template).replace(re.escape("{split}"), "(?P<split>.+)").replace(re.escape("{frames}"), r"\d+")
    folder = Path(data_root) / ANNOTATIONS_SUBDIR
    names = (re.fullmatch(pattern, path.name) for path in folder.glob(annotation_file_name(spec, "*", "*")))
    return sorted({match["split"] for match in names if match})
