"""A record value that its kind accepts but its stored Arrow type cannot hold is refused before `datasets` sees
it, naming the record, the field and the allowed range (processing/features.py `check_fits_features`); an
empty training task list is refused by the recipe, naming `data.tasks`."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import CaptioningBuilder, DetectionBuilder, GroundingStage2Builder, load_annotation_file
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.features import check_fits_features
from gap_mllm.training.config import AuxLossConfig, DataConfig, recipe_from_dict
from gap_mllm.training.data import load_split

from .test_data_bad_inputs import build
from .test_data_fixtures import tiny_dataset  # noqa: F401

INT32 = "[-2147483648, 2147483647]"


@pytest.fixture
def data_copy(tiny_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root)
    return root


def edit_first_record(root, task, edit) -> str:
    """Apply `edit` to the first train record of `task`; its id."""
    path = find_annotation_file(root, task, "train")
    records = load_annotation_file(path)
    edit(records[0])
    path.write_text(json.dumps(records))
    return records[0]["id"]


@pytest.mark.parametrize("builder, task", [(CaptioningBuilder, "captioning"), (GroundingStage2Builder, "grounding_stage2")])
@pytest.mark.parametrize("object_id, shown", [(2**40, 2**40), (str(2**31), 2**31), (-(2**31) - 1, -(2**31) - 1)])
def test_an_object_id_outside_int32_names_the_record_field_and_range(data_copy, tmp_path, builder, task, object_id, shown):
    sample = edit_first_record(data_copy, task, lambda record: record.update(object_id=object_id))
    annotation_file = find_annotation_file(data_copy, task, "train")
    with pytest.raises(DataError) as excinfo:  # not datasets' DatasetGenerationError naming nothing
        build(builder, data_copy, tmp_path)
    assert str(excinfo.value) == (f"file {annotation_file}: sample {sample!r}: 'object_id' holds {shown}, outside the "
                                  f"range of its int32 field {INT32}")
    skipping = build(builder, data_copy, tmp_path / "skip", skip_bad_samples=True)
    assert skipping.skipped["train"].total == 1  # skipped and counted like any bad sample


def test_a_box_value_beyond_float32_is_refused_not_stored_as_infinity(data_copy, tmp_path):
    def huge_box(record):
        record["boxes"][0]["bbox_3d"][0] = 1e300

    sample = edit_first_record(data_copy, "detection", huge_box)
    with pytest.raises(DataError, match=rf"^file .*: sample {sample!r}: 'boxes\[0\]\.bbox_3d' holds a value of magnitude "
                                        r"1e\+300, beyond the range of its float32 field \(±3\.40282e\+38\): it would be "
                                        r"stored as infinity$"):
        build(DetectionBuilder, data_copy, tmp_path)


def test_the_fit_check_on_every_kind_of_field():
    features = datasets.Features({
        "object_id": datasets.Value("int32"), "frame": datasets.Value("int32"), "iou": datasets.Value("float32"),
        "pixel_coords": datasets.List(datasets.Value("int32"), length=3), "label": datasets.Value("string"),
        "depth": datasets.Array3D(shape=(None, 2, 2), dtype="float32"),
        "boxes": datasets.List({"bbox_3d": datasets.List(datasets.Value("float32"), length=9)}),
    })
    good = {"object_id": -1, "frame": 2**31 - 1, "iou": float("nan"), "pixel_coords": [0, 3, 4], "label": "chair",
            "depth": np.zeros((1, 2, 2), np.float32), "boxes": [{"bbox_3d": [float("nan")] * 9}]}
    check_fits_features(good, features, "s")  # NaN (no proposal box, no IoU) is each field's own rule
    for change, message in [
        ({"frame": 2**31}, f"'frame' holds 2147483648, outside the range of its int32 field {INT32}"),
        ({"pixel_coords": [0, 2**70, 1]}, f"'pixel_coords' holds {2**70}, outside the range of its int32 field {INT32}"),
        ({"iou": 1e39}, "'iou' holds a value of magnitude 1e+39, beyond the range of its float32 field"),
        ({"depth": np.full((1, 2, 2), 1e300)}, "'depth' holds a value of magnitude 1e+300, beyond the range"),
        ({"boxes": [{"bbox_3d": [0.0] * 9}, {"bbox_3d": [-1e40] + [0.0] * 8}]}, "'boxes[1].bbox_3d' holds a value of magnitude 1e+40"),
    ]:
        with pytest.raises(DataError) as excinfo:
            check_fits_features({**good, **change}, features, "s")
        assert str(excinfo.value).startswith(f"sample 's': {message}"), str(excinfo.value)


def test_an_empty_task_list_is_refused_by_the_recipe_naming_data_tasks(tiny_dataset):
    expected = r"^data\.tasks is empty: name at least one task with training data \(reconstruction, detection, "
    for stage in ("pretrain", "finetune"):
        with pytest.raises(ValueError, match=expected):
            recipe_from_dict({"stage": stage, "data": {"data_root": str(tiny_dataset), "tasks": []}})
    recipe_from_dict({"stage": "geometry", "data": {"data_root": str(tiny_dataset), "tasks": []}})  # reads no tasks
    with pytest.raises(ValueError, match=expected):  # the loader too, for a DataConfig made without a recipe
        load_split(DataConfig(data_root=str(tiny_dataset), tasks=[]), "train", AuxLossConfig())
