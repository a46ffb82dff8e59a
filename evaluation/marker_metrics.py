"""Per-sample scores of the marker task (stage-1 pre-training): point error and label accuracy.

The official reconstruction metrics (processing/scoring/reconstruction_metrics.py) compare whole scenes' point sets; a
training run also needs the direct per-sample reading of the joint task (docs/method.md §3.6): how far the
predicted `pointmap` is from the marked pixel's true 3D point, and whether the predicted `label` names
what the pixel shows.

    point_error_m       ‖p − g‖ in metres (first frame's camera); a sample without a parsable point counts
                        as unparsed and is left out of the error statistics (reported as `unparsed`)
    label_accuracy      share of ALL samples whose label equals the true one (unparsed = wrong)

With `marked_frames` (the view index of each sample's marker, `pixel_coords[0]`), the same figures for
markers in the first frame and in the other frames (`by_marked_frame`): a point in the first frame needs
only its depth and image position, a point in another frame also the relative camera pose, so the split
says which of the two a model lacks.

`paired_marker_difference` compares two models answering the same marker samples (one of the ablation's
arms against another): the difference of their median point errors with a paired bootstrap interval, overall
and by marked frame, on the samples both answered with a parsable point.
"""

from __future__ import annotations

import numpy as np

from gap_mllm.tasks_gap_mllm import parse_pointmap

from .confidence import bootstrap_interval, paired_difference, wilson_interval


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
    all_errors = point_errors(predictions, answers)
    errors = all_errors[np.isfinite(all_errors)]
    unparsed = int(all_errors.size - errors.size)
    correct = sum(int(guess.label is not None and guess.label == truth.label)
                  for guess, truth in zip(map(parse_pointmap, predictions), map(parse_pointmap, answers)))
    n = len(answers)
    out = {"num_samples": n, "unparsed": unparsed, "label_accuracy": correct / n if n else 0.0,
           "label_accuracy_ci95": wilson_interval(correct, n) if n else None}
    if errors.size:
        out.update(point_error_m_median=float(np.median(errors)), point_error_m_mean=float(np.mean(errors)),
                   point_error_m_median_ci95=bootstrap_interval(errors, np.median))
    return out


def point_errors(predictions: list[str], answers: list[str]) -> np.ndarray:
    """[N] metres between each predicted and true point; NaN where the prediction holds no parsable point."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answers")
    errors = np.full(len(answers), np.nan)
    for i, (prediction, answer) in enumerate(zip(predictions, answers)):
        truth, guess = parse_pointmap(answer), parse_pointmap(prediction)
        if truth.point is None:
            raise ValueError(f"ground-truth answer is not a pointmap: {answer!r}")
        if guess.point is not None:
            errors[i] = float(np.linalg.norm(np.asarray(guess.point) - np.asarray(truth.point)))
    return errors


def paired_marker_difference(predictions_a: list[str], predictions_b: list[str], answers: list[str],
                             marked_frames: list[int], resamples: int = 1000, groups=None) -> dict:
    """Median point error of A minus that of B on the same samples, overall and by marked frame ("first",
    "other"): `paired_difference` (bootstrap over the samples both answered with a point, drawn jointly; with
    `groups`, one label per sample such as its scene, over whole groups) and how many samples an unparsable answer
    of either model left out (`num_left_out`)."""
    if not len(predictions_a) == len(predictions_b) == len(answers) == len(marked_frames):
        raise ValueError(f"{len(predictions_a)} and {len(predictions_b)} predictions, {len(answers)} answers and "
                         f"{len(marked_frames)} marked frames: the two models must answer the same samples")
    if groups is not None and len(groups) != len(answers):
        raise ValueError(f"groups: {len(groups)} labels for {len(answers)} samples; give one group (e.g. scene) per sample")
    errors_a, errors_b = point_errors(predictions_a, answers), point_errors(predictions_b, answers)
    frames = np.asarray(marked_frames, dtype=np.int64)
    both = np.isfinite(errors_a) & np.isfinite(errors_b)
    out = {}
    for name, part in (("all", np.ones_like(both)), ("first", frames == 0), ("other", frames != 0)):
        keep = part & both
        if keep.any():
            kept_groups = None if groups is None else [groups[i] for i in np.flatnonzero(keep)]
            out[name] = {**paired_difference(errors_a[keep], errors_b[keep], np.median, resamples=resamples,
                                             groups=kept_groups),
                         "num_samples": int(keep.sum()), "num_left_out": int((part & ~both).sum()),
                         "median_a": float(np.median(errors_a[keep])), "median_b": float(np.median(errors_b[keep]))}
    return out
