"""Bad data gives a clear error naming the file and the sample, or is skipped and counted on request."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import DetectionBuilder, ReconstructionBuilder, load_annotation_file
from gap_mllm.processing.collator import chat_messages
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import posed_images_dir, read_pose, write_frame

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
