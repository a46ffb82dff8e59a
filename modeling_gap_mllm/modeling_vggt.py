"""The VGGT geometry encoder of GAP-MLLM, registered as `geometry_encoder_type="vggt"`.

Camera geometry (pose decoding, depth unprojection), 2-D RoPE and transformer blocks, the DINOv2 patch embedding, the
camera and DPT heads, reconstruction (`GeometryReconstructionOutput`), the aggregator (`GapMllmVggtAggregator`), the
encoder (`GapMllmGeometryEncoder`, a transformers model of its own) and its weight init (`init_geometry_weights`).
"""

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_gap_mllm import (
    GapMllmGeometryConfig,
    GeometryEncoderOutput,
    register_geometry_encoder,
)


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """XYZW quaternions `[..., 4]` (need not be unit: normalised implicitly) → rotation matrices `[..., 3, 3]`."""
    x, y, z, w = torch.unbind(quaternions, dim=-1)
    two_s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    matrix = torch.stack(
        (
            1 - two_s * (y * y + z * z),
            two_s * (x * y - z * w),
            two_s * (x * z + y * w),
            two_s * (x * y + z * w),
            1 - two_s * (x * x + z * z),
            two_s * (y * z - x * w),
            two_s * (x * z - y * w),
            two_s * (y * z + x * w),
            1 - two_s * (x * x + y * y),
        ),
        dim=-1,
    )
    return matrix.reshape(quaternions.shape[:-1] + (3, 3))


def pose_encoding_to_extrinsics_intrinsics(
    pose_encoding: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `absT_quaR_FoV` encodings `[..., 9]` (else `ValueError`) of `image_size` `(H, W)`-pixel images into
    `extrinsics [..., 3, 4]` (OpenCV camera-from-world `[R | t]`) and `intrinsics [..., 3, 3]`
    `[[f_x, 0, W/2], [0, f_y, H/2], [0, 0, 1]]`, both in the dtype of `pose_encoding`."""
    if pose_encoding.shape[-1] != 9:
        raise ValueError(f"pose encodings must have 9 values in the last dimension, got {tuple(pose_encoding.shape)}")
    height, width = image_size
    translation = pose_encoding[..., :3]
    rotation = quaternion_to_matrix(pose_encoding[..., 3:7])
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    fov_h, fov_w = pose_encoding[..., 7], pose_encoding[..., 8]
    intrinsics = torch.zeros(pose_encoding.shape[:-1] + (3, 3), dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = width / 2.0
    intrinsics[..., 1, 2] = height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def activate_pose_encoding(raw: torch.Tensor) -> torch.Tensor:
    """The camera head's output activation: translation and quaternion linear, fields of view ReLU."""
    return torch.cat([raw[..., :7], torch.relu(raw[..., 7:])], dim=-1)


def depth_to_camera_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject depth `[..., H, W]` or `[..., H, W, 1]` (z along the optical axis) with pinhole, zero-skew
    `intrinsics [..., 3, 3]` into camera-frame points `[..., H, W, 3]`."""
    if depth.shape[-1] == 1 and depth.ndim >= 3:
        depth = depth[..., 0]
    height, width = depth.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=depth.dtype, device=depth.device),
        torch.arange(width, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    x = (cols - cx) * depth / fx
    y = (rows - cy) * depth / fy
    return torch.stack([x, y, depth], dim=-1)


def depth_to_world_points(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject depth `[..., H, W]` or `[..., H, W, 1]` to world points `[..., H, W, 3]`, `Rᵀ (x_cam − t)`, with
    camera-from-world `extrinsics [..., 3, 4]` `[R | t]` and `intrinsics [..., 3, 3]`."""
    camera_points = depth_to_camera_points(depth, intrinsics)
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    shifted = camera_points - translation[..., None, None, :]
    # row-vector form of Rᵀ·p: p · R
    return torch.einsum("...hwi,...ij->...hwj", shifted, rotation)


def build_token_positions(
    grid_height: int, grid_width: int, num_special_tokens: int, device: torch.device | None = None
) -> torch.LongTensor:
    """(row, column) of every token of one frame, `LongTensor [num_special_tokens + h·w, 2]`: zeros for the camera
    and register tokens, then (row + 1, col + 1) for the `grid_height × grid_width` patches in row-major order."""
    rows = torch.arange(grid_height, device=device)
    cols = torch.arange(grid_width, device=device)
    patch_positions = torch.cartesian_prod(rows, cols) + 1
    special_positions = torch.zeros(num_special_tokens, 2, dtype=patch_positions.dtype, device=device)
    return torch.cat([special_positions, patch_positions], dim=0)


class GapMllmGeometryRotaryEmbedding2D(nn.Module):
    """Cosine and sine tables of the 2-D RoPE (no parameters or buffers, so nothing in the checkpoint): `head_dim`
    `D` must be divisible by 4 (else `ValueError`); `frequency` is the base (VGGT: 100)."""

    def __init__(self, head_dim: int, frequency: float):
        super().__init__()
        if head_dim % 4 != 0:
            raise ValueError(f"the 2-D RoPE needs a head dim divisible by 4, got {head_dim}.")
        self.head_dim = head_dim
        self.frequency = float(frequency)

    def forward(self, positions: torch.LongTensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`positions [..., L, 2]` (row, column) → `(cos, sin)`, each `float32 [..., L, D]`: row tables in the first
        `D/2` channels, column tables in the last; float32 because the angles reach ~40 rad at 518 px."""
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
    """Rotate queries or keys `states [B, H, L, D]` by 2-D positions, with `cos`, `sin` `[L, D]` or `[B, L, D]` from
    `GapMllmGeometryRotaryEmbedding2D`; returns `[B, H, L, D]` in the dtype of `states`."""
    cos = cos.to(states.dtype).unsqueeze(-3)  # broadcast over heads
    sin = sin.to(states.dtype).unsqueeze(-3)
    return states * cos + _rotate_each_half(states) * sin


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention, the attention interface's fallback: `query`, `key`, `value` `[B, H, L, D]`, additive
    `attention_mask [B, 1 or H, L, L]` or `None` → `(output [B, L, H, D], weights [B, H, L, L])` in the dtype of
    `query` (softmax in fp32)."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class GapMllmGeometryAttention(nn.Module):
    """Multi-head self-attention (bidirectional, no mask) with 2-D RoPE; `config` gives `hidden_size`,
    `num_attention_heads` and `_attn_implementation`. `use_qk_norm` adds a LayerNorm (eps `layer_norm_eps`) over
    each head's queries and keys before RoPE."""

    def __init__(self, config: GapMllmGeometryConfig, use_qk_norm: bool, layer_norm_eps: float):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=True)
        # Identity keeps the DINOv2 state dict free of q_norm/k_norm keys, as in the reference.
        self.q_norm = nn.LayerNorm(self.head_dim, eps=layer_norm_eps) if use_qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim, eps=layer_norm_eps) if use_qk_norm else nn.Identity()
        self.proj = nn.Linear(config.hidden_size, config.hidden_size, bias=True)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """`hidden_states [B, L, C]` → `[B, L, C]`; `position_embeddings` is `(cos, sin)`, each `[L, D]` or
        `[B, L, D]`, or `None` for no RoPE."""
        return self.proj(self.attend(*self.project(hidden_states, position_embeddings), **kwargs))

    def project(self, hidden_states: torch.Tensor, position_embeddings=None) -> tuple[torch.Tensor, ...]:
        """`hidden_states [B, L, C]` → query, key, value `[B, H, L, D]`, QK-normed and rotated (token-local)."""
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D]
        query, key = self.q_norm(query), self.k_norm(key)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query = apply_rotary_2d(query, cos, sin)
            key = apply_rotary_2d(key, cos, sin)
        return query, key, value

    def attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kwargs) -> torch.Tensor:
        """Attention of `query`, `key`, `value` `[B, H, L, D]` → `[B, L, H·D]`, before the output projection."""
        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attn_fn(
            self, query, key, value, None, dropout=0.0, scaling=self.scaling, is_causal=False, **kwargs
        )  # [B, L, H, D]
        return output.flatten(2)


class GapMllmGeometryMlp(nn.Module):
    """fc1 → exact GELU → fc2: `[..., C]` → `[..., C]` with hidden width `int(C · mlp_ratio)`."""

    def __init__(self, hidden_size: int, mlp_ratio: float):
        super().__init__()
        intermediate_size = int(hidden_size * mlp_ratio)
        self.fc1 = nn.Linear(hidden_size, intermediate_size, bias=True)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(intermediate_size, hidden_size, bias=True)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(hidden_states)))


class GapMllmGeometryLayerScale(nn.Module):
    """Per-channel residual scale `x · gamma`; `init_value` is kept for the weight init."""

    def __init__(self, hidden_size: int, init_value: float):
        super().__init__()
        self.init_value = float(init_value)
        self.gamma = nn.Parameter(torch.full((hidden_size,), self.init_value))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states * self.gamma


class GapMllmGeometryBlock(GradientCheckpointingLayer):
    """Pre-norm block `x + ls1(attn(norm1 x))`, then `x + ls2(mlp(norm2 x))`; `use_qk_norm` and `layer_norm_eps` (of
    all its norms) as in `GapMllmGeometryAttention`; `layer_scale_init` is LayerScale's init (falsy: no LayerScale)."""

    def __init__(
        self, config: GapMllmGeometryConfig, use_qk_norm: bool, layer_norm_eps: float, layer_scale_init: float | None
    ):
        super().__init__()
        hidden_size = config.hidden_size
        self.norm1 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.attn = GapMllmGeometryAttention(config, use_qk_norm=use_qk_norm, layer_norm_eps=layer_norm_eps)
        self.ls1 = GapMllmGeometryLayerScale(hidden_size, layer_scale_init) if layer_scale_init else nn.Identity()
        self.norm2 = nn.LayerNorm(hidden_size, eps=layer_norm_eps)
        self.mlp = GapMllmGeometryMlp(hidden_size, config.mlp_ratio)
        self.ls2 = GapMllmGeometryLayerScale(hidden_size, layer_scale_init) if layer_scale_init else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
                tokens_chunk_size: int | None = None) -> torch.Tensor:
        """`hidden_states [B, L, C]` → `[B, L, C]` (B = batch·frames for frame attention, L = frames·tokens for
        global attention); `position_embeddings` is RoPE `(cos, sin)`, each `[L, D]`, or `None`. A
        `tokens_chunk_size` runs the token-local work (norms, projections, MLP) that many tokens at a time and the
        attention over all `L` at once: the peak memory falls, the result does not change."""
        length, size = hidden_states.shape[1], tokens_chunk_size
        if size is None or size >= length:
            hidden_states = hidden_states + self.ls1(self.attn(self.norm1(hidden_states), position_embeddings))
            return hidden_states + self.ls2(self.mlp(self.norm2(hidden_states)))
        qkv, outputs = None, []  # filled in place: chunks and their concatenation would be twice the size
        for start in range(0, length, size):
            rope = position_embeddings and tuple(table[..., start : start + size, :] for table in position_embeddings)
            parts = self.attn.project(self.norm1(hidden_states[:, start : start + size]), rope)  # [B, H, size, D]
            qkv = qkv or [part.new_empty(*part.shape[:2], length, part.shape[3]) for part in parts]
            for whole, part in zip(qkv, parts):
                whole[:, :, start : start + size] = part
        attended = self.attn.attend(*qkv)
        del qkv, parts  # what the attention needed
        for start in range(0, length, size):
            chunk = hidden_states[:, start : start + size] + self.ls1(self.attn.proj(attended[:, start : start + size]))
            outputs.append(chunk + self.ls2(self.mlp(self.norm2(chunk))))
        return torch.cat(outputs, dim=1)


# VGGT's DINOv2 interpolates its position embedding bicubic, antialiased, offset 0 (DINOv2's default: 0.1).
POS_EMBED_INTERPOLATION_ANTIALIAS = True


class GapMllmDinov2PatchProjection(nn.Module):
    """Non-overlapping patch convolution: `[N, 3, H, W]` → `[N, (H/p)·(W/p), C]` (row-major patches)."""

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.proj(pixel_values).flatten(2).transpose(1, 2)


class GapMllmDinov2PatchEmbed(nn.Module):
    """DINOv2 ViT with registers (no QK-norm, no RoPE), sized by `hidden_size`, `num_attention_heads`, `mlp_ratio`,
    `patch_size`, `image_size` and `patch_embed_*`; returns the final-normed patch tokens."""

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
        # Unused at inference (DINOv2 masked-image training); kept so checkpoints load strictly, frozen as in VGGT.
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
        """Position embedding `[1, 1 + P, C]` of the cls token and a `(height/p) × (width/p)` grid, as DINOv2's
        `interpolate_pos_encoding`: the stored table when the patch count matches and the image is square, else
        bicubic antialiased fp32 interpolation. `tokens [N, 1 + P, C]` gives `P` and the output dtype."""
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
        """`pixel_values [N, 3, H, W]` (ImageNet-normalised, H, W multiples of `patch_size`) → normalised patch tokens
        `[N, P, C]`, `P = (H/p)·(W/p)` in row-major order."""
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


POSE_ENCODING_SIZE = 9  # absT_quaR_FoV: translation 3, quaternion 4, fields of view 2
CAMERA_TRUNK_LAYER_SCALE_INIT = 0.01
CAMERA_TRUNK_LAYER_NORM_EPS = 1e-5  # torch's LayerNorm default, as in VGGT's `Block`
ADALN_EPS = 1e-6


class _CameraTrunkConfig:
    """`GapMllmGeometryBlock`'s fields at width `2·hidden_size`; the attention backend is read live from `config`."""

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
    """Iterative camera regression from each frame's camera token: per iteration, embed the previous estimate (a
    learned empty pose first), modulate the normed tokens adaLN-style (shift, scale, gate), run the trunk
    (attention across a sample's frames) and add the MLP's delta to the estimate."""

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
        """`camera_tokens [B, S, 2·C]` (token 0 of the last layer) → one activated `[B, S, 9]` pose encoding per
        iteration (`num_iterations`, default `config.camera_head_num_iterations`); the last is the prediction."""
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


HEAD_HIDDEN_CHANNELS = 32  # width of output_conv2's hidden layer in VGGT
POSITION_EMBEDDING_SCALE = 0.1
POSITION_EMBEDDING_OMEGA = 100.0


def uv_position_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Sinusoidal embedding `[channels, height, width]` of a UV grid spanning `±aspect/diag` × `±1/diag`
    (`diag = sqrt(aspect² + 1)`) at cell centres: u in the first half of the channels, v in the second, each
    `[sin(p·ω), cos(p·ω)]` with `ω_k = 100^(-k / (channels/4))` in float64 (VGGT's `_apply_pos_embed`)."""
    diagonal = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diagonal, 1.0 / diagonal
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device)
    grid_u, grid_v = torch.meshgrid(xs, ys, indexing="xy")  # each [height, width]

    def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64, device=device) / (dim / 2.0)
        omega = 1.0 / POSITION_EMBEDDING_OMEGA**omega
        angles = positions.reshape(-1).double()[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()

    embedding = torch.cat([sincos(grid_u, channels // 2), sincos(grid_v, channels // 2)], dim=-1)
    return embedding.view(height, width, channels).permute(2, 0, 1)


class GapMllmDptResidualUnit(nn.Module):
    """`conv2(relu(conv1(relu(x)))) + relu(x)`: the skip adds `relu(x)`, as VGGT's in-place ReLU does."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(hidden_states)
        return self.conv2(torch.relu(self.conv1(activated))) + activated


class GapMllmDptFusionBlock(nn.Module):
    """`out_conv(upsample(unit2(x + unit1(skip))))` — bilinear, align_corners=True; the deepest block has no skip."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_skip:
            self.resConfUnit1 = GapMllmDptResidualUnit(features)
        self.resConfUnit2 = GapMllmDptResidualUnit(features)

    def forward(self, hidden_states: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            hidden_states = hidden_states + self.resConfUnit1(skip)
        hidden_states = self.resConfUnit2(hidden_states)
        if size is None:
            size = (hidden_states.shape[-2] * 2, hidden_states.shape[-1] * 2)
        hidden_states = nn.functional.interpolate(hidden_states, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(hidden_states)


class GapMllmDptScratch(nn.Module):
    """Container with VGGT's `scratch.*` names: `layer{1..4}_rn`, `refinenet{1..4}`, `output_conv1`, `output_conv2`."""

    def __init__(self, in_channels: list[int], features: int, output_dim: int):
        super().__init__()
        for index, channels in enumerate(in_channels, start=1):
            setattr(self, f"layer{index}_rn", nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = GapMllmDptFusionBlock(features)
        self.refinenet2 = GapMllmDptFusionBlock(features)
        self.refinenet3 = GapMllmDptFusionBlock(features)
        self.refinenet4 = GapMllmDptFusionBlock(features, has_skip=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN_CHANNELS, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN_CHANNELS, output_dim, kernel_size=1),
        )


def activate_depth(raw: torch.Tensor) -> torch.Tensor:
    """Depth: `exp(x)` (positive, scale-normalised)."""
    return torch.exp(raw)


def activate_points(raw: torch.Tensor) -> torch.Tensor:
    """World points: `sign(x)·(exp(|x|) − 1)` (VGGT's `inv_log`)."""
    return torch.sign(raw) * torch.expm1(torch.abs(raw))


ACTIVATIONS = {"depth": (2, activate_depth), "points": (4, activate_points)}


class GapMllmDptHead(nn.Module):
    """DPT dense head: `kind="depth"` predicts depth, `kind="points"` x, y, z, each with a confidence `1 + exp(c)`;
    another `kind` raises `ValueError`."""

    def __init__(self, config: GapMllmGeometryConfig, kind: str):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"unknown DPT head kind {kind!r}; expected one of {sorted(ACTIVATIONS)}")
        output_dim, self.activation = ACTIVATIONS[kind]
        self.kind = kind
        self.patch_size = config.patch_size
        self.layers = list(config.dpt_layers)
        self.frames_chunk_size = config.dpt_frames_chunk_size
        width = 2 * config.hidden_size
        channels = list(config.dpt_out_channels)
        self.norm = nn.LayerNorm(width)
        self.projects = nn.ModuleList([nn.Conv2d(width, c, kernel_size=1) for c in channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(channels[1], channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = GapMllmDptScratch(channels, config.dpt_features, output_dim)

    def forward(
        self, layer_patch_tokens: list[torch.Tensor], image_size: tuple[int, int], frames_chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`(prediction, confidence)` per frame, prediction `[B, S, H, W, 1]` (depth) or `[B, S, H, W, 3]` (points),
        confidence `[B, S, H, W]`, in the head's dtype, from `layer_patch_tokens`: the patch tokens of the 4
        `config.dpt_layers` in order, each `[B, S, h·w, 2·C]`. `image_size` is `(H, W)`; `frames_chunk_size`
        (default `config.dpt_frames_chunk_size`) only bounds memory."""
        batch_size, num_frames = layer_patch_tokens[0].shape[:2]
        chunk = frames_chunk_size or self.frames_chunk_size
        predictions, confidences = [], []
        for start in range(0, num_frames, chunk):
            prediction, confidence = self._forward_frames(
                [tokens[:, start : start + chunk] for tokens in layer_patch_tokens], image_size
            )
            predictions.append(prediction)
            confidences.append(confidence)
        return torch.cat(predictions, dim=1), torch.cat(confidences, dim=1)

    def _forward_frames(self, layer_patch_tokens: list[torch.Tensor], image_size: tuple[int, int]):
        height, width = image_size
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        batch_size, num_frames = layer_patch_tokens[0].shape[:2]
        dtype = self.norm.weight.dtype
        maps = []
        for index, tokens in enumerate(layer_patch_tokens):
            tokens = self.norm(tokens.to(dtype).reshape(batch_size * num_frames, grid_height * grid_width, -1))
            feature_map = tokens.permute(0, 2, 1).reshape(batch_size * num_frames, -1, grid_height, grid_width)
            feature_map = self._add_position_embedding(self.projects[index](feature_map), width / height)
            maps.append(self.resize_layers[index](feature_map))

        scratch = self.scratch
        layer_1, layer_2, layer_3, layer_4 = (getattr(scratch, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        fused = scratch.refinenet4(layer_4, size=layer_3.shape[2:])
        fused = scratch.refinenet3(fused, layer_3, size=layer_2.shape[2:])
        fused = scratch.refinenet2(fused, layer_2, size=layer_1.shape[2:])
        fused = scratch.refinenet1(fused, layer_1)
        fused = scratch.output_conv1(fused)
        fused = nn.functional.interpolate(
            fused, size=(grid_height * self.patch_size, grid_width * self.patch_size), mode="bilinear", align_corners=True
        )
        fused = self._add_position_embedding(fused, width / height)
        raw = scratch.output_conv2(fused).permute(0, 2, 3, 1)  # [B·S, H, W, out]
        prediction = self.activation(raw[..., :-1])
        confidence = 1 + torch.exp(raw[..., -1])
        return (
            prediction.reshape(batch_size, num_frames, *prediction.shape[1:]),
            confidence.reshape(batch_size, num_frames, *confidence.shape[1:]),
        )

    @staticmethod
    def _add_position_embedding(feature_map: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        channels, height, width = feature_map.shape[1:]
        embedding = uv_position_embedding(height, width, channels, aspect_ratio, feature_map.dtype, feature_map.device)
        return feature_map + (embedding * POSITION_EMBEDDING_SCALE).to(feature_map.dtype)[None]


@dataclass
class GeometryReconstructionOutput(ModelOutput):
    """Output of `GapMllmGeometryEncoder.reconstruct`: frames in input order, fields of disabled heads `None`.

    World frame: the camera of the reference frame (frame 0, or the last with `reference_frame="last"`), scale
    normalised. `pose_encoding [B, S, 9]` (`absT_quaR_FoV`, last iteration; `pose_encoding_iterations`: one per
    iteration), `extrinsics [B, S, 3, 4]` (OpenCV camera-from-world), `intrinsics [B, S, 3, 3]`, `depth
    [B, S, H, W, 1]`, `world_points [B, S, H, W, 3]`, confidences `depth_conf`, `world_points_conf [B, S, H, W]`,
    `layer_features` (one `[B, S, h·w, 2C]` per tapped layer), `patch_grid (h, w)`, `image_size (H, W)`."""

    pose_encoding: torch.Tensor | None = None
    pose_encoding_iterations: tuple[torch.Tensor, ...] | None = None
    extrinsics: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_conf: torch.Tensor | None = None
    world_points: torch.Tensor | None = None
    world_points_conf: torch.Tensor | None = None
    layer_features: tuple[torch.Tensor, ...] | None = None
    patch_grid: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def world_points_from_depth(self) -> torch.Tensor:
        """Depth unprojected with the predicted cameras, `[B, S, H, W, 3]` (per VGGT, more accurate than the point
        head); `ValueError` without the depth and camera heads."""
        if self.depth is None or self.extrinsics is None:
            raise ValueError("world_points_from_depth needs the depth and camera heads (use_depth_head, use_camera_head)")
        return depth_to_world_points(self.depth.float(), self.extrinsics.float(), self.intrinsics.float())


def _flip_frames(value):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(item.flip(1) for item in value)
    return value.flip(1)


def run_reconstruction(encoder, images: torch.Tensor, frames_chunk_size: int | None = None) -> GeometryReconstructionOutput:
    """Aggregator + enabled heads on `images [B, S, 3, H, W]` in [0, 1] (see `GeometryReconstructionOutput`)."""
    config = encoder.config
    camera_head = getattr(encoder, "camera_head", None)
    depth_head = getattr(encoder, "depth_head", None)
    point_head = getattr(encoder, "point_head", None)
    if camera_head is None and depth_head is None and point_head is None:
        raise ValueError(
            "no reconstruction head is enabled: set use_camera_head / use_depth_head / use_point_head in the "
            "geometry config and load VGGT weights that contain them"
        )
    aggregator = encoder.aggregator
    aggregator.check_images(images)
    reverse = config.reference_frame == "last"
    if reverse:
        images = images.flip(1)
    tapped = list(config.tapped_layers)
    last_layer = config.num_hidden_layers - 1
    needed = set(tapped)
    if camera_head is not None:
        needed.add(last_layer)
    if depth_head is not None or point_head is not None:
        needed.update(config.dpt_layers)
    layers = sorted(needed)
    outputs = dict(zip(layers, aggregator(images, layers)))
    num_special = aggregator.num_special_tokens
    image_size = tuple(images.shape[-2:])
    result = {}
    with torch.autocast(device_type=images.device.type, enabled=False):
        if camera_head is not None:
            iterations = camera_head(outputs[last_layer][:, :, 0])
            extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(iterations[-1], image_size)
            result.update(pose_encoding=iterations[-1], pose_encoding_iterations=iterations,
                          extrinsics=extrinsics, intrinsics=intrinsics)
        if depth_head is not None or point_head is not None:
            dpt_tokens = [outputs[layer][:, :, num_special:] for layer in config.dpt_layers]
        if depth_head is not None:
            result["depth"], result["depth_conf"] = depth_head(dpt_tokens, image_size, frames_chunk_size)
        if point_head is not None:
            result["world_points"], result["world_points_conf"] = point_head(dpt_tokens, image_size, frames_chunk_size)
    result["layer_features"] = tuple(outputs[layer][:, :, num_special:] for layer in tapped)
    if reverse:
        result = {key: _flip_frames(value) for key, value in result.items()}
    patch = config.patch_size
    return GeometryReconstructionOutput(
        **result, patch_grid=(image_size[0] // patch, image_size[1] // patch), image_size=image_size
    )


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype_for(config: GapMllmGeometryConfig, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of the aggregator for input on `device`, or `None`: `config.autocast_dtype` `"auto"` is bf16 on
    CUDA (VGGT's encode path) and `None` elsewhere (exact CPU fp32); `"bfloat16"`, `"float16"` apply anywhere."""
    setting = getattr(config, "autocast_dtype", "auto")
    if setting is None:
        return None
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AUTOCAST_DTYPES[setting]


def _in_frame_chunks(function, frames: torch.Tensor, chunk_size: int | None, *args) -> torch.Tensor:
    """`function(frames, *args)` on `frames [N, ...]`, `chunk_size` frames at a time (`None`: all at once), for
    frame-local work: the chunks change its peak memory, not its result."""
    if chunk_size is None or chunk_size >= frames.shape[0]:
        return function(frames, *args)
    return torch.cat([function(part, *args) for part in frames.split(chunk_size)])


def _expand_token_pair(token_pair: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
    """`[1, 2, X, C]` → `[B·S, X, C]`: copy 0 for frame 0, copy 1 for the other frames of each sample."""
    first = token_pair[:, :1].expand(batch_size, 1, -1, -1)
    others = token_pair[:, 1:].expand(batch_size, num_frames - 1, -1, -1)
    return torch.cat([first, others], dim=1).flatten(0, 1)


class GapMllmVggtAggregator(nn.Module):
    """VGGT's alternating-attention aggregator (DINOv2 patch embedding, then frame and global blocks): `camera_token
    [1, 2, 1, C]`, `register_token [1, 2, R, C]`, `patch_embed.*`, `frame_blocks.N.*`, `global_blocks.N.*`; the
    ImageNet mean and std are non-persistent buffers (not in VGGT's checkpoint either)."""

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_size
        self.patch_size = config.patch_size
        self.num_special_tokens = config.num_special_tokens
        self.patch_embed = GapMllmDinov2PatchEmbed(config)
        # Copy 0 for the reference frame, copy 1 shared by the others: how VGGT knows the world frame.
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, hidden_size))
        self.register_token = nn.Parameter(torch.zeros(1, 2, config.num_register_tokens, hidden_size))
        self.rotary_emb = (
            GapMllmGeometryRotaryEmbedding2D(config.head_dim, config.rope_frequency)
            if config.rope_frequency > 0
            else None
        )

        def alternating_block() -> GapMllmGeometryBlock:
            return GapMllmGeometryBlock(
                config,
                use_qk_norm=config.qk_norm,
                layer_norm_eps=config.layer_norm_eps,
                layer_scale_init=config.layer_scale_init,
            )

        self.frame_blocks = nn.ModuleList([alternating_block() for _ in range(config.num_hidden_layers)])
        self.global_blocks = nn.ModuleList([alternating_block() for _ in range(config.num_hidden_layers)])
        self.register_buffer("image_mean", self._normalisation_buffer(config.image_mean), persistent=False)
        self.register_buffer("image_std", self._normalisation_buffer(config.image_std), persistent=False)

    @staticmethod
    def _normalisation_buffer(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, 1, 3, 1, 1)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a `ValueError` naming the shape unless it is `[B, S, 3, H, W]` with H, W multiples of `patch_size`."""
        shape = tuple(images.shape)
        if images.ndim != 5 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(
                f"geometry encoder images must be [batch, frames, 3, height, width], got shape {shape}."
            )
        height, width = shape[-2:]
        if height == 0 or width == 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"geometry encoder images have shape {shape}: height {height} and width {width} must be positive "
                f"multiples of the patch size {self.patch_size}."
            )

    def forward(self, images: torch.Tensor, output_layers: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """Features of `images [B, S, 3, H, W]` (RGB in [0, 1], H, W multiples of `patch_size`; frame 0 the reference):
        one `[B, S, T, 2·C]` per layer of `output_layers` (0-based, in that order, default `config.tapped_layers`;
        later blocks are not run; `ValueError` for a missing one), `T = 1 + num_register_tokens + h·w` (camera,
        registers, row-major patches), channels frame-block ⊕ global-block output, in the weights' dtype (under
        autocast as `autocast_dtype_for` says)."""
        autocast_dtype = autocast_dtype_for(self.config, images.device)
        if autocast_dtype is None:
            return self._aggregate(images, output_layers)
        with torch.autocast(device_type=images.device.type, dtype=autocast_dtype):
            outputs = self._aggregate(images, output_layers)
        weights_dtype = self.patch_embed.patch_embed.proj.weight.dtype
        return tuple(output.to(weights_dtype) for output in outputs)

    def _aggregate(self, images: torch.Tensor, output_layers: list[int] | None) -> tuple[torch.Tensor, ...]:
        self.check_images(images)
        layers = list(self.config.tapped_layers if output_layers is None else output_layers)
        for layer in layers:
            if not 0 <= layer < len(self.frame_blocks):
                raise ValueError(
                    f"output layer {layer} does not exist: valid layers are 0..{len(self.frame_blocks) - 1}."
                )
        batch_size, num_frames, _, height, width = images.shape
        grid_height, grid_width = height // self.patch_size, width // self.patch_size

        # Normalise in fp32 whatever the input dtype, then match the weights (bf16 checkpoints).
        pixel_values = (images.float() - self.image_mean) / self.image_std
        pixel_values = pixel_values.to(self.patch_embed.patch_embed.proj.weight.dtype).flatten(0, 1)
        frames_chunk = self.config.frames_chunk_size  # of each sample: batch_size · frames_chunk frames at a time
        rows_chunk = frames_chunk and batch_size * frames_chunk
        patch_tokens = _in_frame_chunks(self.patch_embed, pixel_values, rows_chunk)  # [B·S, P, C]
        special_tokens = torch.cat(
            [
                _expand_token_pair(self.camera_token, batch_size, num_frames),
                _expand_token_pair(self.register_token, batch_size, num_frames),
            ],
            dim=1,
        ).to(patch_tokens.dtype)
        tokens = torch.cat([special_tokens, patch_tokens], dim=1)  # [B·S, T, C]
        num_tokens, channels = tokens.shape[1:]

        frame_rope = global_rope = None
        if self.rotary_emb is not None:
            positions = build_token_positions(grid_height, grid_width, self.num_special_tokens, images.device)
            frame_rope = self.rotary_emb(positions)  # each [T, D]
            # Global attention sees the frames one after another; each frame keeps its own grid positions.
            global_rope = tuple(table.repeat(num_frames, 1) for table in frame_rope)  # each [S·T, D]

        wanted = set(layers)
        collected = {}
        per_frame = (batch_size * num_frames, num_tokens, channels)  # frame attention: one sequence per frame
        per_sample = (batch_size, num_frames * num_tokens, channels)  # global attention: one sequence per sample
        per_token = (batch_size, num_frames, num_tokens, channels)
        tokens_chunk = frames_chunk and frames_chunk * num_tokens  # the global blocks' token-local work
        for index in range(max(layers) + 1):
            tokens = _in_frame_chunks(self.frame_blocks[index], tokens.reshape(per_frame), rows_chunk, frame_rope)
            frame_output = tokens.reshape(per_token)
            tokens = self.global_blocks[index](tokens.reshape(per_sample), global_rope, tokens_chunk)
            if index in wanted:
                global_output = tokens.reshape(per_token)
                collected[index] = torch.cat([frame_output, global_output], dim=-1)
        return tuple(collected[layer] for layer in layers)


class GapMllmGeometryEncoder(PreTrainedModel):
    """Frozen geometry encoder of GAP-MLLM (`geometry_encoder_type="vggt"`): VGGT's aggregator, plus the
    `camera_head`, `depth_head` and `point_head` the config enables (names as in VGGT's checkpoint). `forward` returns
    the features GAP-MLLM fuses, `reconstruct` runs the heads too; with `config.reference_frame == "last"` the last
    input frame is VGGT's reference, outputs staying in input order. A transformers model of its own, also as
    `model.model.geometry_encoder` of GAP-MLLM: its `save_pretrained` folder loads alone with `AutoModel`."""

    config: GapMllmGeometryConfig
    base_model_prefix = "geometry_encoder"  # its name in GapMllmModel
    main_input_name = "images"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["GapMllmGeometryBlock"]
    _supports_flash_attn = _supports_sdpa = _supports_attention_backend = True  # through ALL_ATTENTION_FUNCTIONS

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__(config)
        self.aggregator = GapMllmVggtAggregator(config)
        if config.use_camera_head:
            self.camera_head = GapMllmCameraHead(config)
        if config.use_depth_head:
            self.depth_head = GapMllmDptHead(config, "depth")
        if config.use_point_head:
            self.point_head = GapMllmDptHead(config, "points")
        self.post_init()

    def reconstruct(self, images: torch.Tensor, frames_chunk_size: int | None = None) -> GeometryReconstructionOutput:
        """VGGT's 3D outputs (`GeometryReconstructionOutput`) for `images [B, S, 3, H, W]` in [0, 1], from one
        aggregator pass; `frames_chunk_size` bounds the DPT heads' memory."""
        return run_reconstruction(self, images, frames_chunk_size)

    def _init_weights(self, module: nn.Module) -> None:
        """`init_geometry_weights(module, self.config)`: one of this encoder's modules."""
        init_geometry_weights(module, self.config)

    init_module_weights = _init_weights  # the geometry-encoder interface's name (docs/layout.md)

    def set_trainable(self, trainable: bool) -> None:
        """`requires_grad` of every parameter but the DINOv2 mask token, which no forward uses (frozen, as in VGGT)."""
        self.requires_grad_(trainable)
        mask_token = getattr(self.aggregator.patch_embed, "mask_token", None)
        if mask_token is not None:
            mask_token.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> GeometryEncoderOutput:
        """`images [B, S, 3, H, W]` (RGB in [0, 1], H, W multiples of `config.patch_size`) → [`GeometryEncoderOutput`]
        with `layer_features` (one `[B, S, h·w, 2·hidden_size]` per tapped layer, in `config.tapped_layers` order,
        camera and register tokens dropped) and `patch_grid = (h, w)`."""
        self.aggregator.check_images(images)
        reverse = self.config.reference_frame == "last"
        if reverse:
            images = images.flip(1)
        outputs = self.aggregator(images, self.config.tapped_layers)
        num_special = self.aggregator.num_special_tokens
        features = tuple(output[:, :, num_special:] for output in outputs)
        if reverse:
            features = tuple(feature.flip(1) for feature in features)
        patch_size = self.config.patch_size
        return GeometryEncoderOutput(
            layer_features=features, patch_grid=(images.shape[-2] // patch_size, images.shape[-1] // patch_size)
        )


@torch.no_grad()
def init_geometry_weights(module: nn.Module, config: GapMllmGeometryConfig) -> bool:
    """Initialise ONE module of the geometry encoder (not its children), for `_init_weights`; `True` if handled.

    Uses `transformers.initialization` (skips tensors loaded from a checkpoint) and refills the mean/std buffers:
    - aggregator `camera_token`, `register_token`, DINOv2 `cls_token`, `register_tokens` ~ N(0, 1e-6);
    - `mask_token`, `empty_pose_tokens` = 0; `pos_embed` ~ trunc-N(0, 0.02); LayerScale `gamma` = its init value;
    - Linear, Conv2d, ConvTranspose2d: weight ~ trunc-N(0, `config.initializer_range`), bias 0; LayerNorm: 1, 0.
    Linear, Conv2d and LayerNorm are matched by type: pass only the encoder's modules (`set(encoder.modules())`)."""
    if isinstance(module, GapMllmVggtAggregator):
        init.normal_(module.camera_token, std=1e-6)
        init.normal_(module.register_token, std=1e-6)
        init.copy_(module.image_mean, module._normalisation_buffer(config.image_mean))
        init.copy_(module.image_std, module._normalisation_buffer(config.image_std))
        return True
    if isinstance(module, GapMllmDinov2PatchEmbed):
        init.normal_(module.cls_token, std=1e-6)
        if module.register_tokens is not None:
            init.normal_(module.register_tokens, std=1e-6)
        init.zeros_(module.mask_token)
        init.trunc_normal_(module.pos_embed, std=0.02)
        return True
    if isinstance(module, GapMllmGeometryLayerScale):
        init.constant_(module.gamma, module.init_value)
        return True
    if isinstance(module, GapMllmCameraHead):
        init.zeros_(module.empty_pose_tokens)
        return True
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        init.trunc_normal_(module.weight, std=config.initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    if isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    return False


register_geometry_encoder("vggt", GapMllmGeometryConfig, GapMllmGeometryEncoder)
# its save_pretrained then writes auto_map and copies this code, however the module was imported
GapMllmGeometryEncoder.register_for_auto_class()


__all__ = [
    "GapMllmCameraHead",
    "GapMllmDinov2PatchEmbed",
    "GapMllmDinov2PatchProjection",
    "GapMllmDptHead",
    "GapMllmGeometryAttention",
    "GapMllmGeometryBlock",
    "GapMllmGeometryEncoder",
    "GapMllmGeometryLayerScale",
    "GapMllmGeometryMlp",
    "GapMllmGeometryRotaryEmbedding2D",
    "GapMllmVggtAggregator",
    "GeometryEncoderOutput",
    "GeometryReconstructionOutput",
    "POSE_ENCODING_SIZE",
    "activate_depth",
    "activate_points",
    "activate_pose_encoding",
    "apply_rotary_2d",
    "autocast_dtype_for",
    "build_token_positions",
    "depth_to_camera_points",
    "depth_to_world_points",
    "eager_attention_forward",
    "init_geometry_weights",
    "pose_encoding_to_extrinsics_intrinsics",
    "quaternion_to_matrix",
    "run_reconstruction",
    "uv_position_embedding",
]
