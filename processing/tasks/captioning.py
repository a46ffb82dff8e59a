"""The package side of 3D dense captioning (Scan2Cap): its data, its scores, its lmms-eval task and its card.

A sample is N views and the box of one object (its proposal, in the first view's camera frame); the answer is a
caption of the object. Scoring: CIDEr, BLEU-4, METEOR and ROUGE-L at the 0.5 IoU gate of the proposal, each named
with its gate in the summary (`cider@0.5`; processing/scoring/caption_metrics.py).
"""

from __future__ import annotations

import numpy as np

from gap_mllm.tasks_gap_mllm import Box3D

from ..record_schema import BOX, OBJECT_ID, REAL, TEXT_LIST, RecordField, read_fields
from ..sampling import uniform_indices
from ..scoring.caption_metrics import GATED_SCORES, caption_scores, gate_prediction, gated_name, normalize_caption
from ..scoring.reported_scores import ReportedMetric, ReportedScore
from ..synth.language import captions
from ..synth.samples import camera_boxes, common_record, conversation
from . import PackageTask

# ------------------------------------------------------------------------------------------ data

FIELDS = (
    OBJECT_ID,
    RecordField("bbox_3d", BOX, default=[float("nan")] * 9, nullable=True),  # NaN: no proposal box
    RecordField("iou", REAL, default=float("nan"), nullable=True),
    RecordField("annotations", TEXT_LIST, default=[], nullable=True),  # none: the answer is the reference
)


def features(class_names) -> dict:
    """The builder's features of a captioning sample: the object, its proposal box and IoU, the references."""
    import datasets  # the data extra: the scoring below runs without it

    from ..features import BOX as BOX_FEATURE

    return {
        "object_id": datasets.Value("int32"),
        "bbox_3d": BOX_FEATURE,  # proposal box, first-frame camera (NaN if the record has none)
        "iou": datasets.Value("float32"),
        "annotations": datasets.List(datasets.Value("string")),
    }


def fields(record, answer, num_images, key, builder) -> dict:
    """The captioning fields of one annotation record; without references, the answer is the one."""
    values = read_fields(record, FIELDS, key)
    return {**values, "annotations": values["annotations"] or [answer]}


def caption_record(scene, frames, object_index: int, number: int) -> dict:
    """Scan2Cap-style record: the ground-truth box as the proposal (so `iou` = 1.0) in the first
    frame's camera frame, one caption as the answer and three reference captions."""
    box = camera_boxes(scene, [object_index], frames[0])[0]
    references = captions(scene, object_index)
    record = common_record(scene, frames, "scan2cap", number)
    record["object_id"] = object_index
    record["conversations"] = conversation(TASK.spec.annotation_prompt(len(frames), box=box), references[0])
    record["bbox_3d"] = [float(v) for v in box]
    record["iou"] = 1.0
    record["annotations"] = references
    return record


def synth_records(scene, config, rng) -> list[dict]:
    """`config.captions_per_scene` objects seen in `config.caption_frames` frames of a SynthRooms scene (taken
    evenly), drawn at random, one record each."""
    caption_frames = uniform_indices(len(scene.frames), config.caption_frames)
    seen = np.flatnonzero((scene.visible_pixels()[caption_frames] >= config.min_visible_pixels).any(axis=0))
    return [caption_record(scene, caption_frames, int(index), n)
            for n, index in enumerate(rng.permutation(seen)[: config.captions_per_scene])]


# ------------------------------------------------------------------------------------------ benchmark

# the record fields scoring reads, type-checked as the builders check them (a bare string is not a
# list of references, "high" is not an IoU): a DataError naming the sample and the field
SCORED_FIELDS = (RecordField("annotations", TEXT_LIST), RecordField("iou", REAL, default=1.0))


def oracle(record, media_root) -> list[str]:
    return [record["annotations"][0]]


def evaluate(records, outputs, ids, official_compat=False, meteor=None, **_):
    """(per-sample rows, summary) of the answers `outputs` (one `[text]` per record): `caption_scores` with each
    gated score named with its gate (`gated_name`), and `official_compat`."""
    predictions = [raw[0] for raw in outputs]
    values = [read_fields(record, SCORED_FIELDS, sid) for sid, record in zip(ids, records)]
    out = caption_scores(predictions, [v["annotations"] for v in values], [v["iou"] for v in values], meteor=meteor,
                         official_compat=official_compat)
    per_sample = out.pop("per_sample")
    out = {gated_name(name) if name in GATED_SCORES else name: value for name, value in out.items()}
    rows = [{"id": sid, "index": i, "raw": raw, "parsed": TASK.spec.parse(raw[0]).caption or "",
             "gated": v["iou"] < 0.5, "score": per_sample["cider"][i],
             "bleu4": per_sample["bleu4"][i], "rouge_l": per_sample["rouge_l"][i]}
            for i, (sid, raw, v) in enumerate(zip(ids, outputs, values))]
    out["official_compat"] = official_compat
    return rows, out


def metric(predictions, references, proposal_ious=None, meteor=None, official_compat=False) -> dict:
    """The `evaluate` module's compute: `caption_scores` without `per_sample`."""
    out = caption_scores(predictions, references, proposal_ious, meteor=meteor, official_compat=official_compat)
    out.pop("per_sample")
    return out


def metric_reference():
    """One reference of the `evaluate` module: the sample's reference captions."""
    import datasets

    return datasets.List(datasets.Value("string"))


def histogram(rows: list[dict]):
    """CIDEr@0.5 of each sample: `(values, title, threshold lines)`."""
    return [r["score"] for r in rows], "CIDEr@0.5 per sample", []


def shown(parsed, request) -> dict:
    """The box the request asked about."""
    return {"boxes": [Box3D.from_list(request.box, label="described object")]}


# Scan2Cap's scores at the 0.5 IoU gate, named as in the summary: cider@0.5 is the CIDEr@0.5 of the README and
# mini/RESULTS.md, its IDF over the documents scored (few documents: other values)
LMMS_SCORES = ("cider", "bleu4", "meteor", "rouge_l")

TASK = PackageTask(
    name="captioning",
    annotation_file="scan2cap_{split}_{frames}frames.json",
    features=features,
    fields=fields,
    headline=(gated_name("cider"), "CIDEr at the 0.5 IoU gate (Scan2Cap's C@0.5), IDF over the evaluated samples"),
    logged_metrics={gated_name("cider"): gated_name("cider"), gated_name("bleu4"): gated_name("bleu4")},
    oracle=oracle,
    evaluate=evaluate,
    scoring_packages=(("pycocoevalcap", "pycocoevalcap>=1.2"),),
    lmms_task="gap_scan2cap",
    lmms_order=0,
    lmms_metrics={gated_name(name): gated_name(name) for name in LMMS_SCORES},
    lmms_aggregators={f"aggregate_{name}": gated_name(name) for name in LMMS_SCORES},
    lmms_option_metrics={"meteor": gated_name("meteor")},  # METEOR (Java, seconds of start-up): only for its metric
    metric=metric,
    metric_description="""Predictions are captions, references lists of reference captions. Compute kwargs:
`proposal_ious` (per-sample proposal IoU; a caption counts only if >= 0.5, default all 1.0),
`meteor` (None: on unless official_compat; needs Java), `official_compat`. Official normalisation
("sos ... eos", spaced punctuation, lower case), pycocoevalcap scorers.""",
    metric_reference=metric_reference,
    card=("3d-dense-captioning", "Scan2Cap-style captioning", "3D dense captioning"),
    reported_score=ReportedScore("captioning", (
        ReportedMetric("CIDEr@0.5", "cider@0.5", unit="",
                       baseline=("constant caption", ("captioning", "constant_caption", "cider"))),
    ), skill="caption", card_name="3D dense captioning"),
    histogram=histogram,
    answer_fields=("caption",),
    shown=shown,
    lists_boxes=False,  # the box drawn is the request's
    space_label="3D dense captioning (pick an object)",
    synth_records=synth_records,
    synth_frames="caption_frames",
    exports={"caption_scores": caption_scores, "gate_prediction": gate_prediction,
             "normalize_caption": normalize_caption},
)
