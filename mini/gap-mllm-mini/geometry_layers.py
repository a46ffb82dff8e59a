"""Transformer block shared by the DINOv2 patch embedding and the VGGT alternating blocks.

One pre-norm block class serves both, configured per use (values as in the VGGT reference):

| use                          | QK-LayerNorm     | 2-D RoPE | LayerScale init | LayerNorm eps |
|------------------------------|------------------|----------|-----------------|---------------|
| DINOv2 blocks (patch embed)  | no               | no       | 1.0             | 1e-6          |
| frame / global blocks        | yes (eps 1e-5)   | yes      | 0.01            | 1e-5          |

MLP: fc1 → exact GELU → fc2 (ratio 4); qkv, proj and MLP biases on; attention scale head_dim^-0.5.

Leaf names (`norm1, attn.qkv, attn.q_norm, attn.k_norm, attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2,
ls2.gamma`) equal VGGT's, so its checkpoint maps onto these modules by a pure prefix.
"""

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_gap_mllm import GapMllmGeometryConfig
from .geometry_rope import apply_rotary_2d


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
    """Plain softmax attention, the fallback of the attention interface.

    Args:
        query, key, value: `[B, H, L, D]`.
        attention_mask: additive `[B, 1 or H, L, L]` mask or `None` (the geometry encoder uses none).

    Returns:
        `(output [B, L, H, D], weights [B, H, L, L])`, in the dtype of `query`; the softmax runs in fp32.
    """
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = nn.functional.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class GapMllmGeometryAttention(nn.Module):
    """Multi-head self-attention with optional QK-LayerNorm and 2-D RoPE (bidirectional, no mask).

    Args:
        config: geometry config; `hidden_size`, `num_attention_heads` and `_attn_implementation` are read.
        use_qk_norm: LayerNorm over each head's queries and keys (after the projection, before RoPE).
        layer_norm_eps: eps of the QK LayerNorms.
    """

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
        """
        Args:
            hidden_states: `[B, L, C]`.
            position_embeddings: `(cos, sin)`, each `[L, D]` or `[B, L, D]`; `None` disables RoPE.

        Returns:
            `[B, L, C]`.
        """
        batch, length, channels = hidden_states.shape
        qkv = self.qkv(hidden_states).reshape(batch, length, 3, self.num_heads, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, L, D]
        query, key = self.q_norm(query), self.k_norm(key)
        if position_embeddings is not None:
            cos, sin = position_embeddings
            query = apply_rotary_2d(query, cos, sin)
            key = apply_rotary_2d(key, cos, sin)

        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attn_fn(
            self, query, key, value, None, dropout=0.0, scaling=self.scaling, is_causal=False, **kwargs
        )  # [B, L, H, D]
        return self.proj(output.reshape(batch, length, channels))


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
    """Pre-norm transformer block: `x + ls1(attn(norm1 x))`, then `x + ls2(mlp(norm2 x))`.

    Args:
        config: geometry config (width, heads, MLP ratio, attention implementation).
        use_qk_norm: QK-LayerNorm in the attention.
        layer_norm_eps: eps of `norm1`, `norm2` and the QK norms.
        layer_scale_init: LayerScale init; a falsy value means no LayerScale (identity), as in the reference.
    """

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

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """
        Args:
            hidden_states: `[B, L, C]` (B = batch·frames for frame attention, L = frames·tokens for global).
            position_embeddings: RoPE `(cos, sin)`, each `[L, D]`, or `None`.

        Returns:
            `[B, L, C]`.
        """
        hidden_states = hidden_states + self.ls1(self.attn(self.norm1(hidden_states), position_embeddings))
        hidden_states = hidden_states + self.ls2(self.mlp(self.norm2(hidden_states)))
        return hidden_states


__all__ = [
    "GapMllmGeometryAttention",
    "GapMllmGeometryBlock",
    "GapMllmGeometryLayerScale",
    "GapMllmGeometryMlp",
    "eager_attention_forward",
]
