"""Detection answers in the official reading (official_compat=True) versus the tolerant default.

The demo answer is the official demo sample's target text (`demo/3d_video_object_detection/sample.json`);
the others are answers the two readings score differently, each for one documented reason.
"""

import json

import numpy as np
import pytest

from gap_mllm.evaluation.tasks import get_task
from gap_mllm.processing.scoring.detection_metrics import DetectionEvaluator
from gap_mllm.processing.scoring.detection_parsing import NO_LABEL, detection_predictions, parse_detection_official

DEMO_ANSWER = (
    '```json\n[\n'
    '\t{"label": "curtain", "bbox_3d": [-1.41, -0.5, 1.28, 0.56, 1.7, 1.51, 2.38, 1.17, 2.96]},\n'
    '\t{"label": "pillow", "bbox_3d": [0.83, -0.0, 2.08, 0.32, 0.46, 0.33, 0.79, 1.17, 2.96]},\n'
    '\t{"label": "table", "bbox_3d": [-0.16, 0.5, 1.44, 0.65, 1.07, 0.6, -2.35, 1.17, 2.96]},\n'
    '\t{"label": "couch", "bbox_3d": [0.44, 0.08, 2.26, 0.98, 1.88, 0.83, 0.81, 1.17, 2.96]},\n'
    '\t{"label": "radiator", "bbox_3d": [-1.55, 0.39, 1.55, 0.18, 1.12, 0.51, 2.36, 1.17, 2.96]},\n'
    '\t{"label": "picture", "bbox_3d": [0.55, -1.15, 2.3, 0.06, 1.11, 0.9, 0.79, 1.17, 2.96]},\n'
    '\t{"label": "door", "bbox_3d": [-2.4, -0.1, 0.42, 0.22, 1.17, 2.13, 2.36, 1.17, 2.96]},\n'
    '\t{"label": "pillow", "bbox_3d": [0.04, -0.29, 2.55, 0.27, 0.46, 0.39, 0.79, 1.17, 2.96]}\n'
    ']```'
)
CHAIR = [0.5, 0.0, 2.0, 0.6, 0.9, 0.6, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("official_compat", [False, True])
def test_the_demo_answer_reads_the_same_in_both_modes(official_compat):
    pred = detection_predictions(DEMO_ANSWER, official_compat)
    assert pred.labels == ["curtain", "pillow", "table", "couch", "radiator", "picture", "door", "pillow"]
    assert pred.boxes.shape == (8, 9) and pred.valid.all() and pred.reason is None
    assert pred.boxes[1].tolist() == [0.83, -0.0, 2.08, 0.32, 0.46, 0.33, 0.79, 1.17, 2.96]
    assert pred.boxes[-1, 2] == 2.55


def score(answer: str, official_compat: bool, gt=(("chair", CHAIR),)):
    records = [{"images": ["s/00000.jpg"], "boxes": [{"label": label, "bbox_3d": box} for label, box in gt]}]
    rows, summary = get_task("detection").evaluate(records, [[answer]], official_compat=official_compat)
    return rows[0], summary


def chair_counts(summary):
    counts = summary["per_category"].get("chair", {"tp": 0, "fp": 0, "fn": 1})
    return counts["tp"], counts["fp"], counts["fn"]


DIFFERENT = {
    # key "box_3d" (the wording of the official prompt): read by default, ignored officially
    "box_3d key": ('[{"label": "chair", "box_3d": %s}]' % json.dumps(CHAIR), (1, 0, 0), (0, 0, 1)),
    # pretty-printed JSON: one value per line, no line is a whole dict
    "multi-line JSON": (json.dumps([{"label": "chair", "bbox_3d": CHAIR}], indent=2), (1, 0, 0), (0, 0, 1)),
    # a one-line list: the line is a list, not a dict, so the official reading drops it
    "one-line list": (json.dumps([{"label": "chair", "bbox_3d": CHAIR}]), (1, 0, 0), (0, 0, 1)),
    # 8 numbers: dropped by default (not a box), a false positive officially (its IoU raises -> 0)
    "8-number box": ('{"label": "chair", "bbox_3d": %s}\n{"label": "chair", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8]}'
                     % json.dumps(CHAIR), (1, 0, 0), (1, 1, 0)),
    # numbers given as strings: not a box by default, float() reads them officially
    "string numbers": ('{"label": "chair", "bbox_3d": %s}' % json.dumps([str(v) for v in CHAIR]), (0, 0, 1), (1, 0, 0)),
}


@pytest.mark.parametrize("name", list(DIFFERENT))
def test_answers_the_two_readings_score_differently(name):
    answer, default_counts, official_counts = DIFFERENT[name]
    assert chair_counts(score(answer, False)[1]) == default_counts
    assert chair_counts(score(answer, True)[1]) == official_counts


def test_unscorable_official_entries_are_counted_and_reported():
    row, summary = score('{"label": "chair", "bbox_3d": [1, 2]}\n{"label": "chair", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, NaN]}', True)
    # "NaN" is not a literal: that line is skipped; the 2-number box is kept and is a false positive
    assert summary["unscorable_predictions"] == 1 and chair_counts(summary) == (0, 1, 1)
    assert row["parsed"] == [{"label": "chair", "bbox_3d": [1.0, 2.0]}]
    assert "1 line(s) are not a literal" in row["parse_error"] and "not 9 finite numbers" in row["parse_error"]


def test_official_strip_and_line_rules():
    # leading "json" without fence, trailing commas, tabs; a label-only line is skipped (no bbox_3d)
    text = 'json\n\t{"label": "chair", "bbox_3d": %s},\n{"label": "lamp"},\n' % json.dumps(CHAIR)
    pred = parse_detection_official(text)
    assert pred.labels == ["chair"] and pred.reason == "1 value(s) lack a numeric bbox_3d or a label"
    # a dict without a label is skipped; a non-string label is kept but can never match
    pred = parse_detection_official('{"bbox_3d": %s}\n{"label": 7, "bbox_3d": %s}' % (json.dumps(CHAIR), json.dumps(CHAIR)))
    assert pred.labels == ["7 (not a string)"] and pred.valid.tolist() == [True]


def test_official_reading_never_executes_text(tmp_path):
    target = tmp_path / "pwned"
    line = '{"label": "chair", "bbox_3d": __import__("pathlib").Path(%r).write_text("x")}' % str(target)
    assert parse_detection_official(line).labels == [] and not target.exists()


def test_default_reading_keeps_unlabelled_entries_as_unmatched_predictions():
    pred = detection_predictions('[{"bbox_3d": %s}]' % json.dumps(CHAIR))
    assert pred.labels == [NO_LABEL]
    ev = DetectionEvaluator()
    ev.add(pred.labels, pred.boxes, ["chair"], [CHAIR])
    out = ev.compute()
    assert out["per_category"][NO_LABEL]["fp"] == 1 and out["per_category"]["chair"]["fn"] == 1


def test_unscorable_predictions_never_reach_the_iou():
    ev = DetectionEvaluator(official_compat=True)
    match = ev.add(["chair", "chair"], np.array([np.zeros(9), CHAIR]), ["chair"], [CHAIR], pred_valid=[False, True])
    assert [m.true_positive for m in match.predictions] == [False, True] and match.predictions[0].iou == 0.0
    with pytest.raises(ValueError, match="pred_valid"):
        ev.add(["chair"], [CHAIR], ["chair"], [CHAIR], pred_valid=[True, False])
