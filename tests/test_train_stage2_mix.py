"""The stage-2 mix and its run: tasks repeated in the mix (`data.task_repeats`), and the best validated model kept
(`evaluation.best_metric`) and made the run's final model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import load_split
from gap_mllm.training.generation_eval import BEST_FOLDER, BEST_RECORD, GenerationEvalCallback, read_best, use_best_model
from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, tiny, train_data_root  # noqa: F401


def test_a_repeated_task_appears_k_times_in_the_mix(train_data_root, tmp_path):
    settings = recipe_from_dict({"data": {"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf"),
                                          "tasks": ["detection", "captioning"], "task_repeats": {"detection": 3}}})
    once = load_split(settings.data, "train", settings.aux)
    mixed = load_split(settings.data, "train", settings.aux, task_repeats=settings.data.task_repeats)
    ids = list(once["id"])
    detection = [name for name in ids if "_det_" in name]
    assert detection and len(mixed) == len(once) + 2 * len(detection)
    assert sorted(list(mixed["id"])) == sorted(ids + 2 * detection)


@pytest.mark.parametrize("data, evaluation, message", [
    ({"tasks": ["detection"], "task_repeats": {"captioning": 2}}, {}, "names \\['captioning'\\], which data.tasks"),
    ({"tasks": ["detection"], "task_repeats": {"detection": 0}}, {}, "at least 1"),
    ({"tasks": ["detection"], "task_repeats": {"detection": 1.5}}, {}, r"data\.task_repeats\.detection: expected int, got float 1\.5"),
    ({"tasks": ["detection"]}, {"best_metric": "gen_detection_f1"}, "needs evaluation.tasks"),
])
def test_bad_mix_and_selection_settings_are_refused(data, evaluation, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"data": data, "evaluation": evaluation})


def test_the_best_validated_model_is_kept_and_becomes_the_final_one(train_data_root, tmp_path):
    """Evaluations at steps 1-4 with Acc 0.1, 0.3, 0.3, 0.2: the step-3 model is kept (a tie goes to the later,
    longer-trained one; a worse one does not replace it), a resumed callback compares with what was kept, and
    `use_best_model` puts its weights in the output folder."""
    model, processor = tiny()
    settings = recipe(tmp_path, train_data_root, evaluation={"tasks": ["grounding"], "best_metric": "gen_grounding_acc@0.25",
                                                              "every_n_steps": 1, "max_samples": 1})
    setup = build_trainer(settings, model=model, processor=processor)
    callback = next(c for c in setup.trainer.callback_handler.callbacks if isinstance(c, GenerationEvalCallback))
    output = tmp_path / "out"
    first = next(p for p in model.parameters() if p.requires_grad)
    for step, accuracy in ((1, 0.1), (2, 0.3), (3, 0.3), (4, 0.2)):
        with torch.no_grad():
            first.fill_(float(step))  # the weights of "step N"
        callback._keep_if_best(step, {"gen_grounding_acc@0.25": accuracy, "gen_grounding_miou": 0.0})
    best = read_best(output)
    assert (best["step"], best["value"]) == (3, 0.3) and not (output / f"{BEST_FOLDER}.tmp").exists()

    resumed = GenerationEvalCallback(settings.evaluation, settings.data.data_root, model, processor)
    resumed.trainer = setup.trainer
    resumed._keep_if_best(5, {"gen_grounding_acc@0.25": 0.25})
    assert read_best(output)["step"] == 3
    with pytest.raises(KeyError, match="not among the logged figures"):
        resumed._keep_if_best(6, {"gen_grounding_miou": 0.5})

    setup.trainer.save_model(str(output))  # the last step's model, as run_training saves it
    assert json.loads((output / BEST_FOLDER / BEST_RECORD).read_text())["step"] == 3
    assert use_best_model(output)["step"] == 3
    final = load_file(str(output / "model.safetensors"))
    kept = [value for name, value in final.items() if value.shape == first.shape and torch.all(value == 3.0)]
    assert kept, "the final folder holds the step-3 weights"
    assert use_best_model(tmp_path / "nothing") is None
