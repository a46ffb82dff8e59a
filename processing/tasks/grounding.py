"""The package side of 3D visual grounding (ScanRefer, two stages, docs/method.md §3.4): its data, its scores, its
lmms-eval task and its card.

Stage 1 (`grounding_stage1`) asks which of the N frames shows the described object first; stage 2
(`grounding_stage2`) asks for its box in the camera frame of the selected frame, given that frame and its posed
neighbours. Each stage has its annotation file and builder; the benchmark asks both in turn and scores the box in
the world frame against `gt_bbox` (processing/scoring/grounding_metrics.py).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np

from gap_mllm.tasks_gap_mllm import Box3D, resolve_task, serialize_frame_selection, serialize_grounding

from ..annotation_files import extract_query
from ..coordinates import world_boxes_to_camera
from ..errors import DataError
from ..record_schema import AXIS_ALIGN, BOX, OBJECT_ID, RecordField, camera_poses, read_fields
from ..sampling import uniform_indices
from ..scoring.detection_parsing import official_literal
from ..scoring.grounding_metrics import (
    GroundingEvaluator,
    GroundingScore,
    grounding_scores,
    score_grounding,
    score_grounding_record,
)
from ..scoring.reported_scores import ReportedMetric, ReportedScore
from ..synth.language import describe
from ..synth.samples import camera_boxes, camera_fields, common_record, conversation, first_clear_frame
from . import PackageTask

logger = logging.getLogger(__name__)

STAGE1, STAGE2 = (resolve_task(name) for name in ("grounding_stage1", "grounding_stage2"))
# Stage 2 reads the selected posed frame n, then n+10, ..., n+90, then n-10, ..., n-90: 9 neighbours each way, posed
# frames being every 10th raw frame of a ScanNet scene (docs/method.md §3.4).
POSED_FRAME_STEP = 10
OFFICIAL_STAGE2_NEIGHBOURS = 9

# ------------------------------------------------------------------------------------------ data


def _shared_features():
    """processing/features.py: the builders' shared features (it imports datasets, the data extra, which the scoring
    below runs without)."""
    from .. import features as shared

    return shared


def features(class_names) -> dict:
    """The builder's features shared by both stages: the description, the object and its world box, the poses."""
    import datasets

    shared = _shared_features()
    return {
        "description": datasets.Value("string"),
        "object_id": datasets.Value("int32"),  # -1 when the record has none
        "gt_bbox": shared.BOX,  # axis-aligned world
        "cam2global": shared.POSES,
        "axis_align_matrix": shared.MATRIX_4X4,
    }


def fields(record, answer, num_images, key, builder) -> dict:
    """The fields shared by both stages of one annotation record (the description read from the human turn)."""
    try:
        description = extract_query(record["conversations"][0]["value"])
    except ValueError as err:
        raise DataError(str(err), sample=key) from err
    values = (OBJECT_ID, RecordField("gt_bbox", BOX), camera_poses(num_images), AXIS_ALIGN)
    return {"description": description, **read_fields(record, values, key)}


def stage1_features(class_names) -> dict:
    import datasets

    return {**features(class_names), "frame": datasets.Value("int32")}


def stage1_fields(record, answer, num_images, key, builder) -> dict:
    """Stage 1: `Frame-i: <image>` x N + description -> index of the first clear frame."""
    values = fields(record, answer, num_images, key, builder)
    parsed = STAGE1.parse(answer)
    if parsed.frame is None or not 0 <= parsed.frame < num_images:
        raise DataError(f"answer is not a frame index in [0, {num_images}) ({parsed.reason or parsed.frame})",
                        sample=key)
    return {**values, "frame": parsed.frame}


def stage2_features(class_names) -> dict:
    return {**features(class_names), "bbox_3d": _shared_features().BOX}  # in the camera frame of the first (selected) view


def stage2_fields(record, answer, num_images, key, builder) -> dict:
    """Stage 2: selected frame + neighbours + description -> box in the first view's camera frame."""
    values = fields(record, answer, num_images, key, builder)
    parsed = STAGE2.parse(answer)
    if parsed.box is None:  # the parser refuses anything but 9 finite numbers with sizes >= 0
        raise DataError(f"answer is not a grounding box ({parsed.reason})", sample=key)
    return {**values, "bbox_3d": parsed.box.to_list()}


def stage2_frames(scene, selected: int, neighbours: int = OFFICIAL_STAGE2_NEIGHBOURS) -> list[int]:
    """Official stage-2 frame order: n, n+10, ..., n+90, then n-10, ..., n-90 (posed-image steps; 9
    neighbours each way), skipping frames that do not exist. Indices into the scene's frames."""
    total = len(scene.frames)
    forward = [selected + k for k in range(neighbours + 1) if selected + k < total]
    backward = [selected - k for k in range(1, neighbours + 1) if selected - k >= 0]
    return forward + backward


def grounding_records(scene, frames, object_index: int, description: str, number: int, min_pixels: int,
                      neighbours: int = OFFICIAL_STAGE2_NEIGHBOURS):
    """(stage 1, stage 2) records for one object described uniquely by `description`, or None.

    A stage-1 record of a dataset whose stage 2 uses another neighbour count than the official 9 says so
    in `stage2_neighbours` (the evaluation builds the stage-2 request from it)."""
    pixels = scene.visible_pixels()[frames, object_index]
    k = first_clear_frame(pixels, min_pixels)
    if k is None:
        return None
    stage1 = common_record(scene, frames, "scanrefer1", number)
    stage1["object_id"] = object_index
    stage1["conversations"] = conversation(STAGE1.annotation_prompt(len(frames), query=description),
                                           serialize_frame_selection(k))
    stage1["prompt"] = stage1["conversations"][0]["value"]
    stage1["gt_bbox"] = [float(v) for v in scene.objects[object_index].box]
    stage1.update({key: value for key, value in camera_fields(scene, frames).items() if key != "cam2img"})
    if neighbours != OFFICIAL_STAGE2_NEIGHBOURS:
        stage1["stage2_neighbours"] = neighbours

    second = stage2_frames(scene, frames[k], neighbours)
    box = camera_boxes(scene, [object_index], second[0])[0]
    stage2 = common_record(scene, second, "scanrefer2", number)
    stage2["object_id"] = object_index
    stage2["conversations"] = conversation(STAGE2.annotation_prompt(len(second), query=description),
                                           serialize_grounding(Box3D.from_list(box)))
    stage2["prompt"] = stage2["conversations"][0]["value"]
    stage2["gt_bbox"] = stage1["gt_bbox"]
    stage2.update({key: value for key, value in camera_fields(scene, second).items() if key != "cam2img"})
    return stage1, stage2


def synth_records(scene, config, rng) -> dict[str, list[dict]]:
    """`{stage: [record]}`: both stages' records of every object of a SynthRooms scene that a description tells
    apart, over `config.grounding_frames` frames taken evenly."""
    frames = uniform_indices(len(scene.frames), config.grounding_frames)
    out: dict[str, list[dict]] = {STAGE1.name: [], STAGE2.name: []}
    for index in range(len(scene.objects)):
        description = describe(scene, index, rng)
        if description is None:
            continue
        pair = grounding_records(scene, frames, index, description, index, config.min_visible_pixels,
                                 config.stage2_neighbours)
        if pair is not None:
            out[STAGE1.name].append(pair[0])
            out[STAGE2.name].append(pair[1])
    return out


# ------------------------------------------------------------------------------------------ benchmark


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


def _human_prompt(record) -> str:
    return record["conversations"][0]["value"]


def selected_frame(record, stage1_text: str, official_compat: bool = False) -> tuple[int, str | None]:
    """(k, note): official reading when `official_compat`, else the tolerant parser clamped to the
    frame range; a failed parse gives 0 in both modes (as the official code)."""
    num_frames = len(record["images"])
    if official_compat:
        k = official_frame(stage1_text)
        if -num_frames <= k < 0:
            k += num_frames  # the official code indexes images[k]: Python wraps negative indices
        return k, None if 0 <= k < num_frames else f"frame {k} out of range (the official code crashes)"
    result = STAGE1.parse(stage1_text, num_frames=num_frames)
    return (0, f"frame parse failed ({result.reason}); used 0") if result.frame is None else (result.frame, result.reason)


def request(record, stage, previous, media_root, official_compat):
    """Stage 1: every frame and the stage-1 prompt; stage 2: the frame stage 1 selected and its neighbours."""
    description = extract_query(_human_prompt(record))
    if stage == 0:
        return record["images"], STAGE1.annotation_prompt(len(record["images"]), query=description), None
    k, _ = selected_frame(record, previous[0], official_compat)
    k = min(max(k, 0), len(record["images"]) - 1)
    neighbours = int(record.get("stage2_neighbours", OFFICIAL_STAGE2_NEIGHBOURS))
    images = stage2_images(record["images"][k], media_root, neighbours) or [record["images"][k]]
    return images, STAGE2.annotation_prompt(len(images), query=description), None


def oracle(record, media_root) -> list[str]:
    """Stage 1: the annotated frame (0 if the record has none); stage 2: the GT box in its camera frame."""
    k = 0
    if len(record.get("conversations", [])) > 1:
        frame = STAGE1.parse(record["conversations"][1]["value"], num_frames=len(record["images"])).frame
        k = frame if frame is not None else 0
    try:
        box = world_boxes_to_camera(np.asarray(record["gt_bbox"], dtype=np.float64)[None], record["cam2global"][k],
                                    record.get("axis_align_matrix"))[0]
    except (KeyError, IndexError, TypeError, ValueError) as error:
        # No camera-frame truth exists; the scorer reports this sample as unscorable by reason.
        logger.warning("oracle of grounding sample %r: no stage-2 answer (%s)", record.get("id"), error)
        return [serialize_frame_selection(k), ""]
    return [serialize_frame_selection(k), serialize_grounding(Box3D.from_list(box))]


def evaluate(records, outputs, ids, official_compat=False, **_):
    """(per-sample rows, `GroundingEvaluator` summary) of the answers `outputs` (`[stage-1 text, stage-2 text]`
    per record)."""
    ev = GroundingEvaluator(official_compat=official_compat)
    rows = []
    for index, (sid, record, raw) in enumerate(zip(ids, records, outputs)):
        k, note = selected_frame(record, raw[0], official_compat)
        if official_compat:
            box, reason = official_stage2_box(raw[1])
        else:
            parsed = STAGE2.parse(raw[1])
            box, reason = (None if parsed.box is None else parsed.box.to_list()), parsed.reason
        score = score_grounding_record(record, k, box, official_compat, no_box_detail=reason)
        ev.add_score(score)
        rows.append({"id": sid, "index": index, "raw": raw,
                     "parsed": {"frame": k, "bbox_3d": None if box is None else [round(v, 6) for v in box]},
                     "parse_error": reason, "frame_note": note, "score": score.value(official_compat),
                     "unscored": score.reason, "unscored_detail": score.detail})
    return rows, ev.compute()


def metric(predictions, references, official_compat=False) -> dict:
    """The `evaluate` module's compute: `GroundingEvaluator` over the stage-2 answers."""
    ev = GroundingEvaluator(official_compat=official_compat)
    for text, ref in zip(predictions, references):
        box = STAGE2.parse(text).box
        ev.add(None if box is None else box.to_list(), ref["gt_bbox"], np.asarray(ref["camera_to_world"]).reshape(4, 4))
    return ev.compute()


def metric_reference():
    """One reference of the `evaluate` module: the world box and the selected frame's camera-to-world matrix."""
    import datasets

    return {"gt_bbox": datasets.List(datasets.Value("float64")),
            "camera_to_world": datasets.List(datasets.Value("float64"))}


def histogram(rows: list[dict]):
    """The IoU of each counted sample (those excluded from the score have none), with the two thresholds."""
    return [r["score"] for r in rows if r["score"] is not None], "Grounding IoU per counted sample", [0.25, 0.5]


def sample_boxes(record: dict, row: dict):
    """`(frame, ground-truth boxes, predicted boxes)` in the selected frame's camera, None when not drawable."""
    k = row["parsed"]["frame"]
    if not 0 <= k < len(record["images"]):
        return None
    try:
        gt = list(world_boxes_to_camera(np.asarray(record["gt_bbox"], dtype=np.float64)[None], record["cam2global"][k],
                                        record.get("axis_align_matrix")))
    except (KeyError, IndexError, TypeError, ValueError):
        return None  # no usable pose or truth: the summary counts the sample under `unscored`
    return k, gt, [row["parsed"]["bbox_3d"]] if row["parsed"]["bbox_3d"] else []


def shown(parsed, request) -> dict:
    """The answer's box."""
    return {"boxes": [parsed.box] if parsed.box is not None else []}


TASK = PackageTask(
    name="grounding",
    headline=("acc@0.25", "Acc@0.25 (IoU >= 0.25)"),
    logged_metrics={"acc@0.25": "acc@0.25", "acc@0.5": "acc@0.5", "miou": "miou"},
    training_figures=("identification",),
    oracle=oracle,
    evaluate=evaluate,
    stages=(
        PackageTask(name=STAGE1.name, annotation_file="scanrefer_{split}_{frames}frames_stage1.json",
                    features=stage1_features, fields=stage1_fields, synth_frames="grounding_frames"),
        PackageTask(name=STAGE2.name, annotation_file="scanrefer_{split}_{frames}frames_stage2.json",
                    features=stage2_features, fields=stage2_fields, synth_frames="grounding_frames"),
    ),
    request=request,
    lmms_task="gap_scanrefer",
    lmms_order=0,  # ScanRefer and Scan2Cap first
    lmms_metrics={"acc@0.25": "acc@0.25", "acc@0.5": "acc@0.5", "miou": "miou"},
    lmms_aggregators={"aggregate_acc_025": "acc@0.25", "aggregate_acc_05": "acc@0.5", "aggregate_miou": "miou"},
    metric=metric,
    metric_description="""Predictions are raw stage-2 answers `{"bbox_3d": [...]}` in the camera frame of the
selected frame; references are `{"gt_bbox": [9 floats, world], "camera_to_world": [16 floats, row-major
4x4 = axis_align_matrix @ cam2global[k]]}` (use the identity for predictions already in the world).""",
    metric_reference=metric_reference,
    card=("3d-visual-grounding", "ScanRefer-style grounding", "3D visual grounding"),
    reported_score=ReportedScore("grounding", (
        ReportedMetric("Acc@0.25", "acc@0.25",
                       baseline=("best constant box", ("grounding", "best_constant_box", "acc@0.25"))),
    ), skill="ground", card_name="3D visual grounding", order=0),  # a card's first task
    histogram=histogram,
    sample_boxes=sample_boxes,
    shown=shown,
    space_label="3D visual grounding (text query)",
    synth_records=synth_records,
    exports={"GroundingEvaluator": GroundingEvaluator, "GroundingScore": GroundingScore,
             "grounding_scores": grounding_scores, "score_grounding": score_grounding},
)
