"""Inputs of the scoring commands are refused naming the file, or counted and reported: `export-lmms` with no task
named, a predictions row with both `raw` and `text`, a predictions file that is not UTF-8, a record without frames,
JSON nested too deep, a data root that is a link loop, a detection record without boxes (on every path that scores
one), repeated or unknown ids, answers that are not text, rows missing or past the limit, U+2028 in an answer."""

import json
import shutil

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.baselines import detection_baseline
from gap_mllm.evaluation.in_memory import EvaluationSlice
from gap_mllm.evaluation.lmms_eval_plugin import LMMS_TASKS, task_functions
from gap_mllm.evaluation.lmms_eval_plugin.export import export_tasks
from gap_mllm.evaluation.runner import read_predictions_file, run_evaluation, write_oracle_predictions
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scoring.detection_metrics import ground_truth


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
    """`"images": []` (the scene id's default would index the first image, even beside a scene_id): every source (a
    model, a predictions file, the oracle) refuses it by name before any answer."""
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
    """A file nested 100,000 levels is one line naming it, never a RecursionError (processing/json_files.py bounds the
    depth)."""
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
    """Named as a link loop, not "no such file or folder; did you mean loop?" (the same path offered as the fix)."""
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
    """A grounding answer nested 100,000 levels raises no RecursionError in the official stage-1 reading: the
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


# ------------------------------------------------------------------------------------- a detection record without boxes


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
    """Refused before the model answers: refused only at scoring, the answers would already be written, and the
    fixed annotation file (another file for the run fingerprint) could not resume them."""
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


# ---------------------------------------------------------------------------------------------------- predictions files


@pytest.fixture
def qa_oracle(synth_data, tmp_path):
    from gap_mllm.evaluation.runner import write_oracle_predictions

    path = write_oracle_predictions("spatial_qa", synth_data, tmp_path / "oracle.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_rows(path, rows, ensure_ascii=True):
    path.write_text("".join(json.dumps(row, ensure_ascii=ensure_ascii) + "\n" for row in rows), encoding="utf-8")
    return path


def score_qa(synth_data, tmp_path, rows, **kwargs):
    from gap_mllm.evaluation.runner import run_evaluation

    return run_evaluation("spatial_qa", synth_data, tmp_path / "out", predictions_file=write_rows(tmp_path / "p.jsonl", rows),
                          plots=False, **kwargs)


def test_a_repeated_prediction_id_is_an_error_naming_both_lines(synth_data, tmp_path, qa_oracle):
    rows = qa_oracle + [dict(qa_oracle[1], raw=["Z"])]
    with pytest.raises(ValueError, match=rf"line {len(rows)}: id {qa_oracle[1]['id']!r} already has a row \(line 2\)"):
        score_qa(synth_data, tmp_path, rows)


@pytest.mark.parametrize("answer, kind", [({"answer": "A"}, "dict"), (3, "int"), (None, "NoneType"), (["A"], "list")])
def test_an_answer_that_is_not_text_is_an_error_not_scored_as_its_repr(synth_data, tmp_path, qa_oracle, answer, kind):
    rows = [dict(qa_oracle[0], raw=[answer])] + qa_oracle[1:]
    with pytest.raises(ValueError, match=rf"line 1 \(id {qa_oracle[0]['id']!r}\): answer 0 is {kind} .*not a string"):
        score_qa(synth_data, tmp_path, rows)


def test_rows_that_are_not_scored_are_counted_and_reported(synth_data, tmp_path, qa_oracle):
    rows = qa_oracle + [{"id": "not-a-sample", "raw": ["A"]}]
    summary = score_qa(synth_data, tmp_path, rows, limit=2)
    assert summary["num_samples"] == 2 and summary["metrics"]["overall"] == 1.0
    assert summary["predictions_file"] == {"rows": len(rows), "scored": 2, "after_limit": len(qa_oracle) - 2,
                                           "not_in_annotations": 1, "not_in_annotations_first": ["not-a-sample"]}


@pytest.mark.parametrize("limit", [0, -1, True])
def test_a_limit_that_is_not_a_positive_count_is_an_error(synth_data, tmp_path, qa_oracle, limit):
    with pytest.raises(ValueError, match=rf"limit must be a positive number of samples .*got {limit!r}"):
        score_qa(synth_data, tmp_path, qa_oracle, limit=limit)


def test_an_annotation_file_without_records_is_an_error(synth_data, tmp_path, qa_oracle):
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(ValueError, match="empty.json: no samples to evaluate"):
        score_qa(synth_data, tmp_path, qa_oracle, annotation_file=empty)


def test_missing_rows_are_listed_not_called_a_resume(synth_data, tmp_path, qa_oracle):
    with pytest.raises(ValueError) as excinfo:
        score_qa(synth_data, tmp_path, qa_oracle[2:])
    message = str(excinfo.value)
    assert f"2 of the {len(qa_oracle)} sample(s)" in message and "have no row in the predictions file" in message
    assert repr(qa_oracle[0]["id"]) in message and repr(qa_oracle[1]["id"]) in message and "resume" not in message


def test_a_line_separator_inside_an_answer_is_text_not_a_line_break(synth_data, tmp_path, qa_oracle):
    from gap_mllm.evaluation.runner import read_predictions_file, run_evaluation

    rows = [dict(row, raw=[row["raw"][0] + "\u2028"]) for row in qa_oracle]
    path = write_rows(tmp_path / "u2028.jsonl", rows, ensure_ascii=False)
    assert "\u2028" in path.read_text(encoding="utf-8")  # written raw, as JSON allows
    assert read_predictions_file(path, 1)[qa_oracle[0]["id"]] == [qa_oracle[0]["raw"][0] + "\u2028"]
    summary = run_evaluation("spatial_qa", synth_data, tmp_path / "out", predictions_file=path, plots=False)
    assert summary["metrics"]["overall"] == 1.0


def test_a_frame_deleted_under_kept_answers_is_named_by_its_sample_id(tiny_checkpoint, tmp_path, capsys):  # noqa: F811
    """The kept answer of the changed frames is answered again; its missing frame used to be named "sample 0, view 0"
    (the batch's row), not the sample."""
    from .conftest import write_small_synth

    data = write_small_synth(tmp_path / "data", {"val": 1})
    options = ("--model", str(tiny_checkpoint), "--limit", "1", "--max-new-tokens", "2")
    assert evaluate(data, tmp_path / "out", *options) == 0
    row = json.loads((tmp_path / "out" / "raw_outputs.rank0.jsonl").read_text().splitlines()[0])
    record = next(r for r in json.loads(find_annotation_file(data, "detection", "val").read_text()) if r["id"] == row["id"])
    frame = data / "scannet" / "posed_images" / record["images"][0]
    frame.unlink()
    capsys.readouterr()
    assert evaluate(data, tmp_path / "out", *options) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"gap-mllm evaluate: error: sample {row['id']!r}: view 0: image file not found: {str(frame)!r}")
