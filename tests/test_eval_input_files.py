"""Inputs of the scoring commands that used to pass silently or fail without naming the file: `export-lmms` with no
task named, a predictions row with both `raw` and `text`, a predictions file that is not UTF-8."""

import json

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS
from gap_mllm.evaluation.lmms_eval_plugin.export import export_tasks
from gap_mllm.evaluation.runner import read_predictions_file


@pytest.mark.parametrize("tasks", ["", " , ", ","])
def test_export_lmms_with_no_task_named_is_refused(tmp_path, capsys, tasks):
    (tmp_path / "data").mkdir()
    status = gap_mllm(["export-lmms", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--tasks", tasks])
    err = capsys.readouterr().err
    assert status == 2
    assert (f"gap-mllm export-lmms: error: --tasks {tasks!r}: no task named; choose one or more of "
            f"{', '.join(LMMS_TASKS)}, comma-separated (or leave --tasks out for all)") in err.splitlines()
    assert not (tmp_path / "out").exists()


def test_export_tasks_with_an_empty_list_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"^no task named: choose one or more of {', '.join(LMMS_TASKS)}"):
        export_tasks(tmp_path, tmp_path / "out", tasks=[])
    assert not (tmp_path / "out").exists()


def test_a_row_with_both_raw_and_text_is_refused(tmp_path):
    path = tmp_path / "answers.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "[]"}) + "\n" + json.dumps({"id": "b", "raw": ["[]"], "text": "x"}) + "\n")
    with pytest.raises(ValueError, match=rf"^{path}, line 2 \(id 'b'\): the row has both 'raw' and 'text'; give one"):
        read_predictions_file(path, 1)


def test_a_predictions_file_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes((json.dumps({"id": "a", "text": "[]"}) + "\n" + json.dumps({"id": "b", "text": "caf\u00e9"},
                                                                                  ensure_ascii=False) + "\n").encode("latin-1"))
    offset = path.read_bytes().index(b"\xe9")
    with pytest.raises(ValueError, match=rf"^{path}, line 2: not UTF-8 text \(byte 0xe9 at offset {offset}\); a predictions "
                                         "file is JSON Lines in UTF-8: save it as UTF-8$"):
        read_predictions_file(path, 1)
