"""Small heads of the optional geometry-aligned auxiliary losses (docs/method.md §9).

They read the LLM's hidden states at visual-token positions (`D` = text hidden size) and exist only
for the enabled losses, so a run without auxiliary losses has no extra parameters and saves none.
"""

from __future__ import annotations

from torch import nn

from .config import AuxLossConfig

CAMERA_ENCODING_SIZE = 9  # VGGT absT_quaR_FoV: translation 3, quaternion XYZW 4, FoV (h, w) 2


class FeatureAlignHead(nn.Sequential):
    """GeoVR's per-layer projector `LayerNorm → Linear → GELU → Linear`: `[N, D]` → `[N, T]` (T = 2·C of VGGT)."""

    def __init__(self, hidden_size: int, head_hidden_size: int, teacher_size: int):
        super().__init__(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, head_hidden_size),
            nn.GELU(),
            nn.Linear(head_hidden_size, teacher_size),
        )


def _mlp(hidden_size: int, output_size: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, output_size))


class GeometryAuxHeads(nn.Module):
    """The heads of the enabled auxiliary losses.

    align[str(level)]  FeatureAlignHead per aligned fusion level: visual tokens `[N, D]` → `[N, 2C]`
    camera             pooled view tokens `[V, D]` → `[V, 9]` (absT_quaR_FoV)
    depth              visual tokens `[N, D]` → `[N, 2·k·k]`: a k×k patch of log-depth and confidence
                       logits per merged token (k = `aux.depth_patch`)
    scale              pooled sample tokens `[B, D]` → `[B, 1]` log-scale (exp gives metres)
    """

    def __init__(self, aux: AuxLossConfig, hidden_size: int, teacher_size: int):
        super().__init__()
        enabled = aux.enabled
        if not enabled:
            raise ValueError("GeometryAuxHeads built with every auxiliary loss disabled")
        if "feature_align" in enabled:
            head_hidden = aux.align_head_hidden_size or 2 * hidden_size
            self.align = nn.ModuleDict(
                {str(level): FeatureAlignHead(hidden_size, head_hidden, teacher_size) for level in aux.align_levels}
            )
        if "camera" in enabled:
            self.camera = _mlp(hidden_size, CAMERA_ENCODING_SIZE)
        if "depth" in enabled:
            self.depth = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 2 * aux.depth_patch**2))
        if "scale" in enabled:
            self.scale = _mlp(hidden_size, 1)
