"""Multi-level progressive fusion (docs/method.md §1.6): one merger and one fusion module per level.

Level 0 fuses the last tapped VGGT layer with the ViT's main output (these tokens replace the
`<|image_pad|>` embeddings); level k ≥ 1 fuses tapped layer k-1 with DeepStack level k-1 (added to the
LLM hidden states after decoder layer k-1). Shallow VGGT blocks meet shallow ViT features.
"""

import torch
from torch import nn

from .configuration_gap_mllm import GapMllmConfig
from .geometry_fusion import build_fusion
from .geometry_merger import GapMllmGeometryMerger


class GapMllmMultiLevelFusion(nn.Module):
    """`mergers[l]` and `fusions[l]` for every level l (0 = main visual tokens, l ≥ 1 = DeepStack l-1)."""

    def __init__(self, config: GapMllmConfig):
        super().__init__()
        vision = config.vlm_config.vision_config
        fusion = config.geometry_fusion_config
        self.merge_size = vision.spatial_merge_size
        self.mergers = nn.ModuleList(
            [
                GapMllmGeometryMerger(
                    input_size=2 * config.geometry_config.hidden_size,
                    hidden_size=fusion.merger_hidden_size,
                    output_size=vision.out_hidden_size,
                    norm=fusion.merger_norm,
                    norm_eps=fusion.merger_norm_eps,
                    merge_size=self.merge_size,
                )
                for _ in range(config.num_fusion_levels)
            ]
        )
        self.fusions = nn.ModuleList(
            [build_fusion(fusion, vision.out_hidden_size) for _ in range(config.num_fusion_levels)]
        )

    def forward(
        self,
        visual_levels: list[tuple[torch.Tensor, ...]],
        geometry_levels: list[list[torch.Tensor]],
        merged_grids: list[tuple[int, int]],
        output_gates: bool = False,
    ) -> tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...] | None]:
        """
        Args:
            visual_levels: per level, one `[n_i, D]` tensor per image (Qwen's `pooler_output` for level 0,
                its `deepstack_features[l-1]` for level l).
            geometry_levels: per level, one `[S_b, h_b, w_b, C]` tensor of VGGT patch features per sample
                (samples in batch order, so their views concatenate to the image order).
            merged_grids: the merged (h/2, w/2) grid of each image; `n_i = h_i/2 · w_i/2`.
            output_gates: also return, per level, the gate averaged over channels `[N]` (`gated` only).

        Returns:
            the fused features with the structure of `visual_levels`, and the gates (or None).
        """
        sizes = [h * w for h, w in merged_grids]
        fused_levels, gates = [], []
        for level, (visual, geometry) in enumerate(zip(visual_levels, geometry_levels)):
            merged = self._merge(level, geometry)
            visual = torch.cat(visual)
            fused, gate = self.fusions[level](visual, merged.to(visual.dtype), merged_grids)
            fused_levels.append(torch.split(fused, sizes))
            if output_gates and gate is not None:
                gates.append(gate.mean(dim=-1))
        return fused_levels, (tuple(gates) if output_gates and gates else None)

    def _merge(self, level: int, geometry: list[torch.Tensor]) -> torch.Tensor:
        """`[Σ views · merged tokens, D]`: the level's merger on every sample's `[S_b, h_b, w_b, C]` features, in order.

        The merger works token by token, so samples of one patch grid go through it as one stack of views: one
        call per level instead of one per sample (each call is a dozen kernel launches on a GPU).
        """
        if len({features.shape[1:] for features in geometry}) == 1:
            return self.mergers[level](torch.cat(geometry))
        return torch.cat([self.mergers[level](features) for features in geometry])
