"""Stage 0, vision: train GAP-MLLM's Qwen ViT (with its mergers) on SynthRooms semantics.

The real Qwen3-VL ViT arrives pretrained and stays frozen (docs/method.md §8.3); the miniature has no
pretrained ViT, so this stage stands one in (training/vision_data.py says what each token must show).
Linear probes on every level the LLM receives (the main merged tokens and each DeepStack level) predict,
per merged token,

    category    soft cross-entropy against the pixel shares of floor / wall / ceiling / 13 categories
    colour      soft cross-entropy against the object pixels' colour shares, weighted by the object share
    texture     the same for the four textures
    marker      binary cross-entropy: does the token hold the red "+" marker's centre
    position    L1 on the token's cell centre (column, row) in [-1, 1] of the image

and the loss is their weighted sum averaged over levels. The probes are dropped afterwards; the ViT is
then frozen.

Why the position term: the real Qwen3-VL ViT knows where each token lies (an absolute position embedding,
pretraining that answers in absolute image coordinates), and every 3D answer of GAP-MLLM needs it (a
point or box centre x = (u − c_x)·z / f needs the column u). The semantic terms alone do not need it, and
a linear probe of the ViT trained without it recovers a token's row (R² 0.82, from what the row shows:
floor, wall) but not its column (R² 0.05) — mini/README.md, "Position in the encoders".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gap_mllm.processing.synth.palette import COLOUR_NAMES, TEXTURES

from .encoder_stage import EncoderStageModel, EncoderStageOutput
from .vision_data import CATEGORY_CLASSES

OUTPUTS = {"category": len(CATEGORY_CLASSES), "colour": len(COLOUR_NAMES), "texture": len(TEXTURES), "marker": 1, "position": 2}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of −Σ target·log softmax(logits), rows weighted by `weight` (`[N]`) when given."""
    per_row = -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1)
    if weight is None:
        return per_row.mean()
    return (per_row * weight).sum() / weight.sum().clamp(min=1e-6)


class VisionStageModel(EncoderStageModel):
    """The stage-0 semantic objective on `model.vlm.model.visual` (see the module docstring).

    Args:
        model: a GapMllmForConditionalGeneration.
        marker_weight: weight of the marker term (the marker covers one token of ~20, so it is up-weighted).
        position_weight: weight of the position term (0 turns it off).
    """

    def __init__(self, model, marker_weight: float = 1.0, position_weight: float = 1.0):
        super().__init__(model)
        width = model.config.vlm_config.vision_config.out_hidden_size
        levels = 1 + len(model.config.vlm_config.vision_config.deepstack_visual_indexes)
        self.probes = nn.ModuleList([nn.Linear(width, sum(OUTPUTS.values())) for _ in range(levels)])
        self.probes.to(device=model.device, dtype=model.dtype)
        self.marker_weight = marker_weight
        self.position_weight = position_weight

    def stage_heads(self) -> nn.Module:
        return self.probes

    def token_logits(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """Per level (main, then DeepStack), the probe logits by output name, `[N_tokens, n]` each."""
        visual = self.model.vlm.model.visual
        outputs = self.model.vlm.model.get_image_features(pixel_values.to(visual.dtype), image_grid_thw, return_dict=True)
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
    model.vlm.model.visual.requires_grad_(True)
