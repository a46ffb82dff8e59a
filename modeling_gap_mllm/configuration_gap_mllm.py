"""GAP-MLLM configuration.

The model's input names; the geometry-encoder interface (`GeometryEncoderOutput`,
`register_geometry_encoder`, `build_geometry_config`); the configs `GapMllmGeometryConfig` (VGGT),
`GapMllmFusionConfig` and `GapMllmConfig`, which check their sizes and settings as they are built, in every copy of
this file (`check_config`: a remote-code user builds them too). The installed package prices their parameters
(`gap_mllm.checks`).
"""

import contextlib
import math
import numbers
from dataclasses import dataclass

from transformers import PreTrainedConfig, Qwen3VLConfig
from transformers.utils import ModelOutput, logging

# ---- input names, option values
# Processor outputs besides the Qwen3-VL inputs: the VGGT input of every view `[V, 3, H, W]`, views per sample `[B]`.
PROCESSOR_GEOMETRY_INPUT_NAMES = ("geometry_pixel_values", "geometry_views_per_sample")
# Every geometry input of the model's forward, precomputed encoder output included.
GEOMETRY_INPUT_NAMES = (*PROCESSOR_GEOMETRY_INPUT_NAMES, "geometry_features")
# Inputs `generate` drops after prefill besides pixel values: decode positions come from the rope deltas, so decode
# inputs stay identical across scene calls and view counts (compiled decoding does not recompile).
PREFILL_ONLY_INPUT_NAMES = (*GEOMETRY_INPUT_NAMES, "mm_token_type_ids", "image_grid_thw", "video_grid_thw")
# `labels` value the loss skips: system and user turns, the assistant header, padding.
IGNORE_INDEX = -100


FUSION_METHODS = ("gated", "add", "concat", "weighted", "cross_attention")
MERGER_NORMS = ("rms", "layer")
REFERENCE_FRAMES = ("first", "last")
# "auto": bf16 autocast when the encoder's input is on a CUDA device (the official code), none elsewhere.
GEOMETRY_AUTOCAST_DTYPES = ("auto", "bfloat16", "float16", None)


# ---- geometry-encoder interface
@dataclass
class GeometryEncoderOutput(ModelOutput):
    """Output of a geometry encoder's `forward` (the interface: docs/layout.md, "A new geometry encoder").

    Args:
        layer_features (`tuple[torch.Tensor]`): one `[B, S, h·w, feature_size]` tensor per tapped layer, in
            `config.tapped_layers` order: patch tokens only, row-major over the patch grid, frames in input order.
        patch_grid (`tuple[int, int]`): the patch grid `(h, w) = (H / patch_size, W / patch_size)`.
    """

    layer_features: tuple | None = None
    patch_grid: tuple[int, int] | None = None


# geometry_encoder_type -> the geometry config class / the encoder class (register_geometry_encoder)
GEOMETRY_ENCODER_CONFIGS: dict[str, type[PreTrainedConfig]] = {}
GEOMETRY_ENCODERS: dict[str, type] = {}


def register_geometry_encoder(name: str, config_class: type[PreTrainedConfig], encoder_class: type) -> None:
    """Make `name` a `GapMllmConfig.geometry_encoder_type` (a name registered again takes the new classes).

    `geometry_config` becomes a `config_class`, the encoder `encoder_class(geometry_config)` (what the model reads of
    each: docs/layout.md, "A new geometry encoder"). Raises ValueError for an empty name, TypeError when `config_class` is not a
    `PreTrainedConfig` subclass or `encoder_class` not a class."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a geometry encoder name must be a non-empty string, got {name!r}.")
    if not (isinstance(config_class, type) and issubclass(config_class, PreTrainedConfig)):
        raise TypeError(f"config_class of geometry encoder {name!r} must be a PreTrainedConfig subclass, got {config_class!r}.")
    if not isinstance(encoder_class, type):
        raise TypeError(f"encoder_class of geometry encoder {name!r} must be a class, got {encoder_class!r}.")
    GEOMETRY_ENCODER_CONFIGS[name] = config_class
    GEOMETRY_ENCODERS[name] = encoder_class


def build_geometry_config(encoder_type: str, geometry_config=None) -> PreTrainedConfig:
    """`geometry_config` (None for the defaults, a config.json dict, or a config) as `encoder_type`'s config class.
    Raises ValueError for an unregistered `encoder_type` or a config (dict `model_type`) of another class, TypeError
    for another `geometry_config` type."""
    if not isinstance(encoder_type, str) or encoder_type not in GEOMETRY_ENCODER_CONFIGS:
        raise ValueError(f"geometry_encoder_type={encoder_type!r} is not registered: choose one of "
                         f"{sorted(GEOMETRY_ENCODER_CONFIGS)} (or register it with register_geometry_encoder).")
    config_class = GEOMETRY_ENCODER_CONFIGS[encoder_type]
    if geometry_config is None:
        return config_class()
    if isinstance(geometry_config, dict):
        model_type = geometry_config.get("model_type", config_class.model_type)
    elif isinstance(geometry_config, PreTrainedConfig):
        model_type = geometry_config.model_type
    else:
        raise TypeError(f"geometry_config must be a dict, a PreTrainedConfig or None, got {type(geometry_config).__name__}.")
    if model_type != config_class.model_type:
        raise ValueError(f"geometry_config has model_type {model_type!r}, but geometry_encoder_type={encoder_type!r} "
                         f"takes a {config_class.__name__} (model_type {config_class.model_type!r}).")
    return config_class(**geometry_config) if isinstance(geometry_config, dict) else geometry_config


# ---- checks of the configs: a bad size or setting is a ValueError naming the field and its value
TEXT_SIZES = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "max_position_embeddings")  # fmt: skip
VISION_SIZES = ("depth", "hidden_size", "intermediate_size", "num_heads", "in_channels", "patch_size",
                "spatial_merge_size", "temporal_patch_size", "out_hidden_size", "num_position_embeddings")  # fmt: skip


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_sizes(config, names, prefix: str, minimum: int = 1) -> None:
    """ValueError naming `prefix.name` for each size in `names` that is not an integer ≥ `minimum`."""
    for name in names:
        value = getattr(config, name, None)
        if not _is_int(value) or value < minimum:
            raise ValueError(f"{prefix}.{name} must be an integer >= {minimum}, got {value!r}.")


def check_qwen3_vl_sizes(config) -> None:
    """The Qwen3-VL text and vision sizes of a `GapMllmConfig` (`text_config.*`, `vision_config.*`)."""
    text, vision = config.text_config, config.vision_config
    check_sizes(text, TEXT_SIZES, "text_config")
    if getattr(text, "head_dim", None) is not None:
        check_sizes(text, ("head_dim",), "text_config")
    if text.num_attention_heads % text.num_key_value_heads:
        raise ValueError(f"text_config.num_attention_heads ({text.num_attention_heads}) must be a multiple of "
                         f"num_key_value_heads ({text.num_key_value_heads}).")
    check_sizes(vision, VISION_SIZES, "vision_config")
    if vision.hidden_size % vision.num_heads:
        raise ValueError(
            f"vision_config.hidden_size ({vision.hidden_size}) must be divisible by num_heads ({vision.num_heads}).")
    levels = list(getattr(vision, "deepstack_visual_indexes", None) or [])
    if any(not _is_int(level) or not 0 <= level < vision.depth for level in levels):
        raise ValueError(f"vision_config.deepstack_visual_indexes={levels} must name blocks 0..{vision.depth - 1} "
                         f"(depth={vision.depth}).")


def check_geometry_config(config) -> None:
    """The sizes and settings of a `GapMllmGeometryConfig`, those of its switched-on heads included."""
    # read as-is by the encoder: another value would build a different model without a word
    if config.reference_frame not in REFERENCE_FRAMES:
        raise ValueError(
            f"geometry_config.reference_frame={config.reference_frame!r} is not one of {REFERENCE_FRAMES}.")
    if len(config.image_mean) != 3 or len(config.image_std) != 3:
        raise ValueError("geometry_config.image_mean and image_std must have 3 values (RGB).")
    check_sizes(config, ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "patch_embed_num_hidden_layers"), "geometry_config")
    check_sizes(config, ("num_register_tokens", "patch_embed_num_register_tokens"), "geometry_config", minimum=0)
    if (isinstance(config.mlp_ratio, bool) or not isinstance(config.mlp_ratio, (int, float))
            or not 0 < config.mlp_ratio < math.inf):
        raise ValueError(f"geometry_config.mlp_ratio must be a positive finite number, got {config.mlp_ratio!r}.")
    if config.hidden_size % config.num_attention_heads != 0:
        raise ValueError(f"geometry_config.hidden_size ({config.hidden_size}) must be divisible by "
                         f"geometry_config.num_attention_heads ({config.num_attention_heads}).")
    if config.head_dim % 4 != 0:
        raise ValueError(f"geometry_config head dim ({config.head_dim}) must be divisible by 4: the 2-D RoPE rotates "
                         "pairs of channels in each of its two (row, column) halves.")
    if config.image_size % config.patch_size != 0:
        raise ValueError(f"geometry_config.image_size ({config.image_size}) must be a multiple of patch_size "
                         f"({config.patch_size}).")
    if not config.tapped_layers:
        raise ValueError("geometry_config.tapped_layers must name at least one layer.")
    for layer in config.tapped_layers:
        if not 0 <= layer < config.num_hidden_layers:
            raise ValueError(f"geometry_config.tapped_layers contains {layer}, beyond the encoder depth: valid layers "
                             f"are 0..{config.num_hidden_layers - 1} (num_hidden_layers={config.num_hidden_layers}).")
    if len(set(config.tapped_layers)) != len(config.tapped_layers):
        raise ValueError(f"geometry_config.tapped_layers has duplicates: {config.tapped_layers}.")
    if config.autocast_dtype not in GEOMETRY_AUTOCAST_DTYPES:
        raise ValueError(
            f"geometry_config.autocast_dtype={config.autocast_dtype!r} is not one of {GEOMETRY_AUTOCAST_DTYPES}.")
    if config.frames_chunk_size is not None:
        check_sizes(config, ("frames_chunk_size",), "geometry_config")
    if config.use_camera_head:
        check_sizes(config, ("camera_head_trunk_depth", "camera_head_num_attention_heads",
                             "camera_head_num_iterations"), "geometry_config")
        width, heads = 2 * config.hidden_size, config.camera_head_num_attention_heads
        if width % heads:
            raise ValueError(f"geometry_config.camera_head_num_attention_heads ({heads}) must divide the camera head "
                             f"width 2·hidden_size = {width}.")
    if config.use_depth_head or config.use_point_head:
        check_sizes(config, ("dpt_features", "dpt_frames_chunk_size"), "geometry_config")
        if len(config.dpt_layers) != 4 or len(config.dpt_out_channels) != 4:
            raise ValueError(f"geometry_config.dpt_layers ({config.dpt_layers}) and dpt_out_channels "
                             f"({config.dpt_out_channels}) must each have 4 entries: the DPT head fuses four "
                             "aggregator layers.")
        for layer in config.dpt_layers:
            if not 0 <= layer < config.num_hidden_layers:
                raise ValueError(f"geometry_config.dpt_layers contains {layer}: valid layers are "
                                 f"0..{config.num_hidden_layers - 1}.")
        if min(config.dpt_out_channels) < 1 or config.dpt_features % 2:
            raise ValueError("geometry_config.dpt_out_channels must be positive and dpt_features a positive even "
                             f"number, got {config.dpt_out_channels} and {config.dpt_features}.")


def check_fusion_config(config) -> None:
    """The method, merger norm, sizes and dropout of a `GapMllmFusionConfig`."""
    if config.method not in FUSION_METHODS:
        raise ValueError(
            f"geometry_fusion_config.method={config.method!r} does not exist: choose one of {FUSION_METHODS}.")
    if config.merger_norm not in MERGER_NORMS:  # any other value would build a LayerNorm merger without a word
        raise ValueError(
            f"geometry_fusion_config.merger_norm={config.merger_norm!r} does not exist: choose one of {MERGER_NORMS}.")
    check_sizes(config, ("merger_hidden_size", "cross_attention_num_heads", "cross_attention_num_layers",
                         "cross_attention_mlp_ratio"), "geometry_fusion_config")
    if isinstance(config.cross_attention_dropout, bool) or not 0 <= config.cross_attention_dropout < 1:
        raise ValueError("geometry_fusion_config.cross_attention_dropout must be in [0, 1), got "
                         f"{config.cross_attention_dropout!r}.")


def check_config(config) -> None:
    """The Qwen3-VL sizes of a `GapMllmConfig` and, with geometry, one tapped layer per fusion level (its sub-configs
    check themselves)."""
    check_qwen3_vl_sizes(config)
    if config.use_geometry:
        expected = 1 + len(config.vision_config.deepstack_visual_indexes)
        tapped = config.geometry_config.tapped_layers
        if len(tapped) != expected:
            raise ValueError(f"geometry_config.tapped_layers={tapped} must name {expected} layers: one per fusion "
                             f"level (the main visual tokens + {expected - 1} DeepStack levels of the Qwen3-VL vision "
                             "tower).")


@contextlib.contextmanager
def quiet_default_sub_configs():
    """Drop transformers' "`vision_config` is None, initializing ... with default values." notices meanwhile
    (`GapMllmConfig.to_diff_dict` builds throwaway default configs)."""
    config_logger = logging.get_logger("transformers.configuration_utils")
    config_logger.addFilter(quiet := lambda record: "is None, initializing" not in record.getMessage())
    try:
        yield
    finally:
        config_logger.removeFilter(quiet)


# ---- configurations
# Qwen3VLConfig's fields besides its sub-configs
QWEN3_VL_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                         "tie_word_embeddings")


class GapMllmGeometryConfig(PreTrainedConfig):
    r"""Configuration of the VGGT aggregator, GAP-MLLM's frozen geometry encoder (`geometry_encoder_type="vggt"`).

    Defaults are VGGT-1B: a DINOv2 ViT-L/14-with-registers patch embedding, then `num_hidden_layers` frame-attention
    blocks alternating with as many global-attention blocks.

    Args:
        image_size (`int`): training resolution of the DINOv2 position embedding (518 → 37×37 grid).
        patch_size (`int`): patch size in pixels (14).
        hidden_size (`int`): token width of the patch embedding and of the alternating blocks (1024).
        num_hidden_layers (`int`): number of (frame, global) block pairs (24).
        num_attention_heads (`int`): heads of every attention layer (16).
        mlp_ratio (`float`): MLP width multiplier (4.0).
        num_register_tokens (`int`): register tokens per frame, after the camera token (4).
        layer_scale_init, layer_norm_eps (`float`): LayerScale init and LayerNorm / QK-norm eps of the alternating
            blocks (0.01, 1e-5).
        qk_norm (`bool`): per-head LayerNorm on queries and keys in the alternating blocks (True).
        rope_frequency (`float`): base frequency of the alternating blocks' 2-D RoPE (100).
        patch_embed_num_hidden_layers, patch_embed_num_register_tokens (`int`): DINOv2 depth and registers (24, 4).
        patch_embed_layer_scale_init, patch_embed_layer_norm_eps (`float`): DINOv2 LayerScale init and eps (1.0, 1e-6).
        tapped_layers (`list[int]`): 0-based block pairs whose outputs are returned ([4, 11, 17, 23]): the last feeds
            the main visual tokens, the others the DeepStack levels.
        reference_frame (`str`): `"first"` (default) or `"last"`: the frame VGGT takes as reference; features stay
            in input frame order.
        image_mean, image_std (`list[float]`): normalisation inside the encoder of its [0, 1] input (ImageNet).
        source_checkpoint (`str`, *optional*): the VGGT checkpoint of the weights (`facebook/VGGT-1B`: non-commercial).
        initializer_range (`float`): std of the normal init (0.02).
        use_camera_head, use_depth_head, use_point_head (`bool`): build VGGT's reconstruction heads (all False);
            their weights come from the same checkpoint (`camera_head.*`, `depth_head.*`, `point_head.*`).
        camera_head_trunk_depth, camera_head_num_attention_heads, camera_head_num_iterations (`int`): camera-head
            trunk blocks, its heads at width `2·hidden_size`, and refinement steps (4, 16, 4).
        dpt_features (`int`): feature width of the DPT fusion blocks (256).
        dpt_out_channels (`list[int]`): widths of the four DPT projections ([256, 512, 1024, 1024]).
        dpt_layers (`list[int]`): the four aggregator layers the DPT heads read ([4, 11, 17, 23]).
        dpt_frames_chunk_size (`int`): frames per DPT chunk, bounding memory; results do not depend on it (8).
        frames_chunk_size (`int`, *optional*): frames of each sample at a time in all the aggregator runs but the global
            attention (which sees every frame), bounding memory; results do not depend on it (`None`: all at once).
        autocast_dtype (`str`, *optional*): `"auto"` (default): bf16 autocast when the input is on a CUDA device,
            the weights' dtype elsewhere; `"bfloat16"` / `"float16"`: that autocast on every device; `None`: no
            autocast. Features come out in the weights' dtype.
    """

    model_type = "gap_mllm_geometry"
    base_config_key = "geometry_config"

    image_size: int = 518
    patch_size: int = 14
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    layer_scale_init: float = 0.01
    layer_norm_eps: float = 1e-5
    qk_norm: bool = True
    rope_frequency: float = 100.0
    patch_embed_num_hidden_layers: int = 24
    patch_embed_num_register_tokens: int = 4
    patch_embed_layer_scale_init: float = 1.0
    patch_embed_layer_norm_eps: float = 1e-6
    tapped_layers: list[int] | None = None
    reference_frame: str = "first"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    source_checkpoint: str | None = None
    initializer_range: float = 0.02
    use_camera_head: bool = False
    use_depth_head: bool = False
    use_point_head: bool = False
    camera_head_trunk_depth: int = 4
    camera_head_num_attention_heads: int = 16
    camera_head_num_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: list[int] | None = None
    dpt_layers: list[int] | None = None
    dpt_frames_chunk_size: int = 8
    frames_chunk_size: int | None = None
    autocast_dtype: str | None = "auto"

    def __post_init__(self, **kwargs):
        if self.tapped_layers is None:
            self.tapped_layers = [4, 11, 17, 23]
        self.tapped_layers = [int(i) for i in self.tapped_layers]
        if self.image_mean is None:
            self.image_mean = [0.485, 0.456, 0.406]
        if self.image_std is None:
            self.image_std = [0.229, 0.224, 0.225]
        if self.dpt_out_channels is None:
            self.dpt_out_channels = [256, 512, 1024, 1024]
        if self.dpt_layers is None:
            self.dpt_layers = [4, 11, 17, 23]
        self.dpt_out_channels = [int(c) for c in self.dpt_out_channels]
        self.dpt_layers = [int(i) for i in self.dpt_layers]
        super().__post_init__(**kwargs)
        check_geometry_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_special_tokens(self) -> int:
        """Camera token + aggregator registers prepended to each frame (5 for VGGT-1B)."""
        return 1 + self.num_register_tokens

    @property
    def feature_size(self) -> int:
        """Channels of a tapped layer's features: frame-block output ⊕ global-block output."""
        return 2 * self.hidden_size


# here so that a config.json loads without the modeling modules; `modeling_vggt` registers the encoder class
GEOMETRY_ENCODER_CONFIGS["vggt"] = GapMllmGeometryConfig
GapMllmGeometryConfig.register_for_auto_class()  # an encoder's folder then names its config class in auto_map


class GapMllmFusionConfig(PreTrainedConfig):
    r"""Settings of the geometry mergers and of the fusion modules (one of each per fusion level).

    Args:
        method (`str`): `"gated"` (default) or an ablation: `"add"`, `"concat"`, `"weighted"`, `"cross_attention"`.
        merger_hidden_size (`int`): hidden width of the merger MLP (4096).
        merger_norm (`str`): norm before the 2×2 merge: `"rms"` (Qwen2 RMSNorm, default) or `"layer"` (LayerNorm).
        merger_norm_eps, norm_eps (`float`): eps of the merger norm (1e-6) and of the fusion LayerNorms (1e-5).
        cross_attention_num_heads, cross_attention_dropout, cross_attention_num_layers, cross_attention_mlp_ratio:
            settings of the `"cross_attention"` method (8, 0.1, 1, 4).
        initializer_range (`float`): std of the normal init of the new Linear layers (0.02).
    """

    model_type = "gap_mllm_fusion"
    base_config_key = "geometry_fusion_config"

    method: str = "gated"
    merger_hidden_size: int = 4096
    merger_norm: str = "rms"
    merger_norm_eps: float = 1e-6
    norm_eps: float = 1e-5
    cross_attention_num_heads: int = 8
    cross_attention_dropout: float = 0.1
    cross_attention_num_layers: int = 1
    cross_attention_mlp_ratio: int = 4
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        check_fusion_config(self)


class GapMllmConfig(Qwen3VLConfig):
    r"""Configuration of [`GapMllmModel`] and [`GapMllmForConditionalGeneration`]: Qwen3-VL's (`text_config`,
    `vision_config`, the special token ids: `Qwen3VLConfig`) plus the geometry branch.

    Args:
        geometry_encoder_type (`str`): a registered geometry encoder (`register_geometry_encoder`); `"vggt"` by
            default and for a config.json without it.
        geometry_config (`PreTrainedConfig` or `dict`): the config class registered for `geometry_encoder_type`
            (`GapMllmGeometryConfig`, model type `gap_mllm_geometry`, for `"vggt"`); its `tapped_layers` name one
            layer per fusion level.
        geometry_fusion_config (`GapMllmFusionConfig` or `dict`): mergers and fusion.
        use_geometry (`bool`): build the geometry encoder, mergers and fusion (True); `False` is stock Qwen3-VL.
        vlm_config (`Qwen3VLConfig` or `dict`, keyword only): a Qwen3-VL config whose settings fill the Qwen3-VL
            fields, as a config.json of the earlier layout nests them. A Qwen3-VL config.json loads as this class
            too (transformers warns of the model type); the geometry settings then take their defaults or the
            keyword arguments given.

    Raises:
        ValueError: for an unregistered `geometry_encoder_type`, an invalid size or setting (named with its value), or
            a `tapped_layers` count other than 1 + DeepStack levels (`check_config`).

    Example:

    ```python
    >>> from gap_mllm import GapMllmConfig
    >>> config = GapMllmConfig(geometry_config={"tapped_layers": [4, 11, 17, 23]})
    >>> config.level_geometry_layers
    [23, 4, 11, 17]
    ```
    """

    model_type = "gap_mllm"  # never qwen3_vl: AutoModel would build the stock class and drop the geometry weights
    sub_configs_defaults = {
        **Qwen3VLConfig.sub_configs_defaults,
        "geometry_config": GapMllmGeometryConfig,
        "geometry_fusion_config": GapMllmFusionConfig,
    }

    geometry_encoder_type: str = "vggt"
    geometry_config: dict | PreTrainedConfig | None = None
    geometry_fusion_config: dict | PreTrainedConfig | None = None
    use_geometry: bool = True

    def __post_init__(self, **kwargs):
        # a Qwen3-VL config.json read as this class names its own type: the model type stays this class's
        kwargs.pop("model_type", None)
        nested = kwargs.pop("vlm_config", None)
        if nested is not None:  # the earlier layout: Qwen3-VL's settings nested as `vlm_config`
            self._lift_nested_qwen3_vl_config(nested)
        # not in sub_configs_defaults: its class depends on geometry_encoder_type
        self.geometry_config = build_geometry_config(self.geometry_encoder_type, self.geometry_config)
        super().__post_init__(**kwargs)
        check_config(self)

    def _lift_nested_qwen3_vl_config(self, nested) -> None:
        """The Qwen3-VL fields from a nested Qwen3-VL config (a dict or a config; ValueError for another type)."""
        values = nested.to_dict() if isinstance(nested, PreTrainedConfig) else dict(nested)
        if values.get("model_type", "qwen3_vl") != "qwen3_vl":
            raise ValueError(f"vlm_config must be a Qwen3-VL config (model_type 'qwen3_vl'), got {values['model_type']!r}.")
        for name in ("text_config", "vision_config", *QWEN3_VL_TOKEN_FIELDS):
            if name in values and (getattr(self, name) is None or name in QWEN3_VL_TOKEN_FIELDS):
                setattr(self, name, values[name])

    def to_qwen3_vl_config(self) -> Qwen3VLConfig:
        """The stock `Qwen3VLConfig` of the model's Qwen3-VL part (its language and vision settings, token ids)."""
        return Qwen3VLConfig(text_config=self.text_config.to_dict(), vision_config=self.vision_config.to_dict(),
                             attn_implementation=self._attn_implementation,
                             **{name: getattr(self, name) for name in QWEN3_VL_TOKEN_FIELDS})

    def to_diff_dict(self) -> dict:
        with quiet_default_sub_configs():
            return super().to_diff_dict()

    @property
    def level_geometry_layers(self) -> list[int]:
        """Geometry-encoder layer fused at each level: level 0 = main visual tokens, level k ≥ 1 = DeepStack k-1."""
        tapped = list(self.geometry_config.tapped_layers)
        return [tapped[-1]] + tapped[:-1]

    @property
    def num_fusion_levels(self) -> int:
        return len(self.geometry_config.tapped_layers)


# so that `save_pretrained` writes auto_map and copies the remote code even when imported without `gap_mllm`
GapMllmConfig.register_for_auto_class()


__all__ = [
    "FUSION_METHODS",
    "GEOMETRY_ENCODERS",
    "GEOMETRY_ENCODER_CONFIGS",
    "GEOMETRY_INPUT_NAMES",
    "GapMllmConfig",
    "GapMllmFusionConfig",
    "GapMllmGeometryConfig",
    "GeometryEncoderOutput",
    "IGNORE_INDEX",
    "MERGER_NORMS",
    "PREFILL_ONLY_INPUT_NAMES",
    "PROCESSOR_GEOMETRY_INPUT_NAMES",
    "build_geometry_config",
    "register_geometry_encoder",
]
