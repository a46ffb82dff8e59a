"""Sizes of a GAP-MLLM configuration: checked when the config is made, priced before the weights are allocated.

Without these checks a hidden size of 0 or -32 builds a model that fails at its first forward, a float
size fails deep inside `nn.Linear`, and `hidden_size=10**9` or `num_hidden_layers=10**6` starts allocating
gigabytes before anything says no (or the process is killed for memory).

- `check_sizes`: every size of the text, vision, geometry and fusion configs is an integer ≥ 1 (counts of
  extra tokens ≥ 0); `config_name.field` is named in the error.
- `estimate_num_parameters`: the weights of the large matrices and embeddings, from the config alone (a
  lower bound of the real count, within 2 % of it: 3.236 B counted for the 3.238 B of Qwen3-VL-2B +
  VGGT-1B, 98 % of the tiny test model's).
- `MAX_PARAMETERS`: a configuration above this many parameters is refused as a mistake (the largest dense
  Qwen3-VL, 32 B, with VGGT-1B is ~30 times below it).
- `check_memory_for_parameters`: before the model allocates its weights on the CPU or a GPU (not on the meta
  device, where `from_pretrained` builds, nor under DeepSpeed ZeRO-3), refuse when even the lower bound does
  not fit in the memory available there.
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


def _text_parameters(text, tied: bool) -> int:
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    hidden, heads, kv_heads = text.hidden_size, text.num_attention_heads, text.num_key_value_heads
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o; k, v
    layer = attention + 3 * hidden * text.intermediate_size  # gate, up, down
    embeddings = text.vocab_size * hidden * (1 if tied else 2)
    return embeddings + text.num_hidden_layers * layer


def _vision_parameters(vision) -> int:
    hidden = vision.hidden_size
    layer = 4 * hidden * hidden + 2 * hidden * vision.intermediate_size  # qkv + proj; MLP
    patch_embed = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2 * hidden
    merged = hidden * vision.spatial_merge_size**2
    mergers = (1 + len(getattr(vision, "deepstack_visual_indexes", None) or [])) * (merged * merged + merged * vision.out_hidden_size)
    return vision.depth * layer + patch_embed + vision.num_position_embeddings * hidden + mergers


def _geometry_parameters(geometry) -> int:
    hidden = geometry.hidden_size
    block = 4 * hidden * hidden + 2 * int(geometry.mlp_ratio * hidden) * hidden  # qkv + proj; MLP
    patches = (geometry.image_size // geometry.patch_size) ** 2
    patch_embed = geometry.patch_embed_num_hidden_layers * block + 3 * geometry.patch_size**2 * hidden + patches * hidden
    return patch_embed + 2 * geometry.num_hidden_layers * block  # frame and global blocks


def _fusion_parameters(config) -> int:
    fusion, geometry = config.geometry_fusion_config, config.geometry_config
    vision = config.vlm_config.vision_config
    width = vision.out_hidden_size
    merger = 2 * geometry.hidden_size * vision.spatial_merge_size**2 * fusion.merger_hidden_size + fusion.merger_hidden_size * width
    fuse = {"gated": 2 * width * width, "concat": 2 * width * width,
            "cross_attention": fusion.cross_attention_num_layers * (4 + 2 * fusion.cross_attention_mlp_ratio) * width * width}
    return config.num_fusion_levels * (merger + fuse.get(fusion.method, 0))


def estimate_num_parameters(config) -> int:
    """A lower bound of the parameter count of a `GapMllmConfig` (module docstring), from the config alone."""
    vlm = config.vlm_config
    tied = bool(getattr(vlm, "tie_word_embeddings", False) or getattr(vlm.text_config, "tie_word_embeddings", False))
    total = _text_parameters(vlm.text_config, tied) + _vision_parameters(vlm.vision_config)
    if config.use_geometry:
        total += _geometry_parameters(config.geometry_config) + _fusion_parameters(config)
    return total


def check_parameter_count(config) -> int:
    """`estimate_num_parameters(config)`, or ValueError above `MAX_PARAMETERS`."""
    count = estimate_num_parameters(config)
    if count > MAX_PARAMETERS:
        vlm = config.vlm_config
        raise ValueError(
            f"this configuration has at least {count:.3g} parameters, above the sanity bound of {MAX_PARAMETERS:.0e} "
            f"(text hidden_size {vlm.text_config.hidden_size} × {vlm.text_config.num_hidden_layers} layers, vision "
            f"{vlm.vision_config.hidden_size} × {vlm.vision_config.depth}, geometry {config.geometry_config.hidden_size} × "
            f"{config.geometry_config.num_hidden_layers}); check the sizes."
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
    """ValueError when the weights of `config`, in the current default dtype, cannot fit in the memory left on
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
            f"{available / 2**30:.1f} GiB are available on {device}; use a smaller configuration, a smaller dtype "
            "(from_pretrained(..., dtype=torch.bfloat16)) or another device (device_map=...)."
        )


__all__ = ["MAX_PARAMETERS", "available_memory", "check_memory_for_parameters", "check_parameter_count",
           "check_sizes", "check_vlm_sizes", "estimate_num_parameters"]
