"""The encoder stages (stage 0: `stage: geometry` or `stage: vision` in a recipe): their objectives and their run.

    setup = build_encoder_stage_trainer(recipe)      # used by training.run.run_training
    setup.trainer.train()

The miniature has neither a pretrained VGGT-1B nor a pretrained Qwen ViT; these stages stand them in. Geometry
(`GeometryStageModel`): VGGT's objective on clips of the train split (training/geometry_data.py), and at every
evaluation the reconstruction metrics on `geometry.eval_clips` clips of `data.eval_split` (evaluation/geometry_eval.py)
logged as `geo_<metric>`. Vision (`VisionStageModel`): linear probes of the ViT's tokens on the token semantics of
every frame of the train split (training/vision_data.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import TrainerCallback

from gap_mllm.evaluation.geometry_eval import evaluate_geometry
from gap_mllm.processing.collator import collate_clips
from gap_mllm.processing.synth.palette import COLOUR_NAMES, TEXTURES

from .aux_losses import depth_loss, pointmap_loss
from .config import TrainRecipe, training_arguments
from .cross_view_matching import BlockOutputTap, FlowReadout, GlobalAttentionTap, flow_loss, matching_loss
from .device import apply_device_plan
from .encoder_stage import EncoderStageModel, EncoderStageOutput, EncoderStageTrainer
from .geometry_data import GeometryClips
from .kernels import apply_attention_implementation, check_kernels
from .model_loading import load_model_and_processor
from .vision_data import CATEGORY_CLASSES, SemanticCollator, SemanticFrames

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ the run


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


# ------------------------------------------------------------------------------------------ geometry objective
# The miniature's stand-in for pre-trained VGGT-1B: a randomly initialised, frozen encoder carries no geometry for
# stage 1 to align with. Why the point term matters beyond the head itself (VGGT trains it too): a pointmap in the
# first frame's camera cannot be predicted per view; every pixel of every other view asks for the relative pose, so
# the aggregator gets a dense signal for the cross-view matching that the 9 numbers of a camera give sparsely. The
# match and flow terms stand in for VGGT's tracking objective: in every mini run without them the camera head stayed
# at the identity rotation; with them it learned the cameras (mini/README.md measures both).


def camera_iterations_loss(iterations, target: torch.Tensor, gamma: float = 0.6) -> torch.Tensor:
    """Weighted L1 over the refinement iterations (`[B, S, 9]` each; later ones weigh more)."""
    weights = [gamma ** (len(iterations) - 1 - k) for k in range(len(iterations))]
    total = sum(w * F.l1_loss(pose.float(), target.float()) for w, pose in zip(weights, iterations))
    return total / sum(weights)


class GeometryStageModel(EncoderStageModel):
    """The stage-0 geometry objective on `model.geometry_encoder` (aggregator + camera + depth heads): VGGT's own
    objective (Wang et al., CVPR 2025, §3.3) on clips normalised as VGGT normalises them (training/geometry_data.py):

        camera   Σ_k γ^(K−1−k) · L1(pose_k, pose*) / Σ_k γ^(K−1−k)   over the K refinement iterations of the camera
                 head (VGGT uses a Huber loss on the same 9-d encoding; L1 is its small-error limit's robust twin)
        depth    per view  Σ c·|d − d*| + Σ c·|∇d − ∇d*| − α·Σ log c   (confidence-weighted, aleatoric; means over
                 valid pixels) — training/aux_losses.depth_loss
        points   per view  the same confidence-weighted form on the pointmap in the first frame's camera (error =
                 Euclidean norm of the 3-d difference) — training/aux_losses.pointmap_loss
        match    cross-view matching on `match_heads` heads of global block `match_layer`: from each patch of
                 frames 1..S-1, attend to the frame-0 patch showing the same point (training/cross_view_matching.py)
        flow     a read-out of global block `flow_layer`'s patches regresses where that point lies in frame 0
        total    camera_weight · camera + depth_weight · depth + point_weight · points + match_weight · match
                 + flow_weight · flow

    The point term is on when `point_weight > 0` and needs the point head (`geometry_config.use_point_head`).

    Args:
        model: a GapMllmForConditionalGeneration whose geometry config enables the camera and depth heads.
        camera_weight, depth_weight, point_weight: weights of the parts (point_weight 0: no point term).
        gradient_weight, confidence_alpha: of the depth loss (VGGT: 1 and 0.2... see `depth_loss`).
        iteration_gamma: weight decay of earlier camera iterations.
        match_weight, match_layer, match_heads: the cross-view matching term (0: off) and where it acts.
        flow_weight, flow_layer: the frame-0 offset read-out (0: off) and the global block it reads.
    """

    def __init__(self, model, camera_weight: float = 1.0, depth_weight: float = 1.0, gradient_weight: float = 1.0,
                 confidence_alpha: float = 0.2, iteration_gamma: float = 0.6, point_weight: float = 0.0,
                 match_weight: float = 0.0, match_layer: int = 3, match_heads: int = 1,
                 flow_weight: float = 0.0, flow_layer: int = 5):
        super().__init__(model)
        encoder = getattr(model, "geometry_encoder", None)
        if encoder is None or not hasattr(encoder, "camera_head") or not hasattr(encoder, "depth_head"):
            raise ValueError("the geometry stage needs a model with a geometry encoder and its camera and depth heads "
                             "(geometry_config.use_camera_head and use_depth_head)")
        if point_weight and not hasattr(encoder, "point_head"):
            raise ValueError(f"geometry.point_weight={point_weight} needs the point head: the model's geometry config has "
                             "use_point_head=False")
        self.camera_weight, self.depth_weight, self.point_weight = camera_weight, depth_weight, point_weight
        self.gradient_weight, self.confidence_alpha, self.iteration_gamma = gradient_weight, confidence_alpha, iteration_gamma
        self.match_weight, self.flow_weight = match_weight, flow_weight
        aggregator = encoder.aggregator
        self._match_tap = GlobalAttentionTap(aggregator, match_layer, match_heads) if match_weight else None
        self._flow_tap = BlockOutputTap(aggregator, flow_layer) if flow_weight else None
        self.flow_readout = FlowReadout(aggregator.config.hidden_size) if flow_weight else None

    def stage_heads(self):
        return self.flow_readout

    def forward(self, images: torch.Tensor, depth: torch.Tensor, pose_encoding: torch.Tensor,
                points: torch.Tensor | None = None, match_index: torch.Tensor | None = None,
                match_offset: torch.Tensor | None = None, **unused) -> EncoderStageOutput:
        """
        Args:
            images: `[B, S, 3, H, W]` in [0, 1]; depth `[B, S, H, W]` normalised (0 = invalid);
                pose_encoding `[B, S, 9]` normalised targets; points `[B, S, H, W, 3]` normalised, in the
                first frame's camera (needed when point_weight > 0); match_index `[B, S-1, P]` and match_offset
                `[B, S-1, P, 2]` (needed by the match and flow terms) (GeometryClips).
        """
        encoder = self.model.geometry_encoder
        dtype = next(encoder.parameters()).dtype
        out = encoder.reconstruct(images.to(dtype))
        camera = camera_iterations_loss(out.pose_encoding_iterations, pose_encoding, self.iteration_gamma)
        predicted, confidence = out.depth[..., 0].flatten(0, 1), out.depth_conf.flatten(0, 1)
        target = depth.flatten(0, 1)
        per_view = [depth_loss(predicted[i], confidence[i], target[i], self.gradient_weight, self.confidence_alpha)
                    for i in range(target.shape[0])]
        depth_part = torch.stack(per_view).mean()
        loss = self.camera_weight * camera + self.depth_weight * depth_part
        parts = {"camera": camera, "depth": depth_part}
        if self.point_weight:
            if points is None:
                raise ValueError("point_weight > 0 needs the `points` targets of the batch (GeometryClips returns them)")
            predicted_points = out.world_points.flatten(0, 1)
            points_confidence, points_target = out.world_points_conf.flatten(0, 1), points.flatten(0, 1)
            per_view = [pointmap_loss(predicted_points[i], points_confidence[i], points_target[i], target[i] > 0,
                                      self.gradient_weight, self.confidence_alpha) for i in range(target.shape[0])]
            parts["points"] = torch.stack(per_view).mean()
            loss = loss + self.point_weight * parts["points"]
        if self.match_weight or self.flow_weight:
            if match_index is None or match_offset is None:
                raise ValueError("geometry.match_weight / flow_weight > 0 need the `match_index` and `match_offset` "
                                 "targets of the batch (GeometryClips returns them)")
            num_frames = images.shape[1]
            if self.match_weight:
                parts["match"] = matching_loss(self._match_tap.frame0_logits(num_frames), match_index)
                loss = loss + self.match_weight * parts["match"]
            if self.flow_weight:
                predicted = self.flow_readout(self._flow_tap.patches_after_first(num_frames))
                parts["flow"] = flow_loss(predicted, match_offset, match_index)
                loss = loss + self.flow_weight * parts["flow"]
        return EncoderStageOutput(loss=loss, parts=parts)


def freeze_all_but_geometry(model) -> None:
    """Stage 0 geometry trains the aggregator and its heads only (the DINOv2 mask token stays frozen)."""
    model.requires_grad_(False)
    model.geometry_encoder.set_trainable(True)


# ------------------------------------------------------------------------------------------ vision objective
# The real Qwen3-VL ViT arrives pretrained and stays frozen (docs/method.md §8.3); the miniature has no pretrained ViT,
# so this stage stands one in (training/vision_data.py says what each token must show). Why the position term: the
# real Qwen3-VL ViT knows where each token lies (an absolute position embedding, pretraining that answers in absolute
# image coordinates), and every 3D answer of GAP-MLLM needs it (a point or box centre x = (u − c_x)·z / f needs the
# column u). The semantic terms alone do not need it, and a linear probe of the ViT trained without it recovers a
# token's row (R² 0.82, from what the row shows: floor, wall) but not its column (R² 0.05) — mini/README.md,
# "Position in the encoders".

OUTPUTS = {"category": len(CATEGORY_CLASSES), "colour": len(COLOUR_NAMES), "texture": len(TEXTURES), "marker": 1, "position": 2}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of −Σ target·log softmax(logits), rows weighted by `weight` (`[N]`) when given."""
    per_row = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1e-6)


class VisionStageModel(EncoderStageModel):
    """The stage-0 semantic objective on `model.model.visual`: linear probes on every level the LLM receives (the
    main merged tokens and each DeepStack level) predict, per merged token,

        category    soft cross-entropy against the pixel shares of floor / wall / ceiling / 13 categories
        colour      soft cross-entropy against the object pixels' colour shares, weighted by the object share
        texture     the same for the four textures
        marker      binary cross-entropy: does the token hold the red "+" marker's centre
        position    L1 on the token's cell centre (column, row) in [-1, 1] of the image

    and the loss is their weighted sum averaged over levels. The probes are dropped afterwards; the ViT is then frozen.

    Args:
        model: a GapMllmForConditionalGeneration.
        marker_weight: weight of the marker term (the marker covers one token of ~20, so it is up-weighted).
        position_weight: weight of the position term (0 turns it off).
    """

    def __init__(self, model, marker_weight: float = 1.0, position_weight: float = 1.0):
        super().__init__(model)
        width = model.config.vision_config.out_hidden_size
        levels = 1 + len(model.config.vision_config.deepstack_visual_indexes)
        self.probes = nn.ModuleList([nn.Linear(width, sum(OUTPUTS.values())) for _ in range(levels)])
        self.probes.to(device=model.device, dtype=model.dtype)
        self.marker_weight = marker_weight
        self.position_weight = position_weight

    def stage_heads(self) -> nn.Module:
        return self.probes

    def token_logits(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per level (main, then DeepStack), the probe logits by output name, `[N_tokens, n]` each."""
        visual = self.model.model.visual
        outputs = self.model.model.get_vision_features(pixel_values.to(visual.dtype), image_grid_thw)
        # each level comes as one tensor per image (`[h·w, D]`); tokens of all images in order
        levels = [outputs.pooler_output, *outputs.deepstack_features]
        levels = [torch.cat(level) if isinstance(level, (list, tuple)) else level for level in levels]
        result = []
        for probe, features in zip(self.probes, levels):
            logits = probe(features)
            result.append(dict(zip(OUTPUTS, torch.split(logits, list(OUTPUTS.values()), dim=-1))))
        return result

    def forward(self, pixel_values, image_grid_thw, category, colour, texture, object_share, marker, position, **unused) -> EncoderStageOutput:
        """
        Args:
            pixel_values, image_grid_thw: the ViT input of N frames (SemanticCollator).
            category `[T, C]`, colour `[T, K]`, texture `[T, 4]`, object_share `[T]`, marker `[T]`, position
                `[T, 2]`: per merged token, all frames' tokens in order (T tokens).
        """
        parts = {name: [] for name in OUTPUTS}
        for logits in self.token_logits(pixel_values, image_grid_thw):
            parts["category"].append(soft_cross_entropy(logits["category"], category))
            parts["colour"].append(soft_cross_entropy(logits["colour"], colour, object_share))
            parts["texture"].append(soft_cross_entropy(logits["texture"], texture, object_share))
            positive = marker.sum().clamp(min=1.0)
            pos_weight = ((marker.numel() - positive) / positive).detach()  # balance the rare marker token
            parts["marker"].append(F.binary_cross_entropy_with_logits(logits["marker"][:, 0].float(), marker, pos_weight=pos_weight))
            parts["position"].append(F.l1_loss(logits["position"].float(), position.float()))
        means = {name: torch.stack(values).mean() for name, values in parts.items()}
        loss = (means["category"] + means["colour"] + means["texture"] + self.marker_weight * means["marker"]
                + self.position_weight * means["position"])
        return EncoderStageOutput(loss=loss, parts=means)


def freeze_all_but_vision(model) -> None:
    """Stage 0 vision trains the Qwen ViT and its mergers only."""
    model.requires_grad_(False)
    model.model.visual.requires_grad_(True)
