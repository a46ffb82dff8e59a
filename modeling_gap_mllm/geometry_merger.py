"""Geometry merger: VGGT patch features → one token per Qwen3-VL merged visual token (docs/method.md §1.3).

VGGT's patch grid equals the Qwen patch grid (the processor sizes the VGGT input to 14 px per 16-px
Qwen patch), so merging 2×2 windows of VGGT patches gives exactly the grid of Qwen's merged tokens.
The window order inside the 2×2 block is row-major, the same order Qwen uses for its own patch merge.
"""

import torch
from torch import nn
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm


class GapMllmGeometryMerger(nn.Module):
    """Norm → 2×2 spatial concat → Linear → GELU → Linear.

    Parameter names follow the official `GeometryFeatureMerger` (`ln_q`, `mlp.0`, `mlp.2`) so that the
    official checkpoint maps by prefix.

    Args:
        input_size: channels of one geometry patch token (2 × VGGT width = 2048 for VGGT-1B).
        hidden_size: hidden width of the MLP (4096 officially).
        output_size: width of the Qwen visual tokens (`vision_config.out_hidden_size`).
        norm: `"rms"` (Qwen2 RMSNorm) or `"layer"` (LayerNorm with bias).
        norm_eps: eps of that norm (1e-6 officially).
        merge_size: spatial merge of Qwen3-VL (2).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, norm: str = "rms",
                 norm_eps: float = 1e-6, merge_size: int = 2):
        super().__init__()
        self.input_size = input_size
        self.merge_size = merge_size
        self.ln_q = Qwen2RMSNorm(input_size, eps=norm_eps) if norm == "rms" else nn.LayerNorm(input_size, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(input_size * merge_size**2, hidden_size),
            nn.GELU(),  # exact GELU, as the official merger
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """
        Args:
            features: `[S, h, w, input_size]` geometry patch tokens of S views on an (h, w) patch grid.

        Returns:
            `[S * (h // 2) * (w // 2), output_size]`: merged tokens, views in order, each view's tokens
            row-major over its merged grid (Qwen's token order).
        """
        views, height, width, channels = features.shape
        m = self.merge_size
        features = features[:, : height // m * m, : width // m * m]  # odd grids lose their last row/column
        features = features.reshape(views, height // m, m, width // m, m, channels).permute(0, 1, 3, 2, 4, 5)
        merged = self.ln_q(features).reshape(-1, channels * m * m)
        return self.mlp(merged)
