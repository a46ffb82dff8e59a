"""`datasets` builders for the GAP-MLLM tasks, reading the ScanNet layout + official annotation JSONs.

datasets 5.x has no loading scripts (hf-notes.md §12), so these are builder classes a user imports
and instantiates with a data root; real ScanNet data and SynthRooms output are read the same way:

    builder = DetectionBuilder(data_root="data", cache_dir="cache", load_poses=True)
    builder.download_and_prepare()
    train = builder.as_dataset(split="train")            # or builder.as_streaming_dataset(...)

Targets are taken from the annotation record where the schema has them (`boxes`, `gt_bbox`, ...)
and otherwise parsed from the answer text with the task's parser (`gap_mllm.tasks_gap_mllm`), so a sample's typed target
and its answer text always agree. Bad data raises `DataError` naming the file and the sample, or,
with `skip_bad_samples=True`, is skipped and counted (`builder.skipped[split]`).
"""

from __future__ import annotations

import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image

from gap_mllm.chat_format import IMAGE_PLACEHOLDER
from gap_mllm.tasks_gap_mllm import (
    CAPTIONING,
    DETECTION,
    GROUNDING_STAGE1,
    GROUNDING_STAGE2,
    RECONSTRUCTION,
    SPATIAL_QA,
    TaskSpec,
    extract_query,
    resolve_task,
)
from gap_mllm.visual_prompt import check_marker_inside

from .annotation_files import find_annotation_file
from .builder_fingerprint import builder_cache_key
from .errors import DataError, SkipCounter
from .held_out import record_scene_id
from .features import BOX, DEFAULT_CLASS_NAMES, MATRIX_4X4, POSES, common_features, geometry_features
from .scannet_layout import media_path, posed_images_dir, read_depth, read_views
from .synth.spatial_qa import QUESTION_TYPES

logger = datasets.logging.get_logger(__name__)


@dataclass
class MultiViewConfig(datasets.BuilderConfig):
    """Where the data is and what to load.

    data_root: folder holding `scannet/posed_images` and `annotations/`.
    annotation_files: {split: path} to use instead of the task's default file names.
    media_root: folder image paths are relative to (default `<data_root>/scannet/posed_images`).
    splits: splits to look for (those without a file are left out).
    load_depth: add `depth` `[V, H, W]` (metres); `depth_size` (H, W) fixes the Array3D shape
        (default: the size of the first depth map found).
    load_poses: add `intrinsics` `[V, 3, 3]` and `cam_to_world` `[V, 4, 4]` from the layout files.
    skip_bad_samples: skip and count bad samples instead of raising.
    class_names: detection label vocabulary (ClassLabel names).
    """

    data_root: str | None = None
    annotation_files: dict | None = None
    media_root: str | None = None
    splits: tuple = ("train", "val")
    load_depth: bool = False
    depth_size: tuple | None = None
    load_poses: bool = False
    skip_bad_samples: bool = False
    class_names: tuple = DEFAULT_CLASS_NAMES


# Keyword arguments of `datasets.DatasetBuilder` itself; the others are `MultiViewConfig` options.
_DATASET_BUILDER_ARGUMENTS = set(inspect.signature(datasets.DatasetBuilder.__init__).parameters) - {"self", "config_kwargs"}


class MultiViewBuilder(datasets.GeneratorBasedBuilder):
    """Shared logic of the task builders; subclasses set `SPEC` (the registry's task; `TASK` is its name)
    and implement `task_features` (the feature schema of the task's own fields) and `task_fields` (those
    fields of one record). Answers are parsed with the task's own parser.

    Cache: each builder is stored as `gap_mllm_<task>` with a hash over the task, its options, the code
    and the content of every file it reads (processing/builder_fingerprint.py), so builders sharing a
    data root never share a cache entry and edited data is never served from a stale one.
    """

    SPEC: TaskSpec | None = None
    TASK: str = ""
    BUILDER_CONFIG_CLASS = MultiViewConfig
    BUILDER_CONFIGS = [MultiViewConfig(name="default", version=datasets.Version("0.1.0"))]

    def __init__(self, *args, **kwargs):
        if kwargs.get("hash") is None:
            options = {key: value for key, value in kwargs.items() if key not in _DATASET_BUILDER_ARGUMENTS}
            config = self.BUILDER_CONFIG_CLASS(name="default", version=self.BUILDER_CONFIGS[0].version, **options)
            kwargs["hash"] = builder_cache_key(self.TASK, config, self._annotation_files(config), self._media_root(config))
        kwargs.setdefault("dataset_name", f"gap_mllm_{self.TASK}")
        super().__init__(*args, **kwargs)
        self.skipped: dict[str, SkipCounter] = {}

    # ---------------------------------------------------------------------------- datasets API

    def _info(self) -> datasets.DatasetInfo:
        cfg = self.config
        depth_size = self._depth_size() if cfg.load_depth else None
        features = {**common_features(), **geometry_features(depth_size, cfg.load_poses), **self.task_features(cfg.class_names)}
        return datasets.DatasetInfo(
            description=f"GAP-MLLM {self.TASK} samples (ScanNet posed_images layout + official annotation schema)",
            features=datasets.Features(features),
        )

    def _split_generators(self, dl_manager):
        files = self._annotation_files()
        return [datasets.SplitGenerator(name=split, gen_kwargs={"annotation_file": str(path), "split": split}) for split, path in files.items()]

    def _generate_examples(self, annotation_file: str, split: str):
        counter = self.skipped.setdefault(split, SkipCounter())
        for index, record in enumerate(load_annotation_file(annotation_file)):
            key = str(record.get("id", f"{split}-{index}")) if isinstance(record, dict) else f"{split}-{index}"
            try:
                example = self.example(record, key)
            except DataError as error:
                error = error.with_sample(key)
                if error.path is None:
                    error = DataError(str(error), path=annotation_file)
                if not self.config.skip_bad_samples:
                    raise error
                counter.skip(error)
                continue
            yield key, example
        if counter.total:
            logger.warning(f"{self.TASK} {split}: {counter.summary()}")

    # ------------------------------------------------------------------------------- examples

    @property
    def media_root(self) -> Path:
        return self._media_root(self.config)

    def _media_root(self, cfg: MultiViewConfig) -> Path:
        if cfg.media_root is not None:
            return Path(cfg.media_root)
        if cfg.data_root is None:
            raise ValueError(f"{type(self).__name__} needs data_root= (or media_root= and annotation_files=)")
        return posed_images_dir(cfg.data_root)

    def example(self, record, key: str) -> dict:
        """One typed example from an annotation record (raises `DataError` on bad data)."""
        if not isinstance(record, dict):
            raise DataError(f"annotation record must be an object, got {type(record).__name__}", sample=key)
        images, prompt, answer = _check_conversation(record, key)
        cfg = self.config
        # Decoding every frame here catches corrupt files; the stored bytes are the originals.
        views = read_views(self.media_root, images, load_depth=cfg.load_depth, load_poses=cfg.load_poses)
        example = {
            "id": key,
            "scene_id": record_scene_id(record),
            "images": [{"path": None, "bytes": media_path(self.media_root, p, key).read_bytes()} for p in images],
            "image_paths": list(images),
            "prompt": prompt,
            "answer": answer,
        }
        if cfg.load_depth:
            expected = tuple(self._depth_size())
            if views.depth.shape[1:] != expected:
                raise DataError(f"depth size {views.depth.shape[1:]} differs from the dataset's depth_size {expected}", path=self.media_root / images[0], sample=key)
            example["depth"] = views.depth
        if cfg.load_poses:
            example["intrinsics"] = views.intrinsics
            example["cam_to_world"] = views.cam_to_world
        example.update(self.task_fields(record, answer, len(images), key))
        return example

    @classmethod
    def task_features(cls, class_names) -> dict:
        """The `datasets` features of the task's own fields (targets parsed from the answer or read from
        the annotation record); `class_names`: the detection label vocabulary."""
        raise NotImplementedError(f"{cls.__name__} declares no task_features (the builder of a task must)")

    def task_fields(self, record: dict, answer: str, num_images: int, key: str) -> dict:
        raise NotImplementedError

    # ------------------------------------------------------------------------------- helpers

    def _annotation_files(self, cfg: MultiViewConfig | None = None) -> dict[str, Path]:
        cfg = cfg or self.config
        if cfg.annotation_files:
            return {split: Path(path) for split, path in cfg.annotation_files.items()}
        if cfg.data_root is None:
            raise ValueError(f"{type(self).__name__} needs data_root= or annotation_files=")
        files = {}
        for split in cfg.splits:
            try:
                files[split] = find_annotation_file(cfg.data_root, self.SPEC, split)
            except FileNotFoundError:
                continue
        if not files:
            raise FileNotFoundError(f"no {self.TASK} annotation file for splits {tuple(cfg.splits)} under {cfg.data_root}/annotations")
        return files

    def _depth_size(self) -> tuple[int, int]:
        cfg = self.config
        if cfg.depth_size is not None:
            return tuple(int(v) for v in cfg.depth_size)
        for path in self._annotation_files().values():
            for record in load_annotation_file(path):
                if isinstance(record, dict) and record.get("images"):
                    colour = self.media_root / record["images"][0]
                    npy, png = colour.with_suffix(".npy"), colour.with_suffix(".png")
                    return read_depth(npy if npy.is_file() else png).shape
        raise DataError("cannot infer depth_size: no sample with images; pass depth_size=(H, W)")


def load_annotation_file(path) -> list:
    """The list of records of an annotation JSON (DataError naming the file if it is not one)."""
    path = Path(path)
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise DataError("annotation file not found", path=path) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"annotation file is not valid JSON ({err})", path=path) from err
    if not isinstance(records, list):
        raise DataError(f"annotation file must hold a JSON list of records, got {type(records).__name__}", path=path)
    return records


def _check_conversation(record: dict, key: str) -> tuple[list[str], str, str]:
    images = record.get("images")
    if not isinstance(images, list) or not images or not all(isinstance(p, str) for p in images):
        raise DataError("'images' must be a non-empty list of paths", sample=key)
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
        raise DataError("'conversations' must hold a human turn and a gpt turn with string values", sample=key)
    prompt, answer = turns[0]["value"], turns[1]["value"]
    placeholders = prompt.count(IMAGE_PLACEHOLDER)
    if placeholders != len(images):
        raise DataError(f"the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the sample lists {len(images)} image(s)", sample=key)
    return images, prompt, answer


def _box(values, what: str, key: str, world_ok: bool = False) -> list[float]:
    try:
        box = [float(v) for v in values]
    except (TypeError, ValueError) as err:
        raise DataError(f"{what} must be 9 numbers, got {values!r}", sample=key) from err
    if len(box) != 9 or not all(math.isfinite(v) for v in box):
        raise DataError(f"{what} must be 9 finite numbers, got {values!r}", sample=key)
    if any(v < 0 for v in box[3:6]):
        raise DataError(f"{what} has a negative size {box[3:6]}", sample=key)
    return box


def _matrices(value, count: int | None, what: str, key: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    shape = (4, 4) if count is None else (count, 4, 4)
    if array.shape != shape or not np.all(np.isfinite(array)):
        raise DataError(f"{what} must be finite with shape {shape}, got {array.shape}", sample=key)
    return array


# Absent per-view poses are an empty [0, 4, 4] array (a None Array3D would read back as NaN).
_NO_POSES = np.zeros((0, 4, 4))


class ReconstructionBuilder(MultiViewBuilder):
    """Pre-training: N views, a marked pixel `pixel_coords = [view, x, y]` -> `point` (first-frame camera, m) + `label`."""

    SPEC = RECONSTRUCTION
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {
            "pixel_coords": datasets.List(datasets.Value("int32"), length=3),  # [view, x, y]
            "point": datasets.List(datasets.Value("float32"), length=3),  # first-frame camera, metres
            "label": datasets.Value("string"),
        }

    def task_fields(self, record, answer, num_images, key):
        coords = record.get("pixel_coords")
        if not (isinstance(coords, list) and len(coords) == 3 and all(isinstance(v, int) for v in coords)):
            raise DataError(f"'pixel_coords' must be [view, x, y] integers, got {coords!r}", sample=key)
        if not 0 <= coords[0] < num_images:
            raise DataError(f"'pixel_coords' view {coords[0]} out of range for {num_images} image(s)", sample=key)
        image_path = media_path(self.media_root, record["images"][coords[0]], key)
        with PIL.Image.open(image_path) as image:  # header only; the frame was fully decoded by read_views
            try:
                check_marker_inside(coords[1], coords[2], image.width, image.height, f"'pixel_coords' {coords}")
            except ValueError as err:
                raise DataError(str(err), path=image_path, sample=key) from err
        parsed = self.SPEC.parse(answer)
        if parsed.point is None:
            raise DataError(f"answer is not a pointmap ({parsed.reason})", sample=key)
        return {"pixel_coords": coords, "point": list(parsed.point), "label": parsed.label or ""}


class DetectionBuilder(MultiViewBuilder):
    """3D video object detection: boxes in the first frame's camera frame + camera fields."""

    SPEC = DETECTION
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {
            "boxes": datasets.List(
                {"label": datasets.ClassLabel(names=list(class_names)), "bbox_3d": BOX, "in_reference": datasets.Value("bool")}
            ),
            "cam2img": MATRIX_4X4,
            "cam2global": POSES,
            "axis_align_matrix": MATRIX_4X4,
        }

    def task_fields(self, record, answer, num_images, key):
        names = set(self.config.class_names)
        boxes = []
        entries = record.get("boxes") or []
        if not isinstance(entries, list):
            raise DataError(f"'boxes' must be a list of {{\"label\", \"bbox_3d\"}} objects, got {type(entries).__name__}", sample=key)
        for entry in entries:
            if not isinstance(entry, dict):
                raise DataError(f"every entry of 'boxes' must be an object with \"label\" and \"bbox_3d\", got {entry!r}", sample=key)
            label = entry.get("label") if isinstance(entry, dict) else None
            if label not in names:
                raise DataError(f"box label {label!r} is not in class_names (pass class_names= to extend it)", sample=key)
            boxes.append({"label": label, "bbox_3d": _box(entry.get("bbox_3d"), "bbox_3d", key), "in_reference": bool(entry.get("in_reference", True))})
        cam2img = record.get("cam2img")
        return {
            "boxes": boxes,
            "cam2img": _matrices(cam2img, None, "cam2img", key) if cam2img is not None else None,
            "cam2global": _matrices(record["cam2global"], num_images, "cam2global", key) if "cam2global" in record else _NO_POSES,
            "axis_align_matrix": _matrices(record["axis_align_matrix"], None, "axis_align_matrix", key) if "axis_align_matrix" in record else None,
        }


class _GroundingBuilder(MultiViewBuilder):
    @classmethod
    def task_features(cls, class_names):
        return {
            "description": datasets.Value("string"),
            "object_id": datasets.Value("int32"),  # -1 when the record has none
            "gt_bbox": BOX,  # axis-aligned world
            "cam2global": POSES,
            "axis_align_matrix": MATRIX_4X4,
        }

    def task_fields(self, record, answer, num_images, key):
        try:
            description = extract_query(record["conversations"][0]["value"])
        except ValueError as err:
            raise DataError(str(err), sample=key) from err
        if "gt_bbox" not in record:
            raise DataError("grounding record has no 'gt_bbox'", sample=key)
        return {
            "description": description,
            "object_id": int(record.get("object_id", -1)),
            "gt_bbox": _box(record["gt_bbox"], "gt_bbox", key),
            "cam2global": _matrices(record["cam2global"], num_images, "cam2global", key) if "cam2global" in record else _NO_POSES,
            "axis_align_matrix": _matrices(record["axis_align_matrix"], None, "axis_align_matrix", key) if "axis_align_matrix" in record else None,
        }


class GroundingStage1Builder(_GroundingBuilder):
    """ScanRefer stage 1: `Frame-i: <image>` x N + description -> index of the first clear frame."""

    SPEC = GROUNDING_STAGE1
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {**super().task_features(class_names), "frame": datasets.Value("int32")}

    def task_fields(self, record, answer, num_images, key):
        fields = super().task_fields(record, answer, num_images, key)
        parsed = self.SPEC.parse(answer)
        if parsed.frame is None or not 0 <= parsed.frame < num_images:
            raise DataError(f"answer is not a frame index in [0, {num_images}) ({parsed.reason or parsed.frame})", sample=key)
        return {**fields, "frame": parsed.frame}


class GroundingStage2Builder(_GroundingBuilder):
    """ScanRefer stage 2: selected frame + neighbours + description -> box in the first view's camera frame."""

    SPEC = GROUNDING_STAGE2
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {**super().task_features(class_names), "bbox_3d": BOX}  # in the camera frame of the first (selected) view

    def task_fields(self, record, answer, num_images, key):
        fields = super().task_fields(record, answer, num_images, key)
        parsed = self.SPEC.parse(answer)
        if parsed.box is None:
            raise DataError(f"answer is not a grounding box ({parsed.reason})", sample=key)
        return {**fields, "bbox_3d": _box(parsed.box.to_list(), "answer bbox_3d", key)}


class CaptioningBuilder(MultiViewBuilder):
    """Scan2Cap-style dense captioning: views + proposal box -> caption; reference captions + proposal IoU."""

    SPEC = CAPTIONING
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {
            "object_id": datasets.Value("int32"),
            "bbox_3d": BOX,  # proposal box, first-frame camera (NaN if the record has none)
            "iou": datasets.Value("float32"),
            "annotations": datasets.List(datasets.Value("string")),
        }

    def task_fields(self, record, answer, num_images, key):
        annotations = record.get("annotations") or [answer]
        if not all(isinstance(a, str) for a in annotations):
            raise DataError("'annotations' must be a list of strings", sample=key)
        box = record.get("bbox_3d")
        return {
            "object_id": int(record.get("object_id", -1)),
            "bbox_3d": _box(box, "bbox_3d", key) if box is not None else [float("nan")] * 9,
            "iou": float(record.get("iou", float("nan"))),
            "annotations": annotations,
        }


class SpatialQABuilder(MultiViewBuilder):
    """Spatial questions in the VSI-Bench categories with exact answers (numbers or option letters)."""

    SPEC = SPATIAL_QA
    TASK = SPEC.name

    @classmethod
    def task_features(cls, class_names):
        return {
            "question_type": datasets.ClassLabel(names=list(QUESTION_TYPES)),
            "options": datasets.List(datasets.Value("string")),
            "ground_truth": datasets.Value("string"),
        }

    def task_fields(self, record, answer, num_images, key):
        question_type = record.get("question_type")
        names = self.info.features["question_type"].names
        if question_type not in names:
            raise DataError(f"unknown question_type {question_type!r}; expected one of {names}", sample=key)
        return {"question_type": question_type, "options": list(record.get("options") or []), "ground_truth": str(record.get("ground_truth", answer))}


BUILDERS = {
    builder.SPEC.name: builder
    for builder in (ReconstructionBuilder, DetectionBuilder, GroundingStage1Builder, GroundingStage2Builder, CaptioningBuilder, SpatialQABuilder)
}


def builder_for_task(task: str | TaskSpec) -> type[MultiViewBuilder]:
    """The builder of a task name (deprecated names resolve with a warning); a clear error for a task without
    training data of its own (the two-stage `grounding` pipeline: its stages have builders)."""
    spec = resolve_task(task)
    if spec.name not in BUILDERS:
        stages = f"; use its stages {', '.join(spec.stages)}" if spec.stages else ""
        raise ValueError(f"task {spec.name!r} has no data builder{stages} (tasks with data: {', '.join(BUILDERS)})")
    return BUILDERS[spec.name]
