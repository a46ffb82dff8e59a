"""JSON the user gives is read with its nesting bounded (processing/json_files.py): a text nested deeper than
MAX_JSON_DEPTH is one line naming the file, never a RecursionError, by every reader that takes such a file
(annotation and predictions files, an output folder's marker, an evaluation's run record, dataset_info.json, a
lock file's record)."""

from __future__ import annotations

import json

import pytest

from gap_mllm.evaluation.reports import read_raw_outputs
from gap_mllm.evaluation.run_fingerprint import RUN_FINGERPRINT_FILE, check_resume
from gap_mllm.evaluation.runner import read_predictions_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.dataset_identity import parse_dataset_info
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.folder_lock import read_holder
from gap_mllm.processing.json_files import MAX_JSON_DEPTH, JsonTooDeep, json_depth_beyond, loads_json
from gap_mllm.processing.output_folder import MARKER, marker_problem

DEEP = "[" * 100_000 + "]" * 100_000  # was a RecursionError in every reader below
TOO_DEEP = f"JSON nested 100000 levels deep, beyond the {MAX_JSON_DEPTH} this reader takes (its files nest a few " \
           "levels): the file is damaged or not of this kind; give the right file"


@pytest.mark.parametrize("text, depth", [
    ("[" * 101 + "]" * 101, 101),
    ('{"a": ' * 101 + "1" + "}" * 101, 101),
    ("[" * 150, 150),  # never closed: Python's reader recurses before it finds the end
    ('["' + "[" * 1000 + '"]', None),  # brackets inside a string are text
    ('["\\"' + "[" * 1000 + '"]', None),  # an escaped quote does not end the string
    ('["\\\\"' + ", [" * 101 + "]" * 101 + "]", 102),  # an escaped backslash does not escape the quote after it
    ('["\u00e9' + "{" * 200 + '"]', None),  # UTF-8 of other characters holds no bracket or quote byte
    ("[" * 100 + "]" * 100, None),  # the bound itself is taken
])
def test_the_depth_is_that_of_the_brackets_outside_strings(text, depth):
    assert json_depth_beyond(text) == depth
    assert json_depth_beyond(text.encode()) == depth


def test_loads_json_refuses_beyond_the_bound_and_reads_the_rest(tmp_path):
    with pytest.raises(JsonTooDeep) as error:
        loads_json(DEEP, tmp_path / "x.json")
    assert str(error.value) == f"{tmp_path / 'x.json'}: {TOO_DEEP}" and error.value.reason == TOO_DEEP
    nested = [[[{"a": [1, "[["]}]]]
    assert loads_json(json.dumps(nested), "x") == nested


def test_every_reader_of_such_a_file_names_it_in_one_line(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text(DEEP)
    with pytest.raises(DataError) as error:
        load_annotation_file(path)
    assert str(error.value) == f"file {path}: annotation file is {TOO_DEEP}"
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps({"id": "a", "text": "[]"}) + "\n" + DEEP + "\n")
    with pytest.raises(JsonTooDeep, match=rf"^{answers}, line 2: JSON nested 100000 levels deep"):
        read_predictions_file(answers, 1)
    with pytest.raises(DataError) as error:
        parse_dataset_info(DEEP.encode(), path)
    assert str(error.value) == f"file {path}: {TOO_DEEP}; write the data again with gap-mllm synth"
    assert read_holder(path) == {}  # a lock file's record that says nothing: the lock is taken as any other

    folder = tmp_path / "out"
    folder.mkdir()
    (folder / MARKER).write_text(DEEP)
    assert marker_problem(folder, "gap-mllm evaluate") == (f"its marker {MARKER} is not a JSON object naming the "
                                                           "command that wrote the folder")
    (folder / "raw_outputs.rank0.jsonl").write_text(DEEP + "\n" + json.dumps({"id": "a", "raw": ["x"]}) + "\n")
    assert read_raw_outputs(folder) == {"a": ["x"]}  # a line that is no answer row, as a torn one
    (folder / RUN_FINGERPRINT_FILE).write_text(DEEP)
    with pytest.raises(ValueError) as error:
        check_resume(folder, {})
    assert str(error.value).startswith(f"{folder / RUN_FINGERPRINT_FILE}: the run record cannot be read ({TOO_DEEP}); "
                                       "the answers beside it are not resumed")
