"""One schema for a recipe's values, checked where the recipe is read (training/config.py, config_types.py): the
types (NaN and infinity are no number a recipe means), the ranges of the numbers (`VALUE_RANGES`), a YAML key written
twice, an empty recipe file. Each is refused in one line naming the key (and the file), before a model is loaded."""

from __future__ import annotations

import pytest

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.training.config import RecipeTypeError, TrainRecipe, load_recipe, recipe_from_dict, training_arguments
from gap_mllm.training.run import run_training

FIRST_FINETUNE = "training/recipes/first_finetune.yaml"
NOT_FINITE = "(a finite number: NaN and infinity are not usable values)"


@pytest.mark.parametrize("override, message", [
    ("training.weight_decay=inf", "training.weight_decay: expected float, got str 'inf' " + NOT_FINITE),
    ("training.learning_rate=.inf", "training.learning_rate: expected float, got float inf " + NOT_FINITE),
    ("training.max_grad_norm=-.inf", "training.max_grad_norm: expected float, got float -inf " + NOT_FINITE),
    ("training.adam_epsilon=.nan", "training.adam_epsilon: expected float, got float nan " + NOT_FINITE),
    ("learning_rates.merger_lr=inf", "learning_rates.merger_lr: expected float or None, got str 'inf' " + NOT_FINITE),
    ("aux.camera_weight=.inf", "aux.camera_weight: expected float, got float inf " + NOT_FINITE),
    ("time_limit_s=.inf", "time_limit_s: expected float or None, got float inf " + NOT_FINITE),
])
def test_nan_and_infinity_are_refused_naming_the_key(override, message):
    with pytest.raises(RecipeTypeError) as error:
        load_recipe(FIRST_FINETUNE, [override])
    assert str(error.value) == message


@pytest.mark.parametrize("override, message", [
    ("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps=0: must be at least 1"),
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size=0: must be at least 1"),
    ("training.learning_rate=-1e-4", "training.learning_rate=-0.0001: must be above 0"),
    ("training.weight_decay=-0.1", "training.weight_decay=-0.1: must be 0 or more"),
    ("training.max_grad_norm=-1", "training.max_grad_norm=-1: must be 0 or more"),
    ("training.adam_beta2=1", "training.adam_beta2=1: must be in [0, 1)"),
    ("training.logging_steps=0", "training.logging_steps=0: must be above 0"),
    ("training.dataloader_num_workers=-2", "training.dataloader_num_workers=-2: must be 0 or more"),
    ("training.seed=-1", "training.seed=-1: must be in [0, 2**32)"),
    ("learning_rates.merger_lr=-1e-5", "learning_rates.merger_lr=-1e-05: must be 0 or more"),
    ("aux.depth_weight=-0.5", "aux.depth_weight=-0.5: must be 0 or more"),
    ("cache.batch_size=0", "cache.batch_size=0: must be at least 1"),
    ("data.packing_row_tokens=0", "data.packing_row_tokens=0: must be at least 1"),
    ("data.max_train_samples=0", "data.max_train_samples=0: must be at least 1"),
    ("lora.dropout=1.5", "lora.dropout=1.5: must be in [0, 1)"),
    ("geometry.window_fraction=0", "geometry.window_fraction=0: must be in (0, 1]"),
    ("evaluation.every_n_steps=-1", "evaluation.every_n_steps=-1: must be 0 or more"),
    ("time_limit_s=0", "time_limit_s=0: must be above 0"),
])
def test_numbers_outside_their_range_are_refused_naming_the_key(override, message):
    with pytest.raises(RecipeTypeError) as error:
        load_recipe(FIRST_FINETUNE, [override])
    assert str(error.value) == message


def test_a_recipe_built_in_code_meets_the_same_ranges():
    """Not only the YAML path: the dataclass checks itself (a recipe built or replaced in Python)."""
    with pytest.raises(RecipeTypeError, match=r"^training.gradient_accumulation_steps=0: must be at least 1$"):
        TrainRecipe(training={"gradient_accumulation_steps": 0})
    with pytest.raises(RecipeTypeError, match=r"^training.weight_decay=inf: give a finite number \(0 or more\)$"):
        TrainRecipe(training={"weight_decay": float("inf")})
    with pytest.raises(RecipeTypeError, match=r"^time_limit_s=nan: give a finite number \(above 0\)$"):
        TrainRecipe(time_limit_s=float("nan"))
    assert recipe_from_dict({"training": {"gradient_accumulation_steps": 1, "weight_decay": 0.0,
                                          "max_grad_norm": 0}}).training["max_grad_norm"] == 0


def test_gradient_accumulation_of_zero_never_reaches_trainer(tmp_path, capsys):
    """Was a ZeroDivisionError inside Trainer, after the model was built: now one line before anything is built."""
    status = gap_mllm(["train", "--config", FIRST_FINETUNE, "--out", str(tmp_path / "run"),
                       "--set", "training.gradient_accumulation_steps=0"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err
    assert err.strip() == "gap-mllm train: error: training.gradient_accumulation_steps=0: must be at least 1"
    assert not (tmp_path / "run").exists()


def write(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_key_written_twice_is_refused_naming_the_key_the_lines_and_the_file(tmp_path):
    path = write(tmp_path, "stage: finetune\nmodel:\n  tiny: tiny\ntraining:\n  output_dir: out\nstage: pretrain\n")
    with pytest.raises(RecipeTypeError) as error:
        load_recipe(path)
    assert str(error.value) == (f"recipe {str(path)!r}: the key 'stage' is written twice (lines 1 and 6); the later "
                                "value would silently replace the first: keep one")
    nested = write(tmp_path, "training:\n  max_steps: 4\n  output_dir: out\n  max_steps: 40\n")
    with pytest.raises(RecipeTypeError, match=r"the key 'max_steps' is written twice \(lines 2 and 4\)"):
        load_recipe(nested)
    with pytest.raises(RecipeTypeError, match=r"override .*: the value is not valid YAML \(the key 'detection' is "
                                              r"written twice \(lines 1 and 1\)\)"):
        load_recipe(FIRST_FINETUNE, ["data.task_repeats={detection: 2, detection: 3}"])


def test_a_merged_key_may_still_be_overridden_as_yaml_defines(tmp_path):
    overridden = write(tmp_path, "training: {output_dir: out}\nevaluation:\n  <<: {max_samples: 8, batch_size: 4}\n"
                                 "  max_samples: 16\n")
    recipe = load_recipe(overridden)
    assert (recipe.evaluation.max_samples, recipe.evaluation.batch_size) == (16, 4)


@pytest.mark.parametrize("text", ["", "# nothing but a comment\n", "{}\n"])
def test_an_empty_recipe_is_refused_naming_the_file_and_what_it_lacks(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(RecipeTypeError) as error:
        load_recipe(path, ["model.tiny=tiny"])
    assert str(error.value) == (f"recipe {str(path)!r} is empty: it sets no training.output_dir (the folder the run "
                                "writes), stage or data; start from a recipe of training/recipes/")


def test_an_empty_recipe_on_the_command_line_is_one_line(tmp_path, capsys):
    path = write(tmp_path, "")
    status = gap_mllm(["train", "--config", str(path), "--model", "tiny"])
    err = capsys.readouterr().err
    assert status == 2 and "Traceback" not in err and "KeyError" not in err
    assert err.strip() == (f"gap-mllm train: error: recipe {str(path)!r} is empty: it sets no training.output_dir (the "
                           "folder the run writes), stage or data; start from a recipe of training/recipes/")


def test_a_recipe_without_an_output_folder_is_refused_by_name(tmp_path):
    recipe = recipe_from_dict({"model": {"tiny": "tiny"}})
    expected = ("training.output_dir is not set: name the folder the run writes (training.output_dir in the recipe, "
                "or gap-mllm train --out)")
    with pytest.raises(RecipeTypeError) as error:
        run_training(recipe)
    assert str(error.value) == expected
    with pytest.raises(RecipeTypeError, match=r"^training.output_dir is not set"):
        training_arguments(recipe)
