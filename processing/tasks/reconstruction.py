"""The package side of marker reconstruction (pre-training): its data, its scores and its card.

A sample is N views and a marked pixel `pixel_coords = [view, x, y]`; the answer is the pixel's 3D point in the first
view's camera frame (metres) and the label of the surface it lies on. Scoring groups the points into scenes (the
parent folder of a record's first image) and reports the accuracy, completion and overall distances of each scene's
points, raw and after the Umeyama Sim(3) fit, averaged over scenes (processing/scoring/reconstruction_metrics.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gap_mllm.tasks_gap_mllm import parse_literal, parse_pointmap, serialize_pointmap

from ..coordinates import backproject_pixel, invert_rigid, transform_points
from ..errors import DataError
from ..record_schema import PIXEL, RecordField, read_field
from ..scoring.reconstruction_metrics import ReconstructionEvaluator, chamfer_metrics, point_score, umeyama_sim3
from ..scoring.reported_scores import ReportedMetric, ReportedScore
from ..synth.samples import choose_clip, common_record, conversation
from . import PackageTask

# ------------------------------------------------------------------------------------------ data


def features(class_names) -> dict:
    """The builder's features of a marker sample: the marked pixel, its point and its label."""
    import datasets  # the data extra: the scoring below runs without it

    return {
        "pixel_coords": datasets.List(datasets.Value("int32"), length=3),  # [view, x, y]
        "point": datasets.List(datasets.Value("float32"), length=3),  # first-frame camera, metres
        "label": datasets.Value("string"),
    }


def fields(record, answer, num_images, key, builder) -> dict:
    """The marker fields of one annotation record: `pixel_coords` inside its view (the upright frame's pixels), and
    the point and label of the answer."""
    from ..scannet_layout import check_marked_pixel  # reads images (PIL): not at import, which `--help` pays for

    coords = read_field(record, RecordField("pixel_coords", PIXEL), key)
    check_marked_pixel(builder.media_root, record["images"][:num_images], coords, "'pixel_coords'", key)
    parsed = TASK.spec.parse(answer)
    if parsed.point is None:
        raise DataError(f"answer is not a pointmap ({parsed.reason})", sample=key)
    return {"pixel_coords": coords, "point": list(parsed.point), "label": parsed.label or ""}


def reconstruction_records(scene, clip, count: int, rng) -> list[dict]:
    """Marker samples: a random pixel of a random view of the clip; the answer is its 3D point in the
    first view's camera frame (exact depth back-projection) and the label of the surface it lies on."""
    records = []
    first_from_room = invert_rigid(scene.cam_to_room[clip[0]])
    height, width = scene.image_size
    for n in range(count):
        view = int(rng.integers(len(clip)))
        x, y = int(rng.integers(width)), int(rng.integers(height))
        frame = scene.frames[clip[view]]
        point_room = backproject_pixel(x, y, float(frame.depth[y, x]), scene.intrinsics, scene.cam_to_room[clip[view]])
        point = transform_points(point_room, first_from_room)
        label = scene.label_of(int(frame.instance[y, x]))
        record = common_record(scene, clip, "recons", n)
        record["conversations"] = conversation(TASK.spec.annotation_prompt(len(clip)), serialize_pointmap(point, label))
        record["pixel_coords"] = [view, x, y]
        records.append(record)
    return records


def synth_records(scene, config, rng) -> list[dict]:
    """`config.recon_samples_per_scene` marker samples of one clip of `config.clip_frames` frames of a SynthRooms
    scene."""
    clip = choose_clip(scene, config.clip_frames, rng, config.frame_sampling)
    return reconstruction_records(scene, clip, config.recon_samples_per_scene, rng)


# ------------------------------------------------------------------------------------------ benchmark


def _answer(record) -> str:
    return record["conversations"][1]["value"]


def request(record, stage, previous, media_root, official_compat):
    """The record's images and human turn, and its marked pixel."""
    return record["images"], record["conversations"][0]["value"], record.get("pixel_coords")


def oracle(record, media_root) -> list[str]:
    return [_answer(record)]


def official_point(text: str):
    """Official scene-level parse: the whole stripped string must be one literal dict with "pointmap"."""
    value, _ = parse_literal(text.strip().strip("`").strip("json").strip(), allow_block=False)
    try:
        point = np.asarray(value["pointmap"], dtype=np.float64).reshape(3)
    except Exception:  # noqa: BLE001 - the official code skips the sample on any failure
        return None
    return point if np.all(np.isfinite(point)) else None


def evaluate(records, outputs, ids, official_compat=False, **_):
    """(per-sample rows, `ReconstructionEvaluator` summary) of the answers `outputs` (one `[text]` per record)."""
    ev = ReconstructionEvaluator(official_compat=official_compat)
    rows = []
    for index, (sid, record, raw) in enumerate(zip(ids, records, outputs)):
        if official_compat:
            pred, gt = official_point(raw[0]), official_point(_answer(record))
            reason = None if pred is not None else "not one literal dict with a 3-number pointmap"
        else:
            parsed, truth = TASK.spec.parse(raw[0]), TASK.spec.parse(_answer(record))
            pred, gt, reason = parsed.point, truth.point, parsed.reason
        scene = Path(record["images"][0]).parent.name
        ev.add(scene, pred, gt)
        rows.append({"id": sid, "index": index, "raw": raw, "scene": scene,
                     "parsed": None if pred is None else [float(v) for v in pred], "parse_error": reason,
                     "score": point_score(pred, gt) if gt is not None else 0.0})
    return rows, ev.compute()


def metric(predictions, references, scene_ids=None, official_compat=False) -> dict:
    """The `evaluate` module's compute: the summary of `ReconstructionEvaluator` without `per_scene`."""
    ev = ReconstructionEvaluator(official_compat=official_compat)
    scene_ids = scene_ids or ["scene"] * len(predictions)
    for scene, text, truth in zip(scene_ids, predictions, references):
        ev.add(scene, parse_pointmap(text).point, parse_pointmap(truth).point)
    out = ev.compute()
    out.pop("per_scene")
    return out


def per_category_bars(metrics: dict):
    """The overall distance per scene, raw and aligned: `(names, {series: values}, title)`, None without scenes."""
    if not metrics.get("per_scene"):
        return None
    names = list(metrics["per_scene"])
    series = {"raw": [s["raw"]["overall"] for s in metrics["per_scene"].values()],
              "aligned": [s["aligned"]["overall"] if s["aligned"] else None for s in metrics["per_scene"].values()]}
    return names, series, "Reconstruction overall per scene (metres)"


# the per-sample marker figures of a results row (evaluation/marker_metrics.py) and their constant baselines
MARKER_FIGURES = (
    ReportedMetric("point error (median)", "point_error_m_median", unit="m", higher_is_better=False,
                   baseline=("constant point", ("marker", "constant_point", "point_error_m_median"))),
    ReportedMetric("label accuracy", "label_accuracy",
                   baseline=("most frequent label", ("marker", "constant_point", "label_accuracy"))),
)


def shown(parsed, request) -> dict:
    """The answer's point and the request's marked pixel."""
    return {"point": parsed.point, "marker": tuple(int(v) for v in request.marker)}


TASK = PackageTask(
    name="reconstruction",
    annotation_file="scannet_recons_{split}_{frames}frames.json",
    features=features,
    fields=fields,
    headline=("aligned.overall", "overall (Acc + Comp) / 2 after Sim(3), metres"),
    logged_metrics={"overall_aligned": "aligned.overall"},
    training_figures=("marker",),
    oracle=oracle,
    evaluate=evaluate,
    data_order=0,  # the pre-training task's data comes first
    request=request,
    lmms_task=None,
    metric=metric,
    metric_description="""Predictions and references are answer texts `{"pointmap": [x, y, z], ...}`; compute kwarg
`scene_ids` (one per sample) groups the points into scenes (default: one scene). Per-scene metrics,
then the mean over scenes; the official headline is aligned["overall"].""",
    card=("3d-reconstruction", "marker pointmap", "marker pointmap reconstruction"),
    # the final model's marker figures ("final_marker_*"); a release that has none is described by its stage-1
    # checkpoint's ("stage1_*"), said so
    reported_score=ReportedScore("final_marker", MARKER_FIGURES, skill="locate marked points",
                                 card_name="marker point and label",
                                 stand_in=ReportedScore("stage1", MARKER_FIGURES, skill="locate marked points"),
                                 stand_in_words="this release's final model is not scored on the marker task; its "
                                                "stage-1 checkpoint, before the task fine-tuning"),
    per_category_bars=per_category_bars,
    per_category_shares=False,
    written_fields=("label",),
    shown=shown,
    space_label="marker point reconstruction",
    synth_records=synth_records,
    synth_frames="clip_frames",
    exports={"ReconstructionEvaluator": ReconstructionEvaluator, "chamfer_metrics": chamfer_metrics,
             "point_score": point_score, "umeyama_sim3": umeyama_sim3},
)
