"""One training run from a recipe: model, data, collators, cache, trainer; used by `gap-mllm train`.

    recipe = load_recipe("training/recipes/stage1_pretrain.yaml", ["data.data_root=data/synthrooms"])
    result = run_training(recipe)                       # or build_trainer(recipe) to drive it yourself
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainingArguments
from transformers.trainer_utils import get_last_checkpoint

from .config import ModelSource, TrainRecipe
from .data import build_collator, load_split
from .geometry_aligned_model import GeometryAlignedModel
from .param_groups import apply_freezing
from .trainer import GeometryAlignedTrainer

logger = logging.getLogger(__name__)

# TrainingArguments settings this package needs whatever the recipe says (hf-notes §9).
REQUIRED_ARGUMENTS = {"remove_unused_columns": False}


def load_model_and_processor(source: ModelSource):
    """(GapMllmForConditionalGeneration, GapMllmProcessor) from `source` (a folder / Hub id, or tiny)."""
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor

    if source.tiny:
        from gap_mllm.tiny.tiny_model import build_tiny_model

        model, processor = build_tiny_model(size=source.tiny)
        if source.dtype not in ("auto", "float32"):
            model = model.to(getattr(torch, source.dtype))
        return model, processor
    if not source.name_or_path:
        raise ValueError("model.name_or_path (a GAP-MLLM folder or Hub id) or model.tiny must be set")
    kwargs = {"dtype": source.dtype, "trust_remote_code": source.trust_remote_code}
    if source.attn_implementation:
        kwargs["attn_implementation"] = source.attn_implementation
    model = GapMllmForConditionalGeneration.from_pretrained(source.name_or_path, **kwargs)
    processor = GapMllmProcessor.from_pretrained(source.name_or_path)
    return model, processor


def training_arguments(recipe: TrainRecipe) -> TrainingArguments:
    values = {**recipe.training, **REQUIRED_ARGUMENTS}
    if "output_dir" not in values:
        raise ValueError("training.output_dir is required")
    return TrainingArguments(**values)


@dataclass
class TrainingSetup:
    trainer: GeometryAlignedTrainer
    model: GeometryAlignedModel
    processor: object
    cache: object | None


def build_trainer(recipe: TrainRecipe, model=None, processor=None, train_dataset=None, eval_dataset=None, callbacks=None) -> TrainingSetup:
    """Everything of a run, ready to `trainer.train()`. Pass `model`/`processor`/datasets to override
    what the recipe would load (tests, notebooks)."""
    args = training_arguments(recipe)
    if model is None:
        model, processor = load_model_and_processor(recipe.model)
    model.train()
    apply_freezing(model, recipe.freezing)
    if recipe.lora.enabled:
        from .lora import apply_lora

        model = apply_lora(model, recipe.lora)
    wrapped = GeometryAlignedModel(model, recipe.aux)

    if train_dataset is None:
        train_dataset = load_split(recipe.data, recipe.data.train_split, recipe.aux, recipe.data.max_train_samples)
    if eval_dataset is None and recipe.data.eval_split:
        eval_dataset = load_split(recipe.data, recipe.data.eval_split, recipe.aux, recipe.data.max_eval_samples)

    cache = None
    if recipe.cache.enabled:
        from .feature_cache import GeometryFeatureCache

        directory = recipe.cache.directory or str(Path(args.output_dir) / "geometry_cache")
        cache = GeometryFeatureCache(directory, model)
        fill_collator = build_collator(processor, recipe.data, recipe.aux)
        # the main process fills the cache; the others then find every entry (same keys)
        with args.main_process_first(desc="geometry feature cache"):
            for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
                if dataset is not None:
                    stats = cache.build(model, dataset, fill_collator, skip_errors=recipe.data.on_bad_sample == "skip")
                    logger.info("geometry cache (%s): %s, folder %s", name, stats, cache.folder)

    trainer = GeometryAlignedTrainer(
        wrapped,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=build_collator(processor, recipe.data, recipe.aux, cache),
        processing_class=processor,
        callbacks=callbacks,
        learning_rates=recipe.learning_rates,
        loss_normalization=recipe.loss_normalization,
    )
    return TrainingSetup(trainer=trainer, model=wrapped, processor=processor, cache=cache)


def resolve_resume(resume: str | None, output_dir: str) -> str | None:
    """`"auto"` → the last checkpoint in `output_dir` (None if there is none); a path stays a path."""
    if resume != "auto":
        return resume
    return get_last_checkpoint(output_dir) if Path(output_dir).is_dir() else None


def save_final_model(trainer, output_dir=None) -> None:
    """`trainer.save_model()`, loadable with `from_pretrained` under FSDP too.

    With FSDP's sharded state-dict type (the checkpoint setting of configs/accelerate_fsdp.yaml, fast to
    save and resume) `Trainer.save_model` writes no model at all; the final model is gathered into a full
    state dict first (on the main process, offloaded to the CPU) and saved with `save_pretrained`."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(output_dir)


def run_training(recipe: TrainRecipe, resume_from_checkpoint: str | None = None, **build_kwargs):
    """Train, save the final model (+ auxiliary heads) to `training.output_dir`, return Trainer's output."""
    setup = build_trainer(recipe, **build_kwargs)
    trainer = setup.trainer
    resume = resolve_resume(resume_from_checkpoint, trainer.args.output_dir)
    result = trainer.train(resume_from_checkpoint=resume)
    save_final_model(trainer)
    if trainer.skipped_samples:
        logger.warning("skipped %d bad sample(s) on this process; see the warnings above for their names", trainer.skipped_samples)
    return result
