"""`datasets` builders for the GAP-MLLM tasks, reading the ScanNet layout + official annotation JSONs.

datasets 5.x has no loading scripts (docs/transformers-notes.md §12), so these are builder classes a user imports
and instantiates with a data root; real ScanNet data and SynthRooms output are read the same way:

    builder = DetectionBuilder(data_root="data", cache_dir="cache", load_poses=True)
    builder.download_and_prepare()
    train = builder.as_dataset(split="train")            # or builder.as_streaming_dataset(...)

Targets are taken from the annotation record where the schema has them (`boxes`, `gt_bbox`, ...)
and otherwise parsed from the answer text with the task's parser (`gap_mllm.tasks_gap_mllm`), so a sample's typed target
and its answer text always agree. Every record field a builder reads is declared with its kind and
checked by `record_schema.read_fields` before anything reaches Arrow (a string where 9 numbers belong is
an error, never 9 digits). Bad data raises `DataError` naming the file and the sample, or, with
`skip_bad_samples=True`, is skipped and counted (`builder.skipped[split]`). A prompt or answer holding chat or
vision markup (`<|im_start|>`, ...: gap_mllm.tasks_gap_mllm) or text that is not valid Unicode is bad data.
Sample ids must be unique within a file (a repeated id is bad data: refused, or skipped and counted after its
first use), and an annotation file without a single usable sample is an error naming it.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path

import datasets

from gap_mllm.files import NotARegularFile, read_regular_text
from gap_mllm.tasks_gap_mllm import (
    IMAGE_PLACEHOLDER,
    PromptTextError,
    TaskSpec,
    refuse_control_tokens,
    resolve_task,
)

from .annotation_files import find_annotation_file
from .builder_fingerprint import builder_cache_key
from .errors import DataError, SkipCounter
from .features import DEFAULT_CLASS_NAMES, check_fits_features, common_features, geometry_features
from .held_out import record_scene_id
from .json_files import JsonTooDeep, loads_json
from .record_schema import (
    IMAGES,
    SAMPLE_ID,
    TEXT,
    RecordField,
    read_field,
)
from .scannet_layout import media_path, posed_images_dir, read_depth, read_views
from .tasks import PackageTask, in_data_order, package_task, package_task_names, package_tasks

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

    def download_and_prepare(self, *args, **kwargs):
        """`datasets`' preparation; bad data raises the `DataError` that names it (datasets wraps every
        generation error in a `DatasetGenerationError` saying only "An error occurred")."""
        try:
            return super().download_and_prepare(*args, **kwargs)
        except datasets.exceptions.DatasetGenerationError as error:
            link = error
            while link is not None and not isinstance(link, DataError):
                link = link.__cause__ or link.__context__
            if link is None:
                raise
            raise link from link.__cause__  # its own cause (a decode error, ...), not the wrapper that holds it

    def annotation_file(self, split: str) -> Path:
        """The annotation file of `split`; a FileNotFoundError naming what was looked for when it has none."""
        files = self._annotation_files()
        if split in files:
            return files[split]
        if self.config.annotation_files or self.config.data_root is None:
            raise FileNotFoundError(f"no {self.TASK} annotation file for split {split!r}: annotation_files= has {sorted(files)}")
        return find_annotation_file(self.config.data_root, self.SPEC, split)  # raises, naming the expected pattern

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
        records = load_annotation_file(annotation_file)
        first_use: dict[str, int] = {}  # id -> index of the first record that has it
        kept = 0
        for index, record in enumerate(records):
            key = f"{split}-{index}"
            try:
                key = sample_key(record, key)
                if key in first_use:
                    raise DataError(f"id {key!r} is used by records {first_use[key]} and {index}; ids must be unique "
                                    "within a file", sample=key)
                first_use[key] = index
                example = self.example(record, key)
            except DataError as error:
                error = error.with_sample(key)
                if error.path is None:
                    error = DataError(str(error), path=annotation_file)
                if not self.config.skip_bad_samples:
                    raise error
                counter.skip(error)
                continue
            kept += 1
            yield key, example
        if counter.total:
            logger.warning(f"{self.TASK} {split}: {counter.summary()}")
        if not kept:  # an empty split would only fail later, far from its cause (datasets: "corresponds to no data")
            why = "it holds no records" if not records else f"none of its {len(records)} record(s) is usable ({counter.summary()})"
            raise DataError(f"no {self.TASK} samples for split {split!r}: {why}", path=annotation_file)

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
        read_field(record, RecordField("scene_id", TEXT, default=""), key)  # a scene_id must be text when present
        scene_id = record_scene_id(record)
        cfg = self.config
        # Decoding every frame here catches corrupt files; the stored bytes are the originals.
        views = read_views(self.media_root, images, load_depth=cfg.load_depth, load_poses=cfg.load_poses)
        example = {
            "id": key,
            "scene_id": scene_id,
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
        check_fits_features(example, self.info.features, key)  # before Arrow, which would name neither sample nor field
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
                images = record.get("images") if isinstance(record, dict) else None
                if isinstance(images, list) and images and isinstance(images[0], str):
                    colour = media_path(self.media_root, images[0], record.get("id"))
                    npy, png = colour.with_suffix(".npy"), colour.with_suffix(".png")
                    return read_depth(npy if npy.is_file() else png).shape
        raise DataError("cannot infer depth_size: no sample with images; pass depth_size=(H, W)")


def load_annotation_file(path) -> list:
    """The list of records of an annotation JSON (DataError naming the file if it is not one)."""
    path = Path(path)
    try:
        records = loads_json(read_regular_text(path, "annotation file"), path)
    except JsonTooDeep as err:  # Python's reader would end in a RecursionError
        raise DataError(f"annotation file is {err.reason}", path=path) from None
    except FileNotFoundError as err:
        raise DataError("annotation file not found", path=path) from err
    except NotARegularFile as err:  # a FIFO would have been waited on for ever
        raise DataError(f"annotation file is {err.kind}, not a regular file", path=path) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"annotation file is not valid JSON ({err})", path=path) from err
    except OSError as err:  # a symbolic link loop, a folder, no permission
        raise DataError(f"cannot read the annotation file ({err.strerror or err})", path=path) from err
    if not isinstance(records, list):
        raise DataError(f"annotation file must hold a JSON list of records, got {type(records).__name__}", path=path)
    return records


def _check_conversation(record: dict, key: str) -> tuple[list[str], str, str]:
    images = read_field(record, IMAGES, key)
    turns = record.get("conversations")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) and isinstance(t.get("value"), str) for t in turns[:2]):
        raise DataError("'conversations' must hold a human turn and a gpt turn with string values", sample=key)
    prompt, answer = turns[0]["value"], turns[1]["value"]
    placeholders = prompt.count(IMAGE_PLACEHOLDER)
    if placeholders != len(images):
        raise DataError(f"the prompt has {placeholders} {IMAGE_PLACEHOLDER} placeholder(s) but the sample lists {len(images)} image(s)", sample=key)
    # Text, never markup: a turn holding `<|im_start|>` & co. would write chat turns of its own (or, in the answer,
    # move the span the labels supervise). Without a tokenizer the Qwen markup is checked (gap_mllm.tasks_gap_mllm).
    for what, text in (("the prompt (human turn)", prompt), ("the answer (gpt turn)", answer)):
        try:
            refuse_control_tokens(None, text, what)
        except PromptTextError as error:
            raise DataError(str(error), sample=key) from None
    return images, prompt, answer


def sample_key(record, default: str) -> str:
    """The sample's `id` as text (`default` when the record has none); a DataError for an id that is
    neither a string nor an integer."""
    if not isinstance(record, dict):
        return default
    return read_field(record, RecordField("id", SAMPLE_ID, default=default), default)


class PackageTaskBuilder(MultiViewBuilder):
    """The builder of a task with a package module (gap_mllm.processing.tasks): its features and fields are the
    module's `PackageTask.features` and `PackageTask.fields`; `package_task_builder` makes one per task."""

    ENTRY: PackageTask | None = None

    @classmethod
    def task_features(cls, class_names):
        return cls.ENTRY.features(class_names)

    def task_fields(self, record, answer, num_images, key):
        return self.ENTRY.fields(record, answer, num_images, key, self)


_PACKAGE_TASK_BUILDERS: dict[PackageTask, type[PackageTaskBuilder]] = {}


def package_task_builder(entry: PackageTask) -> type[PackageTaskBuilder]:
    """The builder class of a task's `PackageTask`: one class per entry, named after the task (`<Task>Builder`)."""
    if entry not in _PACKAGE_TASK_BUILDERS:
        name = "".join(part.title() for part in entry.name.split("_")) + "Builder"
        _PACKAGE_TASK_BUILDERS[entry] = type(name, (PackageTaskBuilder,), {
            "SPEC": entry.spec, "TASK": entry.name, "ENTRY": entry, "__module__": __name__,
            "__doc__": f"The `datasets` builder of {entry.name} ({entry.spec.title})."})
    return _PACKAGE_TASK_BUILDERS[entry]


# the builders of the shipped tasks, in the order of their data; `builder_for_task` also finds those of tasks
# registered from code
BUILDERS = {name: package_task_builder(package_task(name)) for name in in_data_order(package_task_names(stages=True))
            if package_task(name).annotation_file is not None}


def __getattr__(name: str):
    """The builder of a task module by its class name (`package_task_builder`: `<Task>Builder`)."""
    for entry in package_tasks(stages=True):
        builder = package_task_builder(entry)
        if builder.__name__ == name:
            return builder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def builder_for_task(task: str | TaskSpec) -> type[MultiViewBuilder]:
    """The builder of a task name (deprecated names resolve with a warning); a clear error for a task without
    training data of its own (the two-stage `grounding` pipeline: its stages have builders)."""
    spec = resolve_task(task)
    if spec.name in BUILDERS:
        return BUILDERS[spec.name]
    if spec.name in package_task_names(stages=True) and package_task(spec).annotation_file is not None:
        return package_task_builder(package_task(spec))
    stages = f"; use its stages {', '.join(spec.stages)}" if spec.stages else ""
    raise ValueError(f"task {spec.name!r} has no data builder{stages} (tasks with data: {', '.join(BUILDERS)})")
