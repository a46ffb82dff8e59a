"""Spatial QA with VSI-Bench scoring (thinking-in-space `vsibench/utils.py` semantics).

Answer extraction (`fuzzy_matching`): the first space-separated word of the prediction with trailing
dots removed ("B. chair" -> "B", "3.5 meters" -> "3.5").

    multiple choice  accuracy: 1 iff the extracted word equals the ground-truth letter, case-insensitive
    numerical        mean relative accuracy (MRA): the mean over the 10 confidence levels
                     C = 0.50, 0.55, ..., 0.95 of [ |pred - gt| / gt <= 1 - C ] (non-strict);
                     an unparsable number (or a zero ground truth) scores 0.

Aggregation: mean score per question type; `object_rel_direction_{easy,medium,hard}` are merged into
`object_rel_direction` (their mean, as VSI-Bench reports them); "overall" = mean over the question
types present (each type weighs the same, whatever its number of questions).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

NUMERICAL_TYPES = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
CHOICE_TYPES = ("object_rel_distance", "object_rel_direction", "object_rel_direction_easy",
                "object_rel_direction_medium", "object_rel_direction_hard", "route_planning", "obj_appearance_order")
DIRECTION_SUBTYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
MRA_LEVELS = np.linspace(0.5, 0.95, 10)


def fuzzy_matching(prediction: str) -> str:
    """VSI-Bench answer extraction: first space-separated word, trailing dots stripped."""
    return prediction.strip().split(" ")[0].rstrip(".").strip()


def _to_float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def mean_relative_accuracy(prediction: float | None, target: float) -> float:
    """MRA over C in {0.50, ..., 0.95}: mean of [|p - t| / t <= 1 - C]; 0.0 if p is None or t == 0."""
    if prediction is None or not target:
        return 0.0
    relative = abs(prediction - target) / target
    return float(np.mean(relative <= 1.0 - MRA_LEVELS))


def is_numerical(question_type: str) -> bool:
    if question_type in NUMERICAL_TYPES:
        return True
    if question_type in CHOICE_TYPES:
        return False
    raise ValueError(f"unknown VSI-Bench question type {question_type!r}")


def score_answer(prediction: str, ground_truth: str, question_type: str) -> float:
    """Score of one answer in [0, 1] (MRA for numerical types, exact-match accuracy for choices)."""
    answer = fuzzy_matching(prediction or "")
    if is_numerical(question_type):
        return mean_relative_accuracy(_to_float(answer), _to_float(ground_truth) or 0.0)
    return 1.0 if answer.lower() == str(ground_truth).strip().lower() else 0.0


def aggregate_spatial_scores(scores, question_types) -> dict:
    """`{"overall", "per_type": {type: mean}, "counts": {type: n}, "num_samples"}` (see module docstring)."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for score, qtype in zip(scores, question_types):
        by_type[qtype].append(float(score))
    per_type = {t: float(np.mean(v)) for t, v in sorted(by_type.items())}
    counts = {t: len(v) for t, v in sorted(by_type.items())}
    subtypes = [per_type.pop(t) for t in DIRECTION_SUBTYPES if t in per_type]
    if subtypes and "object_rel_direction" not in per_type:
        per_type["object_rel_direction"] = float(np.mean(subtypes))
    overall = float(np.mean(list(per_type.values()))) if per_type else 0.0
    return {"overall": overall, "per_type": per_type, "counts": counts, "num_samples": sum(counts.values())}


def spatial_qa_scores(predictions, ground_truths, question_types) -> dict:
    """Score and aggregate; also returns `per_sample` scores in input order."""
    predictions, ground_truths, question_types = list(predictions), list(ground_truths), list(question_types)
    if not len(predictions) == len(ground_truths) == len(question_types):
        raise ValueError("predictions, ground_truths and question_types must have the same length")
    scores = [score_answer(p, g, t) for p, g, t in zip(predictions, ground_truths, question_types)]
    out = aggregate_spatial_scores(scores, question_types)
    out["per_sample"] = scores
    return out
