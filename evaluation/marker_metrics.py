"""Per-sample scores of the marker task (stage-1 pre-training): point error and label accuracy.

The official reconstruction metrics (reconstruction_metrics.py) compare whole scenes' point sets; a
training run also needs the direct per-sample reading of the joint task (method.md §2): how far the
predicted `pointmap` is from the marked pixel's true 3D point, and whether the predicted `label` names
what the pixel shows.

    point_error_m       ‖p − g‖ in metres (first frame's camera); a sample without a parsable point counts
                        as unparsed and is left out of the error statistics (reported as `unparsed`)
    label_accuracy      share of ALL samples whose label equals the true one (unparsed = wrong)
"""

from __future__ import annotations

import numpy as np

from gap_mllm.output_parsing import parse_pointmap

from .confidence import bootstrap_interval, wilson_interval


def marker_scores(predictions: list[str], answers: list[str]) -> dict:
    """Scores of answer texts against the ground-truth answer texts (see the module docstring)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    errors, correct, unparsed = [], 0, 0
    for prediction, answer in zip(predictions, answers):
        truth, guess = parse_pointmap(answer), parse_pointmap(prediction)
        if truth.point is None:
            raise ValueError(f"ground-truth answer is not a pointmap: {answer!r}")
        if guess.point is None:
            unparsed += 1
        else:
            errors.append(float(np.linalg.norm(np.asarray(guess.point) - np.asarray(truth.point))))
        correct += int(guess.label is not None and guess.label == truth.label)
    n = len(answers)
    out = {"num_samples": n, "unparsed": unparsed, "label_accuracy": correct / n if n else 0.0,
           "label_accuracy_ci95": wilson_interval(correct, n) if n else None}
    if errors:
        out.update(point_error_m_median=float(np.median(errors)), point_error_m_mean=float(np.mean(errors)),
                   point_error_m_median_ci95=bootstrap_interval(errors, np.median))
    return out
