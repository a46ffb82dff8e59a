"""Detection, grounding, captioning, reconstruction and spatial-QA metrics on hand-made cases, with the rules for
boxes of negated sizes (as the text path scores them) and for spatial-QA truths of zero or below."""

import json

import numpy as np
import pytest

from gap_mllm.processing.coordinates import euler_to_matrix, world_boxes_to_camera
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scoring.box_iou import box_iou
from gap_mllm.processing.scoring.caption_metrics import caption_scores, normalize_caption
from gap_mllm.processing.scoring.detection_metrics import DetectionEvaluator, match_sample
from gap_mllm.processing.scoring.detection_parsing import detection_predictions
from gap_mllm.processing.scoring.grounding_metrics import (
    UNSCORED_NO_BOX,
    GroundingEvaluator,
    grounding_scores,
    score_grounding,
)
from gap_mllm.processing.scoring.reconstruction_metrics import ReconstructionEvaluator, point_score, umeyama_sim3
from gap_mllm.processing.tasks.spatial_qa import mean_relative_accuracy, score_answer, spatial_qa_scores
from gap_mllm.tasks_gap_mllm import parse_grounding

OUTER = [0, 0, 0, 2, 2, 2, 0, 0, 0]  # volume 8
QUARTER = [0, 0, 0, 1, 1, 2, 0, 0, 0]  # nested, volume 2: IoU exactly 0.25
HALF = [0, 0, 0, 2, 1, 2, 0, 0, 0]  # nested, volume 4: IoU exactly 0.5
FAR = [9, 9, 9, 1, 1, 1, 0, 0, 0]


def test_threshold_boxes_are_exact():
    assert box_iou(OUTER, QUARTER) == 0.25
    assert box_iou(OUTER, HALF) == 0.5


# ------------------------------------------------------------------------------------------ detection


def test_detection_iou_exactly_at_threshold_is_not_a_match():
    """Detection uses IoU > 0.25 (strict): a prediction at exactly 0.25 is an FP and the GT an FN."""
    m = match_sample(["chair"], [QUARTER], ["chair"], [OUTER])
    assert (m.counts["chair"].tp, m.counts["chair"].fp, m.counts["chair"].fn) == (0, 1, 1)
    m = match_sample(["chair"], [HALF], ["chair"], [OUTER])
    assert (m.counts["chair"].tp, m.counts["chair"].fp, m.counts["chair"].fn) == (1, 0, 0)


def test_detection_greedy_in_output_order():
    """The first prediction takes the GT even though a later one overlaps it better."""
    m = match_sample(["chair", "chair"], [HALF, OUTER], ["chair"], [OUTER])
    assert (m.counts["chair"].tp, m.counts["chair"].fp, m.counts["chair"].fn) == (1, 1, 0)
    assert [p.true_positive for p in m.predictions] == [True, False]
    assert m.predictions[0].iou == 0.5 and m.predictions[1].gt_index == -1  # GT already used


def test_detection_ties_keep_first_gt_and_labels_are_case_sensitive():
    m = match_sample(["table", "table"], [OUTER, OUTER], ["table", "table"], [OUTER, OUTER])
    assert [p.gt_index for p in m.predictions] == [0, 1]
    m = match_sample(["Chair"], [OUTER], ["chair"], [OUTER])
    assert m.counts["Chair"].fp == 1 and m.counts["chair"].fn == 1


def test_detection_precision_recall_f1_and_splits():
    ev = DetectionEvaluator()
    # sample 1: 2 chairs found, 1 false chair, 1 table missed, 1 lamp found
    ev.add(["chair", "chair", "chair", "lamp"], [OUTER, [5, 0, 0, 1, 1, 1, 0, 0, 0], FAR, HALF],
           ["chair", "chair", "table", "lamp"], [OUTER, [5, 0, 0, 1, 1, 1, 0, 0, 0], [0, 5, 0, 1, 1, 1, 0, 0, 0], OUTER])
    out = ev.compute()
    chair = out["per_category"]["chair"]
    assert (chair["tp"], chair["fp"], chair["fn"]) == (2, 1, 0)
    assert chair["precision"] == pytest.approx(2 / 3) and chair["recall"] == 1.0
    assert chair["f1"] == pytest.approx(0.8)
    assert out["per_category"]["table"]["f1"] == 0.0 and out["per_category"]["lamp"]["f1"] == 1.0
    # clean mode: means over the categories present (chair, table, lamp); cate8 has chair and table
    assert out["splits"]["cate31"]["f1"] == pytest.approx((0.8 + 0 + 1) / 3)
    assert out["splits"]["cate8"]["f1"] == pytest.approx(0.4)
    assert out["f1"] == out["splits"]["cate31"]["f1"]


def test_detection_official_lists_worked_example():
    """lamp F1 1, chair F1 0: official cate31 = (1 + 1 + 0) / 31 (duplicated lamp), clean = 1/2."""
    official, clean = DetectionEvaluator(official_compat=True), DetectionEvaluator()
    for ev in (official, clean):
        ev.add(["lamp", "chair"], [OUTER, FAR], ["lamp", "chair"], [OUTER, OUTER])
    assert official.compute()["f1"] == pytest.approx(2 / 31)
    assert clean.compute()["f1"] == pytest.approx(0.5)
    # "towel" gets credit only in the clean lists ("towl" in the official one)
    official, clean = DetectionEvaluator(official_compat=True), DetectionEvaluator()
    for ev in (official, clean):
        ev.add(["towel"], [OUTER], ["towel"], [OUTER])
    assert official.compute()["f1"] == 0.0 and clean.compute()["f1"] == 1.0


def test_detection_official_euler_reading_changes_scores():
    """A prediction equal to the GT in R_s but tilted is still IoU 1 in both readings (same reading on
    both sides), but a box written in the other convention scores differently."""
    gt = np.array([0, 0, 2, 1, 0.5, 2, 0.6, 0.8, 0.4])
    from gap_mllm.processing.coordinates import matrix_to_euler

    same_box_official_angles = gt.copy()
    same_box_official_angles[6:9] = matrix_to_euler(euler_to_matrix(gt[6:9], "zxy"), "official")
    clean = match_sample(["a"], [same_box_official_angles], ["a"], [gt])
    official = match_sample(["a"], [same_box_official_angles], ["a"], [gt], euler_mode="official")
    assert clean.predictions[0].iou < 0.9
    assert official.predictions[0].iou < 0.9
    assert match_sample(["a"], [gt], ["a"], [gt], euler_mode="official").predictions[0].iou == pytest.approx(1.0, abs=1e-8)


def test_detection_ap_uses_output_order():
    ev = DetectionEvaluator()
    ev.add(["chair", "chair"], [FAR, OUTER], ["chair"], [OUTER])
    out = ev.compute()["per_category"]["chair"]
    assert out["ap25"] == pytest.approx(0.5)  # FP ranked first, then the TP: precision 1/2 at recall 1
    ev = DetectionEvaluator()
    ev.add(["chair", "chair"], [OUTER, FAR], ["chair"], [OUTER])
    assert ev.compute()["per_category"]["chair"]["ap25"] == pytest.approx(1.0)
    ev = DetectionEvaluator()
    ev.add(["chair"], [QUARTER], ["chair"], [OUTER])  # IoU 0.25: neither AP25 (strict) nor AP50
    assert ev.compute()["per_category"]["chair"]["ap25"] == 0.0


# ------------------------------------------------------------------------------------------ grounding


def test_grounding_thresholds_are_inclusive_and_failures_score_zero():
    ev = GroundingEvaluator()
    assert ev.add(QUARTER, OUTER).iou == 0.25
    assert ev.add(HALF, OUTER).iou == 0.5
    failed = ev.add(None, OUTER)  # failed parse: counted as 0, reported by reason
    assert failed.iou is None and failed.reason == UNSCORED_NO_BOX
    with pytest.raises(ValueError):
        ev.add([1, 2, 3], OUTER)  # a malformed box from the caller is an error, not a silent 0
    out = ev.compute()
    assert out["acc@0.25"] == pytest.approx(2 / 3) and out["acc@0.5"] == pytest.approx(1 / 3)
    assert out["miou"] == pytest.approx(0.75 / 3)
    assert out["unscored"] == {UNSCORED_NO_BOX: 1} and out["num_excluded"] == 0
    assert grounding_scores([]) == {"num_samples": 0, "miou": 0.0, "acc@0.25": 0.0, "hits@0.25": 0, "acc@0.5": 0.0, "hits@0.5": 0}


def test_grounding_camera_to_world_transform():
    rng = np.random.default_rng(0)
    yaw = 0.4
    pose = np.eye(4)
    pose[:3, :3] = euler_to_matrix([yaw, 0.3, -0.2])
    pose[:3, 3] = [1.0, -2.0, 0.5]
    align = np.eye(4)
    align[:3, :3] = euler_to_matrix([0.2, 0, 0])
    gt_world = np.array([1.5, 0.2, 0.8, 0.6, 1.2, 0.9, 0.3, 0.0, 0.0])  # gravity-aligned
    pred_camera = world_boxes_to_camera(gt_world[None], pose, align)[0]
    assert score_grounding(pred_camera, gt_world, pose, align).iou == pytest.approx(1.0, abs=1e-8)
    # gravity-aligned GT: the official Euler reading gives the same number
    assert score_grounding(pred_camera, gt_world, pose, align, official_compat=True).iou == pytest.approx(1.0, abs=1e-8)
    shifted = pred_camera + np.r_[rng.normal(0, 0.05, 3), np.zeros(6)]
    assert 0.3 < score_grounding(shifted, gt_world, pose, align).iou < 1.0


# ----------------------------------------------------------------------------------------- captioning


def test_caption_normalisation_is_official():
    assert normalize_caption("A Chair, next to the bed.") == "sos a chair ,  next to the bed .  eos"


def test_caption_gate_and_perfect_predictions():
    refs = [["a brown chair next to the table."], ["the white bed is in the corner of the room."],
            ["a small lamp on the desk, near the window."]]
    preds = [r[0] for r in refs]
    out = caption_scores(preds, refs, [1.0, 0.5, 0.7], meteor=False)
    assert out["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert out["rouge_l"] == pytest.approx(1.0, abs=1e-9)
    assert out["cider"] == pytest.approx(10.0, abs=1e-6)  # CIDEr-D of exact matches is 10
    assert out["num_gated"] == 0 and out["meteor"] is None
    gated = caption_scores(preds, refs, [1.0, 0.49999, 0.7], meteor=False)  # gate is IoU >= 0.5
    assert gated["num_gated"] == 1
    assert gated["per_sample"]["rouge_l"][1] < 0.5 and gated["per_sample"]["rouge_l"][0] == pytest.approx(1.0)


def test_caption_empty_prediction_still_scores_sos_eos():
    """Worked example of the sos/eos quirk: "" vs "a chair ." -> BLEU-1 = exp(1 - 5/2)."""
    out = caption_scores(["anything"], [["a chair."]], [0.1], meteor=False)
    assert out["bleu1"] == pytest.approx(np.exp(1 - 5 / 2), rel=1e-6)


def test_caption_input_validation():
    with pytest.raises(ValueError):
        caption_scores(["a"], [[]], meteor=False)
    with pytest.raises(ValueError):
        caption_scores(["a", "b"], [["a"]], meteor=False)


def test_caption_meteor_is_off_in_official_mode():
    # (METEOR through Java: tests/test_eval_caption_scorers.py, one JVM start for the whole suite)
    assert caption_scores(["x"], [["y"]], official_compat=True)["meteor"] is None


# ------------------------------------------------------------------------------------- reconstruction


def test_reconstruction_raw_and_aligned():
    rng = np.random.default_rng(0)
    gt = rng.normal(size=(12, 3))
    rotation = euler_to_matrix([0.3, -0.2, 0.5])
    pred = 1.7 * gt @ rotation.T + np.array([0.5, -1.0, 2.0])  # a Sim(3) copy
    scale, rot, trans = umeyama_sim3(pred, gt)
    np.testing.assert_allclose(scale * pred @ rot.T + trans, gt, atol=1e-10)
    ev = ReconstructionEvaluator()
    for p, g in zip(pred, gt):
        ev.add("scene_a", p, g)
    for g in gt[:5]:
        ev.add("scene_b", g, g)
    ev.add("scene_b", None, gt[0])  # parse failure: dropped from both sides
    out = ev.compute()
    assert out["num_scenes"] == 2 and out["num_dropped"] == 1 and out["num_points"] == 17
    assert out["per_scene"]["scene_b"]["raw"]["overall"] == 0.0
    assert out["per_scene"]["scene_a"]["raw"]["overall"] > 0.5
    assert out["aligned"]["overall"] == pytest.approx(0.0, abs=1e-9)
    assert out["raw"]["accuracy"] == pytest.approx(out["per_scene"]["scene_a"]["raw"]["accuracy"] / 2)


def test_reconstruction_degenerate_scene_is_not_aligned():
    ev = ReconstructionEvaluator()
    ev.add("s", [0, 0, 0], [0, 0, 1])
    ev.add("s", [1, 0, 0], [1, 0, 1])
    out = ev.compute()
    assert out["num_scenes_unaligned"] == 1 and out["aligned"]["overall"] is None
    assert out["raw"]["accuracy"] == pytest.approx(1.0)
    official = ReconstructionEvaluator(official_compat=True)
    official.add("s", [0, 0, 0], [0, 0, 1])
    assert np.isnan(official.compute()["aligned"]["overall"])  # the official code yields NaN here


def test_point_score():
    assert point_score([0, 0, 0], [0, 0.3, 0.4]) == pytest.approx(0.5)
    assert point_score([0, 0, 0], [3, 0, 0]) == 0.0 and point_score(None, [0, 0, 0]) == 0.0


# ----------------------------------------------------------------------------------------- spatial QA


def test_mean_relative_accuracy_levels():
    assert mean_relative_accuracy(10.0, 10.0) == 1.0
    assert mean_relative_accuracy(13.0, 10.0) == pytest.approx(0.5)  # C in {.50, .55, .60, .65, .70}
    assert mean_relative_accuracy(15.0, 10.0) == pytest.approx(0.1)  # boundary 0.5 <= 1 - 0.5 included
    assert mean_relative_accuracy(16.0, 10.0) == 0.0
    assert mean_relative_accuracy(None, 10.0) == 0.0


def test_spatial_qa_per_type_and_overall():
    out = spatial_qa_scores(
        ["B. chair", "c", "3", "2.6 meters", "banana"],
        ["B", "A", "3", "2.0", "4"],
        ["object_rel_distance", "object_rel_distance", "object_counting", "object_abs_distance", "object_counting"],
    )
    assert out["per_sample"] == [1.0, 0.0, 1.0, pytest.approx(0.5), 0.0]  # |2.6-2|/2 = 0.3 -> C <= 0.7: 5 of 10
    assert out["per_type"]["object_rel_distance"] == 0.5
    assert out["per_type"]["object_counting"] == 0.5
    assert out["overall"] == pytest.approx((0.5 + 0.5 + 0.5) / 3)
    with pytest.raises(ValueError):
        spatial_qa_scores(["1"], ["1"], ["not_a_type"])


# ---------------------------------------------------- negated sizes given to the box-level evaluators


UNIT_BOX = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]


NEGATED = [0.0, 0.0, 2.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0]  # the same point set, negated sizes


def test_grounding_add_scores_a_negated_box_as_no_box_like_the_text_path():
    evaluator = GroundingEvaluator()
    score = evaluator.add(NEGATED, UNIT_BOX)
    assert (score.iou, score.reason, score.detail) == (None, UNSCORED_NO_BOX,
                                                         "the predicted bbox_3d has a negative size [-1.0, -1.0, -1.0]")
    parsed = parse_grounding(json.dumps({"bbox_3d": NEGATED}))  # the same box as stage-2 text: no box either
    assert parsed.box is None and parsed.reason == "bbox_3d has a negative size [-1.0, -1.0, -1.0]"
    assert evaluator.add(UNIT_BOX, UNIT_BOX).iou == pytest.approx(1.0)
    metrics = evaluator.compute()
    assert metrics["miou"] == pytest.approx(0.5) and metrics["acc@0.25"] == 0.5 and metrics["unscored"] == {UNSCORED_NO_BOX: 1}
    nan = GroundingEvaluator().add([0, 0, 2, 1, 1, float("nan"), 0, 0, 0], UNIT_BOX)  # not finite: no box either
    assert (nan.reason, nan.detail) == (UNSCORED_NO_BOX, "the predicted bbox_3d contains a non-numeric or non-finite value")
    with pytest.raises(ValueError):  # 6 numbers are not a box: the caller's error (tested above)
        GroundingEvaluator().add([0, 0, 2, 1, 1, 1], UNIT_BOX)
    official = GroundingEvaluator(official_compat=True)  # the official IoU reads absolute sizes: kept there
    assert official.add(NEGATED, UNIT_BOX).iou == pytest.approx(1.0)


def test_detection_add_drops_a_negated_box_and_counts_it_like_the_text_path():
    box_level = DetectionEvaluator()
    box_level.add(["chair", "table"], [NEGATED, UNIT_BOX], ["chair", "table"], [UNIT_BOX, UNIT_BOX])
    text_level = DetectionEvaluator()  # the same answer as text, through the parser
    answer = json.dumps([{"label": "chair", "bbox_3d": NEGATED}, {"label": "table", "bbox_3d": UNIT_BOX}])
    pred = detection_predictions(answer)
    text_level.add(pred.labels, pred.boxes, ["chair", "table"], [UNIT_BOX, UNIT_BOX], pred.valid, pred.dropped)
    assert box_level.compute() == text_level.compute()
    scores = box_level.compute()
    assert scores["per_category"]["chair"]["f1"] == 0.0 and scores["per_category"]["table"]["f1"] == 1.0
    assert scores["dropped_predictions"] == 1
    with pytest.raises(DataError, match=r"ground-truth bbox_3d has a negative size \[-1\.0, -1\.0, -1\.0\]"):
        DetectionEvaluator().add(["chair"], [UNIT_BOX], ["chair"], [NEGATED])
    official = DetectionEvaluator(official_compat=True)
    official.add(["chair"], [NEGATED], ["chair"], [UNIT_BOX])
    assert official.compute()["per_category"]["chair"]["f1"] == 1.0  # the official reading, as documented


# ------------------------------------------------------------- spatial QA on a zero or negative truth


def test_an_exact_answer_on_a_zero_truth_scores_one():
    assert score_answer("0", "0", "object_counting") == 1.0
    assert score_answer("0.0 objects", "0", "object_counting") == 1.0
    assert score_answer("1", "0", "object_counting") == 0.0  # infinite relative error: no level passes
    assert score_answer("none", "0", "object_counting") == 0.0  # no number
    assert mean_relative_accuracy(0.0, 0.0) == 1.0 and mean_relative_accuracy(0.01, 0.0) == 0.0
    with pytest.raises(ValueError, match="VSI-Bench divides by it"):
        score_answer("0", "0", "object_counting", official_compat=True)


def test_a_negative_truth_is_divided_by_its_size_and_a_non_number_is_refused():
    assert score_answer("-2", "-2", "object_abs_distance") == 1.0
    assert score_answer("-3", "-2", "object_abs_distance") == pytest.approx(0.1)  # |-3 - -2| / 2 = 0.5
    assert score_answer("5", "-2", "object_abs_distance", official_compat=True) == 1.0  # VSI-Bench: negative ratio
    with pytest.raises(ValueError, match=r"numerical ground truth 'two' of a object_counting question is not a finite number"):
        score_answer("0", "two", "object_counting")
