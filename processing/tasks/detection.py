"""The package side of 3D video object detection (EmbodiedScan-style): its data, its scores, its lmms-eval task and
its card.

A sample is N views; the answer lists every object seen, a label and a box in the first view's camera frame each.
Scoring: the official greedy matching at IoU > 0.25, precision / recall / F1 per category and split, the headline
the mean F1 over cate31 (processing/scoring/detection_metrics.py).
"""

from __future__ import annotations

import numpy as np

from gap_mllm.tasks_gap_mllm import Box3D, serialize_detection

from ..detection_record import detection_box_entries
from ..errors import DataError
from ..record_schema import (
    AXIS_ALIGN,
    BOOLEAN,
    BOX,
    MATRIX_4X4,
    OBJECT_LIST,
    TEXT,
    RecordField,
    camera_poses,
    read_field,
    read_fields,
)
from ..scoring.detection_metrics import DetectionEvaluator, ground_truth, match_sample
from ..scoring.detection_parsing import detection_predictions
from ..scoring.reported_scores import ReportedMetric, ReportedScore
from ..synth.samples import camera_boxes, camera_fields, choose_clip, common_record, conversation
from . import PackageTask

# ------------------------------------------------------------------------------------------ data

BOX_FIELDS = (RecordField("label", TEXT), RecordField("bbox_3d", BOX), RecordField("in_reference", BOOLEAN, default=True))


def _shared_features():
    """processing/features.py: the builders' shared features (it imports datasets, the data extra, which the scoring
    below runs without)."""
    from .. import features as shared

    return shared


def features(class_names) -> dict:
    """The builder's features of a detection sample: the labelled boxes (`class_names`: the label vocabulary) and
    the camera fields."""
    import datasets

    shared = _shared_features()
    return {
        "boxes": datasets.List(
            {"label": datasets.ClassLabel(names=list(class_names)), "bbox_3d": shared.BOX,
             "in_reference": datasets.Value("bool")}
        ),
        "cam2img": shared.MATRIX_4X4,
        "cam2global": shared.POSES,
        "axis_align_matrix": shared.MATRIX_4X4,
    }


def fields(record, answer, num_images, key, builder) -> dict:
    """The boxes (labels of the builder's `class_names`) and camera fields of one annotation record."""
    # the answer text is what trains: one the detection parser cannot read cleanly (prose, a box of 8 numbers)
    # would teach the model answers that evaluation scores as unreadable
    parsed = TASK.spec.parse(answer)
    if parsed.reason is not None:
        raise DataError(f"answer is not a detection answer ({parsed.reason})", sample=key)
    names = set(builder.config.class_names)
    boxes = []
    detection_box_entries(record, key)  # required, as evaluation reads it: [] is a sample without objects
    for i, entry in enumerate(read_field(record, RecordField("boxes", OBJECT_LIST), key)):
        box = read_fields(entry, BOX_FIELDS, key, prefix=f"boxes[{i}].")
        if box["label"] not in names:
            raise DataError(f"box label {box['label']!r} is not in class_names (pass class_names= to extend it)",
                            sample=key)
        boxes.append(box)
    values = (RecordField("cam2img", MATRIX_4X4, default=None, nullable=True), camera_poses(num_images), AXIS_ALIGN)
    return {"boxes": boxes, **read_fields(record, values, key)}


def detection_record(scene, clip, number: int, min_pixels: int) -> dict | None:
    """Boxes of every object seen (>= `min_pixels`) in some frame of the clip, in the first frame's
    camera frame; `in_reference` is True when the object is seen in that first frame."""
    pixels = scene.visible_pixels()[clip]
    seen = np.flatnonzero((pixels >= min_pixels).any(axis=0))
    if len(seen) == 0:
        return None
    boxes = camera_boxes(scene, seen, clip[0])
    labels = [scene.objects[i].category for i in seen]
    record = common_record(scene, clip, "det", number)
    answer = serialize_detection([Box3D.from_list(b, label=l) for b, l in zip(boxes, labels)])
    record["conversations"] = conversation(TASK.spec.annotation_prompt(len(clip)), answer)
    record["boxes"] = [
        {"bbox_3d": [float(v) for v in b], "label": l, "in_reference": bool(pixels[0, i] >= min_pixels)}
        for b, l, i in zip(boxes, labels, seen)
    ]
    record.update(camera_fields(scene, clip))
    return record


def synth_records(scene, config, rng) -> list[dict]:
    """One record per clip of `config.clip_frames` frames (`config.detection_clips_per_scene` clips) of a SynthRooms
    scene that shows an object."""
    records = []
    for n in range(config.detection_clips_per_scene):
        clip = choose_clip(scene, config.clip_frames, rng, config.frame_sampling)
        record = detection_record(scene, clip, n, config.min_visible_pixels)
        if record is not None:
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------ benchmark


def oracle(record, media_root) -> list[str]:
    return [record["conversations"][1]["value"]]


def check_ground_truth(records, ids, official_compat=False) -> None:
    """Every record's `boxes` as scoring reads them (`ground_truth`: required, a list of labelled 9-number boxes)."""
    for record, sid in zip(records, ids, strict=True):
        ground_truth(record, sid, official_compat)


def evaluate(records, outputs, ids, official_compat=False, **_):
    """(per-sample rows, `DetectionEvaluator` summary) of the answers `outputs` (one `[text]` per record); a row's
    score is the sample's micro F1."""
    ev = DetectionEvaluator(official_compat=official_compat)
    rows = []
    for index, (sid, record, raw) in enumerate(zip(ids, records, outputs)):
        pred = detection_predictions(raw[0], official_compat)
        gt_labels, gt_boxes = ground_truth(record, sid, official_compat)
        match = ev.add(pred.labels, pred.boxes, gt_labels, gt_boxes, pred.valid, pred.dropped)
        tp = sum(c.tp for c in match.counts.values())
        errors = sum(c.fp + c.fn for c in match.counts.values())
        rows.append({
            "id": sid, "index": index, "raw": raw,
            "parsed": pred.rows,
            "parse_error": pred.reason,
            "score": 2 * tp / (2 * tp + errors) if tp + errors else 1.0,  # per-sample micro F1
            "matches": [{"label": m.label, "iou": m.iou, "gt_index": m.gt_index, "tp": m.true_positive}
                        for m in match.predictions],
        })  # fmt: skip
    return rows, ev.compute()


def metric(predictions, references, official_compat=False) -> dict:
    """The `evaluate` module's compute: `DetectionEvaluator` over the answers and each sample's boxes."""
    ev = DetectionEvaluator(official_compat=official_compat)
    for text, gt in zip(predictions, references):
        pred = detection_predictions(text, official_compat)
        ev.add(pred.labels, pred.boxes, [g["label"] for g in gt], [g["bbox_3d"] for g in gt], pred.valid, pred.dropped)
    return ev.compute()


def metric_reference():
    """One reference of the `evaluate` module: the sample's labelled boxes."""
    import datasets

    return datasets.List({"label": datasets.Value("string"), "bbox_3d": datasets.List(datasets.Value("float64"))})


def per_category_bars(metrics: dict):
    """Precision, recall and F1 per category: `(names, {series: values}, title)`, None when the summary has none."""
    if not metrics.get("per_category"):
        return None
    names = list(metrics["per_category"])
    series = {m: [metrics["per_category"][c][m] for c in names] for m in ("precision", "recall", "f1")}
    return names, series, "Detection per category (IoU > 0.25)"


def histogram(rows: list[dict]):
    """The IoU of every prediction with its best same-label box, with the matching threshold."""
    return [m["iou"] for r in rows for m in r.get("matches", [])], "IoU of each prediction with its best same-label box", [0.25]


def sample_boxes(record: dict, row: dict):
    """`(0, ground-truth boxes, predicted boxes)` in the first frame's camera."""
    # the scorer's reader (a record without `boxes` was refused there); negative sizes are drawn as given
    gt = ground_truth(record, record.get("id"), official_compat=True)[1]
    # the official reading keeps entries whose box cannot be drawn (not 9 finite numbers)
    pred = [p["bbox_3d"] for p in row["parsed"] if np.shape(p["bbox_3d"]) == (9,) and np.all(np.isfinite(p["bbox_3d"]))]
    return 0, gt, pred


def shown(parsed, request) -> dict:
    """The answer's boxes."""
    return {"boxes": list(parsed.boxes)}


TASK = PackageTask(
    name="detection",
    annotation_file="scannet_det_{split}_{frames}frames.json",
    features=features,
    fields=fields,
    headline=("f1", "mean F1 over cate31 (IoU > 0.25)"),
    logged_metrics={"f1": "f1", "precision": "splits.all.precision", "recall": "splits.all.recall"},
    oracle=oracle,
    evaluate=evaluate,
    check_ground_truth=check_ground_truth,
    lmms_task="gap_det",
    lmms_metrics={"f1": "f1", "precision": "splits.cate31.precision", "recall": "splits.cate31.recall"},
    metric=metric,
    metric_description="""Predictions are raw model answers (read by gap_mllm.processing.scoring.detection_parsing: the tolerant
parser by default, the official line-by-line reading with official_compat=True);
references are the sample's ground-truth boxes `[{"label": str, "bbox_3d": [9 floats]}]` in the first
frame's OpenCV camera frame. Returns per-category and split precision / recall / F1 / AP25 / AP50 and
the headline "f1" (mean F1 over cate31). `official_compat=True` reproduces the official numbers.""",
    metric_reference=metric_reference,
    card=("3d-object-detection", "EmbodiedScan-style detection", "3D video object detection"),
    reported_score=ReportedScore("detection", (
        ReportedMetric("F1@0.25", "f1@0.25", baseline=("category-mean boxes", ("detection", "category_mean_boxes", "f1"))),
    ), skill="detect", card_name="3D object detection"),
    per_category_bars=per_category_bars,
    histogram=histogram,
    sample_boxes=sample_boxes,
    shown=shown,
    counts_boxes=True,
    space_label="3D object detection",
    synth_records=synth_records,
    synth_frames="clip_frames",
    exports={"DetectionEvaluator": DetectionEvaluator, "match_sample": match_sample},
)
