"""An ablation arm's answers kept in its run state and put back on the next machine (lab/mini/kept_answers.py)."""

from __future__ import annotations

import json
import logging

from gap_mllm.evaluation.run_fingerprint import RUN_FINGERPRINT_FILE, model_fingerprint
from gap_mllm.evaluation.runner import OTHER_RUN_ANSWERS

from lab.mini import fresh_seeds, pipeline
from lab.mini.kept_answers import answers_folder, answers_kept, keep_answers, restore_answers

ANSWERED = b'{"id": "a", "index": 0, "raw": ["x"]}\n{"id": "b", "index": 1, "raw": ["y"]}\n'
TORN = b'{"id": "c", "ind'


def model_folder(path, weights: bytes):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    (path / "model.safetensors").write_bytes(weights)
    return path


def evaluation_folder(out, relative, model, raw: bytes):
    folder = out / relative
    folder.mkdir(parents=True)
    fingerprint = {"task": {"name": "grounding"}, "model": model_fingerprint(model), "data": {"annotation_sha256": "d"}}
    (folder / RUN_FINGERPRINT_FILE).write_text(json.dumps(fingerprint))
    (folder / "raw_outputs.rank0.jsonl").write_bytes(raw)
    (folder / "summary.json").write_text("{}")  # recomputed from the answers: not kept
    return folder


def test_answers_go_to_the_run_state_and_come_back_on_a_fresh_machine(tmp_path):
    final = model_folder(tmp_path / "out" / "stages" / "arm" / "final", b"weights")
    out, state = tmp_path / "out", tmp_path / "state"
    test = evaluation_folder(out, "results/arm/grounding", final, ANSWERED + TORN)
    fresh = evaluation_folder(out, "fresh/seed-1/results/arm/detection", final, ANSWERED)
    assert keep_answers(out, state, "arm", [out / "results" / "arm", out / "fresh" / "seed-1" / "results" / "arm"]) == 2
    kept = answers_folder(state, "arm") / "results" / "arm" / "grounding"
    assert sorted(p.name for p in kept.iterdir()) == ["raw_outputs.rank0.jsonl.gz", RUN_FINGERPRINT_FILE]
    first = (kept / "raw_outputs.rank0.jsonl.gz").read_bytes()
    keep_answers(out, state, "arm", [out / "results" / "arm"])
    assert (kept / "raw_outputs.rank0.jsonl.gz").read_bytes() == first  # the same answers, the same bytes (git)

    machine = tmp_path / "machine"  # another --out: nothing answered there yet
    model_folder(machine / "stages" / "arm" / "final", b"weights")
    assert restore_answers(machine, state, "arm", [machine / "stages" / "arm" / "final"]) == 2
    back = machine / "results" / "arm" / "grounding"
    assert (back / "raw_outputs.rank0.jsonl").read_bytes() == ANSWERED  # the torn line was not kept
    assert (back / RUN_FINGERPRINT_FILE).read_bytes() == (test / RUN_FINGERPRINT_FILE).read_bytes()
    assert not (back / "summary.json").exists()
    assert (machine / fresh.relative_to(out) / "raw_outputs.rank0.jsonl").read_bytes() == ANSWERED


def test_answers_of_another_model_or_where_this_machine_answered_are_not_put_back(tmp_path, caplog):
    out, state = tmp_path / "out", tmp_path / "state"
    trained = model_folder(tmp_path / "trained", b"weights")
    evaluation_folder(out, "results/arm/grounding", trained, ANSWERED)
    evaluation_folder(out, "results/arm/captioning", trained, ANSWERED)
    keep_answers(out, state, "arm", [out / "results" / "arm"])

    machine = tmp_path / "machine"
    retrained = model_folder(machine / "stages" / "arm" / "final", b"other weights")
    with caplog.at_level(logging.WARNING):
        assert restore_answers(machine, state, "arm", [retrained]) == 0
    assert "answered again" in caplog.text and not (machine / "results").exists()
    reconfigured = model_folder(tmp_path / "reconfigured", b"weights")  # the same weights, another tokenizer
    (reconfigured / "tokenizer.json").write_text("{}")
    assert restore_answers(machine, state, "arm", [reconfigured]) == 0 and not (machine / "results").exists()

    same = model_folder(tmp_path / "same", b"weights")
    local = machine / "results" / "arm" / "captioning"
    local.mkdir(parents=True)
    (local / "raw_outputs.rank0.jsonl").write_bytes(b'{"id": "a", "index": 0, "raw": ["mine"]}\n')
    assert restore_answers(machine, state, "arm", [same]) == 1  # grounding only: captioning was answered here
    assert (local / "raw_outputs.rank0.jsonl").read_bytes() == b'{"id": "a", "index": 0, "raw": ["mine"]}\n'
    assert (machine / "results" / "arm" / "grounding" / "raw_outputs.rank0.jsonl").read_bytes() == ANSWERED


def test_an_evaluation_stopped_part_way_keeps_what_it_answered(tmp_path):
    out, state = tmp_path / "out", tmp_path / "state"
    final = model_folder(out / "stages" / "arm" / "final", b"weights")

    class Stopped(Exception):
        pass

    try:
        with answers_kept(out, state, "arm", [out / "results" / "arm"], [final]):
            evaluation_folder(out, "results/arm/grounding", final, ANSWERED + TORN)
            raise Stopped  # the time limit's SIGTERM mid-evaluation
    except Stopped:
        pass
    kept = answers_folder(state, "arm") / "results" / "arm" / "grounding" / "raw_outputs.rank0.jsonl.gz"
    assert kept.is_file()
    before = sorted(tmp_path.rglob("*"))
    with answers_kept(out, None, "arm", [out / "results" / "arm"], [final]):  # no run state: nothing kept
        pass
    assert sorted(tmp_path.rglob("*")) == before


def test_the_pipelines_evaluations_answer_again_what_they_cannot_resume(tmp_path, monkeypatch):
    """Answers put back from a run state but made on other data cannot resume (evaluation/run_fingerprint.py): both
    of the pipeline's evaluations (the test split's and the fresh seeds') have the runner answer them again
    (tests/test_eval_run_fingerprint.py shows the runner doing so) instead of stopping the ablation."""
    asked = []

    def runner(task, **settings):
        asked.append((task, settings["out_dir"].relative_to(tmp_path).as_posix(), settings["other_run_answers"]))
        return {}

    monkeypatch.setattr(pipeline, "run_evaluation", runner)
    monkeypatch.setattr(fresh_seeds, "run_evaluation", runner)
    monkeypatch.setattr(fresh_seeds, "fresh_data", lambda out, seed, scenes, workers: tmp_path / f"data-{seed}")
    run = pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "data", device="cpu")
    pipeline._evaluate(run, "grounding", "grounding", tmp_path / "model", "arm", constrained=False)
    fresh_seeds.evaluate_fresh(tmp_path / "run", tmp_path / "model", "arm", seeds=(7,))
    assert asked[0] == ("grounding", "run/results/arm/grounding", "answer_again")
    assert [item[2] for item in asked] == ["answer_again"] * (1 + len(fresh_seeds.FRESH_TASKS))
    assert "answer_again" in OTHER_RUN_ANSWERS
