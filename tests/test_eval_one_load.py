"""`one_load_per_model` (evaluation/runner.py): the evaluations of one model inside the block load it once, answer
exactly as separate loads do, and a model whose files changed, or another model, is loaded anew."""

import json
import shutil

import pytest

from gap_mllm.evaluation import runner, scene_generation
from gap_mllm.evaluation.runner import one_load_per_model, run_evaluation


@pytest.fixture
def loads(monkeypatch):
    """The model folders a `SceneGenerator` was loaded from, in order."""
    seen = []
    original = scene_generation.SceneGenerator.__init__

    def recording(self, model_dir, *args, **kwargs):
        seen.append(str(model_dir))
        original(self, model_dir, *args, **kwargs)

    monkeypatch.setattr(scene_generation.SceneGenerator, "__init__", recording)
    return seen


def _evaluate(task, data, out, model, tokens):
    run_evaluation(task, data, out, model_dir=model, limit=2, batch_size=2, max_new_tokens=tokens, plots=False,
                   progress=False, meteor=False)
    return (out / "raw_outputs.rank0.jsonl").read_text()


def test_one_model_is_loaded_once_for_its_tasks_and_answers_as_loaded_alone(synth_data, tiny_checkpoint, tmp_path, loads):
    # two tasks, each with its own token cap, and grounding twice: its scenes (kept by name) are encoded anew
    plan = [("grounding", 4), ("detection", 6), ("grounding", 3)]
    alone = [_evaluate(task, synth_data, tmp_path / f"alone{i}", tiny_checkpoint, tokens)
             for i, (task, tokens) in enumerate(plan)]
    assert len(loads) == 3
    loads.clear()
    with one_load_per_model():
        shared = [_evaluate(task, synth_data, tmp_path / f"shared{i}", tiny_checkpoint, tokens)
                  for i, (task, tokens) in enumerate(plan)]
    assert loads == [str(tiny_checkpoint)]
    assert shared == alone
    assert all(json.loads(line)["raw"] for text in shared for line in text.splitlines())
    assert runner._kept_generator is None  # let go after the block


def test_a_changed_or_other_model_is_loaded_anew_and_only_one_is_kept(synth_data, tiny_checkpoint, tmp_path, loads):
    other = tmp_path / "other"
    shutil.copytree(tiny_checkpoint, other)
    with one_load_per_model():
        _evaluate("detection", synth_data, tmp_path / "a", other, 4)
        with one_load_per_model():  # a nested block shares the outer one's model
            _evaluate("captioning", synth_data, tmp_path / "b", other, 4)
        _evaluate("detection", synth_data, tmp_path / "c", tiny_checkpoint, 4)
        kept = runner._kept_generator
        assert kept["key"][0] == str(tiny_checkpoint.resolve())  # one model at a time: the last one
        config = other / "config.json"
        config.write_text(config.read_text().replace("{", '{\n  "unused_note": 1,', 1))  # same folder, other files
        _evaluate("detection", synth_data, tmp_path / "d", other, 4)
    assert loads == [str(other), str(tiny_checkpoint), str(other)]
