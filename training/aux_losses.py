"""Loss functions of the geometry-aligned auxiliary objectives (docs/method.md §9). Pure tensor maths."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def proportional_llm_layer(geometry_layer: int, num_geometry_layers: int, num_llm_layers: int) -> int:
    """GeoVR's student layer for VGGT block t: round((t + 1) / n_vggt · n_llm), as an index into the
    hidden-state tuple (0 = embeddings, i = output of decoder layer i), clamped to [1, n_llm]."""
    return min(num_llm_layers, max(1, round((geometry_layer + 1) / num_geometry_layers * num_llm_layers)))


def pool_to_merged_grid(features: torch.Tensor, merge_size: int) -> torch.Tensor:
    """Teacher tokens on the student grid: `[S, h, w, C]` → 2×2 (merge) average pool → `[S·h/m·w/m, C]`,
    views in order, tokens row-major (the order of the `<|image_pad|>` tokens of the sample)."""
    views, h, w, channels = features.shape
    pooled = F.avg_pool2d(features.permute(0, 3, 1, 2).float(), merge_size)  # [S, C, h/m, w/m]
    return pooled.permute(0, 2, 3, 1).reshape(-1, channels)


def cosine_alignment_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over tokens of `1 − cos(prediction, target)`; `[N, C]` each. (3DRS's ‖n(p) − n(t)‖² is twice this.)"""
    return (1 - F.cosine_similarity(prediction.float(), target.float(), dim=-1)).mean()


def camera_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 on the 9-d `absT_quaR_FoV` encodings `[V, 9]` (VGGT's camera loss form), mean over entries."""
    return F.l1_loss(prediction.float(), target.float())


def confidence_regression_loss(
    prediction: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
    gradient_weight: float = 1.0, alpha: float = 0.2,
) -> torch.Tensor:
    """VGGT's confidence-weighted ("aleatoric") regression on one view: prediction and target `[H, W, C]`,
    confidence and valid `[H, W]`; the error of a pixel is the Euclidean norm over C:

        mean_valid(c·‖p − p*‖) + gradient_weight · mean_valid(c·(‖∂x p − ∂x p*‖ + ‖∂y p − ∂y p*‖)) − alpha · mean_valid(log c)

    `confidence` c ≥ 1 (1 + exp of a logit); the log term stops it from collapsing to its minimum.
    """
    if not valid.any():
        return prediction.sum() * 0.0
    prediction, confidence, target = prediction.float(), confidence.float(), target.float()
    pointwise = (confidence * (prediction - target).norm(dim=-1))[valid].mean()
    penalty = torch.log(confidence)[valid].mean()
    gradient = prediction.new_zeros(())
    if gradient_weight:
        # channels last: difference along W (dim 1) and along H (dim 0)
        pairs = (
            (prediction[:, 1:] - prediction[:, :-1], target[:, 1:] - target[:, :-1], valid[:, 1:] & valid[:, :-1], confidence[:, 1:]),
            (prediction[1:] - prediction[:-1], target[1:] - target[:-1], valid[1:] & valid[:-1], confidence[1:]),
        )
        for pred_g, target_g, pair_valid, conf in pairs:
            if pair_valid.any():
                gradient = gradient + (conf * (pred_g - target_g).norm(dim=-1))[pair_valid].mean()
    return pointwise + gradient_weight * gradient - alpha * penalty


def depth_loss(
    depth: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor, gradient_weight: float = 1.0, alpha: float = 0.2
) -> torch.Tensor:
    """VGGT-style confidence-weighted depth loss on one view (`[H, W]` each; target ≤ 0 = invalid): the
    one-channel `confidence_regression_loss` (the norm of one channel is its absolute value)."""
    return confidence_regression_loss(depth[..., None], confidence, target[..., None], target > 0, gradient_weight, alpha)


def pointmap_loss(
    points: torch.Tensor, confidence: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
    gradient_weight: float = 1.0, alpha: float = 0.2,
) -> torch.Tensor:
    """VGGT's pointmap loss on one view: points and target `[H, W, 3]` in the first frame's camera
    (normalised), confidence and valid `[H, W]` (see `confidence_regression_loss`)."""
    return confidence_regression_loss(points, confidence, target, valid, gradient_weight, alpha)


def scale_loss(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GeoVR's metric-scale loss: L1 between log1p(prediction) and log1p(target), `[B]` each (metres)."""
    return F.l1_loss(torch.log1p(prediction.float()), torch.log1p(target.float()))
