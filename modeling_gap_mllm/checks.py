"""The checks of the package's edges: what its loading, training and generation calls run around the model.

Each turns what would be an obscure failure (or a long wait) into an error that names the input: a config's parameter
count and memory before a model is built (`gap_mllm.loading.build_model`; the configs check their own sizes:
`configuration_gap_mllm.check_config`) and a request's weights and frames before they load
(`check_memory_for_request`: the front ends' request check), checkpoints on loading (`load_checked`:
`gap_mllm.loading.load_model`), forward inputs (`check_forward_inputs`: the trainers' `compute_loss`), generate's token
ids and context and a reused scene's model (`gap_mllm.generation.generate`). The model folder's classes call none of
them; the processor's argument checks are its own (processing_gap_mllm.py). Never copied into a model folder.
"""

import hashlib
import math
import os
import uuid
import warnings
from array import array
from dataclasses import dataclass

import torch
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.utils import logging

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX, GapMllmGeometryConfig
from gap_mllm.tasks_gap_mllm import DefaultBudget

logger = logging.get_logger(__name__)

# ---- configuration parameter count and memory
MAX_PARAMETERS = 10**12

# (label naming the config fields that size it, parameter count); errors name the largest part by its fields
Part = tuple[str, int]


def _fields(prefix: str, config, *names: str) -> str:
    """`prefix.a=1, b=2`: a part's label."""
    return f"{prefix}." + ", ".join(f"{name}={getattr(config, name)!r}" for name in names)


def _head_dim(text) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _decoder_parameters(text) -> int:
    """Weights of the language model's decoder layers (their Linear layers: what `--quantize` converts)."""
    hidden, head_dim = text.hidden_size, _head_dim(text)
    attention = 2 * hidden * text.num_attention_heads * head_dim + 2 * hidden * text.num_key_value_heads * head_dim
    return text.num_hidden_layers * (attention + 3 * hidden * text.intermediate_size)  # q, o; k, v; gate, up, down


def _text_parts(text, tied: bool) -> list[Part]:
    prefix = "text_config"
    return [
        (_fields(prefix, text, "vocab_size", "hidden_size"), text.vocab_size * text.hidden_size * (1 if tied else 2)),
        (_fields(prefix, text, "num_hidden_layers", "hidden_size", "intermediate_size"), _decoder_parameters(text)),
    ]


def _vision_parts(vision) -> list[Part]:
    prefix = "vision_config"
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


def _vggt_parts(geometry) -> list[Part]:
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


def _geometry_parts(geometry) -> list[Part]:
    """VGGT's parts from its sizes; another registered encoder's from its config's `parameter_parts()`, when it has
    one (docs/layout.md), else none."""
    if isinstance(geometry, GapMllmGeometryConfig):
        return _vggt_parts(geometry)
    return list(geometry.parameter_parts()) if hasattr(geometry, "parameter_parts") else []


def _fusion_parts(config) -> list[Part]:
    fusion, geometry = config.geometry_fusion_config, config.geometry_config
    vision = config.vision_config
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
    if not hasattr(config, "geometry_config"):
        return _geometry_parts(config)
    tied = bool(config.tie_word_embeddings or getattr(config.text_config, "tie_word_embeddings", False))
    parts = _text_parts(config.text_config, tied) + _vision_parts(config.vision_config)
    if config.use_geometry:
        parts += _geometry_parts(config.geometry_config) + _fusion_parts(config)
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
    """Bytes that can still be allocated on `device` (a `torch.device`): free GPU memory (with what PyTorch's caching
    allocator holds unused, which it hands out again), the CPU's available RAM (psutil when installed, else
    /proc/meminfo), or None when unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + cached
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


# The bytes of one decoder-layer weight under each `--quantize` choice (gap_mllm.processing.model_paths): the scales
# the quantizers keep beside them are left out
QUANTIZED_WEIGHT_BYTES = {"int8": 1.0, "bnb-int8": 1.0, "int4": 0.5, "bnb-nf4": 0.5}
# The anonymous memory an optimum-quanto load (`--quantize int8 / int4`) takes at its peak, as a multiple of the weights
# in the dtype they load in: the weights read before they are converted sit beside the converted ones (measured at the
# real size on the CPU: 7.9-8.4 GiB above the process's own over three int8 loads, 7.4-8.1 over two int4 loads,
# beside 6.03 GiB of bf16 weights, bench/README.md "Quantized inference"; the factors cover the largest); a plain load
# peaks under its weights. bitsandbytes quantizes on the GPU as it loads: not priced
QUANTIZED_LOAD_PEAK = {"int8": 1.40, "int4": 1.40}
# `frame_activation_elements` counts 0.0887 GiB a frame (bf16) at the real size and the inference frames, where one
# answer's peak grows 0.099 GiB a frame on the CPU (docs/install.md "Frames against memory"): this factor makes the two
# agree (the allocator's slack and the copies the count leaves out)
FRAME_MEMORY_CALIBRATION = 1.1165


def weight_dtype(config) -> torch.dtype:
    """The dtype `from_pretrained` loads `config`'s weights in (`dtype="auto"`): the config's `dtype`, else torch's
    default dtype."""
    dtype = getattr(config, "dtype", None)
    return (getattr(torch, dtype) if isinstance(dtype, str) else dtype) or torch.get_default_dtype()


def frame_activation_elements(config, vision_patches: int, geometry_tokens: int) -> int:
    """Activation elements one frame adds to the peak of one answer, from `config`'s sizes and the frame's tokens:
    `vision_patches` (the ViT's patches, t·h·w of its `image_grid_thw` row; the LLM gets them merged,
    / spatial_merge_size²) and `geometry_tokens` (VGGT's: its patches, the camera and register tokens). Per LLM token:
    its keys and values in every layer's cache, a decoder layer's working set (hidden states, attention, SwiGLU), the
    DeepStack features and each fusion level's merger; per ViT patch a block's working set; per VGGT token the kept
    features of the tapped layers and a block's working set. Attention holds no token-by-token matrix (sdpa)."""
    text, vision, geometry = config.text_config, config.vision_config, config.geometry_config
    llm_tokens = vision_patches // vision.spatial_merge_size**2
    cache = 2 * text.num_hidden_layers * text.num_key_value_heads * _head_dim(text)
    decoder = 4 * text.hidden_size + 3 * text.intermediate_size
    deepstack = (1 + len(getattr(vision, "deepstack_visual_indexes", None) or [])) * vision.out_hidden_size
    elements = llm_tokens * (cache + decoder + deepstack) + vision_patches * (4 * vision.hidden_size
                                                                               + vision.intermediate_size)
    if config.use_geometry and isinstance(geometry, GapMllmGeometryConfig):  # another encoder's frames: not priced
        fusion = config.num_fusion_levels * (config.geometry_fusion_config.merger_hidden_size + vision.out_hidden_size)
        kept = len(geometry.tapped_layers) * geometry.feature_size  # the tapped layers' features, until the fusion
        kept += int((4 + geometry.mlp_ratio) * geometry.hidden_size)
        elements += llm_tokens * fusion + geometry_tokens * kept
    return elements


@dataclass(frozen=True)
class RequestMemory:
    """The price of one request in bytes (`request_memory`): `weights` (0: already where the request runs) and
    `per_frame` over `frames` frames; `parameters` and `dtype` name the weights, `quantize` their `--quantize`;
    `load_peak` what loading the weights takes at its peak, before the request runs (0: not more than `weights`)."""

    frames: int
    weights: int
    per_frame: int
    parameters: int
    dtype: torch.dtype
    quantize: str | None = None
    load_peak: int = 0

    @property
    def total(self) -> int:
        return max(self.weights + self.frames * self.per_frame, self.load_peak)

    def frames_that_fit(self, available: int) -> int:
        """The largest frame count whose price stays within `available` bytes (0 when not even one frame fits, or
        when the load alone does not)."""
        if self.load_peak > available:
            return 0
        return max(0, (available - self.weights) // max(1, self.per_frame))


def request_memory(config, inputs, quantize: str | None = None, weights_loaded: bool = False) -> RequestMemory:
    """What one answer of `config`'s model on the processor output `inputs` (`image_grid_thw`, and
    `geometry_pixel_values` for VGGT) takes at its peak, from the config alone: the weights, `estimate_num_parameters`
    in `weight_dtype` (the decoder layers at `QUANTIZED_WEIGHT_BYTES[quantize]` a weight; none with `weights_loaded`),
    plus `FRAME_MEMORY_CALIBRATION` × `frame_activation_elements` of each frame in the same dtype. The calibration
    is the CPU's measured slope at the real size (0.099 GiB a frame, bf16); an H100's prefill grew 0.070 GiB a frame,
    so on CUDA the price runs about 40% high per frame. Left out: the prompt's text tokens, the answer's, and the
    weights the estimate does not count (norms, biases): at the real size the price is 6.03 GiB + 0.099 GiB a frame,
    0.14 GiB under the CPU's measured line (6.17 GiB + 0.099). A `--quantize` load that is still to come is priced at
    its own peak too (`QUANTIZED_LOAD_PEAK` × the weights in `weight_dtype`)."""
    dtype = weight_dtype(config)
    parameters = estimate_num_parameters(config)
    weights = parameters * dtype.itemsize
    load_peak = 0 if weights_loaded else int(QUANTIZED_LOAD_PEAK.get(quantize, 0) * weights)
    if quantize is not None:
        weights -= int(_decoder_parameters(config.text_config) * (dtype.itemsize - QUANTIZED_WEIGHT_BYTES[quantize]))
    grids = inputs["image_grid_thw"].tolist()
    geometry = config.geometry_config
    geometry_tokens = 0
    if "geometry_pixel_values" in inputs and isinstance(geometry, GapMllmGeometryConfig):
        height, width = inputs["geometry_pixel_values"].shape[-2:]
        geometry_tokens = (height // geometry.patch_size) * (width // geometry.patch_size) + geometry.num_special_tokens
    elements = sum(frame_activation_elements(config, t * h * w, geometry_tokens) for t, h, w in grids)
    per_frame = math.ceil(FRAME_MEMORY_CALIBRATION * elements * dtype.itemsize / max(1, len(grids)))
    return RequestMemory(len(grids), 0 if weights_loaded else weights, per_frame, parameters, dtype, quantize,
                         load_peak)


def check_memory_for_request(config, inputs, device, quantize: str | None = None, weights_loaded: bool = False) -> None:
    """ValueError of one line when `request_memory` of the request exceeds the memory left on `device`
    (`available_memory`; skipped when unknown): the frames asked, GiB needed and available, and the largest frame
    count that fits, or, when none does, the weights that leave no room."""
    available = available_memory(torch.device(device))
    if available is None:
        return
    price = request_memory(config, inputs, quantize, weights_loaded)
    if price.total <= available:
        return
    gib = 2**30
    parts = (f"{price.per_frame / gib:.3g} GiB a frame beside the loaded weights" if weights_loaded
             else f"{price.weights / gib:.3g} GiB of weights + {price.per_frame / gib:.3g} GiB a frame")
    need = (f"{price.frames} frame(s) need about {price.total / gib:.3g} GiB ({parts}), but {available / gib:.3g} GiB "
            f"are available on {device}")
    fit = price.frames_that_fit(available)
    if fit > 0:
        raise ValueError(f"{need}: give at most {fit} frame(s) of this size")
    if weights_loaded:
        raise ValueError(f"{need}: not one frame fits; free memory or use a machine with more")
    if price.load_peak > available:
        raise ValueError(f"loading the weights ({price.parameters:.3g} parameters in {price.dtype}) with --quantize "
                         f"{quantize} takes about {price.load_peak / gib:.3g} GiB at its peak (each weight read before "
                         f"it is converted), but {available / gib:.3g} GiB are available on {device}; use a machine "
                         "with more memory, or load without --quantize")
    layers = f", decoder layers in {quantize}" if quantize else ""
    weights = f"the weights ({price.parameters:.3g} parameters in {price.dtype}{layers}, {price.weights / gib:.3g} GiB)"
    fails = "alone do not fit" if price.weights > available else "leave no room for one frame"
    remedy = "a smaller model or a machine with more memory" + ("" if quantize else ", or --quantize int8 / int4")
    raise ValueError(f"{need}: {weights} {fails}; use {remedy}")


# ---- loading: missing weights and damaged checkpoints
# (key prefix, human name), most specific first.
WEIGHT_GROUPS = (
    ("model.geometry_encoder.", "geometry encoder (VGGT aggregator)"),
    ("model.geometry_fusion.mergers.", "geometry mergers"),
    ("model.geometry_fusion.fusions.", "fusion modules (gates)"),
    ("model.visual.", "Qwen3-VL vision tower"),
    ("model.language_model.", "Qwen3-VL language model"),
    ("lm_head.", "LM head"),
)
GEOMETRY_GROUPS = frozenset(name for prefix, name in WEIGHT_GROUPS if prefix.startswith("model.geometry_"))


class MissingWeightsWarning(UserWarning):
    """A checkpoint lacked weights of a GAP-MLLM component; they were randomly initialised."""


def group_missing_keys(missing_keys) -> dict[str, list[str]]:
    """Sort state-dict keys into the named components of `WEIGHT_GROUPS` (others under "other")."""
    groups: dict[str, list[str]] = {}
    for key in sorted(missing_keys):
        name = next((name for prefix, name in WEIGHT_GROUPS if key.startswith(prefix)), "other")
        groups.setdefault(name, []).append(key)
    return groups


def report_missing_weights(missing_keys, source: str) -> dict[str, list[str]]:
    """Warn once, by group, about `missing_keys` of a checkpoint loaded from `source`; returns the groups. The
    warning points at the caller of the loading classmethod (`from_pretrained`, `from_qwen3_vl`)."""
    groups = group_missing_keys(missing_keys)
    if groups:
        lines = [f"  - {name}: {len(keys)} tensors randomly initialised (e.g. {keys[0]})" for name, keys in groups.items()]
        message = (
            f"The checkpoint at {source!r} lacks the weights of these GAP-MLLM components:\n" + "\n".join(lines)
            + "\nThey are NOT pretrained. Load the matching weights (VGGT converter, a trained GAP-MLLM "
            "checkpoint) before using the model for anything but training from scratch."
        )
        logger.warning(message)
        warnings.warn(message, MissingWeightsWarning, stacklevel=4)
    return groups


def _values(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or the values a quantizer's weight stands for (a tensor subclass with its own `dequantize`:
    torchao's implement few operations, no `sum`), one weight at a time."""
    return tensor.dequantize() if type(tensor).dequantize is not torch.Tensor.dequantize else tensor


def first_non_finite_tensor(state_dict) -> str | None:
    """Name of the first floating-point, non-meta tensor of `state_dict` holding a NaN or an infinity, or None."""
    names, sums = {}, {}
    for position, (name, tensor) in enumerate(state_dict.items()):
        if tensor.is_floating_point() and not tensor.is_meta:
            names.setdefault(tensor.device, []).append((position, name))
            sums.setdefault(tensor.device, []).append(_values(tensor).sum(dtype=torch.float32))
    broken = []
    for device, device_sums in sums.items():
        flagged = (~torch.isfinite(torch.stack(device_sums))).nonzero().flatten().tolist()  # the one synchronisation
        broken.extend(names[device][index] for index in flagged
                      if not torch.isfinite(_values(state_dict[names[device][index][1]])).all())
    return min(broken)[1] if broken else None


def refuse_unexpected_weights(unexpected_keys, source) -> None:
    """ValueError naming the tensors of a checkpoint that the model built from its config.json has no place for
    (`unexpected_keys` of the loading info, which transformers has already cleared of the keys the model's
    `_keys_to_ignore_on_load_unexpected` lets it drop). transformers loads such a checkpoint with a report that says
    they "can be ignored", and the model answers without them: a config.json edited to fewer layers than the
    weights hold."""
    groups = group_missing_keys(unexpected_keys)
    if groups:
        parts = "; ".join(f"{name}: {len(keys)} (e.g. {keys[0]})" for name, keys in groups.items())
        raise ValueError(f"{source}: the weights hold {sum(map(len, groups.values()))} tensor(s) that the model "
                         f"built from config.json has no place for ({parts}); the config does not belong to these "
                         "weights (fewer layers than they hold?): restore the config.json saved with them")


PROBE_TEXT_TOKENS = 4  # text tokens after the probe's image


def probe_inputs(model) -> dict:
    """The smallest forward input that runs every part of `model`: one view of `spatial_merge_size`² Qwen patches
    (one image token) with its geometry image when the model fuses geometry, and a few text tokens; deterministic
    values, drawn from a generator of their own (the global random state is untouched)."""
    config, vision = model.config, model.config.vision_config
    side = vision.spatial_merge_size
    generator = torch.Generator().manual_seed(0)
    patch_values = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    text = torch.arange(PROBE_TEXT_TOKENS) * 7919 % config.text_config.vocab_size  # spread over the vocabulary
    ids = [config.vision_start_token_id, config.image_token_id, config.vision_end_token_id, *text.tolist()]
    device = model.get_input_embeddings().weight.device
    inputs = {"input_ids": torch.tensor([ids], device=device),
              "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device),
              "mm_token_type_ids": torch.tensor([[int(i == config.image_token_id) for i in ids]], device=device),
              "pixel_values": torch.randn(side * side, patch_values, generator=generator).to(device),
              "image_grid_thw": torch.tensor([[1, side, side]], device=device)}
    if model.uses_geometry:
        pixels = side * model.config.geometry_config.patch_size
        inputs["geometry_pixel_values"] = torch.rand(1, 3, pixels, pixels, generator=generator).to(device)
    return inputs


def first_non_finite_module(model, inputs) -> str | None:
    """Name of the first module of `model` whose output holds a NaN or an infinity in a forward of `inputs`, in
    the order modules return (the innermost first), or None."""
    found = []

    def record(name):
        def hook(module, args, output):
            tensors = ([output] if isinstance(output, torch.Tensor) else output if isinstance(output, (tuple, list))
                       else output.values() if isinstance(output, dict) else [])
            if not found and any(isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()
                                 for t in tensors):
                found.append(name)
        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(**inputs, logits_to_keep=1, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return found[0] if found else None


# a weight past it squares to infinity in float32 (every norm of it, an RMSNorm's variance of an activation it scales):
# a trained weight stays many orders of magnitude below
WEIGHT_BOUND = 2.0**64


def largest_weight(state_dict) -> tuple[str, float] | None:
    """`(name, largest absolute value)` of the floating-point, non-meta tensor of `state_dict` holding the largest
    absolute value (finite tensors: `first_non_finite_tensor` comes first), or None for no such tensor."""
    names, extremes = {}, {}
    for name, tensor in state_dict.items():
        if tensor.is_floating_point() and not tensor.is_meta and tensor.numel():
            low, high = torch.aminmax(_values(tensor.detach()))
            names.setdefault(tensor.device, []).append(name)
            extremes.setdefault(tensor.device, []).append(torch.maximum(-low, high).float())
    found = []
    for device, values in extremes.items():
        values = torch.stack(values)
        index = int(values.argmax())  # the one synchronisation
        found.append((float(values[index]), names[device][index]))
    return (max(found)[1], max(found)[0]) if found else None


def refuse_weights_that_compute_nan(model, source) -> None:
    """ValueError for finite weights that compute NaN or infinities, which would answer nothing (every logit NaN)
    without a word: a weight past `WEIGHT_BOUND` (a value near the float limit, weights scaled by 1e30) is named;
    under it, one forward of a small probe input (`probe_inputs`: every part of the model runs, the logits of the
    whole vocabulary are read) must be finite, else the first module whose output is not is named, with the largest
    weight. A model with weights on the meta device (not loaded) or partitioned by DeepSpeed ZeRO-3 is not probed."""
    state_dict = model.state_dict()
    largest = largest_weight(state_dict)
    if largest is not None and largest[1] > WEIGHT_BOUND:
        raise ValueError(f"{source}: the weights hold a value too large to compute with ({largest[0]} holds "
                         f"{largest[1]:.3g}; its square overflows, a trained weight stays far below 2**64 = "
                         f"{WEIGHT_BOUND:.3g}); the checkpoint is damaged or was saved from a diverged run: load "
                         "another one")
    if any(tensor.is_meta for tensor in state_dict.values()) or is_deepspeed_zero3_enabled():
        return  # not loaded here (offloaded, or partitioned over the ranks: a forward would gather them all)
    inputs = probe_inputs(model)
    rope_deltas = model.model.rope_deltas  # a forward keeps its prompt's M-RoPE offsets: not the probe's
    try:
        with torch.no_grad():
            logits = model(**inputs, logits_to_keep=1, use_cache=False).logits
        if bool(torch.isfinite(logits).all()):
            return
        name = first_non_finite_module(model, inputs) or "the logits"
    finally:
        model.model.rope_deltas = rope_deltas
    raise ValueError(f"{source}: the weights are finite but compute NaN or infinite values on a probe input (first "
                     f"in the output of {name}; the largest weight is {largest[0]}, {largest[1]:.3g}); the checkpoint "
                     "is damaged or was saved from a diverged run: load another one")


def load_checked(load, pretrained_model_name_or_path, *args, require_geometry_weights: bool = False,
                 allow_non_finite_weights: bool = False, warn_missing_weights: bool = True, **kwargs):
    """`load(pretrained_model_name_or_path, *args, **kwargs)` (`PreTrainedModel.from_pretrained`) with a report of
    the GAP components missing from the checkpoint, kept as `model.missing_weight_groups`.

    Args:
        require_geometry_weights: raise instead of warning when the geometry encoder, mergers or
            fusion modules are missing from the checkpoint.
        allow_non_finite_weights: load weights holding NaN or infinities, or computing them (to inspect a diverged
            checkpoint); by default such a checkpoint is a ValueError naming the first tensor that holds one
            (`first_non_finite_tensor`), or the first module that computes one on a probe input
            (`refuse_weights_that_compute_nan`).
        warn_missing_weights: warn about the missing GAP components (False: the caller reports them itself after
            loading more weights, as `from_qwen3_vl` does).

    A checkpoint holding tensors the model built from its config.json has no place for is a ValueError naming them
    (`refuse_unexpected_weights`).

    Returns:
        the model, or `(model, loading info)` with `output_loading_info=True`.
    """
    wants_info = kwargs.pop("output_loading_info", False)
    model, info = load(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
    broken = None if allow_non_finite_weights else first_non_finite_tensor(model.state_dict())
    if broken is not None:  # it would load and answer nothing (every box dropped), without a word
        raise ValueError(f"{pretrained_model_name_or_path}: the weights hold NaN or infinite values (first: "
                         f"{broken}); the checkpoint is damaged or was saved from a diverged run: load another one")
    refuse_unexpected_weights(info["unexpected_keys"], pretrained_model_name_or_path)
    if not allow_non_finite_weights:
        refuse_weights_that_compute_nan(model, pretrained_model_name_or_path)
    groups = (report_missing_weights(info["missing_keys"], str(pretrained_model_name_or_path))
              if warn_missing_weights else group_missing_keys(info["missing_keys"]))
    model.missing_weight_groups = sorted(groups)
    if require_geometry_weights and GEOMETRY_GROUPS.intersection(groups):
        raise ValueError(
            f"{pretrained_model_name_or_path!r} lacks GAP geometry weights: {sorted(GEOMETRY_GROUPS.intersection(groups))}"
        )
    return (model, info) if wants_info else model


# ---- generate: token budget and scene prefix
def new_token_budget(model, kwargs: dict, input_length: int) -> int | None:
    """New tokens a generate call with `kwargs` may produce after `input_length` tokens: `max_new_tokens` (the call's,
    then the generation config's), else `max_length - input_length`; None when neither is set."""
    config = kwargs.get("generation_config") or model.generation_config
    budget = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if budget is not None:
        return int(budget)
    max_length = kwargs.get("max_length", getattr(config, "max_length", None))
    return None if max_length is None else int(max_length) - input_length


def scene_prefix_length(input_ids: torch.LongTensor, vision_end_token_id: int) -> int:
    """Tokens up to and including the last `<|vision_end|>` of a `[1, L]` prompt (0 when it has no view)."""
    positions = (input_ids[0] == vision_end_token_id).nonzero()
    return 0 if positions.numel() == 0 else int(positions[-1]) + 1


# ---- forward inputs
def _cached_length(past_key_values) -> int | None:
    """Tokens already cached (0 without a cache); None for a filled static cache, whose count is not read back."""
    if past_key_values is None or not hasattr(past_key_values, "get_seq_length"):
        return 0
    layers = getattr(past_key_values, "layers", None)
    if layers and getattr(layers[0], "is_compileable", False):
        return None if getattr(layers[0], "is_initialized", False) else 0
    return int(past_key_values.get_seq_length())


def _check_shapes(batch: int, length: int, cached: int | None, attention_mask, labels, mm_token_type_ids) -> None:
    """ValueError naming the per-token input that does not fit `[batch, length]` (only the mask after a cache)."""
    for name, tensor in (("labels", labels), ("mm_token_type_ids", mm_token_type_ids)):
        if tensor is not None and cached == 0 and tuple(tensor.shape) != (batch, length):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, but the input tokens are [{batch}, {length}]: "
                             f"{name} needs one value per token.")
    if attention_mask is None or attention_mask.ndim == 4:
        return
    if cached is None:  # a filled static cache: its length is not read (see _cached_length), the batch is checked
        expected, width = f"[{batch}, cached + {length} new tokens]", attention_mask.shape[-1]
    else:
        expected = f"[{batch}, {length}]" if not cached else f"[{batch}, {cached} cached + {length} new tokens]"
        width = cached + length
    if attention_mask.ndim != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] != width:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected}: one value per "
                         "token (1 = attend, 0 = padding), as the processor returns it.")


def check_forward_inputs(model, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None,
                         mm_token_type_ids=None, past_key_values=None) -> None:
    """Check the inputs of one forward of `model` (a `GapMllmForConditionalGeneration`), with one host read.

    Token ids must lie in the vocabulary (`labels` besides -100); `labels`, `mm_token_type_ids` and a 2-D
    `attention_mask` must be `[B, T]` (the mask `[B, cached + T]` after a cache); the mask keeps a token in every row
    and masks no vision token. A step continuing a cache has only its shapes checked.

    Raises:
        ValueError: naming the input (`input_ids`, `labels`, `attention_mask`, `mm_token_type_ids`) and what is
            wrong with it.
    """
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens is None:
        return  # Qwen3-VL itself asks for one of them
    if input_ids is not None:
        check_token_id_dtype(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}, expected [batch, length].")
    if labels is not None:
        check_token_id_dtype(labels, "labels")
    batch, length = tokens.shape[:2]
    cached = _cached_length(past_key_values)
    _check_shapes(batch, length, cached, attention_mask, labels, mm_token_type_ids)
    if cached is None or cached or batch * length == 0:
        return  # a decoding step: its ids are the model's own, and the prompt was checked at prefill

    reductions, readers = [], []
    if input_ids is not None:
        vocabulary = model.get_input_embeddings().num_embeddings
        reductions.append(token_id_range(input_ids))
        readers.append(lambda low, high: vocabulary_error(low, high, vocabulary, "input_ids"))
    if labels is not None:
        outputs = model.get_output_embeddings().out_features  # the logits' width, which the loss indexes
        targets = labels.masked_fill(labels == IGNORE_INDEX, 0)  # ignored positions are no ids
        reductions.append(token_id_range(targets))
        readers.append(lambda low, high: vocabulary_error(low, high, outputs, f"labels (besides {IGNORE_INDEX}, ignored)"))
    if attention_mask is not None and attention_mask.ndim == 2:
        kept = attention_mask != 0
        masked_vision = (~kept & (mm_token_type_ids != 0)).sum() if mm_token_type_ids is not None else kept.new_zeros((), dtype=torch.long)
        reductions.append(torch.stack([kept.sum(-1).min(), masked_vision]).to(torch.long))
        readers.append(lambda fewest, vision: _mask_error(attention_mask, mm_token_type_ids, fewest, vision))
    if not reductions:
        return
    values = torch.cat([r.to(device=reductions[0].device, dtype=torch.long) for r in reductions]).tolist()
    for index, read in enumerate(readers):
        error = read(*values[2 * index : 2 * index + 2])
        if error is not None:
            raise error


def check_batch(model, inputs) -> None:
    """`check_forward_inputs` of one batch `inputs` (the collator's or the processor's output, a mapping) for `model`:
    what the package's trainers run before each forward."""
    check_forward_inputs(model, *(inputs.get(name) for name in ("input_ids", "inputs_embeds", "attention_mask", "labels",
                                                                "mm_token_type_ids", "past_key_values")))


def _mask_error(attention_mask, mm_token_type_ids, fewest_kept: int, masked_vision: int) -> ValueError | None:
    """The error for a 2-D mask leaving a row empty or masking vision tokens, naming the first such row."""
    kept = attention_mask != 0
    if fewest_kept == 0:
        row = int((kept.sum(-1) == 0).nonzero()[0, 0])
        return ValueError(f"attention_mask row {row} is all zeros: every sample needs at least one token with mask 1.")
    if masked_vision:
        row = int((~kept & (mm_token_type_ids != 0)).any(-1).nonzero()[0, 0])
        return ValueError(
            f"attention_mask masks {masked_vision} image/video token(s) (mm_token_type_ids ≠ 0), the first in row {row}: "
            "the mask may leave out padding only, never vision tokens."
        )
    return None



# ---- generate: token ids and context
def check_token_id_dtype(input_ids: torch.Tensor, name: str = "input_ids") -> None:
    """ValueError naming `name` when `input_ids` do not hold integers (the embedding lookup needs them)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got a {input_ids.dtype} tensor")


def token_id_range(input_ids: torch.Tensor) -> torch.Tensor:
    """`[2]` tensor `(lowest id, highest id)` of a non-empty integer tensor, left on its device (no host sync)."""
    return torch.stack(torch.aminmax(input_ids.reshape(-1)))


def vocabulary_error(low: int, high: int, vocabulary_size: int, name: str = "input_ids") -> ValueError | None:
    """The error for token ids spanning `[low, high]`, or None when they all lie in `[0, vocabulary_size)`."""
    if low >= 0 and high < vocabulary_size:
        return None
    bad = low if low < 0 else high
    return ValueError(
        f"{name} holds token id {bad}, outside the model's vocabulary of {vocabulary_size} ids (0 … "
        f"{vocabulary_size - 1}); were these ids made with another tokenizer?"
    )


def check_token_ids(input_ids: torch.Tensor, vocabulary_size: int, name: str = "input_ids") -> None:
    """ValueError naming `name` unless `input_ids` are integers in `[0, vocabulary_size)`; one host synchronisation."""
    check_token_id_dtype(input_ids, name)
    if input_ids.numel() == 0:
        return
    low, high = token_id_range(input_ids).tolist()
    error = vocabulary_error(low, high, vocabulary_size, name)
    if error is not None:
        raise error


def context_limit(config) -> int | None:
    """The decoder's rotary positions (`text_config.max_position_embeddings` of `config`), or None."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def positions_after(limit: int, highest_prompt_position: int) -> int:
    """New tokens that still get a trained position (0 … `limit` − 1) after a prompt ending at M-RoPE position
    `highest_prompt_position` (the k-th new token sits at `highest_prompt_position + k`)."""
    return limit - 1 - highest_prompt_position


def check_prompt_fits(model, highest_prompt_position: int, input_length: int, what: str = "the prompt") -> int | None:
    """The number of new tokens that still get a trained position after `what` (ending at M-RoPE position
    `highest_prompt_position`, `input_length` tokens), or ValueError naming the numbers when none does;
    None when the model states no context."""
    limit = context_limit(model.config)
    if limit is None:
        return None
    room = positions_after(limit, highest_prompt_position)
    if room < 1:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position} ({input_length} tokens; visual tokens share "
            f"positions), leaving no room in the model's context of {limit} positions "
            "(text_config.max_position_embeddings); use fewer or smaller views or a shorter text."
        )
    return room


def budget_chosen_by_caller(kwargs: dict) -> bool:
    """Whether a generate call's budget is the caller's own: a `max_new_tokens` that is not a task's default
    (`DefaultBudget`), or a `max_length` without one; not a budget from the generation config."""
    if "max_new_tokens" in kwargs:
        return not isinstance(kwargs["max_new_tokens"], DefaultBudget)
    return "max_length" in kwargs


def shortest_answer(kwargs: dict) -> tuple[str, int] | None:
    """`(task name, tokens)` of the shortest whole answer of a generate call's task, as its stopping criteria carry it
    (`TaskSpec.stopping_criteria`); None for a call without them."""
    for criterion in kwargs.get("stopping_criteria") or ():
        if getattr(criterion, "shortest_answer", None) is not None:
            return criterion.shortest_answer_tokens()
    return None


_WARNED_BUDGETS: set[tuple[int, int, bool]] = set()  # (budget, context, chosen by the caller) already logged


def fit_budget_to_context(model, kwargs: dict, highest_prompt_position: int, input_length: int,
                          what: str = "the prompt") -> None:
    """Fit a generate call's `kwargs` to the model's context in place (the folder's `budget_to_grammars` then tells
    the task grammars the budget).

    A `max_new_tokens` past the context is lowered to the positions left after `what` (ending at M-RoPE position
    `highest_prompt_position`, `input_length` tokens): a warning when the caller chose it (`budget_chosen_by_caller`),
    else an INFO line.

    Raises:
        ValueError: naming the numbers, when no position is left, `min_new_tokens` cannot fit, or fewer new tokens
            fit than the task's shortest whole answer (`shortest_answer`).
    """
    room = check_prompt_fits(model, highest_prompt_position, input_length, what)
    if room is None:
        return
    limit = context_limit(model.config)
    shortest = shortest_answer(kwargs)
    if shortest is not None and room < shortest[1]:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, fewer than the {shortest[1]} that the shortest whole {shortest[0]} answer "
            "needs; use fewer or smaller views or a shorter text."
        )
    config = kwargs.get("generation_config") or model.generation_config
    minimum = kwargs.get("min_new_tokens", getattr(config, "min_new_tokens", None))
    if minimum is not None and minimum > room:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, but min_new_tokens={minimum} demands more; lower it or shorten the prompt."
        )
    budget = new_token_budget(model, kwargs, input_length)
    if budget is not None and budget > room:
        chosen = budget_chosen_by_caller(kwargs)
        if (budget, limit, chosen) not in _WARNED_BUDGETS:
            _WARNED_BUDGETS.add((budget, limit, chosen))
            fits = (f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens are generated "
                    "(answers longer than that stop at the context's end)")
            if chosen:
                logger.warning(f"max_new_tokens={budget} would pass the model's context of {limit} positions: {fits}. "
                               "Lower max_new_tokens to silence this.")
            else:
                logger.info(f"the task's token budget of {budget} is lowered to the model's context of {limit} positions: "
                            f"{fits}.")
        kwargs["max_new_tokens"] = room
        kwargs.pop("max_length", None)


def highest_prompt_position(model, input_ids, attention_mask=None, mm_token_type_ids=None, image_grid_thw=None) -> int:
    """The highest M-RoPE position of a `[B, L]` prompt batch as `generate` lays it out (visual tokens on their
    compressed grid positions when the views are given, else one position per real token)."""
    if mm_token_type_ids is not None and image_grid_thw is not None:
        positions, _ = model.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        if attention_mask is not None:
            positions = positions.masked_fill(attention_mask[None].to(positions.device) == 0, 0)
        return int(positions.max())
    if attention_mask is not None:
        return int(attention_mask.long().sum(dim=-1).max()) - 1
    return input_ids.shape[-1] - 1


def check_generate_inputs(model, input_ids: torch.Tensor, kwargs: dict) -> None:
    """`generate`'s checks of a prompt `input_ids` `[B, L]`: ids in the vocabulary, the prompt inside the context, the
    call's `kwargs` fitted to it (`fit_budget_to_context`). Raises ValueError as those do."""
    check_token_ids(input_ids, model.get_input_embeddings().num_embeddings)
    highest = highest_prompt_position(model, input_ids, kwargs.get("attention_mask"), kwargs.get("mm_token_type_ids"),
                                      kwargs.get("image_grid_thw"))
    fit_budget_to_context(model, kwargs, highest, input_ids.shape[1])


def check_compiled_decoding_options(kwargs: dict, scene: bool) -> None:
    """ValueError for a `generate` option in `kwargs` that rules out compiled decoding: a cache of the caller's (a
    full call), another cache implementation, or `use_cache=False`."""
    if kwargs.get("past_key_values") is not None and not scene:
        raise ValueError("compile_decoding needs generate's own static cache, but past_key_values were given: pass no "
                         "cache, or compile_decoding='off'.")
    implementation = kwargs.get("cache_implementation")
    if implementation not in (None, "static"):
        raise ValueError(f"compile_decoding needs cache_implementation='static', got {implementation!r}: drop the "
                         "option, or compile_decoding='off'.")
    if kwargs.get("use_cache") is False:
        raise ValueError("compile_decoding needs use_cache=True (the decode step continues a static cache).")


def check_scene_prompt(model, input_ids, pixel_values, image_grid_thw, attention_mask=None) -> None:
    """`encode_scene`'s checks: the unpadded `[1, L]` prompt of one scene, with its views, ids in the vocabulary and
    at least one `<|vision_end|>`. Raises ValueError naming what is wrong."""
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(
            f"encode_scene takes the prompt of ONE scene (input_ids [1, L]), got input_ids of shape {shape}; "
            "encode each scene separately and batch the questions against it."
        )
    if pixel_values is None or image_grid_thw is None:
        raise ValueError("encode_scene needs the views: pass pixel_values and image_grid_thw (GapMllmProcessor).")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("encode_scene got a padded prompt (attention_mask has zeros); pass one unpadded sample.")
    check_token_ids(input_ids, model.get_input_embeddings().num_embeddings)
    if scene_prefix_length(input_ids, model.config.vision_end_token_id) == 0:
        raise ValueError("encode_scene: the prompt has no <|vision_end|> token, so no view to encode.")


# Inputs a scene already holds: giving them again to generate(scene=...) would be ambiguous.
SCENE_OWNED_INPUTS = (
    "pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "geometry_pixel_values",
    "geometry_views_per_sample", "geometry_features", "past_key_values", "inputs_embeds", "position_ids",
)  # fmt: skip


def _check_scene_options(model, kwargs: dict) -> None:
    given = [name for name in SCENE_OWNED_INPUTS if kwargs.get(name) is not None]
    if given:
        raise ValueError(
            f"generate(scene=...) got {', '.join(given)}: the scene already holds the views and their cache; pass "
            "only the question tokens (input_ids, attention_mask), e.g. processor(text=questions)."
        )
    config = kwargs.get("generation_config") or model.generation_config
    for name, allowed in (("num_beams", 1), ("num_return_sequences", 1)):
        value = kwargs.get(name, getattr(config, name, allowed))
        if value not in (None, allowed):
            raise ValueError(
                f"generate(scene=...) supports {name}={allowed} only (got {value}): batch the questions instead, "
                "or run a full generate call without a scene."
            )
    if kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
        raise ValueError("generate(scene=...) needs use_cache=True: the scene IS a cache.")


def _check_scene_rows(scene, batch_size: int) -> None:
    if not isinstance(scene, (list, tuple)):
        return
    if len(scene) != batch_size:
        raise ValueError(f"generate(scene=[...]) got {len(scene)} scenes for {batch_size} question rows: give one "
                         "scene per row of input_ids (or one scene for all).")
    devices = {str(s.device) for s in scene if hasattr(s, "device")}
    if len(devices) > 1:
        raise ValueError(f"generate(scene=[...]) got scenes on {', '.join(sorted(devices))}: one call decodes on one "
                         "device.")


def check_scene_call(model, scene, input_ids, attention_mask, mm_token_type_ids, kwargs: dict) -> None:
    """`generate(scene=...)`'s checks: question tokens `input_ids` `[B, Lq]` (no image token, ids in the vocabulary,
    no empty row of `attention_mask` `[B, Lq]`), one scene or `B` of them on one device, each encoded by `model` as it
    is now (`check_scene_for_model`), and options a scene call supports (`kwargs`). Raises ValueError naming what is
    wrong."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        found = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate(scene=...) needs the question tokens as input_ids [B, Lq] with Lq >= 1, got {found}.")
    _check_scene_rows(scene, input_ids.shape[0])
    for distinct in {id(s): s for s in (scene if isinstance(scene, (list, tuple)) else [scene])}.values():
        check_scene_for_model(model, distinct)
    _check_scene_options(model, kwargs)
    check_token_ids(input_ids, model.get_input_embeddings().num_embeddings)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape):
        found = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(
            f"generate(scene=...): attention_mask has shape {found} but input_ids has {tuple(input_ids.shape)}; "
            "give one mask entry per question token (processor(text=questions) returns both)."
        )
    config = model.config
    vision_ids = (config.image_token_id, config.vision_start_token_id, config.vision_end_token_id)
    if any(bool((input_ids == token).any()) for token in vision_ids) or (
        mm_token_type_ids is not None and bool(mm_token_type_ids.any())
    ):
        raise ValueError(
            "generate(scene=...) got image tokens in input_ids: pass only the question suffix "
            "(processor.split_scene_prompt), not the full prompt; the scene holds the views."
        )
    if attention_mask is not None:
        empty = (~attention_mask.bool().any(dim=1)).nonzero()
        if empty.numel():
            raise ValueError(f"question {int(empty[0])} is empty (its attention_mask is all zeros).")


# ---- scene reuse: the model that encoded a scene
_INSTANCE_ATTRIBUTE = "_gap_mllm_identity_token"


@dataclass(frozen=True)
class ModelIdentity:
    """What `model_identity` returns; equal identities mean the same model object, configuration and weights."""
    instance: str
    config: str
    weights: str
    adapters: str = ""


def _instance_token(model) -> str:
    """A token unique to this model object, stored with its `id` so that a copy makes its own."""
    stored = model.__dict__.get(_INSTANCE_ATTRIBUTE)
    if stored is None or stored[0] != id(model):
        stored = (id(model), uuid.uuid4().hex)
        model.__dict__[_INSTANCE_ATTRIBUTE] = stored
    return stored[1]


def _config_digest(model) -> str:
    return hashlib.blake2b(model.config.to_json_string(use_diff=False).encode(), digest_size=16).hexdigest()


_PROBED_ELEMENTS = 16  # a tensor's elements at this many evenly strided positions (16 to 31 of them)
# PEFT adapter-layer state (BaseTunerLayer, ModulesToSaveWrapper): active, disabled, merged adapters and scales
_ADAPTER_ATTRIBUTES = ("_disable_adapters", "_active_adapter", "merged_adapters", "scaling")


def _state_tensors(model):
    """Every parameter and buffer of `model`, in one walk over its modules (a shared tensor once per module)."""
    for module in model.modules():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                yield tensor


def _local(tensor):
    """The tensor whose values this process holds: a sharded DTensor's local shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _counter(tensor) -> int:
    try:
        return tensor._version  # in-place write counter (private, but stable across torch releases)
    except RuntimeError:  # inference-mode tensors keep no counter
        return -1


def _address(tensor) -> int:
    try:
        return tensor.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage
        return -1


@torch.no_grad()
def _weights_digest(model) -> str:
    """Digest of every parameter and buffer: address, in-place version, shape, dtype, float32 sum and 16 to 31 strided
    elements (fused optimizers and `.data` writes change values without bumping the version)."""
    metadata = array("q")
    sums: dict[torch.device, list] = {}
    elements: dict[tuple[str, str], list] = {}  # (device, dtype) -> probed elements, copied to the host together
    for tensor in _state_tensors(model):
        tensor = _local(tensor)
        metadata.extend((_address(tensor), _counter(tensor), hash(tensor.shape), hash(tensor.dtype)))
        if tensor.is_meta or tensor.numel() == 0:  # no values to read here
            continue
        flat = (torch.view_as_real(tensor) if tensor.is_complex() else tensor).reshape(-1)  # a view, in practice
        try:
            total = flat.sum(dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):  # a dtype without a sum kernel (e.g. float8)
            continue  # its metadata still counts
        sums.setdefault(flat.device, []).append(total)
        elements.setdefault((str(flat.device), str(flat.dtype)), []).append(flat[:: max(1, flat.numel() // _PROBED_ELEMENTS)])
    digest = hashlib.blake2b(metadata.tobytes(), digest_size=16)
    for device in sorted(sums, key=str):
        digest.update(torch.stack(sums[device]).cpu().numpy().tobytes())
    for key in sorted(elements):  # float64 on the host: exact for every dtype here (numpy has no bfloat16)
        digest.update(torch.cat(elements[key]).cpu().double().numpy().tobytes())
    return digest.hexdigest()


def _adapters_digest(model) -> str:
    """Digest of the PEFT adapter state of every module that has one ("" when there is none)."""
    states = []
    for name, module in model.named_modules():
        if hasattr(module, "_active_adapter"):  # an instance or a class attribute (PEFT sets class defaults)
            states.append(f"{name}|" + "|".join(repr(getattr(module, key, None)) for key in _ADAPTER_ATTRIBUTES))
    if not states:
        return ""
    return hashlib.blake2b("\n".join(states).encode(), digest_size=16).hexdigest()


def model_identity(model) -> ModelIdentity:
    """The `ModelIdentity` of `model` now; costs one read of the weights. Blind to state outside parameters, buffers,
    configuration and PEFT adapter attributes (a replaced `forward`, hooks, train/eval mode) and to writes that keep
    each tensor's float32 sum and probed elements."""
    return ModelIdentity(instance=_instance_token(model), config=_config_digest(model), weights=_weights_digest(model),
                         adapters=_adapters_digest(model))


def identity_mismatch(recorded: ModelIdentity, model) -> str | None:
    """What differs between `recorded` and `model` now, as a sentence, or None when they are the same."""
    current = model_identity(model)
    if recorded.instance != current.instance:
        return "it was encoded by another model object"
    if recorded.config != current.config:
        return "this model's configuration changed after it was encoded"
    if recorded.weights != current.weights:
        return ("this model's weights changed after it was encoded (a training step, load_state_dict, a dtype or "
                "device move)")
    if recorded.adapters != current.adapters:
        return ("this model's adapters changed after it was encoded (PEFT set_adapter, disable_adapter, merge or "
                "scale)")
    return None


def check_scene_for_model(model, scene) -> None:
    """ValueError unless `scene` is a `GapMllmScene` that `model`, as it is now, encoded: this model's layer count,
    key/value heads, head size, dtype, device type and `model_identity`."""
    if type(scene).__name__ != "GapMllmScene" or not hasattr(scene, "key_values"):  # the package's or a remote-code copy's class
        raise ValueError(
            f"scene must be a GapMllmScene from gap_mllm.generation.encode_scene(model, ...), got {type(scene).__name__} {scene!r:.60}"
        )
    text_config = model.config.get_text_config()
    layers = len(model.model.language_model.layers)
    heads = text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    key = scene.key_values[0][0] if scene.key_values else None
    found = "no layers" if key is None else f"{len(scene.key_values)} layers of keys {list(key.shape)} {key.dtype} on {key.device}"
    if (key is None or len(scene.key_values) != layers or key.ndim != 4 or (key.shape[1], key.shape[3]) != (heads, head_dim)
            or key.dtype != model.dtype or key.device.type != model.device.type):
        raise ValueError(
            f"this scene was encoded by a different model or placement ({found}); this model needs {layers} layers of "
            f"keys [1, {heads}, P, {head_dim}] (key/value heads, head size) in {model.dtype} on {model.device}: "
            "encode the scene with this model."
        )
    if scene.model_identity is None:
        raise ValueError("this scene records no model identity (it was not made by gap_mllm.generation.encode_scene); "
                         "encode it with this model.")
    mismatch = identity_mismatch(scene.model_identity, model)
    if mismatch is not None:
        raise ValueError(f"this scene cannot be used with this model: {mismatch}. Encode the scene again with "
                         "gap_mllm.generation.encode_scene(model, ...).")
