"""`gap-mllm evaluate` resumes an output folder only for the run that wrote its answers (run_fingerprint.py):
another model, annotation file or task setting is refused before anything is generated or scored, naming what
differs, and the folder is left as it was. The same run resumes (also: tests/test_eval_runner.py, after a torn
line; tests/test_eval_distributed.py, two processes)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import TrainingArguments

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.evaluation.run_fingerprint import RUN_FINGERPRINT_FILE, model_fingerprint
from gap_mllm.evaluation.runner import answer_frames, run_evaluation
from gap_mllm.evaluation.tasks import get_task
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.decimal_numbers import NUMBER
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .test_eval_runner import _count_generate_calls

RUN = dict(limit=2, batch_size=2, max_new_tokens=4, progress=False, plots=False)


@pytest.fixture(scope="module")
def other_checkpoint(tmp_path_factory):
    """A tiny model of the same configuration as `tiny_checkpoint` with other weights."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny_other"), seed=1)


@pytest.fixture
def finished_run(synth_data, tiny_checkpoint, tmp_path):  # noqa: F811
    """An output folder with the detection answers of the tiny model: (folder, its files' bytes)."""
    out = tmp_path / "det"
    run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **RUN)
    return out, snapshot(out)


def snapshot(folder) -> dict:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def refused(synth_data, out, monkeypatch, **changes) -> str:  # noqa: F811
    """The refusal of a rerun with `changes`; asserts that nothing was generated."""
    calls = _count_generate_calls(monkeypatch)
    with pytest.raises(ValueError) as error:
        run_evaluation("detection", synth_data, out, **{**RUN, **changes})
    assert calls == []
    return str(error.value)


def test_a_run_of_another_model_is_refused_naming_the_weights(synth_data, tiny_checkpoint, other_checkpoint,  # noqa: F811
                                                              finished_run, monkeypatch):
    out, before = finished_run
    recorded = json.loads((out / RUN_FINGERPRINT_FILE).read_text())
    message = refused(synth_data, out, monkeypatch, model_dir=other_checkpoint)
    assert message.startswith(f"{out} holds answers of another run, which would be scored as this one's: the model "
                              f"weights (recorded \"{recorded['model']['weights'][:12]}…\", now \"")
    assert "model's configuration" not in message  # same configuration: only the weights are named
    assert message.endswith(f"Rerun with the same settings to resume, or give another output folder (--out), or delete "
                            f"raw_outputs.rank0.jsonl and {RUN_FINGERPRINT_FILE} in {out} to start fresh")
    assert snapshot(out) == before  # nothing in the folder changed


def test_other_budgets_settings_and_annotations_are_refused_naming_them(synth_data, tiny_checkpoint, finished_run,  # noqa: F811
                                                                       monkeypatch, tmp_path):
    out, before = finished_run
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint, max_new_tokens=6)
    assert ": the max_new_tokens cap (recorded 4, now 6). Rerun" in message
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint, official_compat=True)
    assert ": official_compat (recorded false, now true). Rerun" in message
    annotations = find_annotation_file(synth_data, "detection", "val")
    records = json.loads(annotations.read_text())
    records[0]["conversations"][1]["value"] = "[]"  # another truth for the same samples
    edited = tmp_path / annotations.name
    edited.write_text(json.dumps(records))
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint, annotation_file=edited)
    assert ": the annotation file's content (recorded \"" in message and "annotation file name" not in message
    assert snapshot(out) == before


def test_answers_without_a_record_are_not_resumed(synth_data, tiny_checkpoint, finished_run, monkeypatch):  # noqa: F811
    out, _ = finished_run
    (out / RUN_FINGERPRINT_FILE).unlink()
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint)
    assert message.startswith(f"{out} holds answers (raw_outputs.rank0.jsonl) but no {RUN_FINGERPRINT_FILE}, so which "
                              "model, data and settings wrote them is unknown and they are not resumed: give another")


def test_the_same_run_resumes_and_a_folder_without_answers_takes_the_new_record(synth_data, tiny_checkpoint,  # noqa: F811
                                                                               other_checkpoint, finished_run, monkeypatch):
    out, before = finished_run
    calls = _count_generate_calls(monkeypatch)
    # the same run with other execution settings (batch size, scene reuse): nothing to redo, same answers
    run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **{**RUN, "batch_size": 1}, scene_reuse=False)
    assert calls == [] and snapshot(out)["raw_outputs.rank0.jsonl"] == before["raw_outputs.rank0.jsonl"]
    for path in out.glob("raw_outputs.rank*.jsonl"):  # answers deleted by hand, as the refusal says: start fresh
        path.unlink()
    run_evaluation("detection", synth_data, out, model_dir=other_checkpoint, **RUN)
    assert calls == [2]
    assert json.loads((out / RUN_FINGERPRINT_FILE).read_text()) != json.loads(before[RUN_FINGERPRINT_FILE])


def test_the_cli_refuses_in_one_line(synth_data, tiny_checkpoint, other_checkpoint, finished_run, capsys):  # noqa: F811
    out, before = finished_run
    options = ["evaluate", "--task", "detection", "--data", str(synth_data), "--out", str(out), "--limit", "2",
               "--max-new-tokens", "4", "--no-plots", "--quiet"]
    assert gap_mllm([*options, "--model", str(other_checkpoint)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gap-mllm evaluate: error: {out} holds answers of another run") and "the model weights" in error
    assert snapshot(out) == before
    moved = out.parent / "copy_of_the_model"  # the same files elsewhere: the same model
    shutil.copytree(tiny_checkpoint, moved)
    capsys.readouterr()
    assert gap_mllm([*options, "--model", str(moved)]) == 0
    assert f"answers in {out}: 2 reused, 0 answered again, 0 new" in capsys.readouterr().out.splitlines()


def test_a_hub_id_is_fingerprinted_from_the_snapshot_that_is_loaded(tiny_checkpoint, tmp_path, monkeypatch):  # noqa: F811
    """A Hub id resolves to its local snapshot (here a cache written by hand, offline): the files hashed are the
    files then loaded, and the same files give the same fingerprint wherever they are."""
    from huggingface_hub import constants

    from gap_mllm.evaluation.run_fingerprint import local_model_folder, model_fingerprint

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    folder = local_model_folder("org/tiny")
    assert folder == repo / "snapshots" / commit
    assert model_fingerprint(folder) == model_fingerprint(tiny_checkpoint)
    assert local_model_folder(tiny_checkpoint) == tiny_checkpoint


def test_a_changed_configuration_file_is_refused_and_a_model_card_is_not(synth_data, tiny_checkpoint, finished_run,  # noqa: F811
                                                                        monkeypatch, tmp_path):
    """The same weights with another tokenizer or generation configuration answer differently: refused, naming the
    configuration files; a model card written after the run (not in MODEL_CONFIGURATION_FILES) changes no answer."""
    out, before = finished_run
    edited = tmp_path / "same_weights_other_configuration"
    shutil.copytree(tiny_checkpoint, edited)
    config = json.loads((edited / "generation_config.json").read_text())
    (edited / "generation_config.json").write_text(json.dumps({**config, "repetition_penalty": 1.3}))
    message = refused(synth_data, out, monkeypatch, model_dir=edited)
    assert ": the model's configuration/tokenizer files (recorded \"" in message and "the model weights" not in message
    assert snapshot(out) == before
    carded = tmp_path / "same_model_with_a_card"
    shutil.copytree(tiny_checkpoint, carded)
    (carded / "README.md").write_text("# a card written after the run\n")
    calls = _count_generate_calls(monkeypatch)
    run_evaluation("detection", synth_data, out, model_dir=carded, **RUN)
    assert calls == [] and snapshot(out)["raw_outputs.rank0.jsonl"] == before["raw_outputs.rank0.jsonl"]


def test_the_files_trainer_saves_beside_a_model_are_not_its_weights(tiny_checkpoint, tmp_path):  # noqa: F811
    """A model folder written by Trainer holds training_args.bin (with the run's output_dir) and, as a checkpoint,
    the optimizer, scheduler and RNG states: none changes an answer, so the same model in another folder (a stage
    rebuilt from its run state under another --out) keeps its fingerprint; a changed weight file does not."""
    plain = model_fingerprint(tiny_checkpoint)
    for name, output_dir in (("here", "runs/ablation/stage1"), ("there", "/elsewhere/stage1")):
        folder = shutil.copytree(tiny_checkpoint, tmp_path / name)
        torch.save(TrainingArguments(output_dir=output_dir, report_to="none"), folder / "training_args.bin")
        for trainer_file in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.save({"written_in": name}, folder / trainer_file)
        assert model_fingerprint(folder) == plain
    weights = next(path for path in (tmp_path / "there").iterdir() if path.suffix == ".safetensors")
    weights.write_bytes(weights.read_bytes() + b" ")
    assert model_fingerprint(tmp_path / "there")["weights"] != plain["weights"]


def _written_again(annotations, tmp_path, factor: float, only_first: bool = False):
    """`annotations` under its own name in a folder of `tmp_path`, each decimal number (or only the first one that
    is not 0) multiplied by `factor` and written back as Python writes a float: the same text around the numbers."""
    changed = []

    def scaled(match):
        value = float(match.group(0))
        if (only_first and changed) or value == 0:
            return match.group(0)
        changed.append(value)
        return repr(value * factor).encode()

    folder = tmp_path / f"written_again_{factor!r}_{only_first}"
    folder.mkdir()
    copy = folder / annotations.name
    copy.write_bytes(NUMBER.sub(scaled, annotations.read_bytes()))
    assert changed and copy.read_bytes() != annotations.read_bytes()
    return copy


def test_an_annotation_file_written_again_on_another_cpu_resumes_and_other_numbers_do_not(
        synth_data, tiny_checkpoint, finished_run, monkeypatch, tmp_path, caplog):  # noqa: F811
    """Another CPU writes the same annotation file with other last digits (processing/decimal_numbers.py): another
    sha256, the same answers; one number moved by 1e-6 relative is other data, refused and named."""
    out, before = finished_run
    annotations = find_annotation_file(synth_data, "detection", "val")
    one_moved = _written_again(annotations, tmp_path, 1 + 1e-6, only_first=True)
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint, annotation_file=one_moved)
    assert (": the annotation file's content (recorded \"" in message and "its decimal numbers differ by more than "
            "another CPU's last digits (1e-12 relative)). Rerun" in message)
    assert snapshot(out) == before
    last_digits = _written_again(annotations, tmp_path, 1 + 3e-14)
    calls = _count_generate_calls(monkeypatch)
    with caplog.at_level("INFO", logger="gap_mllm.evaluation.run_fingerprint"):
        run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, annotation_file=last_digits, **RUN)
    assert calls == [] and snapshot(out)["raw_outputs.rank0.jsonl"] == before["raw_outputs.rank0.jsonl"]
    assert "that differs from this one only in the last digits of its numbers" in caplog.text


def test_a_record_without_the_sketch_of_the_numbers_resumes_the_same_bytes_only(
        synth_data, tiny_checkpoint, finished_run, monkeypatch, tmp_path):  # noqa: F811
    """A record written before the sketch existed: the same annotation bytes resume (and the record gains the
    sketch), other last digits cannot be told from other data and are refused, saying why."""
    out, before = finished_run
    record = json.loads(before[RUN_FINGERPRINT_FILE])
    assert record["data"]["annotation_numbers"]["count"] > 0
    older = {**record, "data": {k: v for k, v in record["data"].items() if k != "annotation_numbers"}}
    (out / RUN_FINGERPRINT_FILE).write_text(json.dumps(older))
    annotations = find_annotation_file(synth_data, "detection", "val")
    message = refused(synth_data, out, monkeypatch, model_dir=tiny_checkpoint,
                      annotation_file=_written_again(annotations, tmp_path, 1 + 3e-14))
    assert "no sketch of its numbers was recorded, so only the same bytes resume). Rerun" in message
    calls = _count_generate_calls(monkeypatch)
    run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **RUN)
    assert calls == [] and json.loads((out / RUN_FINGERPRINT_FILE).read_text()) == record


def test_a_pipeline_that_owns_the_folder_answers_another_runs_answers_again(synth_data, tiny_checkpoint,  # noqa: F811
                                                                           other_checkpoint, finished_run, monkeypatch,
                                                                           caplog):
    """other_run_answers="answer_again" (python -m lab.mini: its run state keeps a copy): the other model's answers are
    deleted with a warning naming what differs, this model answers every sample and the record becomes its own; the
    same run then resumes them. Any other value is refused before anything is read."""
    out, before = finished_run
    calls = _count_generate_calls(monkeypatch)
    with caplog.at_level("WARNING", logger="gap_mllm.evaluation.runner"):
        run_evaluation("detection", synth_data, out, model_dir=other_checkpoint, **RUN, other_run_answers="answer_again")
    assert calls == [2]
    assert f"{out}: its answers are answered again (other_run_answers=answer_again): " in caplog.text
    assert "the model weights (recorded" in caplog.text
    record = json.loads((out / RUN_FINGERPRINT_FILE).read_text())
    assert record["model"] == model_fingerprint(other_checkpoint) != json.loads(before[RUN_FINGERPRINT_FILE])["model"]
    answered = snapshot(out)["raw_outputs.rank0.jsonl"]
    assert len(answered.splitlines()) == 2
    run_evaluation("detection", synth_data, out, model_dir=other_checkpoint, **RUN, other_run_answers="answer_again")
    assert calls == [2] and snapshot(out)["raw_outputs.rank0.jsonl"] == answered
    with pytest.raises(ValueError, match=r"other_run_answers='replace': one of refuse, answer_again"):
        run_evaluation("detection", synth_data, out, model_dir=other_checkpoint, **RUN, other_run_answers="replace")


def test_answers_made_on_frames_that_changed_are_answered_again(synth_data, tiny_checkpoint, tmp_path,  # noqa: F811
                                                                monkeypatch, caplog):
    """Was: silent (a frame repainted after the run: its answers reused and scored, exit 0, nothing said). Each
    answer records the digest of the frames it was made from; a rerun answers again those whose frames changed,
    names them, and the summary says how many answers were reused."""
    data = shutil.copytree(synth_data, tmp_path / "data")
    out = tmp_path / "det"
    assert run_evaluation("detection", data, out, model_dir=tiny_checkpoint, **RUN)["answers"] == {
        "reused": 0, "answered_again": 0, "new": 2}
    first, second = json.loads(find_annotation_file(data, "detection", "val").read_text())[:2]
    frame = next(image for image in first["images"] if image not in second["images"])
    calls = _count_generate_calls(monkeypatch)
    assert run_evaluation("detection", data, out, model_dir=tiny_checkpoint, **RUN)["answers"] == {
        "reused": 2, "answered_again": 0, "new": 0}
    assert calls == []
    Image.new("RGB", (64, 48), (255, 0, 0)).save(data / "scannet" / "posed_images" / frame)  # repainted
    with caplog.at_level("WARNING", logger="gap_mllm.evaluation.runner"):
        summary = run_evaluation("detection", data, out, model_dir=tiny_checkpoint, **RUN)
    assert summary["answers"] == {"reused": 1, "answered_again": 1, "new": 0} and sum(calls) == 1
    assert caplog.messages == [f"{out}: 1 answer(s) there were made on frames that have changed since, so they are "
                               f"answered again: {first['id']!r}"]
    rows = [json.loads(line) for line in (out / "raw_outputs.rank0.jsonl").read_text().splitlines()]
    assert sorted(row["id"] for row in rows) == sorted([first["id"], second["id"]])  # one row each, none stale


def test_a_later_stage_s_frames_are_part_of_what_an_answer_was_made_from(synth_data, tiny_checkpoint,  # noqa: F811
                                                                          tmp_path, monkeypatch):
    """Grounding's second stage reads the neighbours of the frame its first answer chose: one of them repainted
    (a frame the first stage never read) is answered again too."""
    data = shutil.copytree(synth_data, tmp_path / "data")
    out = tmp_path / "grounding"
    run_evaluation("grounding", data, out, model_dir=tiny_checkpoint, **{**RUN, "limit": 1})
    (row,) = [json.loads(line) for line in (out / "raw_outputs.rank0.jsonl").read_text().splitlines()]
    record = json.loads(find_annotation_file(data, "grounding_stage1", "val").read_text())[0]
    frames = answer_frames(get_task("grounding"), record, row["raw"], data / "scannet" / "posed_images")
    neighbour = next(frame for frame in frames[len(record["images"]):] if frame not in record["images"])
    Image.new("RGB", (64, 48), (0, 0, 255)).save(data / "scannet" / "posed_images" / neighbour)
    calls = _count_generate_calls(monkeypatch)
    summary = run_evaluation("grounding", data, out, model_dir=tiny_checkpoint, **{**RUN, "limit": 1})
    assert summary["answers"] == {"reused": 0, "answered_again": 1, "new": 0} and calls == [1, 1]  # two stages


def _rows_as_an_earlier_version_wrote_them(out) -> list[dict]:
    """The answer rows of the finished run `out`, rewritten without their frames' digest; returns them as they were."""
    raw = out / "raw_outputs.rank0.jsonl"
    rows = [json.loads(line) for line in raw.read_text().splitlines()]
    raw.write_text("".join(json.dumps({k: v for k, v in row.items() if k != "frames"}) + "\n" for row in rows))
    return rows


def test_answers_that_record_no_frames_are_answered_again(synth_data, tiny_checkpoint, finished_run,  # noqa: F811
                                                          monkeypatch, caplog):
    """Rows written before answers recorded their frames cannot be checked against the frames: answered again."""
    out, _ = finished_run
    rows = _rows_as_an_earlier_version_wrote_them(out)
    calls = _count_generate_calls(monkeypatch)
    with caplog.at_level("WARNING", logger="gap_mllm.evaluation.runner"):
        summary = run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **RUN)
    assert summary["answers"] == {"reused": 0, "answered_again": 2, "new": 0} and sum(calls) == 2
    assert caplog.messages == [f"{out}: 2 answer(s) there record no digest of the frames they were made from (an "
                               f"earlier version wrote them), so they are answered again: {rows[0]['id']!r}, "
                               f"{rows[1]['id']!r}"]


def test_a_pipeline_that_owns_its_data_may_take_unrecorded_rows_as_made_from_the_frames_as_they_are(
        synth_data, tiny_checkpoint, finished_run, monkeypatch, caplog):  # noqa: F811
    """`unrecorded_frames="take_current"` (what `python -m lab.mini` passes for its kept answers, written before rows
    recorded their frames): such rows are reused and counted in one warning; a row whose frames did change is still
    answered again."""
    out, _ = finished_run
    rows = _rows_as_an_earlier_version_wrote_them(out)
    calls = _count_generate_calls(monkeypatch)
    with caplog.at_level("WARNING", logger="gap_mllm.evaluation.runner"):
        summary = run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **RUN,
                                 unrecorded_frames="take_current")
    assert summary["answers"] == {"reused": 2, "answered_again": 0, "new": 0} and sum(calls) == 0
    assert caplog.messages == [f"{out}: 2 answer(s) there record no digest of the frames they were made from (an "
                               "earlier version wrote them): reused as made from the frames as they are now "
                               "(unrecorded_frames=take_current)"]
    with pytest.raises(ValueError, match=r"unrecorded_frames='keep': one of answer_again, take_current"):
        run_evaluation("detection", synth_data, out, model_dir=tiny_checkpoint, **RUN, unrecorded_frames="keep")
