"""3D video object detection: the official greedy matching, precision / recall / F1 (docs/method.md §6.1).

Per sample and per category (labels compared as exact, case-sensitive strings), predictions are
taken in OUTPUT order. Each takes, among the still unused ground-truth boxes of its label, the one
with the largest IoU (running maximum from 0 with a strict `>`, so ties keep the first box and IoU 0
never matches). It is a true positive iff that IoU is STRICTLY greater than the threshold (0.25);
the box is then used. Otherwise it is a false positive. Unused ground truth are false negatives.
`in_reference` is ignored. Counts are summed over the dataset per category; P = TP/(TP+FP),
R = TP/(TP+FN), F1 = 2PR/(P+R), each 0 when its denominator is 0.

Split scores (cate8 / cate20 / cate31, `category_lists.py`) are means over the list entries:
    official_compat=True   the verbatim lists ("lamp" twice, "towl"); a category absent from the data
                           (no ground truth, no prediction) counts as 0. Headline = cate31 mean F1.
    default                the clean lists, averaged over the entries PRESENT in the data (ground
                           truth or prediction); a split with none present is None. An "all" split
                           averages over every category present.
                           Euler reading "zxy" (R = Ry·Rx·Rz) instead of the official "ZXY" (docs/method.md §5.3).

Extension (not in the official code): AP at 0.25 and 0.5. The model gives no confidences, so the
ranking is the output position (first entry = most confident; ties by sample order). Matching is the
same greedy rule; AP is the area under the precision envelope (VOC "all points", as mmdet3d).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from gap_mllm.processing.detection_record import detection_box_entries
from gap_mllm.processing.errors import DataError
from .box_iou import box_iou_matrix, box_problem

from .category_lists import CLEAN_SPLITS, HEADLINE_SPLIT, OFFICIAL_SPLITS

DETECTION_IOU_THRESHOLD = 0.25
AP_THRESHOLDS = (0.25, 0.5)


@dataclass
class CategoryCounts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: "CategoryCounts") -> None:
        self.tp += other.tp
        self.fp += other.fp
        self.fn += other.fn

    def scores(self) -> dict:
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        return {"precision": precision, "recall": recall, "f1": f1, "tp": self.tp, "fp": self.fp, "fn": self.fn}


def split_means(per_category: dict, value, official_compat: bool = False) -> dict:
    """{split name: mean of `value(per_category[c])` over the split's categories} (the module docstring's rule:
    official_compat averages over the verbatim list with an absent category given `value(None)`; the default over
    the clean list's categories present in `per_category`, None when none is, plus an "all" split)."""
    splits = OFFICIAL_SPLITS if official_compat else CLEAN_SPLITS
    out = {}
    for name, categories in splits.items():
        if official_compat:
            values = [value(per_category.get(c)) for c in categories]
        else:
            values = [value(per_category[c]) for c in categories if c in per_category]
        out[name] = float(np.mean(values)) if values else None
    if not official_compat:
        out["all"] = float(np.mean([value(v) for v in per_category.values()])) if per_category else None
    return out


def headline_f1(counts: dict, official_compat: bool = False) -> float | None:
    """The headline F1 (`DetectionEvaluator.compute()["f1"]`: the mean F1 of the headline split) from summed
    counts per label, `{label: CategoryCounts}`; what a table recomputed from per-sample counts reports
    (mini/report.py), so that it equals the runner's summary. None when no category of the split is present."""
    per_category = {label: c.scores() for label, c in counts.items()}
    return split_means(per_category, lambda s: 0.0 if s is None else s["f1"], official_compat)[HEADLINE_SPLIT]


@dataclass
class PredictionMatch:
    """One prediction after matching: its label, best IoU against an unused same-label box, the index
    of that box in the sample's ground-truth list (-1 if none), and whether it is a true positive."""

    label: str
    iou: float
    gt_index: int
    true_positive: bool


@dataclass
class SampleMatch:
    counts: dict[str, CategoryCounts] = field(default_factory=dict)
    predictions: list[PredictionMatch] = field(default_factory=list)


def ground_truth(record: dict, sample=None, official_compat: bool = False) -> tuple[list, list]:
    """`(labels, boxes)` of an annotation record's `boxes`; a DataError naming the sample when the record has
    no `boxes` (an empty list is a sample without objects; a missing field is not), when `boxes` is not a list
    of `{"label": str, "bbox_3d": [9 numbers]}` objects, or (default mode, as the builders) when a box has a
    negative size; official_compat keeps such a box (the official IoU reads its absolute sizes). Every reader
    of detection ground truth goes through here (the runner, the lmms-eval plugin, the baselines, the plots)."""
    entries = detection_box_entries(record, sample)  # required (the builders' rule): [] is a sample without objects
    if not isinstance(entries, list):
        raise DataError(f"'boxes' must be a list of {{\"label\", \"bbox_3d\"}} objects, got {type(entries).__name__}", sample=sample)
    for entry in entries:
        if not (isinstance(entry, dict) and isinstance(entry.get("label"), str) and isinstance(entry.get("bbox_3d"), list)
                and len(entry["bbox_3d"]) == 9):
            raise DataError(f"every entry of 'boxes' needs a string \"label\" and a 9-number \"bbox_3d\", got {entry!r:.120}", sample=sample)
        sizes = entry["bbox_3d"][3:6]
        if not official_compat and any(isinstance(v, (int, float)) and v < 0 for v in sizes):
            raise DataError(f"ground-truth box {entry!r:.120} has a negative size", sample=sample)
    return [e["label"] for e in entries], [e["bbox_3d"] for e in entries]


def _without_malformed(pred_labels, pred_boxes, pred_valid):
    """`(labels, boxes, valid, number dropped)`: the predictions without those whose values `box_problem` refuses
    (an entry already marked unscorable, `valid` False, is kept: it is a false positive). Boxes that are not
    `[P, 9]` are the caller's error (ValueError, from `_as_boxes`)."""
    boxes = list(np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 9)) if np.size(pred_boxes) else []
    valid = [True] * len(boxes) if pred_valid is None else [bool(v) for v in pred_valid]
    if len(valid) != len(boxes) or len(pred_labels) != len(boxes):  # match_sample names the mismatch
        return pred_labels, pred_boxes, pred_valid, 0
    keep = [i for i, box in enumerate(boxes) if not valid[i] or box_problem(box) is None]
    if len(keep) == len(boxes):
        return pred_labels, pred_boxes, pred_valid, 0
    labels = [pred_labels[i] for i in keep]
    kept = _as_boxes([boxes[i] for i in keep])
    return labels, kept, None if pred_valid is None else [valid[i] for i in keep], len(boxes) - len(keep)


def _as_boxes(boxes) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    return boxes.reshape(0, 9) if boxes.size == 0 else boxes.reshape(-1, 9)


def match_sample(
    pred_labels,
    pred_boxes,
    gt_labels,
    gt_boxes,
    iou_threshold: float = DETECTION_IOU_THRESHOLD,
    euler_mode: str = "zxy",
    official_compat: bool = False,
    pred_valid=None,
) -> SampleMatch:
    """Greedy official matching of one sample.

    Args:
        pred_labels: `[P]` strings, in output order; pred_boxes: `[P, 9]`.
        gt_labels: `[G]` strings; gt_boxes: `[G, 9]`. Boxes in one common frame (first camera).
        iou_threshold: a prediction is a TP iff its best IoU is strictly greater than this.
        euler_mode / official_compat: passed to `box_iou_matrix`.
        pred_valid: `[P]` bool or None (all valid). A False prediction is an entry the official reading
            keeps although its box cannot be scored: IoU 0 with everything, so a false positive.
    """
    pred_boxes, gt_boxes = _as_boxes(pred_boxes), _as_boxes(gt_boxes)
    if len(pred_labels) != len(pred_boxes) or len(gt_labels) != len(gt_boxes):
        raise ValueError("labels and boxes must have the same length")
    valid = np.ones(len(pred_boxes), dtype=bool) if pred_valid is None else np.asarray(pred_valid, dtype=bool)
    if valid.shape != (len(pred_boxes),):
        raise ValueError(f"pred_valid must have one entry per prediction ({len(pred_boxes)}), got shape {valid.shape}")
    result = SampleMatch()
    gt_by_label: dict[str, list[int]] = defaultdict(list)
    for j, label in enumerate(gt_labels):
        gt_by_label[label].append(j)
    pred_by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(pred_labels):
        pred_by_label[label].append(i)

    matches: dict[int, PredictionMatch] = {}
    for label in list(dict.fromkeys([*pred_labels, *gt_labels])):
        preds, gts = pred_by_label.get(label, []), gt_by_label.get(label, [])
        counts = CategoryCounts()
        ious = np.zeros((len(preds), len(gts)))
        scorable = [row for row, i in enumerate(preds) if valid[i]]
        ious[scorable] = box_iou_matrix(pred_boxes[[preds[r] for r in scorable]], gt_boxes[gts], euler_mode, official_compat)
        used = np.zeros(len(gts), dtype=bool)
        for row, i in enumerate(preds):
            candidates = np.where(used, -np.inf, ious[row]) if len(gts) else np.zeros(0)
            best = int(np.argmax(candidates)) if len(gts) else -1  # argmax keeps the first of ties
            best_iou = float(candidates[best]) if best >= 0 and candidates[best] > 0 else 0.0
            if best_iou <= 0.0:
                best = -1  # the official running maximum starts at 0 with a strict ">"
            hit = best >= 0 and best_iou > iou_threshold
            if hit:
                used[best] = True
                counts.tp += 1
            else:
                counts.fp += 1
            matches[i] = PredictionMatch(label, best_iou, gts[best] if best >= 0 else -1, hit)
        counts.fn = int((~used).sum())
        result.counts[label] = counts
    result.predictions = [matches[i] for i in range(len(pred_labels))]
    return result


def _average_ap(tp_flags: np.ndarray, ranks: np.ndarray, num_gt: int) -> float:
    """VOC all-points AP of detections (TP flags) ranked by ascending `ranks` (stable)."""
    if num_gt == 0:
        return 0.0
    order = np.argsort(ranks, kind="stable")
    tp = np.cumsum(tp_flags[order].astype(np.float64))
    fp = np.cumsum((~tp_flags[order]).astype(np.float64))
    recall = tp / num_gt
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


@dataclass
class DetectionEvaluator:
    """Accumulates samples (`add`) and reports the official scores (`compute`).

    Boxes are 9-DoF `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` in the first frame's camera frame.
    `official_compat=True` reproduces the official numbers: "ZXY" Euler reading in the IoU,
    pytorch3d's degenerate-box rule, verbatim category lists with absent categories counted as 0.
    """

    official_compat: bool = False
    iou_threshold: float = DETECTION_IOU_THRESHOLD
    ap_thresholds: tuple = AP_THRESHOLDS
    counts: dict = field(default_factory=lambda: defaultdict(CategoryCounts))
    _ap_records: dict = field(default_factory=lambda: defaultdict(lambda: defaultdict(list)))
    _gt_totals: dict = field(default_factory=lambda: defaultdict(int))
    _num_samples: int = 0
    _unscorable_predictions: int = 0
    _dropped_predictions: int = 0

    @property
    def euler_mode(self) -> str:
        return "official" if self.official_compat else "zxy"

    def add(self, pred_labels, pred_boxes, gt_labels, gt_boxes, pred_valid=None, dropped: int = 0) -> SampleMatch:
        """Score one sample; returns its match (per-category counts and per-prediction matches).
        `pred_valid`: see `match_sample` (unscorable predictions are false positives, and counted).
        `dropped`: entries of the answer the parser refused (malformed, a negative size): not scored, counted.

        Default mode: boxes given as numbers follow the parser's rule for boxes in text (`box_iou.box_problem`:
        9 finite numbers, sizes >= 0). A prediction that breaks it is dropped and counted in `dropped`, as
        the parser drops it (the match then lists the other predictions, in order); a ground-truth box that
        breaks it is a DataError, as `ground_truth` refuses it in a record. official_compat keeps both (the
        official IoU reads absolute sizes). Boxes that are not `[N, 9]` numbers are the caller's error (ValueError)."""
        if not self.official_compat:
            pred_labels, pred_boxes, pred_valid, refused = _without_malformed(pred_labels, pred_boxes, pred_valid)
            dropped = int(dropped) + refused
            for box in gt_boxes:
                problem = box_problem(box, "ground-truth bbox_3d")
                if problem:
                    raise DataError(f"{problem}: a ground-truth box must be 9 finite numbers with sizes >= 0")
        self._dropped_predictions += int(dropped)
        match = match_sample(pred_labels, pred_boxes, gt_labels, gt_boxes, self.iou_threshold,
                             self.euler_mode, self.official_compat, pred_valid)
        if pred_valid is not None:
            self._unscorable_predictions += int(np.sum(~np.asarray(pred_valid, dtype=bool)))
        for label, counts in match.counts.items():
            self.counts[label].add(counts)
        for label in gt_labels:
            self._gt_totals[label] += 1
        for threshold in self.ap_thresholds:
            ap_match = match if threshold == self.iou_threshold else match_sample(
                pred_labels, pred_boxes, gt_labels, gt_boxes, threshold, self.euler_mode, self.official_compat, pred_valid)
            for position, pm in enumerate(ap_match.predictions):
                # rank = (position in the answer, sample index): earlier entries count as more confident
                self._ap_records[threshold][pm.label].append((position, self._num_samples, pm.true_positive))
        self._num_samples += 1
        return match

    def compute(self) -> dict:
        """Scores as a JSON-ready dict:

        `per_category[label] = {precision, recall, f1, tp, fp, fn}`, `splits[name] = {precision,
        recall, f1, ap25, ap50}` (means over the split), `f1` (headline: cate31 mean F1), `num_samples`,
        `unscorable_predictions` (entries kept without a scorable box: false positives),
        `dropped_predictions` (entries the parser refused: not scored), `official_compat`.
        """
        per_category = {label: c.scores() for label, c in sorted(self.counts.items())}
        ap = {}
        for threshold in self.ap_thresholds:
            records = self._ap_records[threshold]
            for label in per_category:
                rows = records.get(label, [])
                flags = np.array([r[2] for r in rows], dtype=bool)
                ranks = np.array([r[0] * (self._num_samples + 1) + r[1] for r in rows], dtype=np.float64)
                ap.setdefault(label, {})[threshold] = _average_ap(flags, ranks, self._gt_totals.get(label, 0))
        for label in per_category:
            for threshold in self.ap_thresholds:
                per_category[label][f"ap{int(round(threshold * 100))}"] = ap[label][threshold]

        metric_names = ["precision", "recall", "f1"] + [f"ap{int(round(t * 100))}" for t in self.ap_thresholds]
        splits: dict[str, dict] = {}
        for metric in metric_names:
            means = split_means(per_category, lambda s, m=metric: 0.0 if s is None else s[m], self.official_compat)
            for split, mean in means.items():
                splits.setdefault(split, {})[metric] = mean
        headline = splits.get(HEADLINE_SPLIT, {}).get("f1")
        return {
            "f1": headline,
            "splits": splits,
            "per_category": per_category,
            "num_samples": self._num_samples,
            "unscorable_predictions": self._unscorable_predictions,
            "dropped_predictions": self._dropped_predictions,
            "iou_threshold": self.iou_threshold,
            "official_compat": self.official_compat,
        }
