"""Inputs of the scoring commands that used to pass silently or fail without naming the file: `export-lmms` with no
task named, a predictions row with both `raw` and `text`, a predictions file that is not UTF-8, a record without
frames, JSON nested too deep, a data root that is a link loop."""

import json

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS
from gap_mllm.evaluation.lmms_eval_plugin.export import export_tasks
from gap_mllm.evaluation.runner import read_predictions_file, run_evaluation, write_oracle_predictions
from gap_mllm.processing.annotation_files import find_annotation_file


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


@pytest.fixture
def oracle(synth_data, tmp_path):  # noqa: F811
    return write_oracle_predictions("detection", synth_data, tmp_path / "oracle.jsonl")


def evaluate(synth_data, out, *options) -> int:  # noqa: F811
    return gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--out", str(out), "--no-plots",
                     "--quiet", *options])


def test_a_record_without_frames_is_refused_naming_it(synth_data, tiny_checkpoint, oracle, tmp_path,  # noqa: F811
                                                     capsys):
    """Was: crash (`"images": []`: an IndexError in the scene id, whose default was evaluated even beside a
    scene_id). Every source (a model, a predictions file, the oracle) refuses it by name before any answer."""
    records = json.loads(find_annotation_file(synth_data, "detection", "val").read_text())
    records[0]["images"] = []
    edited = tmp_path / "det.json"
    edited.write_text(json.dumps(records))
    line = (f"gap-mllm evaluate: error: sample {records[0]['id']!r}; file {edited}: 'images' must be a non-empty list "
            "of image paths (strings), got list []")
    for source, out in ((["--model", str(tiny_checkpoint)], tmp_path / "model"),
                        (["--predictions", str(oracle)], tmp_path / "given")):
        assert evaluate(synth_data, out, *source, "--annotation-file", str(edited), "--limit", "2") == 2
        assert capsys.readouterr().err.splitlines() == [line]
        assert not any(out.glob("raw_outputs*")) and not (out / "summary.json").exists()
    assert gap_mllm(["evaluate", "--task", "detection", "--data", str(synth_data), "--annotation-file", str(edited),
                     "--write-oracle", str(tmp_path / "new.jsonl")]) == 2
    assert capsys.readouterr().err.splitlines() == [line] and not (tmp_path / "new.jsonl").exists()


def test_annotation_and_predictions_nested_too_deep_are_named_in_one_line(synth_data, oracle, tmp_path,  # noqa: F811
                                                                         capsys):
    """Was: crash (RecursionError) for a file nested 100,000 levels (processing/json_files.py bounds the depth)."""
    deep = "[" * 100_000 + "]" * 100_000
    annotations, answers = tmp_path / "deep.json", tmp_path / "deep.jsonl"
    annotations.write_text(deep)
    answers.write_text(json.dumps({"id": "a", "raw": ["[]"]}) + "\n" + '{"id": "c", "raw": ' + deep + "}\n")
    too_deep = ("levels deep, beyond the 100 this reader takes (its files nest a few levels): the file is damaged or "
                "not of this kind; give the right file")
    given = ["--predictions", str(oracle), "--annotation-file", str(annotations)]
    assert evaluate(synth_data, tmp_path / "a", *given) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: file {annotations}: annotation file is JSON nested 100000 {too_deep}"]
    assert evaluate(synth_data, tmp_path / "b", "--predictions", str(answers)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: {answers}, line 2: JSON nested 100001 {too_deep}"]


def test_a_data_root_that_is_a_link_loop_is_named_as_one(tmp_path, oracle, capsys):
    """Was: "--data loop: no such file or folder; did you mean loop?" (the same path offered as the fix)."""
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert evaluate(loop, tmp_path / "out", "--predictions", str(oracle)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: --data {loop}: this is a symbolic link loop (following its links leads back to "
        "itself); give a real folder"]
    nowhere = tmp_path / "nowhere"
    nowhere.symlink_to(tmp_path / "gone")
    assert evaluate(nowhere, tmp_path / "out", "--predictions", str(oracle)) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm evaluate: error: --data {nowhere}: this is a symbolic link to {tmp_path / 'gone'}, which does not "
        "exist; give a real folder"]
    assert not (tmp_path / "out").exists()


def test_an_answer_nested_too_deep_is_no_answer_in_either_reading(synth_data, tmp_path):  # noqa: F811
    """Was: crash (RecursionError) in the official stage-1 reading of a grounding answer nested 100,000 levels; the
    official code reads any failure as frame 0, and the tolerant reading finds no answer in it."""
    oracle = write_oracle_predictions("grounding", synth_data, tmp_path / "oracle.jsonl")
    deep = "[" * 100_000 + "]" * 100_000
    rows = [{**json.loads(line), "raw": [deep, deep]} for line in oracle.read_text().splitlines()[:2]]
    answers = tmp_path / "deep.jsonl"
    answers.write_text("".join(json.dumps(row) + "\n" for row in rows))
    for official_compat in (False, True):
        out = tmp_path / f"out{official_compat}"
        summary = run_evaluation("grounding", synth_data, out, predictions_file=answers, limit=2, plots=False,
                                 official_compat=official_compat)
        assert summary["metrics"]["unscored"] == {"no box in the answer": 2}
        assert [json.loads(line)["parsed"] for line in (out / "samples.jsonl").read_text().splitlines()] == [
            {"frame": 0, "bbox_3d": None}] * 2
