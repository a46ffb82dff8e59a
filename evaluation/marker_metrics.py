"""Per-sample scores of the marker task (stage-1 pre-training): point error and label accuracy.

The official reconstruction metrics (reconstruction_metrics.py) compare whole scenes' point sets; a
training run also needs the direct per-sample reading of the joint task (method.md §2): how far the
predicted `pointmap` is from the marked pixel's true 3D point, and whether the predicted `label` names
what the pixel shows.

    point_error_m       ‖p − g‖ in metres (first frame's camera); a sample without a parsable point counts
                        as unparsed and is left out of the error statistics (reported as `unparsed`)
    label_accuracy      share of ALL samples whose label equals the true one (unparsed = wrong)

With `marked_frames` (the view index of each sample's marker, `pixel_coords[0]`), the same figures for
markers in the first frame and in the other frames (`by_marked_frame`): a point in the first frame needs
only its depth and image position, a point in another frame also the relative camera pose, so the split
says which of the two a model lacks.
"""

from __future__ import annotations

import numpy as np

from gap_mllm.output_parsing import parse_pointmap

from .confidence import bootstrap_interval, wilson_interval


def marker_scores(predictions: list[str], answers: list[str], marked_frames: list[int] | None = None) -> dict:
    """Scores of answer texts against the ground-truth answer texts (see the module docstring)."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    if marked_frames is not None:
        if len(marked_frames) != len(answers):
            raise ValueError(f"{len(marked_frames)} marked frames for {len(answers)} answers")
        out = marker_scores(predictions, answers)
        out["by_marked_frame"] = {}
        for name, keep in (("first", lambda v: v == 0), ("other", lambda v: v != 0)):
            chosen = [i for i, view in enumerate(marked_frames) if keep(int(view))]
            if chosen:
                out["by_marked_frame"][name] = marker_scores([predictions[i] for i in chosen], [answers[i] for i in chosen])
        return out
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
