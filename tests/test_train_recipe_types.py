"""Recipe values from YAML and `--set` are checked and converted against the field types (the recipe
dataclasses' and TrainingArguments'); the device and precision are picked by themselves and logged."""

from __future__ import annotations

import dataclasses
import logging
from enum import Enum
from pathlib import Path

import pytest
import torch

from gap_mllm.training.config import LearningRates, TrainRecipe, load_recipe, recipe_from_dict, training_arguments
from gap_mllm.training.config_types import RecipeTypeError, coerce, describe
from gap_mllm.training.device import apply_device_plan, plan_device

RECIPES = Path(__file__).resolve().parents[1] / "training" / "recipes"
STAGE1 = RECIPES / "stage1_pretrain.yaml"


def test_the_shipped_example_override_becomes_a_float():
    """`--set training.learning_rate=3e-3`: PyYAML reads "3e-3" (no dot) as a string."""
    recipe = load_recipe(STAGE1, ["training.learning_rate=3e-3", "learning_rates.merger_lr=1e-5"])
    assert recipe.training["learning_rate"] == 0.003 and type(recipe.training["learning_rate"]) is float
    assert recipe.learning_rates.merger_lr == 1e-5 and type(recipe.learning_rates.merger_lr) is float
    args = training_arguments(dataclasses.replace(recipe, training={**recipe.training, "output_dir": "x", "use_cpu": True, "bf16": False}))
    assert args.learning_rate == 0.003


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.learning_rate=abc", "training.learning_rate: expected float, got str 'abc'"),
        ("training.max_steps=2.5", "training.max_steps: expected int, got float 2.5"),
        ("training.bf16=maybe", "training.bf16: expected bool, got str 'maybe'"),
        ("training.learning_rate=.nan", "training.learning_rate: expected float, got float nan"),
        ("learning_rates.merger_lr=fast", "learning_rates.merger_lr: expected float or None, got str 'fast'"),
        ("data.tasks=detection", "data.tasks: expected list[str], got str 'detection' (write a list: [a, b])"),
        ("aux.align_levels=[0, x]", "aux.align_levels[1]: expected int, got str 'x'"),
        ("lora.enabled=1", "lora.enabled: expected bool, got int 1"),
        ("training.lerning_rate=1", "unknown key(s) training.lerning_rate; did you mean training.learning_rate"),
        ("lora.rank=4", "unknown key(s) lora.rank"),
        ("nosuchsection.x=1", "unknown key(s) nosuchsection; a recipe has aux, cache, cpu_bf16_autocast, data, device"),
        ("training.learning_rate", "must look like section.key=value"),
        ("training.report_to=[unclosed", "is not valid YAML"),
    ],
)
def test_bad_values_name_the_field_and_the_expected_type(override, message):
    with pytest.raises(RecipeTypeError) as excinfo:
        load_recipe(STAGE1, [override])
    assert message in str(excinfo.value)


@pytest.mark.parametrize("max_steps", [-5, 0, -2])
def test_a_max_steps_that_is_not_a_number_of_steps_is_refused(max_steps):
    """transformers reads any max_steps <= 0 as "train for num_train_epochs": -5 silently ran whole epochs."""
    message = f"training.max_steps: {max_steps} is not a number of steps; give a positive number of optimizer steps, or -1"
    with pytest.raises(RecipeTypeError, match=message):
        load_recipe(STAGE1, [f"training.max_steps={max_steps}"])
    with pytest.raises(RecipeTypeError, match=message):  # a recipe built in code is checked the same way
        TrainRecipe(training={"max_steps": max_steps})


def test_max_steps_minus_one_means_epochs_and_those_must_be_positive():
    assert load_recipe(STAGE1, ["training.max_steps=-1"]).training["max_steps"] == -1
    assert load_recipe(STAGE1, ["training.max_steps=7"]).training["max_steps"] == 7
    with pytest.raises(RecipeTypeError, match=r"training.num_train_epochs: 0 trains nothing"):
        load_recipe(STAGE1, ["training.num_train_epochs=0"])
    assert load_recipe(STAGE1, ["training.num_train_epochs=0", "training.max_steps=5"]).training["max_steps"] == 5


def test_conversions_follow_the_annotations():
    recipe = load_recipe(STAGE1, [
        "training.max_steps=1e2",          # an integral float for an int field
        "training.save_steps=2",           # an int stays an int in a float field
        "training.report_to=[none]",       # None | str | list[str]
        "training.bf16=False",             # bool
        "training.lr_scheduler_type=linear",  # SchedulerType | str
        "data.data_root=2024",             # YAML int for a str field
        "data.tasks=[detection, grounding_stage2]",
        "lora.enabled=yes", "cache.directory=null", "device=cpu",
    ])
    assert recipe.training["max_steps"] == 100 and type(recipe.training["max_steps"]) is int
    assert recipe.training["save_steps"] == 2 and type(recipe.training["save_steps"]) is int
    assert recipe.training["report_to"] == ["none"] and recipe.training["bf16"] is False
    assert recipe.data.data_root == "2024" and recipe.data.tasks == ["detection", "grounding_stage2"]
    assert recipe.lora.enabled is True and recipe.cache.directory is None and recipe.device == "cpu"


def test_yaml_file_values_are_checked_too(tmp_path):
    (tmp_path / "r.yaml").write_text("training:\n  learning_rate: 3e-3\n  max_steps: ten\nlora:\n")
    with pytest.raises(RecipeTypeError, match="training.max_steps: expected int, got str 'ten'"):
        load_recipe(tmp_path / "r.yaml")
    (tmp_path / "r.yaml").write_text("training:\n  learning_rate: 3e-3\nlora:\n")
    recipe = load_recipe(tmp_path / "r.yaml")
    assert recipe.training["learning_rate"] == 0.003 and recipe.lora.enabled is False  # empty section = defaults
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(RecipeTypeError, match="must be a mapping of sections"):
        load_recipe(tmp_path / "list.yaml")
    with pytest.raises(FileNotFoundError, match="recipe 'missing.yaml' not found"):
        load_recipe("missing.yaml")


class Mode(Enum):
    FAST = "fast"


@dataclasses.dataclass
class NewSection:
    """Stands for a section added to the recipe later (module level, like the real ones)."""

    steps: int = 1
    ratio: float | None = None
    names: tuple[str, ...] = ()
    mode: Mode | str = "fast"


def test_new_dataclass_fields_are_checked_without_new_code():
    """The mechanism reads the annotations: a section added later is validated the same way."""
    assert coerce({"steps": "3", "ratio": "1e-2", "names": ["a"], "mode": "fast"}, NewSection, "new") == \
        NewSection(steps=3, ratio=0.01, names=("a",), mode="fast")
    with pytest.raises(RecipeTypeError, match="new.steps: expected int, got str 'x'"):
        coerce({"steps": "x"}, NewSection, "new")
    with pytest.raises(RecipeTypeError, match=r"unknown key\(s\) new.stpes; did you mean new.steps"):
        coerce({"stpes": 3}, NewSection, "new")
    assert describe(float | None) == "float or None" and describe(list[int]) == "list[int]"
    assert recipe_from_dict({}) == TrainRecipe() and recipe_from_dict({}).learning_rates == LearningRates()


# -------------------------------------------------------------------------------------------- device


def test_cpu_plan_turns_a_gpu_recipe_into_a_cpu_run(caplog):
    recipe = load_recipe(STAGE1, ["device=auto"])
    with caplog.at_level(logging.INFO, logger="gap_mllm.training.device"):
        planned, plan = apply_device_plan(recipe, cuda_available=False, cpu_count=2)
    assert plan.device == "cpu" and plan.reason == "auto: torch sees no CUDA device"
    assert planned.model.dtype == "float32"
    assert {k: planned.training[k] for k in ("use_cpu", "bf16", "fp16", "dataloader_num_workers", "dataloader_pin_memory")} == \
        {"use_cpu": True, "bf16": False, "fp16": False, "dataloader_num_workers": 1, "dataloader_pin_memory": False}
    assert planned.training["activation_checkpointing"] is True  # may stay
    log = caplog.text
    assert "device: cpu (auto: torch sees no CUDA device); precision: float32 weights, no autocast; data-loader workers: 1" in log
    assert "training.bf16=True -> False" in log and "model.dtype='bfloat16' -> 'float32'" in log
    assert "training.dataloader_num_workers=4 -> 1" in log
    assert recipe.training["bf16"] is True  # the caller's recipe is not modified


def test_cpu_bf16_autocast_is_asked_for_and_needs_a_cpu_with_native_bf16(caplog):
    """A GPU recipe's `bf16: true` stays off on the CPU; `cpu_bf16_autocast: true` turns bf16 autocast on there (float32
    weights), on a CPU that computes bf16 natively, and is refused on one that would emulate it."""
    recipe = load_recipe(STAGE1, ["device=auto", "cpu_bf16_autocast=true"])
    with caplog.at_level(logging.INFO, logger="gap_mllm.training.device"):
        planned, plan = apply_device_plan(recipe, cuda_available=False, cpu_count=2, cpu_bf16_supported=True)
    assert planned.training["bf16"] is True and planned.training["fp16"] is False and planned.model.dtype == "float32"
    assert "precision: float32 weights, bf16 autocast; data-loader workers: 1" in caplog.text
    with pytest.raises(ValueError, match=r"^cpu_bf16_autocast=true, but this CPU has no native bfloat16 \(AVX512-BF16 or "
                                         r"AMX\), where bf16 autocast would be slower than float32; drop the option"):
        apply_device_plan(recipe, cuda_available=False, cpu_bf16_supported=False)
    on_cuda = plan_device("auto", {"bf16": False}, "auto", cuda_available=True, bf16_supported=True, cpu_bf16_autocast=True)
    assert on_cuda.training == {"use_cpu": False}  # the GPU's precision is the recipe's own
    assert plan_device("cpu", {"bf16": True}, "auto", cpu_bf16_supported=True).training["bf16"] is False  # not asked


def test_cuda_plans():
    training = {"bf16": True}
    plan = plan_device("auto", training, "bfloat16", cuda_available=True, bf16_supported=True)
    assert plan.device == "cuda" and plan.dtype == "bfloat16" and plan.training == {"use_cpu": False} and not plan.changes
    old_gpu = plan_device("cuda", training, "bfloat16", cuda_available=True, bf16_supported=False)
    assert old_gpu.training == {"use_cpu": False, "bf16": False, "fp16": True} and old_gpu.dtype == "float32"
    unspecified = plan_device("auto", {}, "auto", cuda_available=True, bf16_supported=True)
    assert unspecified.training == {"use_cpu": False, "bf16": True, "fp16": False}
    forced_cpu = plan_device("cpu", {"bf16": True}, "bfloat16", cuda_available=True, cpu_count=16)
    assert forced_cpu.device == "cpu" and forced_cpu.reason == "asked for" and forced_cpu.training["bf16"] is False
    assert "dataloader_num_workers" not in forced_cpu.training  # none asked: nothing to cap


def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="device=cuda, but torch sees no CUDA device .*use --device auto"):
        plan_device("cuda", {}, "auto", cuda_available=False)
    with pytest.raises(ValueError, match="contradicts training.use_cpu=true"):
        plan_device("cuda", {"use_cpu": True}, "auto", cuda_available=True)
    with pytest.raises(ValueError, match=r"device='gpu'; choose from \('auto', 'cpu', 'cuda'\)"):
        load_recipe(STAGE1, ["device=gpu"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only machine's real answer")
def test_this_machine_plans_a_cpu_run():
    assert plan_device("auto", {}, "auto").device == "cpu"
