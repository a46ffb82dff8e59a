"""Trivial baselines for the miniature's evaluation table: what a model gets without looking.

Grounding (scored exactly like a model: a camera-frame box in the annotated first clear frame k*, moved
to the world and compared with `gt_bbox` by the grounding evaluator):
    constant_mean_box       the mean of the training stage-2 target boxes (camera frame of their first view)
    best_constant_box       of `candidates` training target boxes, the one with the highest Acc@0.25 on the
                            training samples (chosen on training data only), used for every test sample
    random_same_category    a uniformly random object of the scene with the target's category (uses the
                            true world boxes and the true category: an upper-bound-like reference of
                            "recognise the category, guess the instance")
    The two constant boxes also carry `identification` (grounding_identification.py): which object they
    point at and their median centre error, with the chance levels of the same records.
Detection:
    category_mean_boxes     for every true object (true labels: oracle category recognition), that
                            category's mean training box in the first frame's camera
Captioning:
    constant_caption        the most frequent training caption for every sample
Marker task (stage 1):
    constant_point          the mean training point, with the most frequent training label

Every figure comes with its 95 % interval (confidence.py). Randomness is seeded. `limit` scores the first `limit`
records of the scored split, the samples a model evaluated with the same limit answers (the runner takes
`records[:limit]` of the same annotation file, evaluation/runner.py), so a baseline and the model it is read against
are scored on the same samples.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scoring.caption_metrics import caption_scores
from gap_mllm.processing.scoring.detection_metrics import DetectionEvaluator, ground_truth
from gap_mllm.processing.scoring.grounding_metrics import score_grounding
from gap_mllm.tasks_gap_mllm import parse_frame_selection, parse_grounding, parse_pointmap

from .confidence import bootstrap_interval, bootstrap_statistic, wilson_interval
from .grounding_identification import constant_box
from .marker_metrics import marker_scores
from .tasks import sample_id


def _records(data_root, task: str, split: str, limit: int | None = None) -> list[dict]:
    """The records of `task`'s annotation file of `split`: the first `limit` of them when given (module docstring)."""
    return load_annotation_file(find_annotation_file(data_root, task, split))[:limit]


def _answer(record: dict) -> str:
    return record["conversations"][1]["value"]


def accuracy_summary(ious) -> dict:
    """Acc@0.25 / Acc@0.5 with Wilson intervals and mIoU with a bootstrap interval."""
    ious = np.asarray(ious, dtype=np.float64)
    out = {"num_samples": int(ious.size), "miou": float(ious.mean()), "miou_ci95": bootstrap_interval(ious)}
    for threshold in (0.25, 0.5):
        hits = int((ious >= threshold).sum())
        out[f"acc@{threshold:g}"] = hits / ious.size
        out[f"acc@{threshold:g}_ci95"] = wilson_interval(hits, ious.size)
    return out


def _true_frame(record: dict) -> int:
    frame = parse_frame_selection(_answer(record), num_frames=len(record["images"])).frame
    return 0 if frame is None else frame


def _iou(box, gt_bbox, cam_to_world=None, axis_align_matrix=None) -> float:
    """The grounding evaluator's IoU of a baseline box (0 for a sample it cannot score, as for a model)."""
    return score_grounding(box, gt_bbox, cam_to_world, axis_align_matrix).value(official_compat=True)


def constant_box_ious(box, records) -> list[float]:
    """The IoU of one camera-frame box placed in each grounding record's annotated frame k* (how a model's stage-2
    box is scored when its stage 1 chose k*)."""
    return [_iou(box, r["gt_bbox"], r["cam2global"][_true_frame(r)], r.get("axis_align_matrix")) for r in records]


def grounding_baselines(data_root, split: str = "test", candidates: int = 200, seed: int = 0,
                        limit: int | None = None) -> dict:
    """The three grounding baselines on the two-stage records of `split` (see the module docstring)."""
    train_boxes = np.array([parse_grounding(_answer(r)).box.to_list() for r in _records(data_root, "grounding_stage2", "train")])
    train_records = _records(data_root, "grounding_stage1", "train")
    test_records = _records(data_root, "grounding_stage1", split, limit)
    rng = np.random.default_rng(seed)
    out = {"constant_mean_box": accuracy_summary(constant_box_ious(train_boxes.mean(0), test_records))}

    pool = train_boxes[rng.choice(len(train_boxes), size=min(candidates, len(train_boxes)), replace=False)]
    fit = train_records if len(train_records) <= 400 else [train_records[i] for i in rng.choice(len(train_records), 400, replace=False)]
    scores = [np.mean(np.asarray(constant_box_ious(box, fit)) >= 0.25) for box in pool]
    best = pool[int(np.argmax(scores))]
    out["best_constant_box"] = accuracy_summary(constant_box_ious(best, test_records))
    out["best_constant_box"]["box"] = [round(float(v), 3) for v in best]
    # which object each constant box points at, placed in the annotated frame (grounding_identification.py)
    out["constant_mean_box"]["identification"] = constant_box(test_records, train_boxes.mean(0), data_root)
    out["best_constant_box"]["identification"] = constant_box(test_records, best, data_root)

    ious = []
    for record in test_records:
        truth = json.loads((Path(data_root) / "synthrooms" / f"{record['scene_id']}.json").read_text(encoding="utf-8"))
        objects = truth["objects"]
        target = objects[record["object_id"]]
        same = [o for o in objects if o["category"] == target["category"]]
        pick = same[int(rng.integers(len(same)))]
        ious.append(_iou(pick["bbox_3d"], record["gt_bbox"]))
    out["random_same_category"] = accuracy_summary(ious)
    return out


def category_mean_boxes(train_root) -> dict[str, list[float]]:
    """Each category's mean training box (first frame's camera) over the train split's detection records."""
    sums: dict[str, list] = {}
    for index, record in enumerate(_records(train_root, "detection", "train")):
        for label, box in zip(*ground_truth(record, sample_id(record, index)), strict=True):
            sums.setdefault(label, []).append(box)
    return {label: np.mean(boxes, axis=0).tolist() for label, boxes in sums.items()}


def category_mean_matches(records, means: dict, evaluator: DetectionEvaluator | None = None) -> list:
    """For each detection record, the match (`DetectionEvaluator.add`) of its true objects' category mean boxes
    (`means`; true labels) against its true boxes, added to `evaluator` (a new one if None)."""
    evaluator = DetectionEvaluator() if evaluator is None else evaluator
    matches = []
    for index, record in enumerate(records):
        labels, boxes = ground_truth(record, sample_id(record, index))
        known = [label for label in labels if label in means]
        matches.append(evaluator.add(known, [means[label] for label in known], labels, boxes))
    return matches


def detection_baseline(data_root, split: str = "test", limit: int | None = None) -> dict:
    """`category_mean_boxes` (see the module docstring): F1@0.25 with a bootstrap interval over samples."""
    means = category_mean_boxes(data_root)
    records = _records(data_root, "detection", split, limit)
    # each sample is matched once; the bootstrap resamples the per-sample counts (re-matching every
    # resample would cost 100x the IoUs for the same figures)
    evaluator = DetectionEvaluator()
    matches = category_mean_matches(records, means, evaluator)

    def f1_of(sample: list) -> float:
        resampled = DetectionEvaluator()
        for match in sample:
            for label, counts in match.counts.items():
                resampled.counts[label].add(counts)
        return float(resampled.compute()["f1"] or 0.0)

    f1 = float(evaluator.compute()["f1"] or 0.0)
    return {"category_mean_boxes": {"num_samples": len(records), "f1": f1, "f1_ci95": bootstrap_statistic(matches, f1_of, resamples=100)}}


def most_frequent_caption(train_root) -> str:
    """The most frequent caption of the train split (the `constant_caption` baseline's answer)."""
    return Counter(_answer(r) for r in _records(train_root, "captioning", "train")).most_common(1)[0][0]


def caption_baseline(data_root, split: str = "test", limit: int | None = None) -> dict:
    """`constant_caption`: CIDEr (and BLEU-4) of the most frequent training caption."""
    caption = most_frequent_caption(data_root)
    records = _records(data_root, "captioning", split, limit)
    scores = caption_scores([caption] * len(records), [r["annotations"] for r in records], [r.get("iou", 1.0) for r in records], meteor=False)
    return {"constant_caption": {"num_samples": len(records), "caption": caption, "cider": scores["cider"], "bleu4": scores["bleu4"],
                                 "cider_ci95": bootstrap_interval(scores["per_sample"]["cider"])}}


def constant_marker_answer(train_root) -> tuple[str, str]:
    """(answer text, label) of the `constant_point` baseline: the mean training point with the most frequent label."""
    train = [parse_pointmap(_answer(r)) for r in _records(train_root, "reconstruction", "train")]
    point = np.mean([p.point for p in train], axis=0)
    label = Counter(p.label for p in train).most_common(1)[0][0]
    return json.dumps({"pointmap": [round(float(v), 2) for v in point], "label": label}), label


def marker_baseline(data_root, split: str = "test", limit: int | None = None) -> dict:
    """`constant_point`: the mean training point with the most frequent training label."""
    guess, label = constant_marker_answer(data_root)
    records = _records(data_root, "reconstruction", split, limit)
    scores = marker_scores([guess] * len(records), [_answer(r) for r in records], [r["pixel_coords"][0] for r in records])
    return {"constant_point": {**scores, "label": label}}


def all_baselines(data_root, split: str = "test", limit: int | None = None) -> dict:
    """Every baseline of the module docstring on the first `limit` records of each task's `split` (all: None)."""
    return {"grounding": grounding_baselines(data_root, split, limit=limit),
            "detection": detection_baseline(data_root, split, limit),
            "captioning": caption_baseline(data_root, split, limit), "marker": marker_baseline(data_root, split, limit)}
