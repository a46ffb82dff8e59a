"""Bad data gives a clear error naming the file and the sample, or is skipped and counted on request: corrupt
images, missing poses, NaN depth, negative box sizes, unreadable answers, wrong types in a record's fields (the
evaluation reads them with the same checks), symbolic link loops, 8-bit or integer depth, repeated sample ids, a
detection record without boxes, and training data with no usable record."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import PIL.Image
import pytest

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import BUILDERS, DetectionBuilder, ReconstructionBuilder, load_annotation_file
from gap_mllm.processing.collator import chat_messages
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import posed_images_dir, read_depth, read_pose, write_frame
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import load_split

from .test_data_fixtures import tiny_dataset  # noqa: F401


@pytest.fixture
def data_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def data_error(excinfo_value) -> DataError:
    """The DataError behind an exception (datasets wraps generation errors in its own type)."""
    error = excinfo_value
    while error is not None and not isinstance(error, DataError):
        error = error.__cause__ or error.__context__
    assert error is not None, f"no DataError behind {excinfo_value!r}"
    return error


def first_record(root, task):
    path = find_annotation_file(root, task, "train")
    return path, load_annotation_file(path)


def build(builder_class, root, tmp_path, **kwargs):
    builder = builder_class(data_root=str(root), cache_dir=str(tmp_path / "cache"), splits=("train",), **kwargs)
    builder.download_and_prepare()
    return builder


def test_corrupt_image_is_named_or_skipped_and_counted(data_copy, tmp_path):
    path, records = first_record(data_copy, "reconstruction")
    image = posed_images_dir(data_copy) / records[0]["images"][2]
    image.write_bytes(image.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path)
    error = data_error(excinfo.value)
    assert str(image) in str(error) and records[0]["id"] in str(error) and "decode" in str(error)

    affected = [r["id"] for r in records if records[0]["images"][2] in r["images"]]
    builder = build(ReconstructionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    kept = builder.as_dataset(split="train")
    assert len(kept) == len(records) - len(affected) and not set(affected) & set(kept["id"])
    assert builder.skipped["train"].total == len(affected)
    assert f"skipped {len(affected)}" in builder.skipped["train"].summary()


def test_missing_pose_file_names_the_file_and_sample(data_copy, tmp_path):
    _, records = first_record(data_copy, "detection")
    pose = (posed_images_dir(data_copy) / records[0]["images"][0]).with_suffix(".txt")
    pose.unlink()
    with pytest.raises(Exception) as excinfo:
        build(DetectionBuilder, data_copy, tmp_path, load_poses=True)
    error = data_error(excinfo.value)
    assert "pose file not found" in str(error) and str(pose) in str(error) and records[0]["id"] in str(error)
    # Without poses requested, the same data loads.
    assert len(build(DetectionBuilder, data_copy, tmp_path / "nopose").as_dataset(split="train")) == len(records)


def test_nan_in_depth_is_rejected(data_copy, tmp_path):
    _, records = first_record(data_copy, "reconstruction")
    colour = posed_images_dir(data_copy) / records[0]["images"][1]
    depth = np.ones((60, 80), dtype=np.float32)
    depth[5, 7] = np.nan
    np.save(colour.with_suffix(".npy"), depth)  # float metres take precedence over the PNG
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path, load_depth=True)
    error = data_error(excinfo.value)
    assert "NaN" in str(error) and str(colour.with_suffix(".npy")) in str(error) and records[0]["id"] in str(error)
    with pytest.raises(DataError, match="finite"):
        write_frame(tmp_path / "out", "00000", np.zeros((60, 80, 3), np.uint8), depth)


def test_negative_box_size_names_the_annotation_file_and_sample(data_copy, tmp_path):
    path, records = first_record(data_copy, "detection")
    records[1]["boxes"][0]["bbox_3d"][4] = -0.3
    path.write_text(json.dumps(records))
    with pytest.raises(Exception) as excinfo:
        build(DetectionBuilder, data_copy, tmp_path)
    error = data_error(excinfo.value)
    assert "negative size" in str(error) and str(path) in str(error) and records[1]["id"] in str(error)
    builder = build(DetectionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    assert builder.skipped["train"].total == 1 and len(builder.as_dataset(split="train")) == len(records) - 1


@pytest.mark.parametrize("answer, reason", [
    ("not json at all", "no detection entries found"),
    ('```json\n[{"label": "chair", "bbox_3d": [0, 0, 1, 0.5, 0.5]}]\n```', "skipped 1 malformed entry"),
])
def test_a_detection_answer_the_parser_cannot_read_is_refused_or_skipped_by_name(data_copy, tmp_path, answer, reason):
    """The answer text is what trains: one evaluation would score as unreadable never reaches a batch."""
    path, records = first_record(data_copy, "detection")
    records[1]["conversations"][1]["value"] = answer
    path.write_text(json.dumps(records))
    with pytest.raises(Exception) as excinfo:
        build(DetectionBuilder, data_copy, tmp_path)
    error = data_error(excinfo.value)
    assert "answer is not a detection answer (" in str(error) and reason in str(error)
    assert str(path) in str(error) and records[1]["id"] in str(error)
    builder = build(DetectionBuilder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    kept = builder.as_dataset(split="train")
    assert len(kept) == len(records) - 1 and records[1]["id"] not in kept["id"]
    assert builder.skipped["train"].total == 1 and records[1]["id"] in builder.skipped["train"].summary()


def test_image_count_must_match_the_prompt(data_copy, tmp_path):
    path, records = first_record(data_copy, "reconstruction")
    records[0]["images"] = records[0]["images"][:3]  # the prompt still has 4 <image>
    path.write_text(json.dumps(records))
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path)
    error = data_error(excinfo.value)
    assert "4 <image> placeholder(s) but the sample lists 3 image(s)" in str(error) and records[0]["id"] in str(error)
    with pytest.raises(DataError, match="sample 'x'.*2 <image> placeholder"):
        chat_messages("<image><image>Describe.", 3, sample="x")


def test_invalid_json_and_invalid_poses(tmp_path):
    bad = tmp_path / "scannet_det_train_4frames.json"
    bad.write_text("[{")
    with pytest.raises(DataError, match="not valid JSON") as excinfo:
        load_annotation_file(bad)
    assert str(bad) in str(excinfo.value)
    pose = tmp_path / "00000.txt"
    pose.write_text("-inf -inf -inf -inf\n" * 4)  # ScanNet marks lost tracking this way
    with pytest.raises(DataError, match="NaN/inf"):
        read_pose(pose)


def records_of(root, task, split="train"):
    path = find_annotation_file(root, task, split)
    return path, load_annotation_file(path)


def builder_of(task, root, tmp_path, **kwargs):
    return BUILDERS[task](data_root=str(root), cache_dir=str(tmp_path / "cache"), splits=("train",), **kwargs)


# ---------------------------------------------------------------------------------------------- wrong types in a record


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
    record["boxes"][1]["in_reference"] = "no"  # bool("no") is True: not a boolean
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
    records[2]["id"] = {"scene": 2}  # not str()-ed into a key
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


# -------------------------------------------------------------------------------------------------- symbolic link loops


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


# ---------------------------------------------------------------------------------------------------------- depth files


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


def test_the_builder_names_the_integer_depth_file_and_the_sample(data_copy, tmp_path):  # noqa: F811
    _, records = first_record(data_copy, "reconstruction")
    colour = posed_images_dir(data_copy) / records[0]["images"][1]
    np.save(colour.with_suffix(".npy"), np.full((60, 80), 1500, dtype=np.uint16))  # millimetres, as ScanNet's PNGs
    with pytest.raises(Exception) as excinfo:
        build(ReconstructionBuilder, data_copy, tmp_path, load_depth=True)
    error = str(data_error(excinfo.value))
    assert records[0]["id"] in error and str(colour.with_suffix(".npy")) in error and "integer depth has no unit" in error


# --------------------------------------------------------------------------------------------------------- repeated ids


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


# ------------------------------------------------------------------------------------- a detection record without boxes


def test_the_detection_builder_refuses_it_and_keeps_an_empty_list(data_copy, tmp_path):  # noqa: F811
    """A missing `boxes` is not read as [] (a typed target of no objects beside an answer listing them)."""
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


# -------------------------------------------------------------------------------------------------- empty training data


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
