"""A malformed `<data>/synthrooms/dataset_info.json` is a DataError naming the file and what is wrong, from every
reader (one reader, `read_dataset_info`), never a raw KeyError / TypeError or an unnamed JSON error."""

from __future__ import annotations

import json

import pytest

from gap_mllm.evaluation.grounding_identification import min_visible_pixels
from gap_mllm.processing.dataset_identity import SYNTHROOMS_INFO, describe_data_root, read_dataset_info
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.held_out import check_held_out, split_scenes
from gap_mllm.processing.synth.writer import synthrooms_owner
from gap_mllm.training.geometry_data import split_scene_ids

from lab.mini.pipeline import MiniRun, make_data

MALFORMED = {
    "invalid JSON": ('{"splits": {"train": ["s0"]', "not valid JSON"),
    "not an object": ('["s0"]', "expected a JSON object, found list"),
    "no splits": ('{"config": {}}', "no 'splits'"),
    "splits a list": ('{"splits": ["train"]}', "'splits' must map split names to lists of scene ids, found list"),
    "scenes a string": ('{"splits": {"train": "s0"}}', "'splits'['train'] must be a list of scene ids"),
    "config a list": ('{"splits": {"train": ["s0"]}, "config": [1]}', "'config' must be an object, found list"),
}
READERS = {
    "read_dataset_info": read_dataset_info,
    "describe_data_root": describe_data_root,
    "split_scene_ids": lambda root: split_scene_ids(root, "train"),
    "min_visible_pixels": min_visible_pixels,
    "split_scenes": lambda root: split_scenes(root, "train"),
    # python -m lab.mini's data step and synth's check of a folder it would rewrite
    "mini make_data": lambda root: make_data(MiniRun(out=root / "run", data=root, budget="toy")),
    "synth owner check": lambda root: synthrooms_owner(None, {"train": 1})(root),
}


def data_root(tmp_path, text: str):
    path = tmp_path / SYNTHROOMS_INFO
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return tmp_path, path


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("case", MALFORMED)
def test_every_reader_names_the_file_and_the_fault(tmp_path, reader, case):
    text, fault = MALFORMED[case]
    root, path = data_root(tmp_path, text)
    with pytest.raises(DataError) as error:
        READERS[reader](root)
    assert str(error.value).startswith(f"file {path}: {fault}")


def test_a_sound_file_is_read_and_a_missing_one_is_none(tmp_path):
    assert read_dataset_info(tmp_path) is None and describe_data_root(tmp_path)["kind"] == "scannet-layout"
    info = {"splits": {"train": ["s0", "s1"], "val": ["s2"]}, "config": {"seed": 0}, "records": {}}
    root, path = data_root(tmp_path, json.dumps(info))
    assert read_dataset_info(root) == info and split_scene_ids(root, "val") == ["s2"]
    with pytest.raises(DataError, match=f"file {path}: no split 'test'"):
        split_scene_ids(root, "test")


def test_the_held_out_check_refuses_a_malformed_file_by_name(tmp_path):
    root, path = data_root(tmp_path / "data", '{"splits": {"val": [1, 2]}}')
    model = tmp_path / "model"
    model.mkdir()
    (model / "gap_mllm_training.json").write_text(json.dumps({"trained_scenes": []}))
    with pytest.raises(DataError, match="'splits'\\['val'\\] must be a list of scene ids"):
        check_held_out(model, root, {"s0"})
