"""The ablation as paired differences (lab/mini/paired_arms.py): two arms' per-sample results on the same test samples,
A − B with exact values by construction, refusals of unpaired folders, and the table's paired section."""

from __future__ import annotations

import json

import pytest

from gap_mllm.evaluation.confidence import paired_statistic_difference

from lab.mini.paired_arms import main, paired_arms
from lab.mini.report import paired_lines


def _write_rows(folder, task, rows):
    (folder / task).mkdir(parents=True, exist_ok=True)
    (folder / task / "samples.jsonl").write_text("\n".join(json.dumps(row) for row in rows))


def _pointmap(x: float) -> str:
    return json.dumps({"pointmap": [x, 0.0, 0.0], "label": "wall"})


@pytest.fixture
def two_arms(tmp_path):
    """Results folders of arms A and B on one tiny test split: grounding, detection, captioning, marker task."""
    data = tmp_path / "data"
    (data / "annotations").mkdir(parents=True)
    detection_records = [{"id": f"d{i}", "boxes": [{"label": "chair", "bbox": [0] * 9}]} for i in range(2)]
    (data / "annotations" / "scannet_det_test_4frames.json").write_text(json.dumps(detection_records))
    marker_records = [{"id": f"m{i}", "conversations": [{"value": "q"}, {"value": _pointmap(0.0)}], "pixel_coords": [i % 2, 3, 4]}
                      for i in range(4)]
    (data / "annotations" / "scannet_recons_test_4frames.json").write_text(json.dumps(marker_records))
    arms = {"a": tmp_path / "a", "b": tmp_path / "b"}
    # grounding IoUs; A's third sample was left unscored (None), so that sample is out of the pair
    ious = {"a": [0.3, 0.6, None, 0.1], "b": [0.2, 0.2, 0.5, 0.3]}
    # detection: A finds both chairs, B makes one false positive and misses both
    matches = {"a": [[{"label": "chair", "tp": True}], [{"label": "chair", "tp": True}]],
               "b": [[{"label": "chair", "tp": False}], []]}
    cider = {"a": [0.5, 0.5], "b": [0.1, 0.3]}
    distances = {"a": 1.0, "b": 2.0}
    for name, folder in arms.items():
        _write_rows(folder, "grounding", [{"id": f"g{i}", "index": i, "score": iou} for i, iou in enumerate(ious[name])])
        _write_rows(folder, "detection", [{"id": f"d{i}", "index": i, "matches": m} for i, m in enumerate(matches[name])])
        _write_rows(folder, "captioning", [{"id": f"c{i}", "index": i, "score": s} for i, s in enumerate(cider[name])])
        _write_rows(folder, "reconstruction", [{"id": r["id"], "index": i, "raw": [_pointmap(distances[name] * (1 + i))]}
                                               for i, r in enumerate(marker_records)])
    return data, arms


def test_every_figure_of_the_table_is_paired_with_exact_values(two_arms):
    data, arms = two_arms
    out = paired_arms(arms["a"], arms["b"], data, resamples=200)
    # grounding on samples 0, 1, 3: A hits at 0.25 (1, 1, 0) vs B (0, 0, 1); at 0.5 A (0, 1, 0) vs B (0, 0, 0)
    assert out["grounding_acc@0.25"]["difference"] == pytest.approx(1 / 3)
    assert out["grounding_acc@0.5"]["difference"] == pytest.approx(1 / 3)
    assert (out["grounding_acc@0.25"]["num_samples"], out["grounding_acc@0.25"]["num_left_out"]) == (3, 1)
    # pooled F1: A 1.0 (2 TP), B 0.0 on every resample too
    assert out["detection_f1@0.25"]["difference"] == 1.0 and out["detection_f1@0.25"]["ci95"] == [1.0, 1.0]
    # mean CIDEr 0.5 - 0.2; the per-sample differences are 0.4 and 0.2, so every resample lies between them
    assert out["captioning_cider@0.5"]["difference"] == pytest.approx(0.3)
    low, high = out["captioning_cider@0.5"]["ci95"]
    assert 0.2 - 1e-12 <= low <= high <= 0.4 + 1e-12
    # marker errors A 1, 2, 3, 4 vs B 2, 4, 6, 8; the first frame holds samples 0 and 2
    assert out["stage1_point_error_m_median"]["difference"] == -2.5
    assert out["stage1_point_error_m_median_first_frame"]["difference"] == -2.0
    assert out["stage1_point_error_m_median_other_frame"]["difference"] == -3.0


def test_arms_that_answered_other_samples_are_refused(two_arms):
    data, arms = two_arms
    _write_rows(arms["b"], "captioning", [{"id": "c1", "index": 0, "score": 0.1}, {"id": "c0", "index": 1, "score": 0.3}])
    with pytest.raises(ValueError, match="same captioning samples"):
        paired_arms(arms["a"], arms["b"], data)


def test_a_task_only_one_arm_has_is_not_compared_and_the_cli_refuses_nothing_shared(two_arms, tmp_path):
    data, arms = two_arms
    for task in ("grounding", "detection", "captioning"):
        (arms["b"] / task / "samples.jsonl").unlink()
    out = main([str(arms["a"]), str(arms["b"]), "--data", str(data)])  # `python -m lab.mini.paired_arms`
    assert sorted(out) == ["stage1_point_error_m_median", "stage1_point_error_m_median_first_frame",
                           "stage1_point_error_m_median_other_frame"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit):
        main([str(arms["a"]), str(empty), "--data", str(data)])


def test_paired_statistic_difference_draws_both_arms_jointly():
    """A statistic of the whole set (here the sum) of two arms that differ by exactly 1 on every sample:
    every joint resample differs by the number of samples."""
    out = paired_statistic_difference([1, 2, 3], [0, 1, 2], sum, resamples=50)
    assert out == {"difference": 3.0, "ci95": [3.0, 3.0]}
    with pytest.raises(ValueError, match="same non-empty"):
        paired_statistic_difference([1, 2], [1], sum)


def test_the_table_shows_each_arm_minus_the_main_arm():
    results = {"paired": {"reference": "gap_gated_s0", "arms": {"gap_add_s0": {
        "grounding_acc@0.25": {"difference": -0.012, "ci95": [-0.03, 0.004]},
        "captioning_cider@0.5": {"difference": 0.05, "ci95": [0.01, 0.09]},
        "stage1_point_error_m_median": {"difference": 0.2, "ci95": [0.1, 0.3]}}}}}
    lines = paired_lines(results)
    assert "| arm − gap_gated_s0 | Acc@0.25, points | Acc@0.5, points | det F1@0.25, points | CIDEr@0.5 | S1 point error m " \
           "| first frame | other frames |" in lines
    assert "| gap_add_s0 | -1.2 [-3.0, +0.4] | — | — | +0.05 [+0.01, +0.09] | +0.20 [+0.10, +0.30] | — | — |" in lines
    assert paired_lines({"arms": {}}) == []
