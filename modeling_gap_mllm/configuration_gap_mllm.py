"""GAP-MLLM configuration.

Size checks and the parameter estimate (`check_sizes`, `check_vlm_sizes`, `parameter_parts`, `estimate_num_parameters`,
`check_parameter_count`, `check_memory_for_parameters`); the model's input names; the geometry-encoder interface
(`GeometryEncoderConfig`, `GeometryEncoder`, `GeometryEncoderOutput`, `register_geometry_encoder`,
`build_geometry_config`); the configs `GapMllmGeometryConfig` (VGGT), `GapMllmFusionConfig` and `GapMllmConfig`.
"""

import importlib
import logging
import math
import numbers
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

# ---- the installed package around these classes
def installed_package_module(name: str, module_name: str):
    """The installed package's module `gap_mllm.<name>` when `module_name` (the caller's `__name__`) is one of the
    package's own modules, else None.

    The gap-mllm package adds input and context checks and speed paths around its own copy of these classes
    (docs/layout.md). A model folder loaded with `trust_remote_code` is another copy (`transformers_modules.*`): it
    runs as transformers runs it, whatever is installed beside it, so a folder never meets a package of another version.
    """
    if not module_name.startswith("gap_mllm."):
        return None
    return importlib.import_module(f"gap_mllm.{name}")


# ---- size checks and the parameter estimate
MAX_PARAMETERS = 10**12

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


def check_vlm_sizes(vlm_config) -> None:
    """The Qwen3-VL text and vision sizes (`vlm_config.text_config.*`, `vlm_config.vision_config.*`)."""
    text, vision = vlm_config.text_config, vlm_config.vision_config
    check_sizes(text, TEXT_SIZES, "vlm_config.text_config")
    if getattr(text, "head_dim", None) is not None:
        check_sizes(text, ("head_dim",), "vlm_config.text_config")
    if text.num_attention_heads % text.num_key_value_heads:
        raise ValueError(
            f"vlm_config.text_config.num_attention_heads ({text.num_attention_heads}) must be a multiple of "
            f"num_key_value_heads ({text.num_key_value_heads})."
        )
    check_sizes(vision, VISION_SIZES, "vlm_config.vision_config")
    if vision.hidden_size % vision.num_heads:
        raise ValueError(
            f"vlm_config.vision_config.hidden_size ({vision.hidden_size}) must be divisible by num_heads ({vision.num_heads})."
        )
    levels = list(getattr(vision, "deepstack_visual_indexes", None) or [])
    if any(not _is_int(level) or not 0 <= level < vision.depth for level in levels):
        raise ValueError(
            f"vlm_config.vision_config.deepstack_visual_indexes={levels} must name blocks 0..{vision.depth - 1} "
            f"(depth={vision.depth})."
        )


# (label naming the config fields that size it, parameter count); errors name the largest part by its fields
Part = tuple[str, int]


def _fields(prefix: str, config, *names: str) -> str:
    """`prefix.a=1, b=2`: a part's label."""
    return f"{prefix}." + ", ".join(f"{name}={getattr(config, name)!r}" for name in names)


def _text_parts(text, tied: bool) -> list[Part]:
    prefix = "vlm_config.text_config"
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    hidden, heads, kv_heads = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    layer = attention + 3 * hidden * text.intermediate_size  # gate, up, down
    return [
        (_fields(prefix, text, "vocab_size", "hidden_size"), text.vocab_size * hidden * (1 if tied else 2)),
        (_fields(prefix, text, "num_hidden_layers", "hidden_size", "intermediate_size"), text.num_hidden_layers * layer),
    ]


def _vision_parts(vision) -> list[Part]:
    prefix = "vlm_config.vision_config"
    hidden = vision.hidden_size
    layer = 4 * hidden * hidden + 2 * hidden * vision.intermediate_size  # qkv + proj; MLP
    patch_embed = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * hidden
    merged = hidden * vision.spatial_merge_size**2
    mergers = (1 + len(getattr(vision, "deepstack_visual_indexes", None) or [])) * (merged * merged + merged * vision.out_hidden_size)
    return [
        (_fields(prefix, vision, "depth", "hidden_size", "intermediate_size"), vision.depth * layer),
        (_fields(prefix, vision, "in_channels", "temporal_patch_size", "patch_size", "hidden_size"), patch_embed),
        (_fields(prefix, vision, "num_position_embeddings", "hidden_size"), vision.num_position_embeddings * hidden),
        (_fields(prefix, vision, "spatial_merge_size", "hidden_size", "out_hidden_size"), mergers),
    ]


def _block_parameters(width: int, mlp_ratio: float) -> int:
    """Weights of one VGGT / DINOv2 block of `width` channels: qkv + proj, MLP."""
    return 4 * width * width + 2 * int(mlp_ratio * width) * width


def _dpt_head_parameters(geometry) -> int:
    """Convolution and projection weights of one DPT head (`GapMllmDptHead`)."""
    width, features, channels = 2 * geometry.hidden_size, geometry.dpt_features, geometry.dpt_out_channels
    projections = width * sum(channels)
    resize = 16 * channels[0] ** 2 + 4 * channels[1] ** 2 + 9 * channels[3] ** 2  # ×4, ×2 transposed; ½ conv
    scratch = 9 * features * sum(channels)  # layer{1..4}_rn
    refinement = 3 * 37 * features**2 + 19 * features**2  # 3 blocks with a skip unit, the deepest without
    output = 9 * features * (features // 2)
    return projections + resize + scratch + refinement + output


def _geometry_parts(geometry) -> list[Part]:
    prefix = "geometry_config"
    hidden, block = geometry.hidden_size, _block_parameters(geometry.hidden_size, geometry.mlp_ratio)
    patches = (geometry.image_size // geometry.patch_size) ** 2
    parts = [
        (_fields(prefix, geometry, "num_hidden_layers", "hidden_size", "mlp_ratio"), 2 * geometry.num_hidden_layers * block),
        (_fields(prefix, geometry, "patch_embed_num_hidden_layers", "hidden_size", "mlp_ratio"),
         geometry.patch_embed_num_hidden_layers * block),
        (_fields(prefix, geometry, "patch_size", "hidden_size"), 3 * geometry.patch_size**2 * hidden),
        (_fields(prefix, geometry, "image_size", "patch_size", "hidden_size"), patches * hidden),
        (_fields(prefix, geometry, "num_register_tokens", "hidden_size"), 2 * geometry.num_register_tokens * hidden),
        (_fields(prefix, geometry, "patch_embed_num_register_tokens", "hidden_size"),
         geometry.patch_embed_num_register_tokens * hidden),
    ]
    if geometry.use_camera_head:  # trunk blocks at width 2·hidden; modulation (width → 3·width) and pose MLP
        width = 2 * hidden
        trunk = geometry.camera_head_trunk_depth * _block_parameters(width, geometry.mlp_ratio)
        parts.append((_fields(prefix, geometry, "camera_head_trunk_depth", "hidden_size", "mlp_ratio"), trunk))
        parts.append((_fields(prefix, geometry, "hidden_size") + " (camera head)", 3 * width * width + width * hidden))
    heads = int(bool(geometry.use_depth_head)) + int(bool(geometry.use_point_head))
    if heads:
        parts.append((_fields(prefix, geometry, "dpt_features", "dpt_out_channels", "hidden_size"),
                      heads * _dpt_head_parameters(geometry)))
    return parts


def _fusion_parts(config) -> list[Part]:
    fusion, geometry = config.geometry_fusion_config, config.geometry_config
    vision = config.vlm_config.vision_config
    width = vision.out_hidden_size
    merger = geometry.feature_size * vision.spatial_merge_size**2 * fusion.merger_hidden_size + fusion.merger_hidden_size * width
    fuse = {"gated": 2 * width * width, "concat": 2 * width * width,
            "cross_attention": fusion.cross_attention_num_layers * (4 + 2 * fusion.cross_attention_mlp_ratio) * width * width}
    levels = config.num_fusion_levels
    return [
        (_fields("geometry_fusion_config", fusion, "merger_hidden_size") + f" ({levels} levels)", levels * merger),
        (_fields("geometry_fusion_config", fusion, "method", "cross_attention_num_layers", "cross_attention_mlp_ratio")
         + f" (width {width}, {levels} levels)", levels * fuse.get(fusion.method, 0)),
    ]


def parameter_parts(config) -> list[Part]:
    """Parts of `estimate_num_parameters(config)` as `(label, count)`, labelled with the config fields that size them.
    `config`: a `GapMllmConfig`, or a geometry config alone (the encoder built by itself)."""
    if not hasattr(config, "vlm_config"):
        return config.parameter_parts()
    vlm = config.vlm_config
    tied = bool(getattr(vlm, "tie_word_embeddings", False) or getattr(vlm.text_config, "tie_word_embeddings", False))
    parts = _text_parts(vlm.text_config, tied) + _vision_parts(vlm.vision_config)
    if config.use_geometry:
        parts += config.geometry_config.parameter_parts() + _fusion_parts(config)
    return parts


def estimate_num_parameters(config) -> int:
    """Lower bound of the parameter count of a `GapMllmConfig`, or of a geometry config's encoder, from the config."""
    return sum(count for _, count in parameter_parts(config))


def largest_part(config) -> str:
    """`"the largest part, <count> parameters, comes from <fields>"`: for the errors."""
    label, count = max(parameter_parts(config), key=lambda part: part[1])
    return f"the largest part, {count:.3g} parameters, comes from {label}"


def check_parameter_count(config) -> int:
    """`estimate_num_parameters(config)`, or ValueError above `MAX_PARAMETERS` naming the largest part."""
    count = estimate_num_parameters(config)
    if count > MAX_PARAMETERS:
        raise ValueError(
            f"this configuration has at least {count:.3g} parameters, above the sanity bound of {MAX_PARAMETERS:.0e}"
            f"; {largest_part(config)}: check these sizes."
        )
    return count


def available_memory(device) -> int | None:
    """Bytes that can still be allocated on `device` (a `torch.device`): free GPU memory, the CPU's available
    RAM (psutil when installed, else /proc/meminfo), or None when unknown."""
    import torch

    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory_for_parameters(config) -> None:
    """ValueError when the weights of `config`, in the default dtype, exceed the memory left on the default device.
    Skipped on the meta device (where `from_pretrained` builds) and under DeepSpeed ZeRO-3 (weights partitioned)."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    device = torch.get_default_device()
    if device.type == "meta" or is_deepspeed_zero3_enabled():
        return
    needed = estimate_num_parameters(config) * torch.get_default_dtype().itemsize
    available = available_memory(device)
    if available is not None and needed > available:
        raise ValueError(
            f"the weights of this configuration need at least {needed / 2**30:.1f} GiB "
            f"({estimate_num_parameters(config):.3g} parameters in {torch.get_default_dtype()}), but only "
            f"{available / 2**30:.1f} GiB are available on {device}; {largest_part(config)}. Use a smaller "
            "configuration, a smaller dtype (from_pretrained(..., dtype=torch.bfloat16)) or another device (device_map=...)."
        )


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


class _DropDefaultSubConfigNotices(logging.Filter):
    """Drops transformers' "`vision_config` is None, initializing ... with default values." records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is None, initializing" not in record.getMessage()


@contextmanager
def _quiet_default_sub_configs():
    """Silence the default-sub-config notices of the throwaway configs `to_diff_dict` builds."""
    logger = logging.getLogger("transformers.configuration_utils")
    quiet = _DropDefaultSubConfigNotices()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


# ---- geometry-encoder interface
@dataclass
class GeometryEncoderOutput(ModelOutput):
    """Output of a geometry encoder's `forward` (`GeometryEncoder`).

    Args:
        layer_features (`tuple[torch.Tensor]`): one `[B, S, h·w, feature_size]` tensor per tapped layer, in
            `config.tapped_layers` order: patch tokens only, row-major over the patch grid, frames in input order.
        patch_grid (`tuple[int, int]`): the patch grid `(h, w) = (H / patch_size, W / patch_size)`.
    """

    layer_features: tuple | None = None
    patch_grid: tuple[int, int] | None = None


class GeometryEncoderConfig(Protocol):
    """What GAP-MLLM reads of a geometry config (a `PreTrainedConfig` subclass, `register_geometry_encoder`).

    Attributes:
        tapped_layers (`list[int]`): the layers returned, one per fusion level (1 + the vision tower's DeepStack
            levels): the last feeds the main visual tokens, the others the DeepStack levels in order.
        num_hidden_layers (`int`): the encoder depth (layers `0..num_hidden_layers-1`).
        patch_size (`int`): pixels per token side; one token per Qwen patch (14 px with `GapMllmProcessor`).
        feature_size (`int`): channels of each level's features (the mergers' input width).

    Methods:
        parameter_parts() -> `list[tuple[str, int]]`: lower bound of the encoder's parameter count in labelled parts.
    """

    tapped_layers: list[int]
    num_hidden_layers: int
    patch_size: int
    feature_size: int

    def parameter_parts(self) -> list[tuple[str, int]]: ...


class GeometryEncoder(Protocol):
    """What GAP-MLLM calls on a geometry encoder: an `nn.Module` built as `encoder_class(geometry_config)`.

    Methods:
        forward(images) -> `GeometryEncoderOutput`: `images [B, S, 3, H, W]` RGB in [0, 1] (the encoder normalises),
            H and W multiples of `config.patch_size`, in the dtype of the encoder's parameters.
        init_module_weights(module): initialise one of the encoder's own modules (not its children); called by
            `_init_weights`, so it must leave checkpoint-loaded tensors alone (use `transformers.initialization`).
        set_trainable(trainable): set `requires_grad` of the parameters forward uses (others may stay frozen).
        reconstruct(images) (optional): the outputs of the encoder's reconstruction heads, when it has any.
    """

    config: GeometryEncoderConfig

    def __call__(self, images) -> GeometryEncoderOutput: ...
    def init_module_weights(self, module) -> None: ...
    def set_trainable(self, trainable: bool) -> None: ...


# geometry_encoder_type -> the geometry config class / the encoder class (register_geometry_encoder)
GEOMETRY_ENCODER_CONFIGS: dict[str, type[PreTrainedConfig]] = {}
GEOMETRY_ENCODERS: dict[str, type] = {}


def register_geometry_encoder(name: str, config_class: type[PreTrainedConfig], encoder_class: type) -> None:
    """Make `name` a `GapMllmConfig.geometry_encoder_type` (a name registered again takes the new classes).

    `geometry_config` becomes a `config_class` (`GeometryEncoderConfig`), the encoder `encoder_class(geometry_config)`
    (`GeometryEncoder`). Raises ValueError for an empty name, TypeError when `config_class` is not a
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


# ---- configurations
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
        self._check_values()

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

    def parameter_parts(self) -> list[Part]:
        """The parts of the encoder's parameter estimate (`parameter_parts`)."""
        return _geometry_parts(self)

    def _check_values(self):
        check_sizes(self, ("image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                           "patch_embed_num_hidden_layers"), "geometry_config")
        check_sizes(self, ("num_register_tokens", "patch_embed_num_register_tokens"), "geometry_config", minimum=0)
        if (isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float))
                or not 0 < self.mlp_ratio < math.inf):
            raise ValueError(f"geometry_config.mlp_ratio must be a positive finite number, got {self.mlp_ratio!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"geometry_config.hidden_size ({self.hidden_size}) must be divisible by "
                f"geometry_config.num_attention_heads ({self.num_attention_heads})."
            )
        if self.head_dim % 4 != 0:
            raise ValueError(
                f"geometry_config head dim ({self.head_dim}) must be divisible by 4: the 2-D RoPE rotates "
                "pairs of channels in each of its two (row, column) halves."
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(
                f"geometry_config.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})."
            )
        if not self.tapped_layers:
            raise ValueError("geometry_config.tapped_layers must name at least one layer.")
        for layer in self.tapped_layers:
            if not 0 <= layer < self.num_hidden_layers:
                raise ValueError(
                    f"geometry_config.tapped_layers contains {layer}, beyond the encoder depth: valid layers "
                    f"are 0..{self.num_hidden_layers - 1} (num_hidden_layers={self.num_hidden_layers})."
                )
        if len(set(self.tapped_layers)) != len(self.tapped_layers):
            raise ValueError(f"geometry_config.tapped_layers has duplicates: {self.tapped_layers}.")
        if self.reference_frame not in REFERENCE_FRAMES:
            raise ValueError(
                f"geometry_config.reference_frame={self.reference_frame!r} is not one of {REFERENCE_FRAMES}."
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("geometry_config.image_mean and image_std must have 3 values (RGB).")
        if self.autocast_dtype not in GEOMETRY_AUTOCAST_DTYPES:
            raise ValueError(
                f"geometry_config.autocast_dtype={self.autocast_dtype!r} is not one of {GEOMETRY_AUTOCAST_DTYPES}."
            )
        self._check_head_values()
        check_parameter_count(self)  # every size that allocates is priced, before the encoder is built

    @property
    def uses_dpt_head(self) -> bool:
        return bool(self.use_depth_head or self.use_point_head)

    def _check_head_values(self):
        """Check the settings of the heads that are switched on."""
        if self.use_camera_head:
            check_sizes(self, ("camera_head_trunk_depth", "camera_head_num_attention_heads", "camera_head_num_iterations"),
                        "geometry_config")
            width = 2 * self.hidden_size
            if width % self.camera_head_num_attention_heads:
                raise ValueError(
                    f"geometry_config.camera_head_num_attention_heads ({self.camera_head_num_attention_heads}) must "
                    f"divide the camera head width 2·hidden_size = {width}."
                )
        if self.uses_dpt_head:
            check_sizes(self, ("dpt_features", "dpt_frames_chunk_size"), "geometry_config")
            if len(self.dpt_layers) != 4 or len(self.dpt_out_channels) != 4:
                raise ValueError(
                    f"geometry_config.dpt_layers ({self.dpt_layers}) and dpt_out_channels ({self.dpt_out_channels}) "
                    "must each have 4 entries: the DPT head fuses four aggregator layers."
                )
            for layer in self.dpt_layers:
                if not 0 <= layer < self.num_hidden_layers:
                    raise ValueError(
                        f"geometry_config.dpt_layers contains {layer}: valid layers are 0..{self.num_hidden_layers - 1}."
                    )
            if min(self.dpt_out_channels) < 1 or self.dpt_features % 2:
                raise ValueError(
                    "geometry_config.dpt_out_channels must be positive and dpt_features a positive even number, got "
                    f"{self.dpt_out_channels} and {self.dpt_features}."
                )


# here so that a config.json loads without the modeling modules; `modeling_vggt` registers the encoder class
GEOMETRY_ENCODER_CONFIGS["vggt"] = GapMllmGeometryConfig


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
        if self.method not in FUSION_METHODS:
            raise ValueError(
                f"geometry_fusion_config.method={self.method!r} does not exist: choose one of {FUSION_METHODS}."
            )
        if self.merger_norm not in MERGER_NORMS:
            raise ValueError(
                f"geometry_fusion_config.merger_norm={self.merger_norm!r} does not exist: choose one of {MERGER_NORMS}."
            )
        check_sizes(self, ("merger_hidden_size", "cross_attention_num_heads", "cross_attention_num_layers",
                           "cross_attention_mlp_ratio"), "geometry_fusion_config")
        if isinstance(self.cross_attention_dropout, bool) or not 0 <= self.cross_attention_dropout < 1:
            raise ValueError(
                f"geometry_fusion_config.cross_attention_dropout must be in [0, 1), got {self.cross_attention_dropout!r}."
            )


class GapMllmConfig(PreTrainedConfig):
    r"""Configuration of [`GapMllmForConditionalGeneration`].

    Args:
        vlm_config (`Qwen3VLConfig` or `dict`): the base Qwen3-VL configuration.
        geometry_encoder_type (`str`): a registered geometry encoder (`register_geometry_encoder`); `"vggt"` by
            default and for a config.json without it.
        geometry_config (`PreTrainedConfig` or `dict`): the config class registered for `geometry_encoder_type`
            (`GapMllmGeometryConfig` for `"vggt"`); its `tapped_layers` name one layer per fusion level.
        geometry_fusion_config (`GapMllmFusionConfig` or `dict`): mergers and fusion.
        use_geometry (`bool`): build the geometry encoder, mergers and fusion (True); `False` is stock Qwen3-VL.

    Raises:
        ValueError: for a non-Qwen3-VL `vlm_config`, an invalid size, an unregistered `geometry_encoder_type`, a
            `tapped_layers` count other than 1 + DeepStack levels, or over `MAX_PARAMETERS` parameters.

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
        "vlm_config": SubConfigSpec(AutoConfig, model_type="qwen3_vl"),
        "geometry_config": GapMllmGeometryConfig,
        "geometry_fusion_config": GapMllmFusionConfig,
    }

    vlm_config: dict | PreTrainedConfig | None = None
    geometry_encoder_type: str = "vggt"
    geometry_config: dict | PreTrainedConfig | None = None
    geometry_fusion_config: dict | PreTrainedConfig | None = None
    use_geometry: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        # not in sub_configs_defaults: its class depends on geometry_encoder_type
        self.geometry_config = build_geometry_config(self.geometry_encoder_type, self.geometry_config)
        super().__post_init__(**kwargs)
        if self.vlm_config.model_type != "qwen3_vl":
            raise ValueError(
                f"vlm_config must be a Qwen3-VL config (model_type 'qwen3_vl'), got {self.vlm_config.model_type!r}."
            )
        check_vlm_sizes(self.vlm_config)
        if self.use_geometry:
            expected = 1 + len(self.vlm_config.vision_config.deepstack_visual_indexes)
            tapped = self.geometry_config.tapped_layers
            if len(tapped) != expected:
                raise ValueError(
                    f"geometry_config.tapped_layers={tapped} must name {expected} layers: one per fusion level "
                    f"(the main visual tokens + {expected - 1} DeepStack levels of the Qwen3-VL vision tower)."
                )
        check_parameter_count(self)  # absurd sizes are refused here, before any weight is allocated

    def get_text_config(self, decoder=None, encoder=None):
        return self.vlm_config.get_text_config(decoder=decoder, encoder=encoder)

    def to_diff_dict(self) -> dict:
        with _quiet_default_sub_configs():
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
    "GeometryEncoder",
    "GeometryEncoderConfig",
    "GeometryEncoderOutput",
    "IGNORE_INDEX",
    "MAX_PARAMETERS",
    "MERGER_NORMS",
    "PREFILL_ONLY_INPUT_NAMES",
    "PROCESSOR_GEOMETRY_INPUT_NAMES",
    "available_memory",
    "build_geometry_config",
    "check_memory_for_parameters",
    "check_parameter_count",
    "check_sizes",
    "check_vlm_sizes",
    "estimate_num_parameters",
    "largest_part",
    "parameter_parts",
    "register_geometry_encoder",
]
