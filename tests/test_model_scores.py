"""cli/model_scores.py: a model folder's held-out score of each task next to its trivial baseline, the line every
front end prints; "not scored" for what the file does not hold, nothing for a folder without the file. `predict`
prints the figures of the decoding that ran (constrained by default, free with --free), and the shipped baselines
are scored on the samples the model answered."""

import json

import pytest

from gap_mllm.cli.model_scores import RESULTS_FILE, held_out_scores
from gap_mllm.mini import default_model_path

BASELINES = {
    "grounding": {"best_constant_box": {"acc@0.25": 0.021}},
    "detection": {"category_mean_boxes": {"f1": 0.001}},
    "captioning": {"constant_caption": {"cider": 0.386}},
    "marker": {"constant_point": {"point_error_m_median": 2.17, "label_accuracy": 0.507}},
}
ROW = {
    "grounding_acc@0.25": 0.004, "grounding_acc@0.25_ci95": [0.002, 0.010], "grounding_num_samples": 991,
    "detection_f1@0.25": 0.30, "detection_f1@0.25_ci95": [0.25, 0.35], "detection_num_samples": 937,
    "captioning_cider@0.5": 0.40, "captioning_cider@0.5_ci95": [0.35, 0.45], "captioning_num_samples": 851,
    "stage1_point_error_m_median": 1.39, "stage1_point_error_m_median_ci95": [1.33, 1.44],
    "stage1_label_accuracy": 0.851, "stage1_label_accuracy_ci95": [0.828, 0.872], "stage1_num_samples": 1000,
}


def scores_of(tmp_path, row=ROW, **extra):
    results = {"arms": {"gap_gated_s0": dict(row), "no_geometry_s0": {}}, "baselines": BASELINES, **extra}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    return held_out_scores(tmp_path, constrained=False)


def test_each_task_against_its_baseline(tmp_path):
    scores = scores_of(tmp_path)
    assert scores.arm == "gap_gated_s0"  # the main arm, not the other one the file holds
    assert scores.line("grounding") == ("held-out (991 test samples): Acc@0.25 0.4 % [0.2, 1.0]; best constant box "
                                        "2.1 %: this miniature does not ground yet")
    assert scores.line("detection") == ("held-out (937 test samples): F1@0.25 30.0 % [25.0, 35.0]; category-mean boxes "
                                        "0.1 %: beats the trivial baseline")
    # 0.40 is above the constant caption's 0.39, but its interval is not: no claim
    assert scores.line("captioning") == ("held-out (851 test samples): CIDEr@0.5 0.40 [0.35, 0.45]; constant caption "
                                         "0.39: this miniature does not caption yet")
    assert scores.line("spatial_qa") == "held-out: spatial_qa not scored (the model's evaluation did not cover it)"


def test_marker_task_of_the_final_model_or_not_scored(tmp_path):
    without = scores_of(tmp_path).line("reconstruction")
    assert without == ("held-out: this release's final model is not scored on the marker task; its stage-1 checkpoint, "
                       "before the task fine-tuning (1000 test samples): point error (median) 1.39 m [1.33, 1.44], "
                       "label accuracy 85.1 % [82.8, 87.2]; constant point 2.17 m, most frequent label 50.7 %: beats "
                       "the trivial baseline")
    final = {"final_marker_point_error_m_median": 2.30, "final_marker_point_error_m_median_ci95": [2.2, 2.4],
             "final_marker_label_accuracy": 0.9, "final_marker_label_accuracy_ci95": [0.88, 0.92],
             "final_marker_num_samples": 1000}
    line = scores_of(tmp_path, {**ROW, **final}).line("reconstruction")
    # lower point error is better: 2.30 m is worse than the constant point's 2.17 m; the label beats 50.7 %
    assert line == ("held-out (1000 test samples): point error (median) 2.30 m [2.20, 2.40], label accuracy 90.0 % "
                    "[88.0, 92.0]; constant point 2.17 m, most frequent label 50.7 %: point error (median) does not "
                    "beat it; label accuracy beats it")
    unparsed = {**final, "final_marker_point_error_m_median": None, "final_marker_point_error_m_median_ci95": None}
    assert "point error (median): no parsable answer" in scores_of(tmp_path, {**ROW, **unparsed}).line("reconstruction")


def test_missing_figures_are_not_scored_and_a_folder_without_results_has_no_line(tmp_path):
    scores = scores_of(tmp_path, {"grounding_acc@0.25": 0.1, "grounding_num_samples": 10})
    assert scores.line("detection") == "held-out: detection not scored"
    assert scores.line("reconstruction") == "held-out: reconstruction not scored"
    assert scores.line("grounding") == ("held-out (10 test samples): Acc@0.25 10.0 %; best constant box 2.1 %: "
                                        "this miniature does not ground yet")  # no interval: no claim either
    assert scores.geometry_line() is None
    assert held_out_scores(tmp_path / "elsewhere", False) is None and held_out_scores(None, True) is None
    (tmp_path / RESULTS_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{RESULTS_FILE}: not valid JSON"):
        held_out_scores(tmp_path, constrained=True)


def test_the_embedded_mini_lines_carry_its_own_figures():
    folder = default_model_path()
    results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    row, base = results["arms"]["gap_gated_s0"], results["baselines"]
    scores = held_out_scores(folder, constrained=False)  # the free row, named as such: the file holds both
    assert scores.line("grounding").startswith(
        f"held-out ({row['grounding_num_samples']} test samples, free decoding): Acc@0.25 {100 * row['grounding_acc@0.25']:.1f} % "
        f"[{100 * row['grounding_acc@0.25_ci95'][0]:.1f}, {100 * row['grounding_acc@0.25_ci95'][1]:.1f}]; best constant "
        f"box {100 * base['grounding']['best_constant_box']['acc@0.25']:.1f} %: ")
    assert f"F1@0.25 {100 * row['detection_f1@0.25']:.1f} %" in scores.line("detection")
    assert f"CIDEr@0.5 {row['captioning_cider@0.5']:.2f}" in scores.line("captioning")
    marker = scores.line("reconstruction")
    if "final_marker_point_error_m_median" in row:  # a release whose final model answers the marker task
        assert marker.startswith(f"held-out ({row['final_marker_num_samples']} test samples, free decoding): point error")
    else:
        assert "final model is not scored on the marker task" in marker
    geometry = results["stage0_geometry"]
    assert (f"depth AbsRel {geometry['model']['depth_abs_rel']:.3f}" in scores.geometry_line()
            and f"identity rotations {geometry['baseline']['depth_abs_rel']:.3f}" in scores.geometry_line())


def test_the_figures_are_those_of_the_decoding_that_ran(tmp_path):
    """Constrained decoding (the front ends' default) reads the constrained row, `--free` the free one, each named; a
    file without a constrained row gives the free figures and says that constrained decoding was not scored."""
    constrained_row = {**ROW, "grounding_acc@0.25": 0.124, "grounding_acc@0.25_ci95": [0.105, 0.146]}
    results = {"arms": {"gap_gated_s0": dict(ROW), "gap_gated_s0_constrained": constrained_row}, "baselines": BASELINES}
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    constrained, free = held_out_scores(tmp_path, constrained=True), held_out_scores(tmp_path, constrained=False)
    assert (constrained.arm, free.arm) == ("gap_gated_s0_constrained", "gap_gated_s0")
    assert constrained.line("grounding") == ("held-out (991 test samples, constrained decoding): Acc@0.25 12.4 % "
                                             "[10.5, 14.6]; best constant box 2.1 %: beats the trivial baseline")
    assert free.line("grounding").startswith("held-out (991 test samples, free decoding): Acc@0.25 0.4 % [0.2, 1.0]; ")
    del results["arms"]["gap_gated_s0_constrained"]
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results), encoding="utf-8")
    assert held_out_scores(tmp_path, constrained=True).line("grounding").startswith(
        "held-out (991 test samples, free decoding: the file has no constrained row): Acc@0.25 0.4 %")


def test_the_shipped_mini_shows_its_constrained_figures_by_default():
    """The demo, `predict --example` and the Space decode inside the grammar by default: their line carries the
    constrained row's figures (12.4 % [10.5, 14.6] for the sixth release's grounding), not the free row's."""
    folder = default_model_path()
    results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
    row = results["arms"]["gap_gated_s0_constrained"]
    line = held_out_scores(folder, constrained=True).line("grounding")
    assert line.startswith(f"held-out ({row['grounding_num_samples']} test samples, constrained decoding): Acc@0.25 "
                           f"{100 * row['grounding_acc@0.25']:.1f} % [{100 * row['grounding_acc@0.25_ci95'][0]:.1f}, "
                           f"{100 * row['grounding_acc@0.25_ci95'][1]:.1f}]")


# -------------------------------------------------------------------------------------------------- the shipped results


def shipped_results() -> dict:
    from gap_mllm.mini import SHIPPED_DIR

    return json.loads((SHIPPED_DIR / "evaluation_results.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("free", [False, True])
def test_predict_prints_the_figures_of_the_decoding_that_ran(free, capsys):
    """`predict --example` decodes inside the grammar by default and prints the constrained row's figures (the sixth
    release: 12.4 % [10.5, 14.6]); with --free, the free row's (12.3 % [10.4, 14.5])."""
    from gap_mllm.cli.main import main
    from gap_mllm.cli.model_scores import held_out_scores
    from gap_mllm.mini import SHIPPED_DIR

    status = main(["predict", "--example", "synthetic room A", "--task", "grounding", *(["--free"] if free else [])])
    printed = capsys.readouterr().out
    assert status in (0, 3), printed
    line = held_out_scores(SHIPPED_DIR, constrained=not free).line("grounding")
    row = shipped_results()["arms"]["gap_gated_s0" if free else "gap_gated_s0_constrained"]
    figure = (f"Acc@0.25 {100 * row['grounding_acc@0.25']:.1f} % [{100 * row['grounding_acc@0.25_ci95'][0]:.1f}, "
              f"{100 * row['grounding_acc@0.25_ci95'][1]:.1f}]")
    assert f"\n{line}\n" in printed and figure in line
    assert ("free decoding" if free else "constrained decoding") in line


def test_the_shipped_baselines_are_scored_on_the_models_samples():
    """The marker baseline of the test table on the 1,000 samples the model answered (not the split's 3,840), split by
    the marked frame as the model's are; on the fresh seeds, on the 3,000 the models answered; every other baseline on
    as many samples as its task's model row."""
    results = shipped_results()
    row, base = results["arms"]["gap_gated_s0"], results["baselines"]
    marker = base["marker"]["constant_point"]
    assert marker["num_samples"] == row["final_marker_num_samples"] == 1000
    assert marker["by_marked_frame"]["first"]["num_samples"] == row["final_marker_num_samples_first_frame"]
    assert marker["by_marked_frame"]["other"]["num_samples"] == row["final_marker_num_samples_other_frame"]
    assert base["grounding"]["best_constant_box"]["num_samples"] == row["grounding_num_samples"]
    assert base["detection"]["category_mean_boxes"]["num_samples"] == row["detection_num_samples"]
    assert base["captioning"]["constant_caption"]["num_samples"] == row["captioning_num_samples"]
    fresh = results["fresh_seeds"]
    for model in fresh["models"].values():
        assert fresh["baselines"]["marker"]["constant_point"]["num_samples"] == model["marker"]["num_samples"]
        assert fresh["baselines"]["grounding"]["num_samples"] == model["grounding"]["num_samples"]
