"""Inputs that used to give a wrong result without notice (or a raw error) in the data builders and the
evaluation: each is now a clear error naming the input, or a counted and reported case.

Classes: wrong types in annotation records, symbolic link loops, 8-bit depth PNGs, repeated sample ids,
empty annotation files, negative box sizes in answers (default vs official_compat), predictions files
(repeated / unknown ids, non-text answers, U+2028, missing rows, `limit`), VSI-Bench's exact scoring.
"""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import PIL.Image
import pytest

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import BUILDERS, load_annotation_file
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import posed_images_dir, read_depth
from gap_mllm.tasks_gap_mllm import Box3D, parse_detection, parse_grounding, serialize_detection
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import load_split
from tests.conftest import write_small_synth

from .test_data_bad_inputs import build, data_error
from .test_data_fixtures import tiny_dataset  # noqa: F401


@pytest.fixture
def data_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def records_of(root, task, split="train"):
    path = find_annotation_file(root, task, split)
    return path, load_annotation_file(path)


def builder_of(task, root, tmp_path, **kwargs):
    return BUILDERS[task](data_root=str(root), cache_dir=str(tmp_path / "cache"), splits=("train",), **kwargs)


# ------------------------------------------------------------------------------- wrong types (item 4)

WRONG_TYPES = [
    # (task, field, wrong value, what the message says it must be)
    ("grounding_stage2", "gt_bbox", "123456789", "'gt_bbox' must be a list of 9 finite numbers"),
    ("grounding_stage2", "gt_bbox", [0, 0, 0, 1, 1, 1, 0, 0, True], "'gt_bbox' must be a list of 9 finite numbers"),
    ("grounding_stage1", "object_id", 3.7, "'object_id' must be an integer"),
    ("grounding_stage1", "object_id", "abc", "'object_id' must be an integer"),
    ("grounding_stage1", "object_id", None, "'object_id' must be an integer"),
    ("grounding_stage1", "cam2global", "identity", "'cam2global' must be nested lists of finite numbers of shape 8x4x4"),
    ("grounding_stage1", "axis_align_matrix", [[1, 0, 0, 0]] * 3, "'axis_align_matrix' must be nested lists of finite numbers of shape 4x4"),
    ("captioning", "annotations", "a chair", "'annotations' must be a list of strings"),
    ("captioning", "iou", "high", "'iou' must be a finite number"),
    ("spatial_qa", "options", "ABCD", "'options' must be a list of strings"),
    ("spatial_qa", "options", 5, "'options' must be a list of strings"),
    ("spatial_qa", "ground_truth", {}, "'ground_truth' must be a string (or a number)"),
    ("reconstruction", "pixel_coords", [0, True, 3], "'pixel_coords' must be [view, x, y] integers"),
    ("reconstruction", "scene_id", 7, "'scene_id' must be a string"),
]


@pytest.mark.parametrize("task, field, value, message", WRONG_TYPES)
def test_a_wrong_type_is_an_error_naming_the_sample_and_the_field(task, field, value, message, tiny_dataset, tmp_path):
    _, records = records_of(tiny_dataset, task)
    record = dict(records[0], **{field: value})
    key = records[0]["id"]
    with pytest.raises(DataError) as excinfo:
        builder_of(task, tiny_dataset, tmp_path).example(record, key)
    assert message in str(excinfo.value) and f"sample {key!r}" in str(excinfo.value)


def test_a_wrong_type_in_a_detection_box_names_the_box(tiny_dataset, tmp_path):
    _, records = records_of(tiny_dataset, "detection")
    record = json.loads(json.dumps(records[0]))
    record["boxes"][1]["in_reference"] = "no"  # bool("no") was True
    with pytest.raises(DataError, match=r"'boxes\[1\]\.in_reference' must be true or false, got str 'no'"):
        builder_of("detection", tiny_dataset, tmp_path).example(record, record["id"])
    record["boxes"] = "chair"
    with pytest.raises(DataError, match="'boxes' must be a list of objects"):
        builder_of("detection", tiny_dataset, tmp_path).example(record, record["id"])


def test_the_accepted_spellings_still_read(tiny_dataset, tmp_path):
    """ScanRefer writes object ids as digit strings; VSI-Bench writes null options; null iou is none."""
    _, records = records_of(tiny_dataset, "grounding_stage1")
    example = builder_of("grounding_stage1", tiny_dataset, tmp_path).example(dict(records[0], object_id="38"), "k")
    assert example["object_id"] == 38
    _, records = records_of(tiny_dataset, "spatial_qa")
    example = builder_of("spatial_qa", tiny_dataset, tmp_path).example(dict(records[0], options=None, ground_truth=3), "k")
    assert example["options"] == [] and example["ground_truth"] == "3"
    _, records = records_of(tiny_dataset, "captioning")
    example = builder_of("captioning", tiny_dataset, tmp_path).example(dict(records[0], iou=None), "k")
    assert math.isnan(example["iou"])


def test_wrong_types_are_skipped_and_counted_end_to_end(data_copy, tmp_path):
    path, records = records_of(data_copy, "captioning")
    records[0]["annotations"] = "a chair"
    records[1]["iou"] = "high"
    records[2]["id"] = {"scene": 2}  # was str()-ed into a key
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"sample '{records[0]['id']}'.*'annotations' must be a list of strings"):
        build(BUILDERS["captioning"], data_copy, tmp_path / "raise")
    builder = build(BUILDERS["captioning"], data_copy, tmp_path / "skip", skip_bad_samples=True)
    kept = builder.as_dataset(split="train")
    assert builder.skipped["train"].total == 3 and len(kept) == len(records) - 3
    assert not {records[0]["id"], records[1]["id"], "train-2"} & set(kept["id"])
    assert "sample 'train-2': 'id' must be a string or an integer, got dict {'scene': 2}" in builder.skipped["train"].summary()


def test_the_evaluation_reads_the_same_fields_with_the_same_checks():
    from gap_mllm.evaluation.tasks import get_task

    record = {"id": "c1", "images": ["s/00000.jpg"], "conversations": [{"value": "<image>Describe."}, {"value": "a chair"}]}
    with pytest.raises(DataError, match="sample 'c1': 'annotations' must be a list of strings, got str 'a chair'"):
        get_task("captioning").evaluate([dict(record, annotations="a chair")], [["a chair"]], meteor=False)
    with pytest.raises(DataError, match="sample 'c1': 'iou' must be a finite number, got str 'high'"):
        get_task("captioning").evaluate([dict(record, annotations=["a chair"], iou="high")], [["a chair"]], meteor=False)
    with pytest.raises(DataError, match=r"sample 'c1': 'ground_truth' must be a string \(or a number\), got dict \{\}"):
        get_task("spatial_qa").evaluate([dict(record, ground_truth={}, question_type="object_counting")], [["{}"]])


# ------------------------------------------------------------------------------ symbolic link loops


def test_an_image_path_through_a_symlink_loop_is_named(data_copy, tmp_path):
    media = posed_images_dir(data_copy)
    os.symlink(media / "loop_b", media / "loop_a")
    os.symlink(media / "loop_a", media / "loop_b")
    path, records = records_of(data_copy, "reconstruction")
    records[0]["images"][1] = "loop_a/00000.jpg"
    path.write_text(json.dumps(records))
    with pytest.raises(DataError, match=rf"sample '{records[0]['id']}'.*'loop_a/00000.jpg'.*cannot be resolved"):
        build(BUILDERS["reconstruction"], data_copy, tmp_path / "raise")
    builder = build(BUILDERS["reconstruction"], data_copy, tmp_path / "skip", skip_bad_samples=True)
    assert builder.skipped["train"].total == 1


def test_an_annotation_file_that_is_a_symlink_loop_is_named(tiny_dataset, tmp_path):
    loop = tmp_path / "scannet_recons_train_4frames.json"
    os.symlink(tmp_path / "other.json", loop)
    os.symlink(loop, tmp_path / "other.json")
    builder = BUILDERS["reconstruction"](annotation_files={"train": str(loop)}, media_root=str(posed_images_dir(tiny_dataset)),
                                         cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError, match="cannot read the annotation file") as excinfo:
        builder.download_and_prepare()
    assert str(loop) in str(excinfo.value)


def test_a_depth_file_that_is_a_symlink_loop_is_named(tmp_path):
    os.symlink(tmp_path / "b.png", tmp_path / "a.png")
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    with pytest.raises(DataError, match="depth file is a symbolic link loop"):
        read_depth(tmp_path / "a.png")


# -------------------------------------------------------------------------------- depth PNGs (item 5)


def test_an_eight_bit_depth_png_is_refused_not_read_as_millimetres(tmp_path):
    PIL.Image.fromarray(np.full((4, 5), 200, dtype=np.uint8)).save(tmp_path / "eight.png")
    with pytest.raises(DataError, match=r"depth PNG is 'L' \(uint8\), not 16-bit.*eight\.npy"):
        read_depth(tmp_path / "eight.png")
    PIL.Image.fromarray(np.full((4, 5, 3), 200, dtype=np.uint8)).save(tmp_path / "colour.png")
    with pytest.raises(DataError, match="depth PNG is 'RGB'"):
        read_depth(tmp_path / "colour.png")
    PIL.Image.fromarray(np.full((4, 5), 200, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    np.testing.assert_array_equal(read_depth(tmp_path / "sixteen.png"), np.full((4, 5), 0.2, dtype=np.float32))


def test_an_eight_bit_depth_png_stops_the_builder_with_the_sample_named(data_copy, tmp_path):
    _, records = records_of(data_copy, "reconstruction")
    # not the first frame of the first record: that one is also read for the dataset's depth size
    depth = (posed_images_dir(data_copy) / records[0]["images"][1]).with_suffix(".png")
    PIL.Image.fromarray(np.full((60, 80), 200, dtype=np.uint8)).save(depth)
    with pytest.raises(Exception) as excinfo:
        build(BUILDERS["reconstruction"], data_copy, tmp_path, load_depth=True)
    error = data_error(excinfo.value)
    assert "not 16-bit" in str(error) and str(depth) in str(error) and records[0]["id"] in str(error)


# ---------------------------------------------------------------------------- repeated ids (item 7)


def test_a_repeated_id_is_refused_or_skipped_and_counted(data_copy, tmp_path):
    path, records = records_of(data_copy, "detection")
    records[2]["id"] = records[0]["id"]
    path.write_text(json.dumps(records))
    with pytest.raises(DataError) as excinfo:
        build(BUILDERS["detection"], data_copy, tmp_path / "raise")
    message = str(excinfo.value)
    assert f"id {records[0]['id']!r} is used by records 0 and 2" in message and str(path) in message
    builder = build(BUILDERS["detection"], data_copy, tmp_path / "skip", skip_bad_samples=True)
    kept = builder.as_dataset(split="train")
    assert builder.skipped["train"].total == 1 and len(kept) == len(records) - 1
    assert kept["id"].count(records[0]["id"]) == 1 and kept[0]["answer"] == records[0]["conversations"][1]["value"]


# ------------------------------------------------------------------------- empty training data (item 14)


def test_an_empty_annotation_file_is_named_by_the_training_loader(data_copy, tmp_path):
    path, _ = records_of(data_copy, "reconstruction")
    path.write_text("[]")
    recipe = recipe_from_dict({"data": {"data_root": str(data_copy), "cache_dir": str(tmp_path / "hf")}})
    with pytest.raises(DataError, match=r"no reconstruction samples for split 'train': it holds no records") as excinfo:
        load_split(recipe.data, "train", recipe.aux)
    assert str(path) in str(excinfo.value)
    with pytest.raises(FileNotFoundError, match=r"reconstruction annotation file for split 'test'.*scannet_recons_test_\*frames\.json"):
        load_split(recipe.data, "test", recipe.aux)


def test_a_file_whose_every_record_is_skipped_is_named_with_the_reasons(data_copy, tmp_path):
    path, records = records_of(data_copy, "reconstruction")
    path.write_text(json.dumps([dict(r, pixel_coords="centre") for r in records]))
    with pytest.raises(DataError, match=rf"none of its {len(records)} record\(s\) is usable \(skipped {len(records)} sample"):
        build(BUILDERS["reconstruction"], data_copy, tmp_path, skip_bad_samples=True)


# ------------------------------------------------------------------ negative sizes in answers (item 8)


def negated(box: list) -> list:
    return [*box[:3], *(-v for v in box[3:6]), *box[6:]]


def test_a_negative_size_parses_to_no_box_with_the_reason():
    assert parse_grounding('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}').box is None
    assert parse_grounding('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}').reason == "bbox_3d has a negative size [-1.0, -1.0, -1.0]"
    assert parse_grounding("[0, 0, 1, 1, -1, 1, 0, 0, 0]").reason == "bbox_3d has a negative size [1.0, -1.0, 1.0]"
    result = parse_detection('[{"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, -1, 0, 0, 0]}, {"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]')
    assert [b.size for b in result.boxes] == [(1.0, 1.0, 1.0)] and result.skipped == 1 and "negative size" in result.reason
    assert parse_grounding('{"bbox_3d": [0, 0, 1, 0, -0.0, 1, 0, 0, 0]}').box is not None  # zero (and -0.0) is a size


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory):
    return write_small_synth(tmp_path_factory.mktemp("synth_eval"))


def negated_oracle(task, data, path):
    """The oracle predictions of `task` with every box size negated."""
    from gap_mllm.evaluation.runner import write_oracle_predictions

    oracle = write_oracle_predictions(task, data, path)
    rows = [json.loads(line) for line in oracle.read_text().splitlines()]
    for row in rows:
        if task == "grounding":
            box = json.loads(row["raw"][1])["bbox_3d"]
            row["raw"][1] = json.dumps({"bbox_3d": negated(box)})
        else:
            boxes = parse_detection(row["raw"][0]).boxes
            row["raw"][0] = serialize_detection([Box3D.from_list(negated(b.to_list()), label=b.label) for b in boxes])
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_negated_sizes_do_not_score_as_perfect_in_the_default_mode(eval_data, tmp_path):
    from gap_mllm.evaluation.runner import run_evaluation

    grounding = run_evaluation("grounding", eval_data, tmp_path / "g", plots=False,
                               predictions_file=negated_oracle("grounding", eval_data, tmp_path / "g.jsonl"))["metrics"]
    assert grounding["acc@0.25"] == 0.0 and grounding["unscored"] == {"no box in the answer": grounding["num_samples"]}
    rows = [json.loads(line) for line in (tmp_path / "g" / "samples.jsonl").read_text().splitlines()]
    assert all(r["parse_error"].startswith("bbox_3d has a negative size") for r in rows)
    detection = run_evaluation("detection", eval_data, tmp_path / "d", plots=False,
                               predictions_file=negated_oracle("detection", eval_data, tmp_path / "d.jsonl"))["metrics"]
    total_gt = sum(c["fn"] for c in detection["per_category"].values())
    assert detection["f1"] == 0.0 and detection["dropped_predictions"] == total_gt > 0


def test_negated_sizes_score_as_the_official_code_scores_them_in_official_compat(eval_data, tmp_path):
    """The official IoU (pytorch3d on the corners) orients faces by the box centre: a negated size is the
    same box there, so the official evaluator scores this oracle as perfect, and official_compat does too."""
    from gap_mllm.evaluation.runner import run_evaluation

    grounding = run_evaluation("grounding", eval_data, tmp_path / "g", plots=False, official_compat=True,
                               predictions_file=negated_oracle("grounding", eval_data, tmp_path / "g.jsonl"))["metrics"]
    assert grounding["acc@0.25"] == 1.0 and grounding["unscored"] == {}
    detection = run_evaluation("detection", eval_data, tmp_path / "d", plots=False, official_compat=True,
                               predictions_file=negated_oracle("detection", eval_data, tmp_path / "d.jsonl"))["metrics"]
    assert all(c["f1"] == 1.0 for c in detection["per_category"].values()) and detection["dropped_predictions"] == 0


def test_official_stage2_reading():
    from gap_mllm.evaluation.tasks import official_stage2_box

    box = [0.1, 0.2, 1.5, 0.5, 0.6, 0.7, 0.1, 0.0, 0.0]
    assert official_stage2_box("```json\n" + json.dumps({"bbox_3d": box}) + "\n```") == (box, None)
    assert official_stage2_box(json.dumps({"bbox_3d": [*box, 9.0]}))[0] == box  # the official slices take the first 9
    assert official_stage2_box(json.dumps(box))[0] is None  # a bare list: `list["bbox_3d"]` fails officially
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, "1", 0, 0, 0]}')[0] is None
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}')[0] == [0, 0, 1, -1, -1, -1, 0, 0, 0]
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0], }')[0] is not None  # a Python literal
    assert official_stage2_box('{"bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, true]}')[0] is None  # JSON true: eval fails


# ------------------------------------------------------------------- predictions files (items 9, 11)


@pytest.fixture
def qa_oracle(eval_data, tmp_path):
    from gap_mllm.evaluation.runner import write_oracle_predictions

    path = write_oracle_predictions("spatial_qa", eval_data, tmp_path / "oracle.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path, rows, ensure_ascii=True):
    path.write_text("".join(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows), encoding="utf-8")
    return path


def score_qa(eval_data, tmp_path, rows, **kwargs):
    from gap_mllm.evaluation.runner import run_evaluation

    return run_evaluation("spatial_qa", eval_data, tmp_path / "out", predictions_file=write_rows(tmp_path / "p.jsonl", rows),
                          plots=False, **kwargs)


def test_a_repeated_prediction_id_is_an_error_naming_both_lines(eval_data, tmp_path, qa_oracle):
    rows = qa_oracle + [dict(qa_oracle[1], raw=["Z"])]
    with pytest.raises(ValueError, match=rf"line {len(rows)}: id {qa_oracle[1]['id']!r} already has a row \(line 2\)"):
        score_qa(eval_data, tmp_path, rows)


@pytest.mark.parametrize("answer, kind", [({"answer": "A"}, "dict"), (3, "int"), (None, "NoneType"), (["A"], "list")])
def test_an_answer_that_is_not_text_is_an_error_not_scored_as_its_repr(eval_data, tmp_path, qa_oracle, answer, kind):
    rows = [dict(qa_oracle[0], raw=[answer])] + qa_oracle[1:]
    with pytest.raises(ValueError, match=rf"line 1 \(id {qa_oracle[0]['id']!r}\): answer 0 is {kind} .*not a string"):
        score_qa(eval_data, tmp_path, rows)


def test_rows_that_are_not_scored_are_counted_and_reported(eval_data, tmp_path, qa_oracle):
    rows = qa_oracle + [{"id": "not-a-sample", "raw": ["A"]}]
    summary = score_qa(eval_data, tmp_path, rows, limit=2)
    assert summary["num_samples"] == 2 and summary["metrics"]["overall"] == 1.0
    assert summary["predictions_file"] == {"rows": len(rows), "scored": 2, "after_limit": len(qa_oracle) - 2,
                                           "not_in_annotations": 1, "not_in_annotations_first": ["not-a-sample"]}


@pytest.mark.parametrize("limit", [0, -1, True])
def test_a_limit_that_is_not_a_positive_count_is_an_error(eval_data, tmp_path, qa_oracle, limit):
    with pytest.raises(ValueError, match=rf"limit must be a positive number of samples .*got {limit!r}"):
        score_qa(eval_data, tmp_path, qa_oracle, limit=limit)


def test_an_annotation_file_without_records_is_an_error(eval_data, tmp_path, qa_oracle):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty.json: no samples to evaluate"):
        score_qa(eval_data, tmp_path, qa_oracle, annotation_file=empty)


def test_missing_rows_are_listed_not_called_a_resume(eval_data, tmp_path, qa_oracle):
    with pytest.raises(ValueError) as excinfo:
        score_qa(eval_data, tmp_path, qa_oracle[2:])
    message = str(excinfo.value)
    assert f"2 of the {len(qa_oracle)} sample(s)" in message and "have no row in the predictions file" in message
    assert repr(qa_oracle[0]["id"]) in message and repr(qa_oracle[1]["id"]) in message and "resume" not in message


def test_a_line_separator_inside_an_answer_is_text_not_a_line_break(eval_data, tmp_path, qa_oracle):
    from gap_mllm.evaluation.runner import read_predictions_file, run_evaluation

    rows = [dict(row, raw=[row["raw"][0] + "\u2028"]) for row in qa_oracle]
    path = write_rows(tmp_path / "u2028.jsonl", rows, ensure_ascii=False)
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, as JSON allows
    assert read_predictions_file(path, 1)[qa_oracle[0]["id"]] == [qa_oracle[0]["raw"][0] + "\u2028"]
    summary = run_evaluation("spatial_qa", eval_data, tmp_path / "out", predictions_file=path, plots=False)
    assert summary["metrics"]["overall"] == 1.0


# ------------------------------------------------------------------------ VSI-Bench's exact scoring


def test_official_compat_extracts_the_answer_exactly_as_vsi_bench():
    from gap_mllm.evaluation.spatial_qa_metrics import score_answer

    assert score_answer(" B", "B", "object_rel_distance") == 1.0  # default: tolerant
    # lmms-eval strips a generated answer before VSI-Bench's split(" ")[0] reads it (tests/test_vsibench_scoring.py)
    assert score_answer(" B", "B", "object_rel_distance", official_compat=True) == 1.0
    assert score_answer("\nB. chair", "B", "object_rel_distance", official_compat=True) == 1.0  # only " " splits
    assert score_answer("b.", "B", "route_planning", official_compat=True) == 1.0  # case-insensitive, dots
    assert score_answer("B", "B ", "route_planning") == 1.0
    assert score_answer("B", "B ", "route_planning", official_compat=True) == 0.0  # the target is not stripped
    assert score_answer(" 3", "3", "object_counting", official_compat=True) == 1.0
    assert score_answer("three", "3", "object_counting", official_compat=True) == 1.0  # lmms-eval 0.7.3's extract_number
    assert score_answer("three", "3", "object_counting") == 0.0  # default: the first word as a number
    assert score_answer("4 m", "8", "object_counting", official_compat=True) == pytest.approx(0.1)  # |4-8|/8 <= 1-0.5 only
    assert score_answer("3", "0", "object_counting") == 0.0
    with pytest.raises(ValueError, match="VSI-Bench divides by it"):
        score_answer("3", "0", "object_counting", official_compat=True)


def test_official_compat_aggregates_direction_subtypes_as_vsi_bench():
    from gap_mllm.evaluation.spatial_qa_metrics import aggregate_spatial_scores

    types = ["object_rel_direction_medium", "object_rel_direction_hard", "route_planning"]
    default = aggregate_spatial_scores([1.0, 0.0, 0.5], types)
    official = aggregate_spatial_scores([1.0, 0.0, 0.5], types, official_compat=True)
    assert default["per_type"] == {"object_rel_direction": 0.5, "route_planning": 0.5} and default["overall"] == 0.5
    # without "easy" VSI-Bench keeps the subtypes as two types
    assert official["per_type"] == {"object_rel_direction_hard": 0.0, "object_rel_direction_medium": 1.0, "route_planning": 0.5}
    assert official["overall"] == 0.5
    with pytest.raises(ValueError, match="object_rel_direction_easy but no object_rel_direction_hard"):
        aggregate_spatial_scores([1.0, 0.0], ["object_rel_direction_easy", "object_rel_direction_medium"], official_compat=True)
