"""Sizes of a GAP-MLLM configuration: checked when the config is made, priced before the weights are allocated.

Without these checks a hidden size of 0 or -32 builds a model that fails at its first forward, a float
size fails deep inside `nn.Linear`, and `hidden_size=10**9` or `num_hidden_layers=10**6` starts allocating
gigabytes before anything says no (or the process is killed for memory).

- `check_sizes`: every size of the text, vision, geometry and fusion configs is an integer ≥ 1 (counts of
  extra tokens ≥ 0); `config_name.field` is named in the error.
- `estimate_num_parameters`: the weights of the large matrices and embeddings, from the config alone (a
  lower bound of the real count, within 2 % of it: 3.236 B counted for the 3.238 B of Qwen3-VL-2B +
  VGGT-1B, 98 % of the tiny test model's). It is the sum of `parameter_parts`, one per group of size fields
  that allocates weights — every such field counts (register tokens, the reconstruction heads when they are
  switched on), since a field outside the estimate would reach the allocator unpriced.
- `MAX_PARAMETERS`: a configuration above this many parameters is refused as a mistake (the largest dense
  Qwen3-VL, 32 B, with VGGT-1B is ~30 times below it).
- `check_memory_for_parameters`: before the model (or the geometry encoder alone) allocates its weights on the
  CPU or a GPU (not on the meta device, where `from_pretrained` builds, nor under DeepSpeed ZeRO-3), refuse
  when even the lower bound does not fit in the memory available there.

Both refusals name the largest part with its fields and values (`geometry_config.num_register_tokens=…`).
"""

from __future__ import annotations

import numbers
import os

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


# One part of the estimate: (the config fields that size it, with their values; its parameter count). The
# errors name the largest part, so that an absurd size is found by its field, not by the total alone.
Part = tuple[str, int]


def _fields(prefix: str, config, *names: str) -> str:
    """`prefix.a=1, b=2`: the fields `names` of `config` with their values, for a part's label."""
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
    """The matrices of one VGGT / DINOv2 block of `width` channels: qkv + proj, MLP."""
    return 4 * width * width + 2 * int(mlp_ratio * width) * width


def _dpt_head_parameters(geometry) -> int:
    """The convolution and projection weights of one DPT head (geometry_heads_dpt.py)."""
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
    merger = 2 * geometry.hidden_size * vision.spatial_merge_size**2 * fusion.merger_hidden_size + fusion.merger_hidden_size * width
    fuse = {"gated": 2 * width * width, "concat": 2 * width * width,
            "cross_attention": fusion.cross_attention_num_layers * (4 + 2 * fusion.cross_attention_mlp_ratio) * width * width}
    levels = config.num_fusion_levels
    return [
        (_fields("geometry_fusion_config", fusion, "merger_hidden_size") + f" ({levels} levels)", levels * merger),
        (_fields("geometry_fusion_config", fusion, "method", "cross_attention_num_layers", "cross_attention_mlp_ratio")
         + f" (width {width}, {levels} levels)", levels * fuse.get(fusion.method, 0)),
    ]


def parameter_parts(config) -> list[Part]:
    """The parts of `estimate_num_parameters(config)`, each labelled with the config fields that size it.
    `config`: a `GapMllmConfig`, or a `GapMllmGeometryConfig` alone (the geometry encoder built by itself)."""
    if not hasattr(config, "vlm_config"):
        return _geometry_parts(config)
    vlm = config.vlm_config
    tied = bool(getattr(vlm, "tie_word_embeddings", False) or getattr(vlm.text_config, "tie_word_embeddings", False))
    parts = _text_parts(vlm.text_config, tied) + _vision_parts(vlm.vision_config)
    if config.use_geometry:
        parts += _geometry_parts(config.geometry_config) + _fusion_parts(config)
    return parts


def estimate_num_parameters(config) -> int:
    """A lower bound of the parameter count of a `GapMllmConfig` (module docstring), from the config alone (or of
    the geometry encoder of a `GapMllmGeometryConfig`)."""
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
    """ValueError when the weights of `config` (as for `parameter_parts`), in the current default dtype, cannot fit in the memory left on
    the current default device (nothing is checked on the meta device, where `from_pretrained` builds, nor under
    DeepSpeed ZeRO-3, which partitions the weights as they are created)."""
    import torch
    from transformers.integrations import is_deepspeed_zero3_enabled

    device = torch.get_default_device()
    if device.type == "meta" or is_deepspeed_zero3_enabled():  # ZeRO-3 partitions the weights as they are made
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


__all__ = ["MAX_PARAMETERS", "available_memory", "check_memory_for_parameters", "check_parameter_count",
           "check_sizes", "check_vlm_sizes", "estimate_num_parameters", "largest_part", "parameter_parts"]
