"""Training GAP-MLLM: geometry-aligned pre-training and fine-tuning with Trainer, PEFT, TRL and accelerate.

    from gap_mllm.training import GeometryAlignedModel, GeometryAlignedTrainer, load_recipe, run_training

Modules: config (recipes), param_groups (freezing + optimizer groups), geometry_aligned_model (training
forward), aux_heads / aux_losses / aux_targets (optional objectives), trainer, feature_cache, data,
bad_samples, lora, sft (TRL), model_loading (the model a recipe starts from), run, train_cli (`gap-mllm train`).
See training/README.md.
"""

from .config import (
    AuxLossConfig,
    CacheConfig,
    DataConfig,
    FreezingPolicy,
    LearningRates,
    LoraSettings,
    ModelSource,
    TrainRecipe,
    load_recipe,
    recipe_from_dict,
)
from .feature_cache import CachedCollator, FeatureCache
from .geometry_aligned_model import GeometryAlignedModel, GeometryAlignedOutput
from .param_groups import apply_freezing, build_parameter_groups
from .run import build_trainer, run_training
from .trainer import GeometryAlignedTrainer, load_aux_heads, save_aux_heads

__all__ = [
    "AuxLossConfig", "CacheConfig", "CachedCollator", "DataConfig", "FeatureCache", "FreezingPolicy", "GeometryAlignedModel",
    "GeometryAlignedOutput", "GeometryAlignedTrainer", "LearningRates", "LoraSettings",
    "ModelSource", "TrainRecipe", "apply_freezing", "build_parameter_groups", "build_trainer", "load_aux_heads",
    "load_recipe", "recipe_from_dict", "run_training", "save_aux_heads",
]
