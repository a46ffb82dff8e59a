"""2-D rotary position embedding of the VGGT alternating-attention blocks.

Each attention head of size `D` is split in two halves: the first half is rotated by the token's
row, the second half by its column. Within each half, channel `j` is paired with channel `j + D/4`
(the "rotate half" convention, not interleaved pairs). The patch at grid cell (r, c) has position
(r + 1, c + 1); the camera and register tokens all sit at (0, 0), where the rotation is the identity.
"""

import torch
from torch import nn


def build_token_positions(
    grid_height: int, grid_width: int, num_special_tokens: int, device: torch.device | None = None
) -> torch.LongTensor:
    """(row, column) position of every token of one frame.

    Args:
        grid_height, grid_width: patch grid of the frame (h = H / patch_size, w = W / patch_size).
        num_special_tokens: camera + register tokens placed before the patches.

    Returns:
        `LongTensor [num_special_tokens + h·w, 2]`: zeros for the special tokens, then (row + 1, col + 1)
        for the patches in row-major order (the order in which the patch convolution flattens them).
    """
    rows = torch.arange(grid_height, device=device)
    cols = torch.arange(grid_width, device=device)
    patch_positions = torch.cartesian_prod(rows, cols) + 1
    special_positions = torch.zeros(num_special_tokens, 2, dtype=patch_positions.dtype, device=device)
    return torch.cat([special_positions, patch_positions], dim=0)


class GapMllmGeometryRotaryEmbedding2D(nn.Module):
    """Cosine and sine tables of the 2-D RoPE for given token positions.

    Holds no parameters or buffers (the tables depend on the image size), so it is never part of a
    checkpoint and needs no weight init.

    Args:
        head_dim: size `D` of one attention head; must be divisible by 4.
        frequency: base frequency (VGGT: 100).
    """

    def __init__(self, head_dim: int, frequency: float):
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"the 2-D RoPE needs a head dim divisible by 4, got {head_dim}.")
        self.head_dim = head_dim
        self.frequency = float(frequency)

    def forward(self, positions: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            positions: `LongTensor [..., L, 2]`, (row, column) of each token.

        Returns:
            `(cos, sin)`, each `float32 [..., L, D]`: the row tables in the first `D/2` channels, the
            column tables in the last `D/2`. Always float32: the angles reach ~40 rad at 518 px, far
            beyond what bf16 resolves, and VGGT was trained with these tables in fp32 (autocast).
        """
        axis_dim = self.head_dim // 2
        exponents = torch.arange(0, axis_dim, 2, device=positions.device).float() / axis_dim
        inv_freq = 1.0 / (self.frequency**exponents)  # [D/4]
        angles = positions.float().unsqueeze(-1) * inv_freq  # [..., L, 2, D/4]
        angles = torch.cat([angles, angles], dim=-1)  # [..., L, 2, D/2]: rotate-half pairs j and j + D/4
        angles = angles.flatten(-2)  # [..., L, D]: row half, then column half
        return angles.cos(), angles.sin()


def _rotate_each_half(states: torch.Tensor) -> torch.Tensor:
    """Rotate-half applied separately to the row half and the column half: [a, b | c, d] → [-b, a | -d, c]."""
    a, b, c, d = states.chunk(4, dim=-1)
    return torch.cat([-b, a, -d, c], dim=-1)


def apply_rotary_2d(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate queries or keys by their 2-D positions.

    Args:
        states: `[B, H, L, D]` queries or keys.
        cos, sin: `[L, D]` or `[B, L, D]` tables from `GapMllmGeometryRotaryEmbedding2D`.

    Returns:
        `[B, H, L, D]` in the dtype of `states`.
    """
    cos = cos.to(states.dtype).unsqueeze(-3)  # broadcast over heads
    sin = sin.to(states.dtype).unsqueeze(-3)
    return states * cos + _rotate_each_half(states) * sin


__all__ = ["GapMllmGeometryRotaryEmbedding2D", "apply_rotary_2d", "build_token_positions"]
