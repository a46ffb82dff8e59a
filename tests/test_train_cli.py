"""`gap-mllm train`: the stage-1 recipe trains and saves; stage 2 starts from the stage-1 output by
default, as in the shipped recipes; `--resume auto` finds the last checkpoint."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pytest
import yaml

from gap_mllm.loading import load_model
from gap_mllm.processing.held_out import check_held_out, split_scenes
from gap_mllm.training import train_cli
from gap_mllm.training.config import load_recipe

from .test_train_fixtures import train_data_root  # noqa: F401

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
CPU = ["training.use_cpu=true", "training.bf16=false", "training.activation_checkpointing=false", "training.dataloader_num_workers=0",
       "training.max_steps=2", "training.save_steps=2", "training.logging_steps=1", "training.disable_tqdm=true",
       "training.per_device_train_batch_size=2", "training.gradient_accumulation_steps=1", "model.dtype=float32"]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    return train_cli.main(parser.parse_args(argv))


def test_shipped_recipes_load_with_the_official_settings():
    stage1, stage2 = load_recipe(RECIPES / "stage1_pretrain.yaml"), load_recipe(RECIPES / "stage2_finetune.yaml")
    assert stage1.data.tasks == ["reconstruction"] and stage1.learning_rates.merger_lr == 1e-5
    assert stage1.training["learning_rate"] == 5e-6 and stage1.training["weight_decay"] == 0.01
    assert stage1.aux.enabled == [] and not stage1.lora.enabled
    assert stage2.model.name_or_path == stage1.training["output_dir"]  # stage 2 starts from stage 1
    assert stage2.training["gradient_accumulation_steps"] == 16


def test_stage1_then_stage2_through_the_cli(tmp_path, train_data_root):
    stage1_dir, stage2_dir = tmp_path / "stage1", tmp_path / "stage2"
    common = ["--data-root", str(train_data_root), "--report-to", "none", *sum((["--set", o] for o in CPU), [])]
    assert run_cli(["--config", str(RECIPES / "stage1_pretrain.yaml"), "--output-dir", str(stage1_dir),
                    "--set", "model.tiny=tiny", "--set", f"data.cache_dir={tmp_path / 'hf'}",
                    "--set", f"cache.directory={tmp_path / 'geometry'}", "--set", "cache.enabled=always", *common]) == 0
    assert (stage1_dir / "model.safetensors").is_file() and (stage1_dir / "checkpoint-2").is_dir()
    assert any((tmp_path / "geometry").rglob("*.safetensors"))  # the recipe's cache was filled and used
    load_model(stage1_dir, require_geometry_weights=True)
    record = json.loads((stage1_dir / "gap_mllm_training.json").read_text())  # what the model card will state
    assert record["data"]["kind"] == "synthrooms" and record["tasks"] == ["reconstruction"] and record["global_step"] == 2
    assert record["trained_scenes"] == [split_scenes(train_data_root, "train")]  # what evaluation must not score it on

    # stage 2 from the stage-1 folder (the recipe default, here redirected to the test's folder)
    recipe = yaml.safe_load((RECIPES / "stage2_finetune.yaml").read_text())
    recipe["model"]["name_or_path"] = str(stage1_dir)
    recipe["data"]["tasks"] = ["detection", "grounding_stage2"]
    (tmp_path / "stage2.yaml").write_text(yaml.safe_dump(recipe))
    assert run_cli(["--config", str(tmp_path / "stage2.yaml"), "--output-dir", str(stage2_dir), "--resume", "auto",
                    "--set", f"data.cache_dir={tmp_path / 'hf'}", "--set", "cache.enabled=false", *common]) == 0
    assert (stage2_dir / "model.safetensors").is_file()
    # the same scenes (stage 1's carried over, not repeated); its validation scene stays held out
    assert json.loads((stage2_dir / "gap_mllm_training.json").read_text())["trained_scenes"] == record["trained_scenes"]
    assert "stage2 was trained on" in check_held_out(stage2_dir, train_data_root,
                                                      split_scenes(train_data_root, "train")["scenes"])
    assert check_held_out(stage2_dir, train_data_root, split_scenes(train_data_root, "val")["scenes"]) is None
    # a second call with --resume auto continues from checkpoint-2: nothing left to train, same weights
    before = (stage2_dir / "model.safetensors").read_bytes()
    assert run_cli(["--config", str(tmp_path / "stage2.yaml"), "--output-dir", str(stage2_dir), "--resume", "auto",
                    "--set", f"data.cache_dir={tmp_path / 'hf'}", "--set", "cache.enabled=false", *common]) == 0
    assert (stage2_dir / "model.safetensors").read_bytes() == before


def test_a_time_limited_cli_run_says_how_to_continue_and_the_same_command_finishes_it(tmp_path, train_data_root, capsys):
    out = tmp_path / "slots"
    argv = ["--config", str(RECIPES / "stage1_pretrain.yaml"), "--output-dir", str(out), "--resume", "auto",
            "--data-root", str(train_data_root), "--report-to", "none", "--set", "model.tiny=tiny",
            "--set", f"data.cache_dir={tmp_path / 'hf'}", "--set", "cache.enabled=false", *sum((["--set", o] for o in CPU), [])]
    from gap_mllm.cli.errors import run_command

    # past the limit after the first step: the stop status, never "trained"
    assert run_command("train", run_cli, [*argv, "--time-limit-s", "1e-9"]) == 75
    captured = capsys.readouterr()
    assert "training stopped at its time limit (1e-09 s) after step 1 of 2" in captured.err and "trained" not in captured.out
    assert not (out / "model.safetensors").exists() and (out / "checkpoint-1").is_dir()
    assert run_cli(argv) == 0
    assert "trained 2 steps" in capsys.readouterr().out and (out / "model.safetensors").is_file()


def test_the_training_log_keeps_the_libraries_info_in_its_file_and_the_terminal_shows_their_warnings(
        tmp_path, capsys, monkeypatch):
    """`gap-mllm train`'s logging (training/run.py `training_log`): the INFO records of transformers, datasets,
    accelerate and the package go to the log file only, a warning to the terminal as well, the libraries' progress
    bars are off; `echo=True` (`--debug`) shows the INFO records on the terminal. All is put back afterwards."""
    import datasets.utils
    from transformers.utils import logging as hf_logging

    from gap_mllm.training.run import training_log

    package = logging.getLogger("gap_mllm")
    monkeypatch.setattr(package, "handlers", [])  # a handler an earlier test's `gap-mllm train` left on it
    transformers_logger = logging.getLogger("transformers")
    before = (list(transformers_logger.handlers), transformers_logger.level, package.level)
    log = tmp_path / "train.log"
    with training_log(log):
        logging.getLogger("transformers.configuration_utils").info("Model config GapMllmConfig {")
        logging.getLogger("transformers.trainer").warning("a warning the user must see")
        logging.getLogger("datasets.builder").info("Generating train split")
        logging.getLogger("accelerate.state").info("Distributed environment: NO")
        logging.getLogger("gap_mllm.training.run").info("steps  : 4 steps of 2 samples")
        bars_off = (hf_logging.is_progress_bar_enabled(), datasets.utils.are_progress_bars_disabled())
    assert capsys.readouterr().err == "[transformers.trainer] WARNING: a warning the user must see\n"
    assert bars_off == (False, True)
    kept = [line.split(" ", 2)[2] for line in log.read_text(encoding="utf-8").splitlines()]  # without the time
    assert kept == ["[transformers.configuration_utils] INFO: Model config GapMllmConfig {",
                    "[transformers.trainer] WARNING: a warning the user must see",
                    "[datasets.builder] INFO: Generating train split",
                    "[accelerate.state] INFO: Distributed environment: NO",
                    "[gap_mllm.training.run] INFO: steps  : 4 steps of 2 samples"]
    assert (list(transformers_logger.handlers), transformers_logger.level, package.level) == before
    assert hf_logging.is_progress_bar_enabled() and not datasets.utils.are_progress_bars_disabled()

    with training_log(None, echo=True):  # --debug; a process that writes no output folder has no file
        logging.getLogger("transformers.configuration_utils").info("Model config GapMllmConfig {")
        bars_on = hf_logging.is_progress_bar_enabled()
    assert capsys.readouterr().err == "[transformers.configuration_utils] INFO: Model config GapMllmConfig {\n"
    assert bars_on and (list(transformers_logger.handlers), transformers_logger.level, package.level) == before
