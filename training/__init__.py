"""Training GAP-MLLM: geometry-aligned pre-training and fine-tuning with Trainer, PEFT, TRL and accelerate.

    from gap_mllm.training import GeometryAlignedModel, GeometryAlignedTrainer, load_recipe, run_training

Modules: config (recipes), param_groups (freezing + optimizer groups), geometry_aligned_model (training
forward and auxiliary heads), aux_losses / aux_targets (optional objectives), trainer, feature_cache, data,
bad_samples, lora, sft (TRL), model_loading (the model a recipe starts from), run, train_cli (`gap-mllm train`).
See training/README.md.

The exports below are imported on first use, so that `import gap_mllm.training.<module>` (the light
`train_arguments`, which `gap-mllm train --help` reads) does not bring torch and transformers.
"""

# exported name -> the module of this package that defines it
_EXPORTS = {
    **dict.fromkeys(("AuxLossConfig", "CacheConfig", "DataConfig", "FreezingPolicy", "LearningRates", "LoraSettings",
                     "ModelSource", "TrainRecipe", "load_recipe", "recipe_from_dict"), "config"),
    **dict.fromkeys(("CachedCollator", "FeatureCache"), "feature_cache"),
    **dict.fromkeys(("GeometryAlignedModel", "GeometryAlignedOutput"), "geometry_aligned_model"),
    **dict.fromkeys(("apply_freezing", "build_parameter_groups"), "param_groups"),
    **dict.fromkeys(("build_trainer", "run_training"), "run"),
    **dict.fromkeys(("GeometryAlignedTrainer", "load_aux_heads", "save_aux_heads"), "trainer"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    """The exports, imported on first use (PEP 562); a submodule's name falls through to the import system."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # torch, transformers, accelerate, peft come with these: imported here to keep the package's import light
    from . import config, feature_cache, geometry_aligned_model, param_groups, run, trainer

    modules = {module.__name__.rsplit(".", 1)[-1]: module
               for module in (config, feature_cache, geometry_aligned_model, param_groups, run, trainer)}
    value = getattr(modules[_EXPORTS[name]], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
