"""The miniature's results table: an arm whose stage 2 was not trained shows its stage-1 cells and "—"
elsewhere (never a zero), and the table says where each stage was trained."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from lab.mini.arms import ARMS
from lab.mini.report import arm_results, results_markdown, stage_provenance

GEOMETRY_KEYS = ("depth_abs_rel", "depth_delta_1.25", "rotation_error_deg_median", "translation_direction_error_deg_median",
                 "translation_error_m_median", "point_error_m")


def _baselines():
    accuracy = {"acc@0.25": 0.02, "acc@0.25_ci95": [0.01, 0.03], "acc@0.5": 0.0, "acc@0.5_ci95": [0.0, 0.01]}
    return {"grounding": {name: accuracy for name in ("constant_mean_box", "best_constant_box", "random_same_category")},
            "detection": {"category_mean_boxes": {"f1": 0.1, "f1_ci95": [0.09, 0.11]}},
            "captioning": {"constant_caption": {"cider": 0.05, "cider_ci95": [0.04, 0.06]}},
            "marker": {"constant_point": {"point_error_m_median": 1.5, "point_error_m_median_ci95": [1.4, 1.6],
                                          "label_accuracy": 0.2, "label_accuracy_ci95": [0.18, 0.22]}}}


def test_a_stage1_only_arm_has_empty_stage2_cells_and_the_table_names_the_devices(tmp_path):
    run = SimpleNamespace(out=tmp_path, results_dir=lambda *parts: tmp_path.joinpath("results", *parts))
    (tmp_path / "stages" / "no_geometry_s0" / "stage1").mkdir(parents=True)
    (tmp_path / "stages" / "no_geometry_s0" / "stage1" / "stage_done.json").write_text(json.dumps(
        {"recipe": "mini_stage1.yaml", "global_step": 1000, "overrides": ["device=cuda"]}))
    row = arm_results(run, ARMS["no_geometry_s0"])
    assert row["stage2_evaluated"] is False and "grounding_acc@0.25" not in row
    geometry = {"model": {**{key: 0.1 for key in GEOMETRY_KEYS}, "num_clips": 8}, "baseline": {key: 0.5 for key in GEOMETRY_KEYS}}
    row.update(stage1_point_error_m_median=0.9, stage1_point_error_m_median_ci95=[0.8, 1.0], stage1_label_accuracy=0.85,
               stage1_label_accuracy_ci95=[0.8, 0.9], stage1_num_samples=1000)
    results = {"arms": {"no_geometry_s0": row}, "stage0_geometry": geometry, "baselines": _baselines(),
               "stages": stage_provenance(run)}
    table = results_markdown(results)
    line = next(text for text in table.splitlines() if text.startswith("| no_geometry_s0"))
    assert line == "| no_geometry_s0 (stage 1 only) | — | — | — | — | — | — | 0.90 [0.80, 1.00] | 85.0 [80.0, 90.0] |"
    assert "| no_geometry_s0/stage1 | mini_stage1.yaml | 1000 | cuda |  |" in table
    # the marker columns are the final model's, the S1 columns the stage-1 model's; the table says so
    assert "The marker columns score each arm's final model" in table and "the S1 columns score its stage-1 model" in table


def test_marker_scores_split_by_the_marked_frame():
    """`marked_frames` adds the same scores for markers in the first frame and in the others; the overall
    figures are unchanged by it."""
    from gap_mllm.evaluation.marker_metrics import marker_scores

    answers = ['{"pointmap": [0, 0, 1], "label": "wall"}'] * 4
    predictions = ['{"pointmap": [0, 0, 2], "label": "wall"}',   # first frame: 1 m off, right label
                   '{"pointmap": [0, 3, 1], "label": "floor"}',  # other frames: 3 m and 5 m off, unparsed
                   '{"pointmap": [5, 0, 1], "label": "wall"}',
                   "no answer"]
    plain = marker_scores(predictions, answers)
    split = marker_scores(predictions, answers, marked_frames=[0, 2, 1, 3])
    assert {key: split[key] for key in plain} == plain
    first, other = split["by_marked_frame"]["first"], split["by_marked_frame"]["other"]
    assert (first["num_samples"], first["point_error_m_median"], first["label_accuracy"]) == (1, 1.0, 1.0)
    assert (other["num_samples"], other["unparsed"], other["point_error_m_median"]) == (3, 1, 4.0)
    assert other["label_accuracy"] == 1 / 3


def test_the_table_shows_the_point_error_by_marked_frame(tmp_path):
    geometry = {"model": {**{key: 0.1 for key in GEOMETRY_KEYS}, "num_clips": 8}, "baseline": {key: 0.5 for key in GEOMETRY_KEYS}}
    baselines = _baselines()
    baselines["marker"]["constant_point"]["by_marked_frame"] = {
        "first": {"point_error_m_median": 1.2, "point_error_m_median_ci95": [1.1, 1.3]},
        "other": {"point_error_m_median": 2.4, "point_error_m_median_ci95": [2.3, 2.5]}}
    row = {"stage2_evaluated": False, "stage1_point_error_m_median": 0.9, "stage1_label_accuracy": 0.8,
           "stage1_point_error_m_median_first_frame": 0.4, "stage1_point_error_m_median_first_frame_ci95": [0.35, 0.45],
           "stage1_point_error_m_median_other_frame": 1.7, "stage1_point_error_m_median_other_frame_ci95": [1.6, 1.8]}
    table = results_markdown({"arms": {"gap_gated_s0": row}, "stage0_geometry": geometry, "baselines": baselines})
    assert "| gap_gated_s0 | 0.40 [0.35, 0.45] | 1.70 [1.60, 1.80] |" in table.splitlines()
    assert "| baseline: constant_point | 1.20 [1.10, 1.30] | 2.40 [2.30, 2.50] |" in table.splitlines()


def test_the_table_shows_where_grounding_fails():
    """An arm with grounding diagnostics gets a row of frame selection, identification and centre error, next
    to the constant boxes (placed in the annotated frame) and the chance levels; an arm without gets none."""
    geometry = {"model": {**{key: 0.1 for key in GEOMETRY_KEYS}, "num_clips": 8}, "baseline": {key: 0.5 for key in GEOMETRY_KEYS}}
    baselines = _baselines()
    placed = {"identification": 0.66, "identification_ci95": [0.6, 0.7], "median_centre_error_m": 1.16,
              "median_centre_error_m_ci95": [1.1, 1.2], "scene_chance": 0.234, "category_chance": 0.867}
    baselines["grounding"] = {name: {**value, "identification": placed} for name, value in baselines["grounding"].items()}
    baselines["grounding"]["random_same_category"].pop("identification")
    row = {"stage2_evaluated": True, "grounding_frame_accuracy": 0.24, "grounding_frame_accuracy_ci95": [0.2, 0.28],
           "grounding_identification": 0.23, "grounding_identification_ci95": [0.2, 0.26],
           "grounding_median_centre_error_m": 2.85, "grounding_median_centre_error_m_ci95": [2.7, 3.0]}
    lines = results_markdown({"arms": {"gap_gated_s0": row}, "stage0_geometry": geometry, "baselines": baselines}).splitlines()
    assert "| gap_gated_s0 | 24.0 [20.0, 28.0] | 23.0 [20.0, 26.0] | 2.85 [2.70, 3.00] |" in lines
    assert "| baseline: constant_mean_box (annotated frame) | — | 66.0 [60.0, 70.0] | 1.16 [1.10, 1.20] |" in lines
    assert "| chance: a random object of the scene / of the target's category | — | 23.4 / 86.7 | — |" in lines
    bare = results_markdown({"arms": {"gap_gated_s0": {"stage2_evaluated": False}}, "stage0_geometry": geometry,
                             "baselines": _baselines()})
    assert "identification" not in bare


def _pointmap(x: float) -> str:
    return json.dumps({"pointmap": [x, 0.0, 0.0], "label": "wall"})


def test_paired_marker_difference_by_marked_frame_leaves_out_unparsed_answers():
    """A − B of the median point errors on the samples both answered; the split follows the marked frame."""
    from gap_mllm.evaluation.marker_metrics import paired_marker_difference

    answers = [_pointmap(0.0)] * 6
    frames = [0, 0, 1, 2, 3, 1]
    a = [_pointmap(1.0), _pointmap(1.0), _pointmap(0.5), _pointmap(0.5), _pointmap(0.5), "no answer"]
    b = [_pointmap(2.0), _pointmap(2.0), _pointmap(3.0), _pointmap(3.0), _pointmap(3.0), _pointmap(1.0)]
    out = paired_marker_difference(a, b, answers, frames, resamples=200)
    # every paired difference in the first frame is -1, in the others -2.5: the intervals are those points
    assert out["first"]["difference"] == -1.0 and out["first"]["ci95"] == [-1.0, -1.0]
    assert out["other"]["difference"] == -2.5 and out["other"]["ci95"] == [-2.5, -2.5]
    assert (out["other"]["num_samples"], out["other"]["num_left_out"], out["all"]["num_left_out"]) == (3, 1, 1)
    assert out["other"]["share_below"] == 1.0 and (out["all"]["median_a"], out["all"]["median_b"]) == (0.5, 3.0)
    with pytest.raises(ValueError, match="same samples"):
        paired_marker_difference(a, b[:5], answers, frames)


def test_compare_stage1_pairs_two_evaluations_and_refuses_different_samples(tmp_path):
    from lab.mini.compare_stage1 import compare_stage1, main

    data = tmp_path / "data"
    records = [{"id": f"r{i}", "conversations": [{"value": "q"}, {"value": _pointmap(0.0)}], "pixel_coords": [i % 2, 3, 4]}
               for i in range(4)]
    annotations = data / "annotations"
    annotations.mkdir(parents=True)
    (annotations / "scannet_recons_test_4frames.json").write_text(json.dumps(records))
    folders = {}
    for name, distance in (("a", 1.0), ("b", 2.0)):
        folders[name] = tmp_path / name
        folders[name].mkdir()
        rows = [{"id": record["id"], "index": i, "raw": [_pointmap(distance * (1 + i))]} for i, record in enumerate(records)]
        (folders[name] / "samples.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    out = main([str(folders["a"]), str(folders["b"]), "--data", str(data)])  # `python -m lab.mini.compare_stage1`
    # A's errors 1, 2, 3, 4 against B's 2, 4, 6, 8; first frame holds samples 0 and 2, the others 1 and 3
    assert out["all"]["difference"] == -2.5 and out["first"]["difference"] == -2.0 and out["other"]["difference"] == -3.0
    (folders["b"] / "samples.jsonl").write_text(json.dumps({"id": "r0", "index": 0, "raw": [_pointmap(1.0)]}))
    with pytest.raises(ValueError, match="same marker samples"):
        compare_stage1(folders["a"], folders["b"], data)


def test_the_tables_detection_f1_is_the_runners_headline_with_a_label_outside_the_list():
    """The table recomputes F1 from per-sample counts (for its bootstrap); it must equal the runner's headline, the
    mean over the headline list's categories present. A predicted label outside the list ("wall", which the fifth
    release's detections name) counts in the "all" split only: the table once averaged over it too (5.3 % against
    the summary's 5.7 % on the fifth release's test split)."""
    from gap_mllm.processing.scoring.detection_metrics import DetectionEvaluator
    from lab.mini.sample_rows import detection_counts, f1_of_counts

    chair, table = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], [2.0, 0.0, 3.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    far = [9.0, 9.0, 9.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    samples = [  # (predicted labels, predicted boxes, true labels, true boxes)
        (["chair", "wall"], [chair, far], ["chair", "table"], [chair, table]),
        (["table", "chair"], [table, far], ["table", "chair"], [table, chair]),
    ]
    evaluator, rows, records = DetectionEvaluator(), [], []
    for index, (labels, boxes, gt_labels, gt_boxes) in enumerate(samples):
        match = evaluator.add(labels, boxes, gt_labels, gt_boxes)
        rows.append({"index": index, "matches": [{"label": m.label, "tp": m.true_positive} for m in match.predictions]})
        records.append({"boxes": [{"label": label} for label in gt_labels]})
    scores = evaluator.compute()
    # chair: tp 1, fp 1, fn 1 -> F1 0.5; table: tp 1, fn 1 -> 0.667; wall: fp 1 -> 0
    assert scores["f1"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert scores["splits"]["all"]["f1"] == pytest.approx((0.5 + 2 / 3) / 3)
    assert f1_of_counts(detection_counts(rows, records)) == pytest.approx(scores["f1"], abs=1e-12)
