"""VGGT's camera head: camera tokens of the last aggregator layer → 9-d pose encodings.

Parameter names equal VGGT's `camera_head.*` leaves (`token_norm`, `trunk.N.*`, `trunk_norm`,
`empty_pose_tokens`, `embed_pose`, `poseLN_modulation.1`, `pose_branch.fc1`, `pose_branch.fc2`), so a
VGGT checkpoint maps by a pure prefix. Decode the output with `pose_encoding.pose_encoding_to_extrinsics_intrinsics`.
"""

import torch
from torch import nn

from .configuration_gap_mllm import GapMllmGeometryConfig
from .geometry_layers import GapMllmGeometryBlock
from .pose_encoding import activate_pose_encoding

POSE_ENCODING_SIZE = 9  # absT_quaR_FoV: translation 3, quaternion 4, fields of view 2
CAMERA_TRUNK_LAYER_SCALE_INIT = 0.01
CAMERA_TRUNK_LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, as in VGGT's `Block`
ADALN_EPS = 1e-6


class _CameraTrunkConfig:
    """The fields `GapMllmGeometryBlock` reads, at the camera head's width (`2·hidden_size`). The attention
    backend is read from the geometry config at call time, so switching it there switches it here too."""

    def __init__(self, config: GapMllmGeometryConfig):
        self._geometry_config = config
        self.hidden_size = 2 * config.hidden_size
        self.num_attention_heads = config.camera_head_num_attention_heads
        self.mlp_ratio = config.mlp_ratio

    @property
    def _attn_implementation(self):
        return self._geometry_config._attn_implementation


class _PoseBranch(nn.Module):
    """fc1 (width → width/2) → exact GELU → fc2 (→ 9): the pose delta (VGGT's `Mlp` leaf names)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width // 2)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(width // 2, POSE_ENCODING_SIZE)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class GapMllmCameraHead(nn.Module):
    """Iterative camera regression from the camera token of each frame (docs/vggt.md §4).

    Per iteration: embed the previous estimate (a learned empty pose first), modulate the
    LayerNorm-ed camera tokens adaLN-style (shift, scale, gate), run the trunk (self-attention across
    the frames of a sample, no RoPE, no QK-norm, LayerScale 0.01), and add the MLP's delta to the
    estimate. Each iteration's estimate is activated (FoV through ReLU) and returned.
    """

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        width = 2 * config.hidden_size
        self.num_iterations = config.camera_head_num_iterations
        trunk_config = _CameraTrunkConfig(config)
        self.trunk = nn.Sequential(
            *[
                GapMllmGeometryBlock(
                    trunk_config,
                    use_qk_norm=False,
                    layer_norm_eps=CAMERA_TRUNK_LAYER_NORM_EPS,
                    layer_scale_init=CAMERA_TRUNK_LAYER_SCALE_INIT,
                )
                for _ in range(config.camera_head_trunk_depth)
            ]
        )
        self.token_norm = nn.LayerNorm(width)
        self.trunk_norm = nn.LayerNorm(width)
        self.empty_pose_tokens = nn.Parameter(torch.zeros(1, 1, POSE_ENCODING_SIZE))
        self.embed_pose = nn.Linear(POSE_ENCODING_SIZE, width)
        # index 1: VGGT's Sequential(SiLU, Linear) — keeps the key `poseLN_modulation.1.*`
        self.poseLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))
        self.adaln_norm = nn.LayerNorm(width, elementwise_affine=False, eps=ADALN_EPS)
        self.pose_branch = _PoseBranch(width)

    def forward(self, camera_tokens: torch.Tensor, num_iterations: int | None = None) -> tuple[torch.Tensor, ...]:
        """
        Args:
            camera_tokens: `[B, S, 2·C]`, token 0 of the last aggregator layer for every frame.
            num_iterations: refinement steps (default `config.camera_head_num_iterations`).

        Returns:
            one activated `[B, S, 9]` pose encoding per iteration; the last is the prediction.
        """
        tokens = self.token_norm(camera_tokens.to(self.token_norm.weight.dtype))
        batch_size, num_frames, _ = tokens.shape
        estimate, estimates = None, []
        for _ in range(num_iterations or self.num_iterations):
            if estimate is None:
                conditioning = self.embed_pose(self.empty_pose_tokens.expand(batch_size, num_frames, -1))
            else:
                # no back-propagation through earlier iterations, as in VGGT
                conditioning = self.embed_pose(estimate.detach())
            shift, scale, gate = self.poseLN_modulation(conditioning).chunk(3, dim=-1)
            modulated = gate * (self.adaln_norm(tokens) * (1 + scale) + shift) + tokens
            delta = self.pose_branch(self.trunk_norm(self.trunk(modulated)))
            estimate = delta if estimate is None else estimate + delta
            estimates.append(activate_pose_encoding(estimate))
        return tuple(estimates)


__all__ = ["GapMllmCameraHead", "POSE_ENCODING_SIZE"]
