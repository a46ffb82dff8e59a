"""DINOv2 ViT with registers, as VGGT uses it for its patch embedding (ViT-L/14, 4 registers at 1B).

Per image: 14×14 conv patches, a cls token, the learned position embedding (trained for a square
`image_size` grid, interpolated to the actual grid), register tokens inserted after cls, the
blocks, a final LayerNorm. Only the normalised patch tokens leave the module. Parameter names equal
VGGT's `aggregator.patch_embed.*` leaves.
"""

import math

import torch
from torch import nn

from .configuration_gap_mllm import GapMllmGeometryConfig
from .geometry_layers import GapMllmGeometryBlock

# VGGT builds its DINOv2 with antialiased bicubic interpolation of the position embedding and no
# interpolation offset (DINOv2's own default is offset 0.1 without antialias).
POS_EMBED_INTERPOLATION_ANTIALIAS = True


class GapMllmDinov2PatchProjection(nn.Module):
    """Non-overlapping patch convolution: `[N, 3, H, W]` → `[N, (H/p)·(W/p), C]` (row-major patches)."""

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class GapMllmDinov2PatchEmbed(nn.Module):
    """DINOv2 ViT with registers; returns the final-normed patch tokens.

    Uses `hidden_size`, `num_attention_heads`, `mlp_ratio`, `patch_size`, `image_size` and the
    `patch_embed_*` fields of the config (no QK-norm, no RoPE in these blocks).
    """

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        hidden_size = config.hidden_size
        self.patch_size = config.patch_size
        self.num_register_tokens = config.patch_embed_num_register_tokens
        num_positions = 1 + (config.image_size // config.patch_size) ** 2

        self.patch_embed = GapMllmDinov2PatchProjection(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_positions, hidden_size))
        self.register_tokens = (
            nn.Parameter(torch.zeros(1, self.num_register_tokens, hidden_size)) if self.num_register_tokens else None
        )
        # Unused at inference (DINOv2 masked-image training); kept so the checkpoint loads strictly,
        # frozen as in VGGT.
        self.mask_token = nn.Parameter(torch.zeros(1, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList(
            [
                GapMllmGeometryBlock(
                    config,
                    use_qk_norm=False,
                    layer_norm_eps=config.patch_embed_layer_norm_eps,
                    layer_scale_init=config.patch_embed_layer_scale_init,
                )
                for _ in range(config.patch_embed_num_hidden_layers)
            ]
        )
        self.norm = nn.LayerNorm(hidden_size, eps=config.patch_embed_layer_norm_eps)

    def interpolate_pos_encoding(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Position embedding of the cls token and of a `(height/p) × (width/p)` patch grid.

        Follows DINOv2's `interpolate_pos_encoding` exactly, including its shortcut: the stored table
        is returned untouched only when the patch count matches AND the image is square. Interpolation
        runs in fp32, bicubic, antialiased, to an explicit output size (offset 0). DINOv2 unpacks the
        image as `(w, h)` = (H, W) and resizes to `(w0, h0)`, i.e. to (rows, columns) after all; the
        names here say what the values are.

        Args:
            tokens: `[N, 1 + P, C]` cls + patch tokens (for the patch count and the output dtype).
            height, width: image size in pixels.

        Returns:
            `[1, 1 + P, C]`.
        """
        num_patches = tokens.shape[1] - 1
        num_stored = self.pos_embed.shape[1] - 1
        if num_patches == num_stored and height == width:
            return self.pos_embed
        pos_embed = self.pos_embed.float()
        cls_pos_embed = pos_embed[:, :1]
        stored_side = int(math.sqrt(num_stored))
        if stored_side * stored_side != num_stored:
            raise ValueError(f"pos_embed holds {num_stored} patch positions, not a square grid.")
        channels = pos_embed.shape[-1]
        stored_grid = pos_embed[:, 1:].reshape(1, stored_side, stored_side, channels).permute(0, 3, 1, 2)
        grid = nn.functional.interpolate(
            stored_grid,
            size=(height // self.patch_size, width // self.patch_size),  # (rows, columns)
            mode="bicubic",
            antialias=POS_EMBED_INTERPOLATION_ANTIALIAS,
        )
        patch_pos_embed = grid.permute(0, 2, 3, 1).reshape(1, -1, channels)
        return torch.cat([cls_pos_embed, patch_pos_embed], dim=1).to(tokens.dtype)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """
        Args:
            pixel_values: `[N, 3, H, W]`, ImageNet-normalised, H and W multiples of `patch_size`.

        Returns:
            `[N, P, C]` normalised patch tokens, `P = (H/p)·(W/p)` in row-major order.
        """
        height, width = pixel_values.shape[-2:]
        patches = self.patch_embed(pixel_values)  # [N, P, C]
        tokens = torch.cat([self.cls_token.expand(patches.shape[0], -1, -1), patches], dim=1)
        tokens = tokens + self.interpolate_pos_encoding(tokens, height, width)
        if self.register_tokens is not None:
            registers = self.register_tokens.expand(tokens.shape[0], -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        # LayerNorm is per token, so normalising only the patch tokens equals DINOv2's norm-then-slice.
        return self.norm(tokens[:, 1 + self.num_register_tokens :])


__all__ = ["GapMllmDinov2PatchEmbed", "GapMllmDinov2PatchProjection"]
