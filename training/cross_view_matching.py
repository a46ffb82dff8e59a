"""Cross-view matching targets and losses of stage 0 (geometry): what makes the mini camera head learn.

The stage-0 camera head of GAP-MLLM-Mini learned nothing from VGGT's camera loss alone: its rotations stayed
at the identity even for frames one walk step apart (mini/README.md, "Why the stage-0 camera head did not
learn from VGGT's losses alone"), because a from-scratch aggregator never discovered which patches of two views show the same
surface. VGGT trains its aggregator with a dense correspondence objective besides the cameras (its tracking
head, Wang et al. 2025 §3.3); this module gives the miniature a light form of it, from SynthRooms' exact
geometry:

    matching   one or more heads of one global-attention block attend, from each patch of frames 1..S-1,
               to the patch of frame 0 that holds the same 3D point (cross-entropy over frame 0's patches,
               only where that point is visible in frame 0)
    flow       a linear read-out of the same patches, a few blocks later, regresses where that point lies in
               frame 0 (its image offset, L1): the displacement the camera tokens then pool into a pose

Targets come from the clip's exact depth, pointmap (frame-0 camera) and intrinsics, at the centre pixel of
each geometry patch. Nothing here changes the model: the attention logits are recomputed from the block's
own projections on its captured input, and the flow read-out is a stage head, dropped after stage 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gap_mllm.modeling_vggt import apply_rotary_2d

DEPTH_TOLERANCE = 0.05  # a projected point is visible in frame 0 when its depth is within 5 % of frame 0's depth there


def patch_correspondences(depth: torch.Tensor, points: torch.Tensor, intrinsics: torch.Tensor, patch_size: int,
                          depth_tolerance: float = DEPTH_TOLERANCE) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each geometry patch of frames 1..S-1 lies in frame 0.

    Args:
        depth: `[S, H, W]` depth of the clip (any unit; ≤ 0 invalid), on the geometry input's pixel grid.
        points: `[S, H, W, 3]` the same pixels' points in frame 0's OpenCV camera (the unit of `depth`).
        intrinsics: `[S, 3, 3]` pinhole K of the frames on that grid (pixel centres at integers).
        patch_size: the geometry encoder's patch (14): patch (r, c) is read at pixel (r·p + p//2, c·p + p//2).
        depth_tolerance: relative depth difference under which the point counts as seen by frame 0.

    Returns:
        index `[S-1, P]` int64: the row-major frame-0 patch holding the point of each patch of frames 1..S-1,
            −1 where it is not visible in frame 0 (no depth, behind the camera, outside the image, occluded);
        offset `[S-1, P, 2]` float32: (u₀ − u, v₀ − v) / W, the point's image offset from the patch centre to
            its projection in frame 0 in image widths (meaningful where index ≥ 0).
    """
    views, height, width = depth.shape
    rows, cols = height // patch_size, width // patch_size
    ys = torch.arange(rows) * patch_size + patch_size // 2
    xs = torch.arange(cols) * patch_size + patch_size // 2
    centre_depth = depth[1:][:, ys][:, :, xs].float()  # [S-1, rows, cols]
    x, y, z = points[1:][:, ys][:, :, xs].float().unbind(-1)
    k = intrinsics[0].float()
    safe_z = z.clamp(min=1e-6)
    u = k[0, 0] * x / safe_z + k[0, 2]
    v = k[1, 1] * y / safe_z + k[1, 2]
    ui, vi = u.round().long(), v.round().long()
    inside = (centre_depth > 0) & (z > 1e-6) & (ui >= 0) & (ui < width) & (vi >= 0) & (vi < height)
    seen = depth[0].float()[vi.clamp(0, height - 1), ui.clamp(0, width - 1)]
    visible = inside & (seen > 0) & ((seen - z).abs() <= depth_tolerance * z)
    index = (vi.clamp(0, height - 1) // patch_size) * cols + ui.clamp(0, width - 1) // patch_size
    index = torch.where(visible, index, torch.full_like(index, -1))
    offset = torch.stack([(u - xs.view(1, 1, cols)) / width, (v - ys.view(1, rows, 1)) / width], dim=-1)
    offset = torch.where(visible[..., None], offset, torch.zeros_like(offset))
    return index.flatten(1), offset.flatten(1, 2).float()


class GlobalAttentionTap:
    """Captures the input of one global-attention block of a VGGT aggregator (forward pre-hook on its
    attention) and recomputes the attention logits of its first `heads` heads from the patches of frames
    1..S-1 to the patches of frame 0, exactly as the block computes them (qkv projection, QK-norm, 2-D RoPE,
    scaling)."""

    def __init__(self, aggregator, layer: int, heads: int):
        blocks = aggregator.global_blocks
        if not 0 <= layer < len(blocks):
            raise ValueError(f"geometry.match_layer={layer} does not exist: the aggregator has global blocks 0..{len(blocks) - 1}")
        self.attention = blocks[layer].attn
        if not 1 <= heads <= self.attention.num_heads:
            raise ValueError(f"geometry.match_heads={heads}: the block has {self.attention.num_heads} heads")
        self.heads = heads
        self.num_special = aggregator.num_special_tokens
        self.geometry_config = aggregator.config
        self._inputs = None
        self._handle = self.attention.register_forward_pre_hook(self._capture)

    def _capture(self, module, inputs):
        self._inputs = inputs

    def remove(self) -> None:
        self._handle.remove()

    def frame0_logits(self, num_frames: int) -> torch.Tensor:
        """`[B, heads, S-1, P, P]`: logits of patch p of frame s+1 attending to patch q of frame 0, from the
        last forward pass (raises if the block has not run since)."""
        if self._inputs is None:
            if self.geometry_config.frames_chunk_size is not None:  # its attention module's forward is not called
                raise RuntimeError("the matched global block ran in frame chunks, which the tap cannot see: set "
                                   "geometry_config.frames_chunk_size to None while matching")
            raise RuntimeError("the matched global block has not run: call the aggregator first")
        hidden, rope = self._inputs[0], (self._inputs[1] if len(self._inputs) > 1 else None)
        self._inputs = None
        attn = self.attention
        batch, length, _ = hidden.shape
        tokens = length // num_frames
        weight, bias = attn.qkv.weight[: 2 * attn.num_heads * attn.head_dim], attn.qkv.bias[: 2 * attn.num_heads * attn.head_dim]
        query, key = F.linear(hidden, weight, bias).reshape(batch, length, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        query, key = attn.q_norm(query[:, : self.heads]), attn.k_norm(key[:, : self.heads])
        if rope is not None:
            cos, sin = rope
            query, key = apply_rotary_2d(query, cos, sin), apply_rotary_2d(key, cos, sin)
        query = query.reshape(batch, self.heads, num_frames, tokens, -1)[:, :, 1:, self.num_special:]
        key = key.reshape(batch, self.heads, num_frames, tokens, -1)[:, :, 0, self.num_special:]
        return torch.einsum("bhspd,bhqd->bhspq", query.float(), key.float()) * attn.scaling


def matching_loss(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the attention logits `[B, heads, S-1, P, P]` against the frame-0 patch `index`
    `[B, S-1, P]` (−1: ignored), averaged over the matched patches and heads; 0 (with a gradient) when none."""
    target = index.unsqueeze(1).expand(-1, logits.shape[1], -1, -1)
    if not (target >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 3), target.flatten(), ignore_index=-1)


class FlowReadout(nn.Module):
    """Linear read-out of the frame-0 offset of each patch from one aggregator block's global output.

    A stage head (checkpointed beside the model, not part of it). Starts at zero, so the first flow loss is
    that of predicting no motion."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 2)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, patch_tokens: torch.Tensor) -> torch.Tensor:
        """`[..., C]` → `[..., 2]`."""
        return self.linear(patch_tokens)


class BlockOutputTap:
    """Captures the output of one global block of the aggregator (`[B, S·T, C]`) during its forward pass."""

    def __init__(self, aggregator, layer: int):
        blocks = aggregator.global_blocks
        if not 0 <= layer < len(blocks):
            raise ValueError(f"geometry.flow_layer={layer} does not exist: the aggregator has global blocks 0..{len(blocks) - 1}")
        self.num_special = aggregator.num_special_tokens
        self.output = None
        self._handle = blocks[layer].register_forward_hook(self._capture)

    def _capture(self, module, inputs, output):
        self.output = output

    def remove(self) -> None:
        self._handle.remove()

    def patches_after_first(self, num_frames: int) -> torch.Tensor:
        """`[B, S-1, P, C]`: the captured patch tokens of frames 1..S-1."""
        if self.output is None:
            raise RuntimeError("the flow block has not run: call the aggregator first")
        output, self.output = self.output, None
        batch, length, channels = output.shape
        return output.reshape(batch, num_frames, length // num_frames, channels)[:, 1:, self.num_special:]


def flow_loss(predicted: torch.Tensor, offset: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """L1 (summed over u, v; mean over matched patches) of predicted `[B, S-1, P, 2]` against `offset`
    where `index` `[B, S-1, P]` ≥ 0; 0 (with a gradient) when nothing is matched."""
    valid = index >= 0
    if not valid.any():
        return predicted.sum() * 0.0
    return (predicted.float()[valid] - offset.float()[valid]).abs().sum(-1).mean()
