"""A run resumed from its last step trains no step more (training/run.py `finish_from_checkpoint`).

transformers 5.23's Trainer, resumed from a checkpoint at `max_steps`, trains step N + 1 before it checks the end (shown
below with Trainer itself), so a run state or a checkpoint of a finished run came back one step further, at a learning
rate past its schedule (found by the ablation's restore check). `run_training` takes the finished checkpoint
as it is: the same final folder as the run that wrote it (weights, config and tokenizer files), the same step count,
nothing trained, no feature cache filled."""

from __future__ import annotations

import json
import shutil

import safetensors.torch
import torch
from transformers import AutoTokenizer, TrainerCallback

from gap_mllm.evaluation.run_fingerprint import MODEL_CONFIGURATION_FILES, model_fingerprint
from gap_mllm.training.run import (ALREADY_FINISHED, build_trainer, clear_call_settings, finished_checkpoint,
                                   run_training)
from gap_mllm.training.run_state import read_run_state

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401


class StepsTrained(TrainerCallback):
    def __init__(self):
        self.steps = []

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)


def settings(tmp_path):
    return {"max_steps": 2, "save_strategy": "steps", "save_steps": 2, "output_dir": str(tmp_path / "run")}


def test_trainer_itself_trains_past_a_finished_checkpoint(tmp_path, recon_dataset):
    """The upstream behaviour the fix stands in for (if transformers changes it, this test says so)."""
    data = recon_dataset.select(range(8))
    model, processor = tiny()
    build_trainer(recipe(tmp_path, training=settings(tmp_path)), model=model, processor=processor,
                  train_dataset=data).trainer.train()
    model, processor = tiny()
    trainer = build_trainer(recipe(tmp_path, training=settings(tmp_path)), model=model, processor=processor,
                            train_dataset=data).trainer
    trained = StepsTrained()
    trainer.add_callback(trained)
    trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert trained.steps == [3]


def test_run_training_resumed_at_the_last_step_trains_nothing_and_writes_the_same_model(tmp_path, recon_dataset):
    data = recon_dataset.select(range(8))
    model, processor = tiny()
    first = run_training(recipe(tmp_path, training=settings(tmp_path)), model=model, processor=processor,
                         train_dataset=data)
    out = tmp_path / "run"
    final = safetensors.torch.load_file(str(out / "model.safetensors"))
    fingerprint = model_fingerprint(out)
    assert finished_checkpoint(str(out / "checkpoint-2"), 2) and not finished_checkpoint(str(out / "checkpoint-2"), 3)
    for written in [out / "model.safetensors", *(out / name for name in MODEL_CONFIGURATION_FILES)]:
        written.unlink(missing_ok=True)
    model, processor = tiny(seed=1)  # other initial weights: everything must come from the checkpoint
    again = run_training(recipe(tmp_path, training=settings(tmp_path)), resume_from_checkpoint="auto", model=model,
                         processor=processor, train_dataset=data)
    assert again.global_step == first.global_step == 2
    assert again.metrics == {ALREADY_FINISHED: str(out / "checkpoint-2")}
    assert ALREADY_FINISHED not in first.metrics
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    resumed = safetensors.torch.load_file(str(out / "model.safetensors"))
    assert set(resumed) == set(final) and all(torch.equal(resumed[k], final[k]) for k in final)
    # the folder is the trained run's, byte for byte, in every file an evaluation's fingerprint reads (the tokenizer
    # kept no padding of the run's last call; the special tokens aligned as Trainer.train aligns them)
    assert model_fingerprint(out) == fingerprint


def test_a_finished_run_resumed_fills_no_feature_cache(tmp_path, train_data_root):
    """Nothing trains from the last step, so the cache (half an hour for the Mini's stage 2 on a CPU) is not filled."""
    def cached(cache_folder, resume=None):
        run_recipe = recipe(tmp_path, train_data_root, cache={"enabled": "always", "directory": str(tmp_path / cache_folder)},
                            data={"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf")},
                            training=settings(tmp_path))
        model, processor = tiny(seed=0 if resume is None else 1)
        return run_training(run_recipe, resume_from_checkpoint=resume, model=model, processor=processor)

    first = cached("cache_of_the_run")
    assert any((tmp_path / "cache_of_the_run").rglob("*.safetensors"))
    final = safetensors.torch.load_file(str(tmp_path / "run" / "model.safetensors"))
    (tmp_path / "run" / "model.safetensors").unlink()
    again = cached("cache_of_the_resume", resume="auto")
    assert again.global_step == first.global_step == 2
    assert not list((tmp_path / "cache_of_the_resume").rglob("*.safetensors"))
    resumed = safetensors.torch.load_file(str(tmp_path / "run" / "model.safetensors"))
    assert set(resumed) == set(final) and all(torch.equal(resumed[k], final[k]) for k in final)


def test_a_tokenizer_saved_without_its_last_calls_padding_encodes_the_same(tmp_path):
    """`clear_call_settings` (before a final model is saved) changes the files, not what the tokenizer encodes."""
    _, processor = tiny()
    texts = ["the chair near the window", "a table"]
    processor.tokenizer(texts, padding=True, padding_side="left")  # a validation's generation, as the run's last call
    processor.tokenizer.save_pretrained(tmp_path / "as_left")
    clear_call_settings(processor)
    processor.tokenizer.save_pretrained(tmp_path / "cleared")
    assert json.loads((tmp_path / "as_left" / "tokenizer.json").read_text())["padding"]["direction"] == "Left"
    assert json.loads((tmp_path / "cleared" / "tokenizer.json").read_text())["padding"] is None
    left, cleared = AutoTokenizer.from_pretrained(tmp_path / "as_left"), AutoTokenizer.from_pretrained(tmp_path / "cleared")
    assert left.padding_side == cleared.padding_side
    for settings_of_a_call in ({}, {"padding": True}, {"padding": True, "padding_side": "right"},
                               {"padding": "max_length", "max_length": 12}):
        assert left(texts, **settings_of_a_call) == cleared(texts, **settings_of_a_call), settings_of_a_call


def test_a_run_rebuilt_from_its_state_ends_with_the_best_model_of_its_last_validation(tmp_path, train_data_root):
    """The last step (3) is off the validation schedule (every 2 steps): it is validated at its end, before its
    checkpoint and run state are written, so the state keeps the best model that validation chose, and a fresh
    machine that rebuilds the run from the state alone ends with the trained run's final folder (the ablation's
    kept answers are reused only for that folder). Validated at train end, after the state, the state would keep step
    2's best and the rebuilt final model would be another model."""
    def run(resume=None, seed=0):
        run_recipe = recipe(tmp_path, train_data_root,
                            data={"data_root": str(train_data_root), "cache_dir": str(tmp_path / "hf")},
                            evaluation={"tasks": ["grounding"], "best_metric": "gen_grounding_acc@0.25",
                                        "every_n_steps": 2, "max_samples": 1},
                            run_state={"directory": str(tmp_path / "state")},
                            training={**settings(tmp_path), "max_steps": 3, "save_steps": 3})
        model, processor = tiny(seed=seed)
        return run_training(run_recipe, resume_from_checkpoint=resume, model=model, processor=processor)

    run()
    out = tmp_path / "run"
    trained = model_fingerprint(out)
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 3  # a tie goes to the later step
    record = read_run_state(tmp_path / "state")
    assert record["global_step"] == 3 and record["best"]["record"]["step"] == 3
    validated = [entry["step"] for entry in json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())[
        "log_history"] if "gen_grounding_acc@0.25" in entry]
    assert validated == [2, 3]  # each validation once: the end's is not repeated at train end

    shutil.rmtree(out)  # a fresh machine: only the run state is left
    assert run(resume="auto", seed=1).global_step == 3
    assert model_fingerprint(out) == trained


def test_the_command_says_a_finished_run_is_finished_and_where_its_model_is(tmp_path, train_data_root, capsys):
    """`gap-mllm train --resume auto` on a finished run printed "trained 2 steps, final train loss nan"."""
    from .test_train_cli import CPU, RECIPES, run_cli

    out = tmp_path / "run"
    argv = ["--config", str(RECIPES / "stage1_pretrain.yaml"), "--output-dir", str(out), "--data-root",
            str(train_data_root), "--report-to", "none", "--set", "model.tiny=tiny",
            "--set", f"data.cache_dir={tmp_path / 'hf'}", "--set", "cache.enabled=false",
            *sum((["--set", o] for o in CPU), [])]
    assert run_cli(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("trained 2 steps, final train loss ")
    assert run_cli([*argv, "--resume", "auto"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"nothing to train: the run had already finished at step 2 ({out / 'checkpoint-2'}); its final "
                    f"model is in {out}")
    assert (out / "model.safetensors").is_file()
