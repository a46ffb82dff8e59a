"""Stage 0, geometry: train the VGGT-style encoder and its camera and depth heads on exact ground truth.

The miniature's stand-in for pre-trained VGGT-1B (a randomly initialised, frozen encoder carries no
geometry for stage 1 to align with). VGGT's own objective (Wang et al., CVPR 2025, §3.3), on clips
normalised as VGGT normalises them (training/geometry_data.py):

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

The point term (VGGT trains it too) is on when `point_weight > 0` and needs the point head
(`geometry_config.use_point_head`). Why it matters beyond the head itself: a pointmap in the first frame's
camera cannot be predicted per view; every pixel of every other view asks for the relative pose, so the
aggregator gets a dense signal for the cross-view matching that the 9 numbers of a camera give sparsely.

The match and flow terms stand in for VGGT's tracking objective: in every mini run without them the camera head
stayed at the identity rotation; with them it learned the cameras (mini/README.md measures both).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .aux_losses import depth_loss, pointmap_loss
from .cross_view_matching import BlockOutputTap, FlowReadout, GlobalAttentionTap, flow_loss, matching_loss
from .encoder_stage import EncoderStageModel, EncoderStageOutput


def camera_iterations_loss(iterations, target: torch.Tensor, gamma: float = 0.6) -> torch.Tensor:
    """Weighted L1 over the refinement iterations (`[B, S, 9]` each; later ones weigh more)."""
    weights = [gamma ** (len(iterations) - 1 - k) for k in range(len(iterations))]
    total = sum(w * F.l1_loss(pose.float(), target.float()) for w, pose in zip(weights, iterations))
    return total / sum(weights)


class GeometryStageModel(EncoderStageModel):
    """The stage-0 geometry objective on `model.geometry_encoder` (aggregator + camera + depth heads).

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
