"""Fusion of Qwen3-VL visual tokens with merged geometry tokens: the official gated blend and the
ablation arms (docs/method.md §1.4, §1.5).

Every variant has one interface, `forward(visual, geometry, grids) -> (fused, gate | None)`, so the
model never special-cases a method (the official code crashes on every variant but `gated` because
only `gated` returned a tuple).
"""

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3_vl.modeling_qwen3_vl import eager_attention_forward

from .configuration_gap_mllm import GapMllmFusionConfig


class GatedFusion(nn.Module):
    """Official token- and channel-wise gate: `a = σ(W·[LN₁(v); LN₂(g)] + b)`, `out = a⊙LN₁(v) + (1−a)⊙LN₂(g)`.

    No residual to the raw `v` and no zero-init (faithful to the official code): the output is a convex
    mix of normalised features, so `a ≡ 1` gives `LN₁(v)`, not `v`.
    """

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        # Sequential(Linear, Sigmoid): keeps the official key name `gate_projection.0`.
        self.gate_projection = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.Sigmoid())

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, grids=None):
        """visual, geometry: `[N, D]` → fused `[N, D]`, gate `[N, D]` in (0, 1)."""
        visual, geometry = self.norm1(visual), self.norm2(geometry)
        gate = self.gate_projection(torch.cat([visual, geometry], dim=-1))
        return gate * visual + (1 - gate) * geometry, gate


class AddFusion(nn.Module):
    """`out = v + g` (VG-LLM's choice); no parameters, so geometry = 0 leaves `v` unchanged."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()

    def forward(self, visual, geometry, grids=None):
        return visual + geometry, None


class ConcatFusion(nn.Module):
    """`out = Linear_{2D→D}([LN₁(v); LN₂(g)])`."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.projection = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, visual, geometry, grids=None):
        return self.projection(torch.cat([self.norm1(visual), self.norm2(geometry)], dim=-1)), None


class WeightedFusion(nn.Module):
    """`out = w₁/(w₁+w₂)·v + w₂/(w₁+w₂)·g` with two learnable scalars, both 0.5 at init."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.weight_2d = nn.Parameter(torch.tensor(0.5))
        self.weight_3d = nn.Parameter(torch.tensor(0.5))

    def forward(self, visual, geometry, grids=None):
        total = self.weight_2d + self.weight_3d
        return (self.weight_2d / total) * visual + (self.weight_3d / total) * geometry, None


def sincos_position_embedding_2d(height: int, width: int, dim: int, device, dtype) -> torch.Tensor:
    """MAE-style 2-D sine-cosine embedding `[height * width, dim]`, row-major: the first half of the
    channels encodes the row, the second half the column (temperature 10000)."""
    if dim % 4 != 0:
        raise ValueError(f"cross-attention fusion needs a hidden size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                                torch.arange(width, dtype=torch.float32, device=device), indexing="ij")

    def encode(positions):
        angles = positions.flatten()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).to(dtype)


class GapMllmFusionCrossAttention(nn.Module):
    """Multi-head cross-attention, visual tokens (queries) to geometry tokens (keys/values) of one view.

    Runs through the transformers attention interface, so `attn_implementation` (eager, sdpa,
    flash_attention_2) applies here as everywhere else.
    """

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.num_heads = config.cross_attention_num_heads
        if hidden_size % self.num_heads != 0:
            raise ValueError(
                f"cross-attention fusion: hidden size {hidden_size} is not divisible by "
                f"geometry_fusion_config.cross_attention_num_heads={self.num_heads}"
            )
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.attention_dropout = config.cross_attention_dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries, keys, values: `[B, L, D]` → `[B, L, D]`."""
        batch, length, _ = queries.shape

        def heads(x):
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)

        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attn_fn(
            self, heads(self.q_proj(queries)), heads(self.k_proj(keys)), heads(self.v_proj(values)), None,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, is_causal=False,
        )
        return self.o_proj(out.reshape(batch, length, -1))


class CrossAttentionFusionBlock(nn.Module):
    """LN on q, k, v; 2-D sin-cos positions added to q and k; cross-attention; residual;
    LN → MLP (GELU, dropout) → residual (the official `CrossAttentionBlock`)."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1_query = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm1_key = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm1_value = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.cross_attention = GapMllmFusionCrossAttention(config, hidden_size)
        inner = hidden_size * config.cross_attention_mlp_ratio
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, inner), nn.GELU(), nn.Dropout(config.cross_attention_dropout),
            nn.Linear(inner, hidden_size), nn.Dropout(config.cross_attention_dropout),
        )

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """visual, geometry: `[B, height * width, D]` (B views of one merged grid) → `[B, height * width, D]`."""
        position = sincos_position_embedding_2d(height, width, visual.shape[-1], visual.device, visual.dtype)
        attended = self.cross_attention(
            self.norm1_query(visual) + position, self.norm1_key(geometry) + position, self.norm1_value(geometry)
        )
        hidden = visual + attended
        return hidden + self.mlp(self.norm2(hidden))


class CrossAttentionFusion(nn.Module):
    """Stack of `cross_attention_num_layers` blocks; each view attends only to its own geometry tokens."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.cross_attn_blocks = nn.ModuleList(
            [CrossAttentionFusionBlock(config, hidden_size) for _ in range(config.cross_attention_num_layers)]
        )

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, grids):
        """visual, geometry: `[N, D]`, the tokens of all views in order; grids: one merged (h, w) per view."""
        sizes = [h * w for h, w in grids]
        fused = list(torch.split(visual, sizes))
        geometry_views = torch.split(geometry, sizes)
        # Views with the same grid run as one batch.
        by_grid: dict[tuple[int, int], list[int]] = {}
        for index, grid in enumerate(grids):
            by_grid.setdefault(tuple(grid), []).append(index)
        for (height, width), indices in by_grid.items():
            hidden = torch.stack([fused[i] for i in indices])
            context = torch.stack([geometry_views[i] for i in indices])
            for block in self.cross_attn_blocks:
                hidden = block(hidden, context, height, width)
            for slot, i in enumerate(indices):
                fused[i] = hidden[slot]
        return torch.cat(fused), None


FUSION_CLASSES = {
    "gated": GatedFusion,
    "add": AddFusion,
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "cross_attention": CrossAttentionFusion,
}


def build_fusion(config: GapMllmFusionConfig, hidden_size: int) -> nn.Module:
    """The fusion module of `config.method` for tokens of width `hidden_size`."""
    return FUSION_CLASSES[config.method](config, hidden_size)
