"""Inputs that used to give a wrong score or a wrong value without notice (issue 40, items 5-8): a detection
record without `boxes`, integer / bool / complex `.npy` depth, boxes with negated sizes given to the box-level
evaluators, an exact answer on a zero spatial-QA truth. Each is now refused naming the input, or scored by one
stated rule (docs/deviations.md §2.3)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gap_mllm.evaluation.baselines import detection_baseline
from gap_mllm.evaluation.detection_metrics import DetectionEvaluator, ground_truth
from gap_mllm.evaluation.detection_parsing import detection_predictions
from gap_mllm.evaluation.grounding_metrics import UNSCORED_NO_BOX, GroundingEvaluator
from gap_mllm.evaluation.in_memory import EvaluationSlice
from gap_mllm.evaluation.lmms_eval_plugin import task_functions
from gap_mllm.evaluation.runner import run_evaluation, write_oracle_predictions
from gap_mllm.evaluation.spatial_qa_metrics import mean_relative_accuracy, score_answer
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import DetectionBuilder, ReconstructionBuilder, load_annotation_file
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import posed_images_dir, read_depth
from gap_mllm.tasks_gap_mllm import parse_grounding

from .test_data_bad_inputs import build, data_copy, data_error, first_record  # noqa: F401  (data_copy: fixture)
from .test_data_fixtures import tiny_dataset  # noqa: F401  (module fixture)

UNIT_BOX = [0.0, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]
NEGATED = [0.0, 0.0, 2.0, -1.0, -1.0, -1.0, 0.0, 0.0, 0.0]  # the same point set, negated sizes


# ------------------------------------------------------------------ 5. a detection record without "boxes"


def detection_records(root):
    path = find_annotation_file(root, "detection", "val")
    return path, load_annotation_file(path)


def test_a_record_without_boxes_is_a_data_error_and_an_empty_list_is_no_objects():
    with pytest.raises(DataError, match=r"^sample 's1': the detection record has no 'boxes': its ground-truth objects "
                                        r"are unknown \(write \"boxes\": \[\] for a sample without objects\)$"):
        ground_truth({"id": "s1", "images": ["a.jpg"]}, "s1")
    with pytest.raises(DataError, match=r"^sample 3: the detection record has a list, not an object"):
        ground_truth([], 3)
    assert ground_truth({"boxes": []}, "s2") == ([], [])


def test_the_runner_refuses_a_record_without_boxes_and_scores_an_empty_one(synth_data, tmp_path):  # noqa: F811
    path, records = detection_records(synth_data)
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")
    edited = tmp_path / path.name
    no_boxes = [dict(records[0]), *records[1:]]
    del no_boxes[0]["boxes"]
    edited.write_text(json.dumps(no_boxes))
    with pytest.raises(DataError, match=rf"^sample '{records[0]['id']}': the detection record has no 'boxes'"):
        run_evaluation("detection", synth_data, tmp_path / "out", predictions_file=oracle, annotation_file=edited, plots=False)
    # an empty list is a sample without objects: its answer "[]" is right, and the oracle still scores 1.0
    empty = [{**records[0], "boxes": [], "conversations": [records[0]["conversations"][0], {"from": "gpt", "value": "[]"}]},
             *records[1:]]
    edited.write_text(json.dumps(empty))
    oracle = write_oracle_predictions("detection", synth_data, tmp_path / "oracle_empty.jsonl", annotation_file=edited)
    summary = run_evaluation("detection", synth_data, tmp_path / "out2", predictions_file=oracle, annotation_file=edited,
                             plots=True)
    assert summary["headline"]["value"] == 1.0 and summary["num_samples"] == len(records)


def test_a_model_run_and_training_s_evaluation_refuse_it_before_any_answer(synth_data, tiny_checkpoint, tmp_path):  # noqa: F811
    """Refused only at scoring, the model's answers were already written, and the fixed annotation file (another
    file for the run fingerprint) could not resume them."""
    path, records = detection_records(synth_data)
    del records[1]["boxes"]
    edited = tmp_path / path.name
    edited.write_text(json.dumps(records))
    out = tmp_path / "out"
    with pytest.raises(DataError, match=rf"^sample '{records[1]['id']}': the detection record has no 'boxes'"):
        run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, annotation_file=edited, limit=2,
                       max_new_tokens=2, progress=False, plots=False)
    assert not out.exists()  # refused before the model was loaded: nothing generated
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    shutil.copy(edited, find_annotation_file(data, "detection", "val"))
    with pytest.raises(DataError, match=rf"^sample '{records[1]['id']}': the detection record has no 'boxes'"):
        EvaluationSlice("detection", data, split="val")


def test_the_detection_builder_refuses_it_and_keeps_an_empty_list(data_copy, tmp_path):  # noqa: F811
    """The builder read a missing `boxes` as [] (a typed target of no objects beside an answer listing them)."""
    path, records = first_record(data_copy, "detection")
    assert records[0]["boxes"]  # the answer text lists these objects
    del records[0]["boxes"]
    records[1]["boxes"] = []
    path.write_text(json.dumps(records))
    with pytest.raises(Exception) as excinfo:
        build(DetectionBuilder, data_copy, tmp_path / "raise")
    assert str(data_error(excinfo.value)) == (
        f"file {path}: sample {records[0]['id']!r}: the detection record has no 'boxes': its ground-truth objects are "
        "unknown (write \"boxes\": [] for a sample without objects)")
    builder = build(DetectionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    kept = builder.as_dataset(split="train")
    assert builder.skipped["train"].total == 1 and records[0]["id"] not in kept["id"]
    assert kept[kept["id"].index(records[1]["id"])]["boxes"] == []  # an empty list: a sample without objects


def test_the_lmms_eval_plugin_and_the_baseline_refuse_it_too(synth_data, tmp_path):  # noqa: F811
    path, records = detection_records(synth_data)
    del records[1]["boxes"]
    edited = tmp_path / path.name
    edited.write_text(json.dumps(records))
    items = [{"id": r["id"], "index": i, "task": "detection", "official_compat": False, "meteor": False,
              "annotation_file": str(edited), "raw": [r["conversations"][1]["value"]]} for i, r in enumerate(records)]
    with pytest.raises(DataError, match=rf"^sample '{records[1]['id']}': the detection record has no 'boxes'"):
        task_functions.aggregate_f1(items)
    root = tmp_path / "data"  # the baseline's means come from the train split: the edited file is it
    shutil.copytree(synth_data / "annotations", root / "annotations")
    edited.rename(root / "annotations" / path.name.replace("_val_", "_train_"))
    with pytest.raises(DataError, match=rf"^sample '{records[1]['id']}': the detection record has no 'boxes'"):
        detection_baseline(root, "val")


# ------------------------------------------------------------------------------- 6. integer .npy depth


@pytest.mark.parametrize("dtype", [np.uint16, np.uint8, np.int32])
def test_integer_npy_depth_is_refused_without_a_depth_scale(tmp_path, dtype):
    path = tmp_path / "00000.npy"
    np.save(path, np.full((4, 5), 150, dtype=dtype))
    with pytest.raises(DataError, match=rf"^file {path}: depth array is {np.dtype(dtype).name}: integer depth has no "
                                        r"unit \(1500 may be millimetres or metres\), so it is not read as metres; save "
                                        r"float32 metres, or uint16 millimetres as 00000\.png, or read it with an "
                                        r"explicit depth_scale"):
        read_depth(path)
    np.testing.assert_array_equal(read_depth(path, depth_scale=1000), np.full((4, 5), 0.15, dtype=np.float32))


@pytest.mark.parametrize("dtype", [bool, np.complex64])
def test_bool_and_complex_npy_depth_are_refused_naming_the_file(tmp_path, dtype):
    path = tmp_path / "00000.npy"
    np.save(path, np.ones((4, 5), dtype=dtype))
    name = np.dtype(dtype).name
    with pytest.raises(DataError, match=rf"^file {path}: depth array is {name}, not numbers of metres; save float32 metres$"):
        read_depth(path)
    with pytest.raises(DataError, match=rf"depth array is {name}"):
        read_depth(path, depth_scale=1000)  # no scale makes them numbers


def test_float_npy_depth_is_metres_and_a_bad_scale_is_refused(tmp_path):
    path = tmp_path / "00000.npy"
    np.save(path, np.full((4, 5), 1.5, dtype=np.float64))
    np.testing.assert_array_equal(read_depth(path), np.full((4, 5), 1.5, dtype=np.float32))
    for scale in (0, -1000, float("nan"), "1000"):
        with pytest.raises(ValueError, match=r"depth_scale must be a positive number of units per metre"):
            read_depth(path, depth_scale=scale)


def test_the_builder_names_the_integer_depth_file_and_the_sample(data_copy, tmp_path):  # noqa: F811
    _, records = first_record(data_copy, "reconstruction")
    colour = posed_images_dir(data_copy) / records[0]["images"][1]
    np.save(colour.with_suffix(".npy"), np.full((60, 80), 1500, dtype=np.uint16))  # millimetres, as ScanNet's PNGs
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path, load_depth=True)
    error = str(data_error(excinfo.value))
    assert records[0]["id"] in error and str(colour.with_suffix(".npy")) in error and "integer depth has no unit" in error


# ---------------------------------------------------- 7. negated sizes given to the box-level evaluators


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
    with pytest.raises(ValueError):  # 6 numbers are not a box: the caller's error (tests/test_eval_metrics.py)
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


# ------------------------------------------------------------------- 8. spatial QA on a zero truth


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
