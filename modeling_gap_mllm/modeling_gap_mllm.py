"""GAP-MLLM: Qwen3-VL + a frozen geometry encoder (VGGT) + multi-level gated fusion (arXiv 2603.16461).

Level 0 fuses `merger_0(g)` into the main visual tokens, level k into DeepStack level k-1; the fused features enter
Qwen3-VL through its `mm_encoder_outputs` hook. Sections: mergers and fusion modules (`GapMllmMultiLevelFusion`), and
the model (`GapMllmForConditionalGeneration`, `GapMllmOutput`). The same code runs however the file is imported; the
gap-mllm package's checks, speed paths and generation call are explicit calls of its own (`gap_mllm.checks`,
`gap_mllm.speedups`, `gap_mllm.generation`).
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, GenerationMixin, Qwen3VLForConditionalGeneration, Qwen3VLModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    BaseModelOutputWithDeepstackFeatures,
    Qwen3VLPreTrainedModel,
    eager_attention_forward,
)
from transformers.utils import can_return_tuple, logging

from .configuration_gap_mllm import (
    GEOMETRY_ENCODERS,
    GEOMETRY_INPUT_NAMES,  # noqa: F401 - re-exported for callers that build model inputs
    PREFILL_ONLY_INPUT_NAMES,
    GapMllmConfig,
    GapMllmFusionConfig,
)
from .modeling_vggt import GapMllmGeometryEncoder  # noqa: F401 - the import registers the "vggt" geometry encoder


# ---- geometry mergers and fusion modules
class GapMllmGeometryMerger(nn.Module):
    """Norm → 2×2 spatial concat → Linear → GELU → Linear, with the official `GeometryFeatureMerger`'s key names.

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
        """`[S, h, w, input_size]` patch tokens of S views → `[S · (h // 2) · (w // 2), output_size]`, views in order,
        each row-major over its merged grid (Qwen's token order)."""
        views, height, width, channels = features.shape
        m = self.merge_size
        features = features[:, : height // m * m, : width // m * m]  # odd grids lose their last row/column
        features = features.reshape(views, height // m, m, width // m, m, channels).permute(0, 1, 3, 2, 4, 5)
        merged = self.ln_q(features).reshape(-1, channels * m * m)
        return self.mlp(merged)


class GatedFusion(nn.Module):
    """Official token- and channel-wise gate: `a = σ(W·[LN₁(v); LN₂(g)] + b)`, `out = a⊙LN₁(v) + (1−a)⊙LN₂(g)`.

    As the official code, no residual to the raw `v` and no zero-init: `a ≡ 1` gives `LN₁(v)`, not `v`."""

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
    """Multi-head cross-attention of visual tokens (queries) to one view's geometry tokens (keys, values), through
    the transformers attention interface (`attn_implementation` applies)."""

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


class GapMllmMultiLevelFusion(nn.Module):
    """`mergers[l]` and `fusions[l]` for every level l (0 = main visual tokens, l ≥ 1 = DeepStack l-1)."""

    def __init__(self, config: GapMllmConfig):
        super().__init__()
        vision = config.vision_config
        fusion = config.geometry_fusion_config
        self.merge_size = vision.spatial_merge_size
        self.mergers = nn.ModuleList(
            [
                GapMllmGeometryMerger(
                    input_size=config.geometry_config.feature_size,
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
        """Fuse each level's merged geometry into its visual tokens.

        Args:
            visual_levels: per level, one `[n_i, D]` tensor per image (level 0 `pooler_output`, level l
                `deepstack_features[l-1]`).
            geometry_levels: per level, one `[S_b, h_b, w_b, C]` tensor per sample, in batch order.
            merged_grids: the merged (h/2, w/2) grid of each image; `n_i = h_i/2 · w_i/2`.
            output_gates: also return, per level, the gate averaged over channels `[N]` (`gated` only).

        Returns:
            `(fused, gates)`: the fused features shaped as `visual_levels`, and the gates (or None).
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
        """`[Σ merged tokens, D]`: the level's merger on every sample, one call when all share a patch grid."""
        if len({features.shape[1:] for features in geometry}) == 1:
            return self.mergers[level](torch.cat(geometry))
        return torch.cat([self.mergers[level](features) for features in geometry])


# ---- the model
logger = logging.get_logger(__name__)


@dataclass
class GapMllmImageFeaturesOutput(BaseModelOutputWithDeepstackFeatures):
    """Output of [`GapMllmModel.get_image_features`]: Qwen3-VL's vision output whose `pooler_output` and
    `deepstack_features` hold the fused features (with geometry inputs), plus `fusion_gates` (`GapMllmOutput`)."""

    fusion_gates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GapMllmModelOutputWithPast(BaseModelOutputWithPast):
    """Output of [`GapMllmModel`]: Qwen3-VL's (`last_hidden_state [B, T, hidden]`, the cache, hidden states and
    attentions when requested), plus `rope_deltas [B, 1]`, the prompt's M-RoPE deltas, and `fusion_gates`
    (`GapMllmOutput`)."""

    rope_deltas: torch.LongTensor | None = None
    fusion_gates: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class GapMllmOutput(CausalLMOutputWithPast):
    """Output of [`GapMllmForConditionalGeneration`]: Qwen3-VL's (`loss` with `labels`, `logits [B, T, vocab]` or the
    last `logits_to_keep` positions, the cache, hidden states and attentions when requested), plus `rope_deltas
    [B, 1]` and `fusion_gates`: with `output_gates=True` and the `gated` method, per level (main, then DeepStack) one
    `[N_visual]` tensor, the gate averaged over channels (1 = pure Qwen feature, 0 = pure geometry)."""

    rope_deltas: torch.LongTensor | None = None
    fusion_gates: tuple[torch.FloatTensor, ...] | None = None


# Weight names of the earlier layout (Qwen3-VL held whole as `vlm`, the geometry parts at the top) → these classes'.
# `from_pretrained` passes them as transformers' `key_mapping`, then forgets them: a model is saved in this layout.
EARLIER_LAYOUT_KEY_MAPPING = {
    r"^vlm\.(.+)": r"\1",
    r"^(geometry_(?:encoder|fusion)\..+)": r"model.\1",
}


class GapMllmPreTrainedModel(Qwen3VLPreTrainedModel):
    config: GapMllmConfig
    base_model_prefix = "model"
    input_modalities = ("image", "text")
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "GapMllmGeometryBlock"]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """`is_activation_checkpointing`, under the name peft reads, without transformers' FutureWarning."""
        return self.is_activation_checkpointing

    @torch.no_grad()
    def _init_weights(self, module):
        """Geometry-encoder modules by its `init_module_weights`, fusion weights at 0.5, the rest as Qwen3-VL."""
        # an encoder's init may match Linear/LayerNorm by type: it gets only its own modules
        encoder = self.geometry_encoder if self.config.use_geometry else None
        if encoder is not None and module in encoder._own_modules:
            encoder.init_module_weights(module)
            return
        if isinstance(module, WeightedFusion):
            init.constant_(module.weight_2d, 0.5)
            init.constant_(module.weight_3d, 0.5)
            return
        super()._init_weights(module)


@contextlib.contextmanager
def weight_init_left_to_the_holder(model_class: type):
    """`model_class` models built meanwhile skip the weight init of their own `post_init` (torch's default init kept):
    the holding model's `post_init` initialises them with its other modules, in module order, so that a seeded build
    draws the weights it drew when the part was a plain module."""
    own_init = model_class.__dict__.get("init_weights")
    model_class.init_weights = lambda model: None
    try:
        yield
    finally:
        if own_init is None:
            del model_class.init_weights
        else:
            model_class.init_weights = own_init


class GapMllmModel(GapMllmPreTrainedModel, Qwen3VLModel):
    """Qwen3-VL's model (`visual`, `language_model`) plus the geometry branch: `geometry_encoder`
    (`GEOMETRY_ENCODERS[config.geometry_encoder_type]`, VGGT's aggregator by default) and `geometry_fusion`
    (`mergers[l]`, `fusions[l]`), when `config.use_geometry`. Only how image features are made differs from
    Qwen3-VL: the geometry of the views is fused into the vision tower's output before it enters the language model.

    Raises:
        ValueError: an unregistered `geometry_encoder_type`.
    """

    def __init__(self, config: GapMllmConfig):
        GapMllmPreTrainedModel.__init__(self, config)
        # plain nn.Module sub-models get no attention implementation from PreTrainedModel (else silently eager)
        for sub_config in (config.geometry_config, config.geometry_fusion_config):
            if sub_config._attn_implementation is None:
                sub_config._attn_implementation = config._attn_implementation
        self.visual = AutoModel.from_config(config.vision_config)
        self.language_model = AutoModel.from_config(config.text_config)
        self.rope_deltas = None  # cache rope_deltas here
        if config.use_geometry:
            encoder_class = GEOMETRY_ENCODERS.get(config.geometry_encoder_type)
            if encoder_class is None:
                raise ValueError(
                    f"geometry_encoder_type={config.geometry_encoder_type!r} has no encoder class: register it with "
                    f"register_geometry_encoder (registered: {sorted(GEOMETRY_ENCODERS)})."
                )
            with weight_init_left_to_the_holder(encoder_class):  # this model's post_init initialises it
                self.geometry_encoder = encoder_class(config.geometry_config)
            self.geometry_encoder._own_modules = set(self.geometry_encoder.modules())
            self.geometry_fusion = GapMllmMultiLevelFusion(config)
        self.post_init()

    @property
    def uses_geometry(self) -> bool:
        return self.config.use_geometry

    # ---- geometry branch
    def _views_per_sample(self, input_ids, image_grid_thw, geometry_views_per_sample) -> list[int]:
        if geometry_views_per_sample is not None:
            counts = [int(c) for c in geometry_views_per_sample.tolist()]
        elif input_ids is not None:
            # one image = <|vision_start|> followed by <|image_pad|>
            starts = (input_ids[:, :-1] == self.config.vision_start_token_id) & (
                input_ids[:, 1:] == self.config.image_token_id
            )
            counts = starts.sum(dim=1).tolist()
        else:
            raise ValueError("geometry_views_per_sample is required when input_ids are not given.")
        if sum(counts) != image_grid_thw.shape[0]:
            raise ValueError(
                f"geometry_views_per_sample={counts} adds up to {sum(counts)} views, but image_grid_thw has "
                f"{image_grid_thw.shape[0]} images."
            )
        return counts

    def get_geometry_features(
        self,
        geometry_pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        grids: list | None = None,
    ) -> list[list[torch.Tensor]]:
        """Run the geometry encoder once per group of same-shaped samples.

        Args:
            geometry_pixel_values: `[N_views, 3, H_max, W_max]` in [0, 1] (`GapMllmProcessor`); view i's valid
                region is the top-left `p·h_i × p·w_i` (p = `geometry_config.patch_size`).
            image_grid_thw: `[N_views, 3]` rows `(1, h_i, w_i)`.
            views_per_sample: views of each sample, in batch order.
            grids: `image_grid_thw` as host integers, when the caller has them (no device read).

        Returns:
            per fusion level (0 = main, then DeepStack), one `[S_b, h_b, w_b, feature_size]` tensor per sample.
        """
        patch = self.config.geometry_config.patch_size
        grids = image_grid_thw.tolist() if grids is None else [list(g) for g in grids]
        if any(t != 1 for t, _, _ in grids):
            raise ValueError("geometry fusion needs single-frame image grids (t = 1); videos bypass geometry.")
        needed_h = max(h for _, h, _ in grids) * patch
        needed_w = max(w for _, _, w in grids) * patch
        if geometry_pixel_values.shape[0] != len(grids) or tuple(geometry_pixel_values.shape[-2:]) != (needed_h, needed_w):
            raise ValueError(
                f"geometry_pixel_values has shape {tuple(geometry_pixel_values.shape)}, expected "
                f"[{len(grids)}, 3, {needed_h}, {needed_w}]: {patch} px per Qwen patch of image_grid_thw. "
                "Prepare the inputs with GapMllmProcessor."
            )
        samples, start = [], 0
        for index, count in enumerate(views_per_sample):
            sample_grids = {tuple(g[1:]) for g in grids[start : start + count]}
            if len(sample_grids) != 1:
                raise ValueError(f"sample {index}: all views must share one image size, got grids {sorted(sample_grids)}.")
            (h, w), = sample_grids
            samples.append((start, count, h, w))
            start += count
        level_layers = self.config.level_geometry_layers
        tapped = list(self.config.geometry_config.tapped_layers)
        features: list[list[torch.Tensor | None]] = [[None] * len(samples) for _ in level_layers]
        by_shape: dict[tuple[int, int, int], list[int]] = {}
        for index, (_, count, h, w) in enumerate(samples):
            by_shape.setdefault((count, h, w), []).append(index)
        encoder = self.geometry_encoder
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        dtype = next(encoder.parameters()).dtype
        with torch.set_grad_enabled(needs_grad):
            for (count, h, w), members in by_shape.items():
                images = torch.stack(
                    [geometry_pixel_values[samples[i][0] : samples[i][0] + count, :, : h * patch, : w * patch] for i in members]
                )
                output = encoder(images.to(dtype))
                for level, layer in enumerate(level_layers):
                    layer_features = output.layer_features[tapped.index(layer)]  # [B_g, S, h·w, 2C]
                    for slot, i in enumerate(members):
                        features[level][i] = layer_features[slot].reshape(count, h, w, -1)
        return features

    def fuse_geometry(self, image_outputs, geometry_features, image_grid_thw, output_gates: bool = False,
                      grids: list | None = None):
        """Replace `image_outputs.pooler_output` and `.deepstack_features` by the fused features, in place; returns
        the gates (see `GapMllmOutput.fusion_gates`). `grids`: `image_grid_thw` as host integers, if known."""
        merge = self.config.vision_config.spatial_merge_size
        grids = image_grid_thw.tolist() if grids is None else grids
        merged_grids = [(h // merge, w // merge) for _, h, w in grids]
        visual_levels = [image_outputs.pooler_output, *image_outputs.deepstack_features]
        if len(visual_levels) != len(geometry_features):
            raise ValueError(
                f"the vision tower returned {len(visual_levels)} feature levels but {len(geometry_features)} "
                "geometry levels were computed; check vision_config.deepstack_visual_indexes and tapped_layers."
            )
        for index, (visual, (h, w)) in enumerate(zip(image_outputs.pooler_output, merged_grids)):
            if visual.shape[0] != h * w:
                raise ValueError(f"image {index}: {visual.shape[0]} Qwen tokens but a {h}×{w} merged geometry grid.")
        fused, gates = self.geometry_fusion(visual_levels, geometry_features, merged_grids, output_gates=output_gates)
        image_outputs.pooler_output = fused[0]
        image_outputs.deepstack_features = fused[1:]
        return gates

    def get_fused_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        image_outputs=None,
        grids: list | None = None,
    ):
        """The image path: ViT features, geometry features and their fusion.

        Precomputed `image_outputs` (as `get_image_features` returns them) replace `pixel_values`, precomputed
        `geometry_features` replace `geometry_pixel_values` (one of the two is required: ValueError); `grids`:
        `image_grid_thw` as host integers `[(t, h, w), ...]`, if known.

        Returns:
            `(image_outputs, geometry_features, gates)`: Qwen's vision output with fused `pooler_output` and
            `deepstack_features` (for `mm_encoder_outputs={"image": ...}`), the geometry features used (per level,
            one `[S_b, h_b, w_b, 2C]` tensor per sample) and the gates (or None).
        """
        if image_outputs is None:
            image_outputs = self.get_vision_features(pixel_values, image_grid_thw)
        if geometry_features is None:
            if geometry_pixel_values is None:
                raise ValueError("pass geometry_pixel_values (GapMllmProcessor) or precomputed geometry_features.")
            geometry_features = self.get_geometry_features(geometry_pixel_values, image_grid_thw, views_per_sample, grids)
        else:
            dtype = next(self.geometry_fusion.parameters()).dtype
            geometry_features = [[features.to(dtype) for features in level] for level in geometry_features]
        gates = self.fuse_geometry(image_outputs, geometry_features, image_grid_thw, output_gates=output_gates,
                                   grids=grids)
        return image_outputs, geometry_features, gates

    def get_vision_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None,
                            **kwargs) -> BaseModelOutputWithDeepstackFeatures:
        """Qwen3-VL's own image features (its vision tower and mergers, `Qwen3VLModel.get_image_features`), before
        any fusion: `pooler_output` one `[h_i·w_i/4, D]` tensor per image, `deepstack_features` one such tuple per
        DeepStack level."""
        return super().get_image_features(pixel_values, image_grid_thw, **{**kwargs, "return_dict": True})

    @can_return_tuple
    def get_video_features(self, pixel_values_videos, video_grid_thw=None, **kwargs):
        """Qwen3-VL's video features: videos bypass geometry."""
        return self.get_vision_features(pixel_values_videos, video_grid_thw, **kwargs)

    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor | None = None,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_views_per_sample: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        **kwargs,
    ) -> GapMllmImageFeaturesOutput:
        """Qwen3-VL's image features (`pixel_values`, `image_grid_thw` as `Qwen3VLModel`'s) with the geometry of the
        views fused in: what `forward` and transformers' `generate` (which encodes the images once before the
        prefill) put in the image tokens. `geometry_pixel_values [N_views, 3, H_max, W_max]` in [0, 1] (or
        precomputed `geometry_features`) with `geometry_views_per_sample [B]`; Qwen3-VL's own features without them
        (with a warning: the model then answers without geometry) or with `use_geometry=False`. `pooler_output`:
        one `[h_i·w_i/4, D]` tensor per image, `deepstack_features`: one such tuple per DeepStack level."""
        image_outputs = self.get_vision_features(pixel_values, image_grid_thw, **kwargs)
        if not self.uses_geometry or (geometry_pixel_values is None and geometry_features is None):
            if self.uses_geometry:
                logger.warning_once(
                    "GAP-MLLM got pixel_values without geometry_pixel_values: running the plain Qwen3-VL "
                    "image path, without geometry fusion. Use GapMllmProcessor to prepare both."
                )
            return image_outputs
        if geometry_views_per_sample is None:
            raise ValueError("geometry_views_per_sample is required with geometry inputs (GapMllmProcessor gives it).")
        views = self._views_per_sample(None, image_grid_thw, geometry_views_per_sample)
        image_outputs, _, gates = self.get_fused_image_features(
            pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features, output_gates,
            image_outputs=image_outputs,
        )
        return GapMllmImageFeaturesOutput(**image_outputs, fusion_gates=gates)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict | None = None,
        geometry_pixel_values: torch.Tensor | None = None, geometry_views_per_sample: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None, output_gates: bool = False,
        **kwargs,
    ) -> GapMllmModelOutputWithPast:
        """Qwen3-VL's model forward with geometry fused into the image features (`get_image_features`; the views per
        sample are counted in `input_ids` when `geometry_views_per_sample` is absent); `output_gates` returns the
        fusion gates. ValueError for `geometry_pixel_values` without `pixel_values`."""
        if geometry_pixel_values is not None and pixel_values is None and past_key_values is None:
            raise ValueError("geometry_pixel_values were given without pixel_values: pass both (GapMllmProcessor).")
        if pixel_values is not None and mm_encoder_outputs is None:
            if self.uses_geometry and geometry_views_per_sample is None and (
                geometry_pixel_values is not None or geometry_features is not None
            ):
                views = self._views_per_sample(input_ids, image_grid_thw, None)
                geometry_views_per_sample = torch.tensor(views, device=image_grid_thw.device)
            image_outputs = self.get_image_features(
                pixel_values, image_grid_thw, geometry_pixel_values, geometry_views_per_sample, geometry_features,
                output_gates, return_dict=True,
            )
            mm_encoder_outputs, pixel_values = {"image": image_outputs}, None
        image_outputs = (mm_encoder_outputs or {}).get("image")
        gates = getattr(image_outputs, "fusion_gates", None)
        outputs = super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
            return_dict=True,
            **kwargs,
        )
        return GapMllmModelOutputWithPast(
            last_hidden_state=outputs.last_hidden_state,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=self.rope_deltas,
            fusion_gates=gates,
        )


# GenerationMixin among the bases: else each Auto class wraps remote code in a class of its own (transformers' rule)
class GapMllmForConditionalGeneration(GapMllmPreTrainedModel, Qwen3VLForConditionalGeneration, GenerationMixin):
    """GAP-MLLM for image(s) + text → text generation: `model` (`GapMllmModel`) and `lm_head`, as Qwen3-VL's
    class, so that its weights are Qwen3-VL's (`model.visual.*`, `model.language_model.*`, `lm_head.weight`) plus
    `model.geometry_encoder.*` and `model.geometry_fusion.*`. Frozen by default: `model.visual` and
    `model.geometry_encoder`. A `quantization_config` converts the language model only (`_keep_in_fp32_modules`).

    `from_pretrained` loads a folder of this model, of the earlier layout (`vlm.*`, `EARLIER_LAYOUT_KEY_MAPPING`), or
    of a stock Qwen3-VL checkpoint, whose every weight loads while the geometry weights are reported as newly
    initialised (pass the geometry settings as keyword arguments, e.g. `geometry_config={...}`).

    Raises:
        ValueError: an unregistered `geometry_encoder_type`.
    """

    _keep_in_fp32_modules = ["model.visual", "model.geometry_encoder", "model.geometry_fusion"]  # quantizers skip them

    def __init__(self, config: GapMllmConfig):
        GapMllmPreTrainedModel.__init__(self, config)
        self.model = GapMllmModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()
        self.apply_freezing_policy()
        # register_for_auto_class keeps one auto class per class; AutoModel must resolve as well.
        config.auto_map = {**(getattr(config, "auto_map", None) or {}),
                           "AutoConfig": "configuration_gap_mllm.GapMllmConfig",
                           **dict.fromkeys(("AutoModel", "AutoModelForImageTextToText"),
                                           "modeling_gap_mllm.GapMllmForConditionalGeneration")}

    # ---- parts and freezing
    def qwen3_vl_state_dict(self) -> dict:
        """The state dict of the Qwen3-VL part (every tensor but `model.geometry_*`), under Qwen3-VL's names: what a
        stock `Qwen3VLForConditionalGeneration(config.to_qwen3_vl_config())` loads strictly."""
        return {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("model.geometry_")}

    @property
    def geometry_encoder(self):
        return self.model.geometry_encoder

    @property
    def geometry_fusion(self):
        return self.model.geometry_fusion

    @property
    def uses_geometry(self) -> bool:
        return self.config.use_geometry

    def apply_freezing_policy(self, freeze_vision_tower: bool = True, freeze_geometry_encoder: bool = True):
        """Freeze the Qwen ViT (with its mergers) and the geometry encoder, as the official recipe; the rest trains."""
        self.model.visual.requires_grad_(not freeze_vision_tower)
        if self.config.use_geometry:
            self.model.geometry_encoder.set_trainable(not freeze_geometry_encoder)

    def get_geometry_features(self, geometry_pixel_values, image_grid_thw, views_per_sample, grids=None):
        """`GapMllmModel.get_geometry_features`."""
        return self.model.get_geometry_features(geometry_pixel_values, image_grid_thw, views_per_sample, grids)

    def get_fused_image_features(self, pixel_values, image_grid_thw, views_per_sample, geometry_pixel_values=None,
                                 geometry_features=None, output_gates: bool = False, image_outputs=None, grids=None):
        """`GapMllmModel.get_fused_image_features`."""
        return self.model.get_fused_image_features(pixel_values, image_grid_thw, views_per_sample, geometry_pixel_values,
                                                   geometry_features, output_gates, image_outputs, grids)

    # ---- forward
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict | None = None,
        geometry_pixel_values: torch.Tensor | None = None, geometry_views_per_sample: torch.LongTensor | None = None,
        geometry_features: list | None = None, output_gates: bool = False,  # transformers' generate reads the names
        **kwargs,
    ) -> GapMllmOutput:
        """Qwen3-VL's forward with geometry fused into the image features (`GapMllmModel.forward`, which documents
        the geometry inputs), then the LM head and, with `labels` (`[B, T]`, -100 ignored), the LM loss.

        Raises:
            ValueError: `geometry_pixel_values` without `pixel_values`.
        """
        outputs = self.model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            past_key_values=past_key_values, inputs_embeds=inputs_embeds, pixel_values=pixel_values,
            image_grid_thw=image_grid_thw, mm_token_type_ids=mm_token_type_ids, mm_encoder_outputs=mm_encoder_outputs,
            geometry_pixel_values=geometry_pixel_values, geometry_views_per_sample=geometry_views_per_sample,
            geometry_features=geometry_features, output_gates=output_gates, return_dict=True, **kwargs,
        )
        slice_indices = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        logits = self.lm_head(outputs.last_hidden_state[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size,
                                      **kwargs)
        return GapMllmOutput(loss=loss, logits=logits, past_key_values=outputs.past_key_values,
                             hidden_states=outputs.hidden_states, attentions=outputs.attentions,
                             rope_deltas=outputs.rope_deltas, fusion_gates=outputs.fusion_gates)

    # ---- generation
    def prepare_inputs_for_generation(self, *args, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # images and their M-RoPE inputs are for the prefill only: a decode step has the same inputs in every call
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in PREFILL_ONLY_INPUT_NAMES:
                inputs.pop(name, None)
            # a compiled step with a symbolic batch guards on a view's base: copy a mask that is a view (B × L)
            mask = inputs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask._base is not None:
                inputs["attention_mask"] = mask.clone()
        return inputs

    # ---- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained` of this layout, the earlier one (`EARLIER_LAYOUT_KEY_MAPPING`) or a stock
        Qwen3-VL checkpoint, then the default freezing (the gap-mllm package's `gap_mllm.checks.load_checked` adds its
        checkpoint checks around it)."""
        moved = sorted({"require_geometry_weights", "allow_non_finite_weights", "warn_missing_weights"} & set(kwargs))
        if moved:  # else transformers would store them in the config, unread
            raise TypeError(f"from_pretrained got {', '.join(moved)}: options of the gap-mllm package's checked load, "
                            "gap_mllm.loading.load_model(...)")
        kwargs["key_mapping"] = {**EARLIER_LAYOUT_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model._weight_conversions = [conversion for conversion in getattr(model, "_weight_conversions", None) or ()
                                     if not set(conversion.source_patterns) & set(EARLIER_LAYOUT_KEY_MAPPING)]
        model.apply_freezing_policy()  # loading materialises fresh parameters (all trainable): the default frozen parts
        if "Qwen3VLForConditionalGeneration" in (model.config.architectures or []):  # a stock Qwen3-VL checkpoint:
            model.config.text_config._name_or_path = str(pretrained_model_name_or_path)  # saved as the weights' source
        return loaded

    @classmethod
    def from_qwen3_vl(cls, qwen3_vl_name_or_path, geometry_config: dict | None = None,
                      geometry_fusion_config: dict | None = None, vggt_weights=None, **from_pretrained_kwargs):
        """`from_pretrained` of a stock Qwen3-VL checkpoint with these geometry settings, then the VGGT weights of
        `vggt_weights` (a state dict, file, folder or Hub id such as `facebook/VGGT-1B`), loaded strictly: the gap-mllm
        package's `convert_vggt_to_hf.build_from_qwen3_vl` (ImportError without the package)."""
        try:  # the converter is installed with the package, never copied into a model folder
            from gap_mllm.convert_vggt_to_hf import build_from_qwen3_vl
        except ImportError as error:
            raise ImportError("from_qwen3_vl builds a model with the gap-mllm package: pip install gap-mllm") from error
        return build_from_qwen3_vl(cls, qwen3_vl_name_or_path, geometry_config, geometry_fusion_config, vggt_weights,
                                   **from_pretrained_kwargs)


# save_pretrained then writes the auto_map entry and copies this code, however the module was imported
GapMllmForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")


__all__ = [
    "GapMllmForConditionalGeneration",
    "GapMllmModel",
    "GapMllmOutput",
    "GapMllmPreTrainedModel",
]
