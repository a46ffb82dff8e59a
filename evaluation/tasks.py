"""The benchmarks: how each asks the model (registry tasks), and how it is scored.

A benchmark is a registry task (`gap_mllm.tasks_gap_mllm`: name, prompts, parsers, budgets, stop rules
are defined there); this module adds only what evaluation needs on top. Every benchmark reads the
official evaluation annotation records (docs/method.md §7.3; SynthRooms writes the same schema) and defines:
    spec / stage_specs     the registry task and the task asked at each stage (grounding: its 2 stages)
    headline               (key or dotted path in the summary, description): the figure a run reports
    logged_metrics         {logged name: key or dotted path in the summary}: what a training run logs
                           (evaluation/in_memory.py); the headline is one of them
    stages                 number of model calls per sample (grounding: 2, the others: 1)
    request(record, stage, previous_outputs, media_root) -> Request
    oracle(record, media_root) -> [text per stage]   the ground truth written as model text
    evaluate(records, outputs, official_compat) -> (per-sample rows, summary)

`evaluate` always re-parses the raw texts of every sample, so the summary after a resumed run is the
same as after an uninterrupted one. Per-sample rows: `{"id", "index", "raw", "parsed", "score", ...}`.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np

from gap_mllm.processing.annotation_files import extract_query
from gap_mllm.processing.coordinates import world_boxes_to_camera
from gap_mllm.processing.errors import DataError, MissingDependency
from gap_mllm.processing.record_schema import IMAGES, read_fields
from gap_mllm.processing.scannet_layout import OFFICIAL_STAGE2_NEIGHBOURS, POSED_FRAME_STEP
from gap_mllm.processing.tasks import PackageTask, package_task, package_task_names, package_tasks
from gap_mllm.tasks_gap_mllm import (
    DETECTION,
    GROUNDING,
    GROUNDING_STAGE1,
    GROUNDING_STAGE2,
    Box3D,
    DefaultBudget,
    PromptTextError,
    refuse_control_tokens,
    resolve_task,
    serialize_frame_selection,
    serialize_grounding,
)

from .benchmark_names import OWN_BENCHMARKS, benchmark_tasks
from .detection_metrics import DetectionEvaluator, ground_truth
from .detection_parsing import detection_predictions, official_literal
from .generation import Request
from .grounding_metrics import GroundingEvaluator, score_grounding_record

logger = logging.getLogger(__name__)


def sample_id(record: dict, index: int) -> str:
    """The record's `id`, or its position in the annotation file (official files carry no id; nor does a record that
    is no object, which `check_records` then refuses by this name)."""
    return str(record.get("id", f"{index:06d}")) if isinstance(record, dict) else f"{index:06d}"


def check_sample_limit(limit) -> None:
    """ValueError unless `limit` (the first N records of an annotation file) is None or a positive integer: a
    negative one would slice off the last records and 0 would score nothing, both without notice."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of samples (the first N are scored), got {limit!r}")


def check_batch_size(batch_size) -> None:
    """ValueError unless `batch_size` (samples per generate call) is a positive integer: 0 would end in a bare
    `range()` error and a negative one would answer nothing, leaving every sample missing."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of samples per generate call, got {batch_size!r}")


def human_prompt(record: dict) -> str:
    return record["conversations"][0]["value"]


def check_prompt_texts(records: list, ids: list[str], path) -> None:
    """DataError naming the annotation file `path` and the sample for a record whose human turn holds chat or
    vision markup (a Qwen control token such as `<|im_start|>`) or text that is not valid Unicode: its prompt
    would write chat turns of its own (gap_mllm.tasks_gap_mllm). Run before a model is loaded, so a benchmark
    is refused before any answer is generated; the collator checks each prompt again with the model's tokenizer.
    A record without a human turn is left to the request that reads it."""
    for record, sid in zip(records, ids, strict=True):
        turns = record.get("conversations") if isinstance(record, dict) else None
        prompt = turns[0].get("value") if isinstance(turns, list) and turns and isinstance(turns[0], dict) else None
        if isinstance(prompt, str):
            try:
                refuse_control_tokens(None, prompt, "the prompt (human turn)")
            except PromptTextError as error:
                raise DataError(str(error), path=path, sample=sid) from None


def check_records(records: list, ids: list[str], path) -> None:
    """DataError naming the annotation file `path` and the sample for a record that is not an object or whose
    `images` is not a non-empty list of paths (record_schema.py IMAGES, as the builders read it): every benchmark's
    requests, its scene grouping and its scoring read them. Run before any other check of the records."""
    for record, sid in zip(records, ids, strict=True):
        try:
            read_fields(record, (IMAGES,), sid)
        except DataError as error:
            raise DataError(str(error).removeprefix(f"sample {sid!r}: "), path=path, sample=sid) from None


def gt_answer(record: dict) -> str:
    return record["conversations"][1]["value"]


class Benchmark:
    """What every benchmark shares: its registry task(s) and how a model call is requested.

    `official_compat=True` also turns off the stop rule (`Request.stop_at_answer_end`): the official
    scripts stop only at EOS or the budget, and a reproduction should read exactly what they read."""

    spec = None  # the registry task
    stage_specs: tuple = ()  # the task asked at each stage
    headline: tuple[str, str]  # (key or dotted path in the summary, description); every benchmark sets it
    logged_metrics: dict[str, str]  # logged name -> key or dotted path in the summary; the headline among them
    # (import name, pip requirement) of what `evaluate` imports when it runs: checked before any answer is
    # generated, so a missing scorer fails at once and not after an evaluation's (or a training run's) work
    scoring_packages: tuple[tuple[str, str], ...] = ()

    def __init__(self, official_compat: bool = False, constrained: bool = False):
        self.official_compat = official_compat
        self.constrained = constrained  # decode inside each stage's answer grammar (`gap-mllm evaluate --constrained`)

    def check_scoring_dependencies(self) -> None:
        """MissingDependency (an ImportError) naming each missing scoring package of this task and how to install it."""
        missing = [requirement for module, requirement in self.scoring_packages if importlib.util.find_spec(module) is None]
        if missing:
            raise MissingDependency(f"scoring the {self.name} task needs {', '.join(missing)}, which is not installed: "
                                    f"pip install 'gap-mllm[eval]' (or {' '.join(missing)}); during training, the task "
                                    "can also be left out of evaluation.tasks")

    def check_ground_truth(self, records: list, ids: list[str]) -> None:
        """DataError naming the sample for a record whose ground truth this benchmark cannot score. Run before any
        answer is generated: refused only at scoring, the answers of the model would already be written, and the
        fixed annotation file, another file for the run fingerprint, could not resume them (run_fingerprint.py).
        Default: nothing this benchmark can check beforehand (its scoring still refuses what it cannot read)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stages(self) -> int:
        return len(self.stage_specs)

    @property
    def annotation_task(self):
        """The task whose annotation file holds the samples (grounding: stage 1's)."""
        return self.stage_specs[0]

    def make_request(self, stage: int, images, prompt: str, pixel_coords=None) -> Request:
        spec = self.stage_specs[stage]
        # the official budget: the caller chose none (`--max-new-tokens` caps it), so lowering it to the model's
        # context is an INFO line, not a warning (checks.py)
        return Request(images, prompt, pixel_coords, DefaultBudget(spec.official_max_new_tokens), task=spec.name,
                       stop_at_answer_end=not self.official_compat, constrained=self.constrained)


# ------------------------------------------------------------------------------------------ detection


class DetectionTask(Benchmark):
    spec, stage_specs = DETECTION, (DETECTION,)
    headline = ("f1", "mean F1 over cate31 (IoU > 0.25)")
    logged_metrics = {"f1": "f1", "precision": "splits.all.precision", "recall": "splits.all.recall"}

    def request(self, record, stage, previous, media_root):
        return self.make_request(stage, record["images"], human_prompt(record))

    def oracle(self, record, media_root):
        return [gt_answer(record)]

    def check_ground_truth(self, records, ids):
        """Every record's `boxes` as scoring reads them (`ground_truth`: required, a list of labelled 9-number boxes)."""
        for record, sid in zip(records, ids, strict=True):
            ground_truth(record, sid, self.official_compat)

    def evaluate(self, records, outputs, official_compat=False, **_):
        ev = DetectionEvaluator(official_compat=official_compat)
        rows = []
        for index, (record, raw) in enumerate(zip(records, outputs)):
            pred = detection_predictions(raw[0], official_compat)
            gt_labels, gt_boxes = ground_truth(record, sample_id(record, index), official_compat)
            match = ev.add(pred.labels, pred.boxes, gt_labels, gt_boxes, pred.valid, pred.dropped)
            tp = sum(c.tp for c in match.counts.values())
            errors = sum(c.fp + c.fn for c in match.counts.values())
            rows.append({
                "id": sample_id(record, index), "index": index, "raw": raw,
                "parsed": pred.rows,
                "parse_error": pred.reason,
                "score": 2 * tp / (2 * tp + errors) if tp + errors else 1.0,  # per-sample micro F1
                "matches": [{"label": m.label, "iou": m.iou, "gt_index": m.gt_index, "tp": m.true_positive}
                            for m in match.predictions],
            })  # fmt: skip
        return rows, ev.compute()


# ------------------------------------------------------------------------------------------ grounding


def official_frame(text: str) -> int:
    """Official stage-1 reading: strip newlines / backticks / "json", `json.loads`, `["frame"]`; any
    failure (or a missing key) gives frame 0."""
    body = text.strip("\n").strip("`").strip("json").strip()
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, TypeError, RecursionError):  # RecursionError: an answer nested too deep to read
        return 0
    frame = value.get("frame", 0) if isinstance(value, dict) else 0
    return frame if isinstance(frame, int) and not isinstance(frame, bool) else 0


def official_stage2_box(text: str) -> tuple[list[float] | None, str | None]:
    """Official stage-2 reading (`calculate_iou_for_sample`): strip newlines / backticks / "json" (as
    character sets), read the rest as ONE Python literal (the official code `eval`s it; `ast.literal_eval`
    here, which executes nothing), take its `["bbox_3d"]`, and use the first 9 values (centre, sizes as
    written, angles): the official transform slices `[0:3]`, `[3:6]`, `[6:9]`, so longer lists pass. Returns
    `(box, None)`, or `(None, reason)` where the official code fails and scores IoU 0 (not a dict with
    "bbox_3d", fewer than 9 values, a value that is not a real number, a non-finite value)."""
    value = official_literal(text.strip("\n").strip("`").strip("json").strip()) if isinstance(text, str) else None
    if not isinstance(value, dict) or "bbox_3d" not in value:
        return None, "not one literal dict with \"bbox_3d\" (official reading)"
    box = value["bbox_3d"]
    if not isinstance(box, list) or len(box) < 9:
        return None, "bbox_3d is not a list of at least 9 values (official reading)"
    try:
        numbers = [float(v) for v in box[:9] if isinstance(v, (int, float))]  # bool is an int, as in torch
    except OverflowError:  # an integer beyond float range
        numbers = []
    if len(numbers) != 9 or not all(math.isfinite(v) for v in numbers):
        return None, "bbox_3d holds a value that is not a finite number (official reading)"
    return numbers, None


def frame_number(image_path: str) -> int:
    """Raw frame number of a posed-images file name ("scene/00350.jpg" -> 350)."""
    return int(Path(image_path).stem)


def stage2_images(selected_image: str, media_root, neighbours: int = OFFICIAL_STAGE2_NEIGHBOURS) -> list[str]:
    """Official stage-2 frames: n, n+10, ..., n+90, then n-10, ..., max(0, n-90); missing files skipped.
    `neighbours` (official 9) is the number of posed frames taken each way."""
    base = frame_number(selected_image)
    numbers = [base + POSED_FRAME_STEP * k for k in range(neighbours + 1)]
    numbers += [base - POSED_FRAME_STEP * k for k in range(1, neighbours + 1) if base - POSED_FRAME_STEP * k >= 0]
    folder, suffix = Path(selected_image).parent, Path(selected_image).suffix
    paths = [str(folder / f"{n:05d}{suffix}") for n in numbers]
    return [p for p in paths if (Path(media_root) / p).is_file()]


class GroundingTask(Benchmark):
    """Two-stage ScanRefer (docs/method.md §3.4): frame selection over all frames, then the box from the
    selected frame and its neighbours, in the camera frame of the selected frame."""

    spec, stage_specs = GROUNDING, (GROUNDING_STAGE1, GROUNDING_STAGE2)
    headline = ("acc@0.25", "Acc@0.25 (IoU >= 0.25)")
    logged_metrics = {"acc@0.25": "acc@0.25", "acc@0.5": "acc@0.5", "miou": "miou"}

    def selected_frame(self, record, stage1_text: str) -> tuple[int, str | None]:
        """(k, note): official reading when `official_compat`, else the tolerant parser clamped to the
        frame range; a failed parse gives 0 in both modes (as the official code)."""
        num_frames = len(record["images"])
        if self.official_compat:
            k = official_frame(stage1_text)
            if -num_frames <= k < 0:
                k += num_frames  # the official code indexes images[k]: Python wraps negative indices
            return k, None if 0 <= k < num_frames else f"frame {k} out of range (the official code crashes)"
        result = GROUNDING_STAGE1.parse(stage1_text, num_frames=num_frames)
        return (0, f"frame parse failed ({result.reason}); used 0") if result.frame is None else (result.frame, result.reason)

    def request(self, record, stage, previous, media_root):
        description = extract_query(human_prompt(record))
        if stage == 0:
            prompt = GROUNDING_STAGE1.annotation_prompt(len(record["images"]), query=description)
            return self.make_request(stage, record["images"], prompt)
        k, _ = self.selected_frame(record, previous[0])
        k = min(max(k, 0), len(record["images"]) - 1)
        neighbours = int(record.get("stage2_neighbours", OFFICIAL_STAGE2_NEIGHBOURS))
        images = stage2_images(record["images"][k], media_root, neighbours) or [record["images"][k]]
        return self.make_request(stage, images, GROUNDING_STAGE2.annotation_prompt(len(images), query=description))

    def oracle(self, record, media_root):
        """Stage 1: the annotated frame (0 if the record has none); stage 2: the GT box in its camera frame."""
        k = 0
        if len(record.get("conversations", [])) > 1:
            frame = GROUNDING_STAGE1.parse(gt_answer(record), num_frames=len(record["images"])).frame
            k = frame if frame is not None else 0
        try:
            box = world_boxes_to_camera(np.asarray(record["gt_bbox"], dtype=np.float64)[None], record["cam2global"][k],
                                        record.get("axis_align_matrix"))[0]
        except (KeyError, IndexError, TypeError, ValueError) as error:
            # No camera-frame truth exists; the scorer reports this sample as unscorable by reason.
            logger.warning("oracle of grounding sample %r: no stage-2 answer (%s)", record.get("id"), error)
            return [serialize_frame_selection(k), ""]
        return [serialize_frame_selection(k), serialize_grounding(Box3D.from_list(box))]

    def evaluate(self, records, outputs, official_compat=False, **_):
        self.official_compat = official_compat
        ev = GroundingEvaluator(official_compat=official_compat)
        rows = []
        for index, (record, raw) in enumerate(zip(records, outputs)):
            k, note = self.selected_frame(record, raw[0])
            if official_compat:
                box, reason = official_stage2_box(raw[1])
            else:
                parsed = GROUNDING_STAGE2.parse(raw[1])
                box, reason = (None if parsed.box is None else parsed.box.to_list()), parsed.reason
            score = score_grounding_record(record, k, box, official_compat, no_box_detail=reason)
            ev.add_score(score)
            rows.append({"id": sample_id(record, index), "index": index, "raw": raw,
                         "parsed": {"frame": k, "bbox_3d": None if box is None else [round(v, 6) for v in box]},
                         "parse_error": reason, "frame_note": note, "score": score.value(official_compat),
                         "unscored": score.reason, "unscored_detail": score.detail})
        return rows, ev.compute()


# ------------------------------------------------------------------------------- tasks with a package module


class PackageTaskBenchmark(Benchmark):
    """The benchmark of a task with a package module (gap_mllm.processing.tasks): the model call of each stage
    (`PackageTask.request`; by default one, the record's images and human turn), scored by the module
    (`PackageTask.evaluate`); `package_benchmark` makes one class per task."""

    entry: PackageTask

    def request(self, record, stage, previous, media_root):
        if self.entry.request is None:
            return self.make_request(stage, record["images"], human_prompt(record))
        return self.make_request(stage, *self.entry.request(record, stage, previous, media_root, self.official_compat))

    def oracle(self, record, media_root):
        return self.entry.oracle(record, media_root)

    def evaluate(self, records, outputs, official_compat=False, **options):
        ids = [sample_id(record, index) for index, record in enumerate(records)]
        return self.entry.evaluate(records, outputs, ids, official_compat=official_compat, **options)


_PACKAGE_BENCHMARKS: dict[PackageTask, type[PackageTaskBenchmark]] = {}


def package_benchmark(entry: PackageTask) -> type[PackageTaskBenchmark]:
    """The benchmark class of a task's `PackageTask` (one class per entry)."""
    if entry not in _PACKAGE_BENCHMARKS:
        name = "".join(part.title() for part in entry.name.split("_")) + "Task"
        _PACKAGE_BENCHMARKS[entry] = type(name, (PackageTaskBenchmark,), {
            "spec": entry.spec, "stage_specs": (entry.spec,), "headline": entry.headline,
            "logged_metrics": dict(entry.logged_metrics), "scoring_packages": entry.scoring_packages, "entry": entry,
            "__module__": __name__})
    return _PACKAGE_BENCHMARKS[entry]


# the benchmarks of the shipped tasks; `get_task` also finds those of tasks registered from code
OWN_TASKS = {task.spec.name: task for task in (DetectionTask, GroundingTask)}
if tuple(OWN_TASKS) != OWN_BENCHMARKS:  # the light list `gap-mllm evaluate --help` shows (benchmark_names.py)
    raise ImportError(f"evaluation/benchmark_names.py lists {OWN_BENCHMARKS}, the benchmarks are {tuple(OWN_TASKS)}")
TASKS = {**OWN_TASKS, **{entry.name: package_benchmark(entry) for entry in package_tasks()}}


def benchmark_class(name: str) -> type[Benchmark] | None:
    """The benchmark class of a canonical task name, None when the task has none."""
    if name in OWN_TASKS:
        return OWN_TASKS[name]
    return package_benchmark(package_task(name)) if name in package_task_names() else None


def get_task(name, official_compat: bool = False, constrained: bool = False) -> Benchmark:
    """The benchmark of a task name (deprecated names such as "det" resolve with a warning); `constrained`: its
    answers are decoded inside their task's grammar (off: the paper's protocol decodes freely)."""
    spec = resolve_task(name)
    benchmark = benchmark_class(spec.name)
    if benchmark is None:
        hint = f" (it is a stage of {GROUNDING.name!r}, which evaluates both)" if spec.name in GROUNDING.stages else ""
        raise ValueError(f"task {spec.name!r} has no benchmark{hint}; choose one of {', '.join(benchmark_tasks())}")
    return benchmark(official_compat, constrained)


def headline_value(summary: dict, key: str):
    """Look up a key, or a dotted path ("aligned.overall"), in a summary."""
    if key in summary:
        return summary[key]
    value = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
