"""`gap-mllm export-vsibench`: a SynthRooms data root's spatial questions as a local VSI-Bench for lmms-eval.

    gap-mllm export-vsibench --data DATA --out OUT [--split test]
    HF_HOME=OUT python -m lmms_eval --model gap_mllm --tasks vsibench_synthrooms --include_path OUT ...

What OUT holds (VSI-Bench's own layout, so that lmms-eval's `vsibench` task definition reads it unchanged):

    README.md                      dataset card: config "full", split "test" -> test.jsonl (as on the Hub)
    test.jsonl                     one VSI-Bench row per question (the task's `PackageTask.vsibench`)
    vsibench/synthrooms/<scene>.mp4  the question's frames (the record's clip, in order) as a lossless video
                                   (H.264 RGB, qp 0: every decoded pixel is the frame's)
    vsibench_synthrooms.yaml       the lmms-eval task: VSI-Bench's `vsibench.yaml` of the installed lmms-eval, included
                                   by absolute path (prompts, frames, scoring and aggregation are VSI-Bench's), with
                                   `task: vsibench_synthrooms` and `dataset_path: OUT`
    annotations/<task>_vsibench.json  the same questions as this package's annotation records of the task (frames
                                   from DATA, the prompt lmms-eval's vsibench builds), for `gap-mllm evaluate
                                   --annotation-file`

OUT is written beside itself and renamed into place when complete (processing/output_folder.py): an earlier export
there is replaced whole (no video of it is left to pair with no question), a kill leaves the earlier export or none,
and a non-empty folder this command did not write (the user's README.md, test.jsonl, ...) is refused unless
`--overwrite` (which deletes it).

VSI-Bench's task reads a row's video at `$HF_HOME/vsibench/<dataset>/<scene_name>.mp4` (its utils.py reads HF_HOME
when lmms-eval loads the task) and skips its download when that folder exists, hence `HF_HOME=OUT`. Never write this
synthetic set into your real `$HF_HOME/vsibench`: lmms-eval would then take it for the real VSI-Bench's videos.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from collections import Counter
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from gap_mllm.image_utils_gap_mllm import read_image_file
from gap_mllm.processing.annotation_files import ANNOTATIONS_SUBDIR, find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.errors import MissingDependency
from gap_mllm.processing.output_folder import writing_output_folder
from gap_mllm.processing.scannet_layout import media_path, posed_images_dir
from gap_mllm.processing.tasks import PackageTask, package_tasks

from . import LMMS_EVAL_REQUIREMENT, LMMS_EVAL_VERSION
from .vsibench_export_arguments import add_arguments  # noqa: F401 - the command's add_arguments

COMMAND = "gap-mllm export-vsibench"  # the marker of a folder this command wrote
TASK_NAME = "vsibench_synthrooms"
ROWS_FILE = "test.jsonl"
VIDEO_CACHE = "vsibench"  # VSI-Bench's `dataset_kwargs.cache_dir`: its videos live in $HF_HOME/vsibench


def vsibench_task() -> PackageTask:
    """The task whose records this command writes as VSI-Bench (the one with `PackageTask.vsibench`)."""
    return next(task for task in package_tasks() if task.vsibench is not None)


ANNOTATION_FILE = f"{ANNOTATIONS_SUBDIR}/{vsibench_task().name}_vsibench.json"
# The file header's frame rate. The frames are the question's clip (not evenly spaced in the scan), so the rate
# means nothing; the plugin samples frames by index (evaluation/lmms_eval_plugin/visuals.py).
VIDEO_FPS = 1
DATASET_CARD = """---
configs:
- config_name: full
  data_files:
  - split: test
    path: {rows}
---

# SynthRooms spatial questions in VSI-Bench's schema

Synthetic (written by `gap-mllm export-vsibench` from SynthRooms data), not VSI-Bench: VSI-Bench's columns and
question types, exact answers, lossless videos of each question's frames. Scores on it are not VSI-Bench scores.
"""


def vsibench_task_folder() -> Path:
    """The installed lmms-eval's `tasks/vsibench` folder (found without importing lmms-eval).

    Raises:
        MissingDependency: lmms-eval is missing, or is another release than the one the plugin follows (an
            ImportError that the command shows as one line).
    """
    try:
        installed = version("lmms-eval")
    except PackageNotFoundError:
        installed = None
    if installed != LMMS_EVAL_VERSION:
        found = f"lmms-eval {installed} is installed" if installed else "lmms-eval is not installed"
        raise MissingDependency(f"export-vsibench writes a task for lmms-eval {LMMS_EVAL_VERSION}'s vsibench and {found}: "
                                f"pip install --no-deps {LMMS_EVAL_REQUIREMENT} (with gap-mllm[lmms]; make install does both)")
    return Path(importlib.util.find_spec("lmms_eval").origin).parent / "tasks" / "vsibench"


@lru_cache(maxsize=1)
def _default_prompt_settings() -> dict:
    from lmms_eval.utils import load_yaml_config

    config = load_yaml_config(str(vsibench_task_folder() / "vsibench.yaml"), mode="simple")
    return config["lmms_eval_specific_kwargs"]["default"]


def vsibench_prompt(row: dict) -> str:
    """The text VSI-Bench's task asks about `row` (its own `vsibench_doc_to_text` with its YAML's default prompts)."""
    from lmms_eval.tasks.vsibench.utils import vsibench_doc_to_text

    return vsibench_doc_to_text(row, dict(_default_prompt_settings()))


class SceneCentres:
    """Scene id -> {category: box centre `[3]`} of the objects named once in the scene (`synthrooms/<scene>.json`)."""

    def __init__(self, data_dir):
        self.folder = Path(data_dir) / "synthrooms"

    def __call__(self, scene_id: str) -> dict[str, np.ndarray]:
        path = self.folder / f"{scene_id}.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: SynthRooms ground truth of scene {scene_id!r} not found (export-vsibench "
                                    "reads data written by gap-mllm synth)")
        objects = json.loads(path.read_text(encoding="utf-8"))["objects"]
        counts = Counter(o["category"] for o in objects)
        return {o["category"]: np.asarray(o["bbox_3d"][:3], dtype=np.float64) for o in objects if counts[o["category"]] == 1}


def write_video(frame_paths: list[Path], path: Path, fps: int = VIDEO_FPS) -> None:
    """Write the frames, in order, as a lossless mp4 (H.264 in RGB, qp 0; PyAV): decoded, it gives the same pixels."""
    import av  # here: PyAV is needed only to write videos (extras "demo" and "dev")

    frames = [np.asarray(read_image_file(p).convert("RGB")) for p in frame_paths]  # upright, as every reader reads
    height, width = frames[0].shape[:2]
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        stream.options = {"qp": "0"}  # lossless
        for frame in frames:
            if frame.shape[:2] != (height, width):
                raise ValueError(f"{path}: the frames differ in size ({frame.shape[1]}x{frame.shape[0]} after "
                                 f"{width}x{height}); one video holds frames of one size")
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def annotation_record(row: dict, images: list[str]) -> dict:
    """`row` as this package's spatial QA record (gap-mllm evaluate): the video's frames and VSI-Bench's prompt."""
    prompt = "<image>" * len(images) + vsibench_prompt(row)
    return {"id": str(row["id"]), "scene_id": row["scene_name"], "images": list(images),
            "conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": row["ground_truth"]}],
            "question_type": row["question_type"], "options": row["options"] or [], "ground_truth": row["ground_truth"]}


def task_yaml(out_dir: Path, vsibench_yaml: Path) -> str:
    """The task file: VSI-Bench's `vsibench_yaml` with this task's name and the local dataset folder."""
    return (f"# VSI-Bench's own lmms-eval task ({LMMS_EVAL_REQUIREMENT}: prompts, frames, scoring) on the SynthRooms\n"
            f"# questions of this folder; run with HF_HOME set to this folder (its videos: {VIDEO_CACHE}/).\n"
            f"include: {vsibench_yaml}\n"
            f"task: {TASK_NAME}\n"
            f"dataset_path: {out_dir.resolve()}\n")


def export_vsibench(data_dir, out_dir, split: str = "test", overwrite: bool = False) -> dict:
    """Write the local VSI-Bench of `data_dir`'s `split` into `out_dir` (module docstring); returns what was written:
    `{"questions", "videos", "question_types": {type: count}, "skipped": {reason: count}}`. `overwrite`: replace
    a non-empty `out_dir` this command did not write.

    Raises:
        OutputFolderRefused (a ValueError): `out_dir` holds files this command did not write, and no `overwrite`.
        ImportError: lmms-eval 0.7.3 is not installed (the task includes its vsibench.yaml).
        ValueError: the split asks no question of one of the direction subtypes lmms-eval's aggregation needs, or a
            scene's questions do not share one clip.
    """
    vsibench_yaml = vsibench_task_folder() / "vsibench.yaml"  # before any work: the task file includes it
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    task = vsibench_task()
    records = load_annotation_file(find_annotation_file(data_dir, task.spec, split, file_option=None))  # no such option
    rows, skipped = task.vsibench.rows(records, SceneCentres(data_dir))
    types = Counter(row["question_type"] for row in rows)
    missing = [name for name in task.vsibench.required_types if not types[name]]
    if missing:
        raise ValueError(f"split {split!r} of {data_dir} gives no {', '.join(missing)} question: lmms-eval "
                         f"{LMMS_EVAL_VERSION}'s vsibench aggregation needs all three direction subtypes (it fails with "
                         "a KeyError otherwise); write more scenes")
    clips: dict[str, list[str]] = {}
    for record in records:
        if clips.setdefault(record["scene_id"], record["images"]) != record["images"]:
            raise ValueError(f"record {record['id']!r}: scene {record['scene_id']!r} is asked about two clips; one "
                             "VSI-Bench video per scene holds one clip")
    with writing_output_folder(out_dir, COMMAND, overwrite=overwrite, settings={"data": str(data_dir), "split": split}) as staging:
        _write_export(staging, out_dir, data_dir, rows, clips, vsibench_yaml)
    return {"questions": len(rows), "videos": len(clips), "question_types": dict(sorted(types.items())),
            "skipped": dict(skipped), "not_asked": not_asked_metrics(types)}


# VSI-Bench's per-type figures in lmms-eval's table (vsibench's metric_list), by the question type each one averages
VSIBENCH_TYPE_METRICS = {"obj_appearance_order": "obj_appearance_order_accuracy",
                         "object_abs_distance": "object_abs_distance_mra", "object_counting": "object_counting_mra",
                         "object_rel_distance": "object_rel_distance_accuracy",
                         "object_size_estimation": "object_size_estimation_mra",
                         "room_size_estimation": "room_size_estimation_mra", "route_planning": "route_planning_accuracy"}


def not_asked_metrics(types: Counter) -> list[str]:
    """lmms-eval's table lists every VSI-Bench figure; those of a type this export asks no question of read 0.0,
    which is not a score: their names, said where the export is written."""
    return [metric for question_type, metric in VSIBENCH_TYPE_METRICS.items() if not types[question_type]]


def _write_export(staging: Path, out_dir: Path, data_dir: Path, rows: list[dict], clips: dict[str, list[str]],
                  vsibench_yaml: Path) -> None:
    """The files of the export, into the empty folder `staging` (renamed to `out_dir` afterwards: the task file
    names `out_dir`, the folder lmms-eval will read)."""
    videos = staging / VIDEO_CACHE / vsibench_task().vsibench.dataset
    media_root = posed_images_dir(data_dir)
    for scene, images in clips.items():
        write_video([media_path(media_root, image, scene) for image in images], videos / f"{scene}.mp4")
    with open(staging / ROWS_FILE, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    (staging / "README.md").write_text(DATASET_CARD.format(rows=ROWS_FILE), encoding="utf-8")
    (staging / f"{TASK_NAME}.yaml").write_text(task_yaml(out_dir, vsibench_yaml), encoding="utf-8")
    annotations = [annotation_record(row, clips[row["scene_name"]]) for row in rows]
    (staging / ANNOTATION_FILE).parent.mkdir(parents=True, exist_ok=True)
    (staging / ANNOTATION_FILE).write_text(json.dumps(annotations, indent=1), encoding="utf-8")


def usage_lines(out_dir, data_dir) -> list[str]:
    """What to run next on an exported folder (printed by the command)."""
    return [f"lmms-eval:        HF_HOME={out_dir} python -m lmms_eval --model gap_mllm --model_args pretrained=mini "
            f"--tasks {TASK_NAME} --include_path {out_dir} --batch_size 8 --output_path runs/lmms_vsibench --log_samples",
            f"gap-mllm evaluate: gap-mllm evaluate --task {vsibench_task().name} --official-compat --data {data_dir} "
            f"--annotation-file {Path(out_dir) / ANNOTATION_FILE} --predictions ANSWERS.jsonl --out runs/vsibench_scores"]


def main(args: argparse.Namespace) -> int:
    if not Path(args.data).is_dir():
        raise FileNotFoundError(f"--data {args.data}: no such folder")
    written = export_vsibench(args.data, args.out, args.split, overwrite=args.overwrite)
    print(json.dumps(written, indent=1))
    print("\n".join(usage_lines(args.out, args.data)))
    if written["not_asked"]:
        print(f"lmms-eval's table will show {', '.join(written['not_asked'])} as 0.0: this export asks no such "
              "question, so that row is not a score")
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="gap-mllm export-vsibench", description=__doc__.splitlines()[0])
    add_arguments(cli)
    sys.exit(main(cli.parse_args()))
