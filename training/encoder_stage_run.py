"""Build the run of an encoder stage (stage 0: `stage: geometry` or `stage: vision` in a recipe).

    setup = build_encoder_stage_trainer(recipe)      # used by training.run.run_training
    setup.trainer.train()

Geometry: clips of the train split (training/geometry_data.py), the VGGT objective (training/geometry_stage.py),
and at every evaluation the reconstruction metrics on `geometry.eval_clips` clips of `data.eval_split`
(evaluation/geometry_eval.py) logged as `geo_<metric>`. Vision: every frame of the train split with its
token semantics (training/vision_data.py), the probe objective (training/vision_stage.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from transformers import TrainerCallback

from gap_mllm.evaluation.geometry_eval import evaluate_geometry
from gap_mllm.processing.collator import collate_clips

from .config import TrainRecipe, training_arguments
from .device import apply_device_plan
from .encoder_stage import EncoderStageModel, EncoderStageTrainer
from .geometry_data import GeometryClips
from .geometry_stage import GeometryStageModel, freeze_all_but_geometry
from .kernels import apply_attention_implementation, check_kernels
from .model_loading import load_model_and_processor
from .vision_data import SemanticCollator, SemanticFrames
from .vision_stage import VisionStageModel, freeze_all_but_vision

logger = logging.getLogger(__name__)


@dataclass
class EncoderStageSetup:
    trainer: EncoderStageTrainer
    model: EncoderStageModel
    processor: object


class GeometryMetricsCallback(TrainerCallback):
    """After each evaluation, log the reconstruction metrics of the held-out clips (`geo_*`)."""

    def __init__(self, wrapper, clips):
        self.wrapper = wrapper
        self.clips = clips
        self.trainer = None
        self.history: list[dict] = []

    def on_evaluate(self, args, state, control, **kwargs):
        summary = evaluate_geometry(self.wrapper.model, self.clips)["model"]
        logs = {f"geo_{key}": value for key, value in summary.items() if isinstance(value, (int, float))}
        self.history.append({"step": state.global_step, **logs})
        if self.trainer is not None:
            self.trainer.log(logs)


def build_encoder_stage_trainer(recipe: TrainRecipe, model=None, processor=None, callbacks=None) -> EncoderStageSetup:
    """Everything of a stage-0 run, ready to `trainer.train()` (see the module docstring)."""
    recipe, plan = apply_device_plan(recipe)
    check_kernels(recipe, plan)
    args = training_arguments(recipe)
    if model is None:
        model, processor = load_model_and_processor(recipe.model)
    apply_attention_implementation(model, recipe.model.attn_implementation, recipe.training)
    if recipe.data.data_root is None:
        raise ValueError("data.data_root is not set: point it at SynthRooms output (gap-mllm synth --preset mini)")
    callbacks = list(callbacks or [])
    eval_dataset = None
    if recipe.stage == "geometry":
        settings = recipe.geometry
        freeze_all_but_geometry(model)
        wrapper = GeometryStageModel(model, settings.camera_weight, settings.depth_weight, settings.gradient_weight,
                                     settings.confidence_alpha, settings.iteration_gamma,
                                     point_weight=settings.point_weight, match_weight=settings.match_weight,
                                     match_layer=settings.match_layer, match_heads=settings.match_heads,
                                     flow_weight=settings.flow_weight, flow_layer=settings.flow_layer)
        patch_size = model.config.geometry_config.patch_size
        train_dataset = GeometryClips(recipe.data.data_root, recipe.data.train_split, processor, settings.clip_frames,
                                      settings.num_clips, settings.window_fraction, seed=args.seed,
                                      min_window_fraction=settings.min_window_fraction, patch_size=patch_size)
        if recipe.data.eval_split:
            # another seed than training: held-out scenes anyway, and clips that never repeat a training draw
            eval_dataset = GeometryClips(recipe.data.data_root, recipe.data.eval_split, processor, settings.clip_frames,
                                         settings.eval_clips, settings.window_fraction, seed=args.seed + 1,
                                         patch_size=patch_size)
            metrics = GeometryMetricsCallback(wrapper, eval_dataset)
            callbacks.append(metrics)
        collator = collate_clips
    elif recipe.stage == "vision":
        freeze_all_but_vision(model)
        wrapper = VisionStageModel(model, recipe.vision.marker_weight, recipe.vision.position_weight)
        train_dataset = SemanticFrames(recipe.data.data_root, recipe.data.train_split, recipe.vision.marker_probability, seed=args.seed)
        if recipe.data.eval_split:
            eval_dataset = SemanticFrames(recipe.data.data_root, recipe.data.eval_split, recipe.vision.marker_probability, seed=args.seed + 1)
            if recipe.data.max_eval_samples:
                eval_dataset = torch.utils.data.Subset(eval_dataset, range(min(recipe.data.max_eval_samples, len(eval_dataset))))
        collator = SemanticCollator(processor)
    else:
        raise ValueError(f"build_encoder_stage_trainer runs stage 'geometry' or 'vision', not {recipe.stage!r}")
    model.train()
    trainer = EncoderStageTrainer(wrapper, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset,
                                  data_collator=collator, processing_class=processor, callbacks=callbacks)
    for callback in callbacks:
        if isinstance(callback, GeometryMetricsCallback):
            callback.trainer = trainer
    return EncoderStageSetup(trainer=trainer, model=wrapper, processor=processor)
