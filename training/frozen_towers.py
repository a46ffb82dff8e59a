"""Which part of each encoder tower a run leaves frozen, what that part outputs, and how training continues from it.

In stages 1 and 2 both encoder towers are frozen (docs/method.md §8.3), so what they output for a sample depends
only on their weights and the tensors they receive (its views, with the marker painted in): the feature cache
(training/feature_cache.py) stores it once per distinct input and the training forward starts after it. The cut is
placed before the first module the recipe trains:

    Qwen ViT     "merged": everything frozen (patch embedding, blocks, the merger and DeepStack mergers): the
                 cache holds the ViT's output tokens, per level `[N_merged, D_out]`;
                 "blocks": the patch embedding and every block frozen, a merger trains: the cache holds the
                 hidden states the mergers read (`[K + 1, P, D_vit]`: the K DeepStack taps, then the last
                 block), and the mergers run in the training forward;
                 not cached when the patch embedding or a block trains (the tower runs as usual).
    VGGT         cached when its aggregator is frozen and the model uses geometry: the tapped layers
                 (`GapMllmForConditionalGeneration.get_geometry_features`); GAP's geometry mergers, which train,
                 read them in the training forward.

Each fingerprint hashes the weights and buffers (values, shapes, dtypes) of the frozen part the cache replaces
and the config fields that change its output, so new weights give new features; it is stable across
`save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

import hashlib
import json

import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from .param_groups import unwrap_gap_model
from .sample_tensors import FrozenVisionFeatures

# Geometry-config fields that decide the aggregator's tapped features. Everything else in the config
# (dtype bookkeeping that differs before and after a save/reload, the source checkpoint's name, the
# reconstruction heads, transformers' generic fields) must not change the cache folder.
GEOMETRY_FEATURE_FIELDS = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
    "num_register_tokens", "layer_norm_eps", "qk_norm", "rope_frequency", "patch_embed_num_hidden_layers",
    "patch_embed_num_register_tokens", "patch_embed_layer_norm_eps", "tapped_layers", "reference_frame",
    "image_mean", "image_std", "autocast_dtype",
)  # fmt: skip
VISION_FEATURE_FIELDS = (
    "depth", "hidden_size", "hidden_act", "intermediate_size", "num_heads", "in_channels", "patch_size",
    "spatial_merge_size", "temporal_patch_size", "out_hidden_size", "num_position_embeddings",
    "deepstack_visual_indexes",
)  # fmt: skip
VISION_MERGER_PREFIXES = ("merger.", "deepstack_merger_list.")


def _hash_tensors(digest, named_tensors) -> None:
    for name, tensor in sorted(named_tensors):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())


# ------------------------------------------------------------------------------------------------ geometry


def geometry_cache_unusable_reason(model) -> str | None:
    """Why the VGGT features of `model` cannot be cached (None when they can): a model without geometry has
    none, and a trainable encoder would receive no gradient through cached features (it would never change)."""
    gap = unwrap_gap_model(model)
    if not gap.config.use_geometry:
        return "the model has use_geometry=False (no geometry encoder)"
    trainable = [name for name, p in gap.geometry_encoder.named_parameters() if p.requires_grad]
    if trainable:
        return (f"the geometry encoder is trainable ({len(trainable)} tensors, e.g. {trainable[0]}): cached features "
                "would stop its gradient, so it would never change")
    return None


def geometry_fingerprint(model) -> str:
    """Hex digest of what the tapped VGGT features depend on: the aggregator's weights and buffers, the
    geometry-config fields of `GEOMETRY_FEATURE_FIELDS`, the level → layer map and the device type the encoder
    runs on (autocast "auto" runs bf16 on CUDA only)."""
    gap = unwrap_gap_model(model)
    geometry = gap.config.geometry_config
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps({name: getattr(geometry, name, None) for name in GEOMETRY_FEATURE_FIELDS},
                             sort_keys=True, default=str).encode())
    digest.update(json.dumps(gap.config.level_geometry_layers).encode())
    encoder = getattr(gap.geometry_encoder, "aggregator", gap.geometry_encoder)
    digest.update(next(encoder.parameters()).device.type.encode())
    # the aggregator alone produces the tapped features (VGGT's reconstruction heads do not feed them)
    _hash_tensors(digest, encoder.state_dict().items())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ vision


def vision_cache_kind(model) -> tuple[str | None, str]:
    """`(kind, why)`: "merged" or "blocks" (module docstring), or None with the reason the ViT is not cached."""
    visual = unwrap_gap_model(model).model.visual
    trainable = [name for name, p in visual.named_parameters() if p.requires_grad]
    if not trainable:
        return "merged", "the whole ViT is frozen"
    before_mergers = [name for name in trainable if not name.startswith(VISION_MERGER_PREFIXES)]
    if not before_mergers:
        return "blocks", f"the ViT's blocks are frozen and its mergers train ({len(trainable)} tensors)"
    return None, (f"the ViT trains before its mergers ({len(before_mergers)} tensors, e.g. {before_mergers[0]}): "
                  "cached features would stop its gradient")


def vision_fingerprint(model, kind: str) -> str:
    """Hex digest of what the cached ViT output of `kind` depends on: the vision-config fields of
    `VISION_FEATURE_FIELDS` and the weights of the frozen part (for "blocks", everything but the mergers)."""
    visual = unwrap_gap_model(model).model.visual
    config = visual.config
    digest = hashlib.blake2b(digest_size=16)
    digest.update(kind.encode())
    digest.update(json.dumps({name: getattr(config, name, None) for name in VISION_FEATURE_FIELDS},
                             sort_keys=True, default=str).encode())
    digest.update(next(visual.parameters()).device.type.encode())
    state = visual.state_dict().items()
    if kind == "blocks":
        state = [(name, tensor) for name, tensor in state if not name.startswith(VISION_MERGER_PREFIXES)]
    _hash_tensors(digest, state)
    return digest.hexdigest()


@torch.no_grad()
def frozen_vision_features(model, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor, kind: str) -> FrozenVisionFeatures:
    """The frozen part's output for the views of `pixel_values` (`[Σ h·w, D_patch]`, grids `[V, 3]`)."""
    gap = unwrap_gap_model(model)
    if kind == "merged":
        outputs = gap.model.get_vision_features(pixel_values, image_grid_thw)
        levels = [torch.cat(outputs.pooler_output)] + [torch.cat(level) for level in outputs.deepstack_features]
        return FrozenVisionFeatures("merged", levels)
    if kind != "blocks":
        raise ValueError(f"unknown ViT cache kind {kind!r}")
    visual = gap.model.visual
    taps: dict[int, torch.Tensor] = {}
    hooks = [visual.blocks[index].register_forward_hook(lambda _m, _i, out, index=index: taps.__setitem__(index, out))
             for index in visual.deepstack_visual_indexes]
    try:
        outputs = gap.model.get_vision_features(pixel_values, image_grid_thw)
    finally:
        for hook in hooks:
            hook.remove()
    stacked = [taps[index] for index in visual.deepstack_visual_indexes] + [outputs.last_hidden_state]
    return FrozenVisionFeatures("blocks", torch.stack(stacked))


def split_vision_features(features: FrozenVisionFeatures, image_grid_thw: torch.LongTensor, views_per_sample: list[int],
                          merge_size: int) -> list[FrozenVisionFeatures]:
    """Per sample, the rows of `features` that belong to its views."""
    per_view = image_grid_thw.prod(-1)
    if features.kind == "merged":
        per_view = per_view // merge_size**2
    sizes, start = [], 0
    for count in views_per_sample:
        sizes.append(int(per_view[start : start + count].sum()))
        start += count
    if features.kind == "merged":
        parts = zip(*(torch.split(level, sizes) for level in features.levels))
        return [FrozenVisionFeatures("merged", list(part)) for part in parts]
    return [FrozenVisionFeatures("blocks", part) for part in torch.split(features.levels, sizes, dim=1)]


def vision_outputs_from_features(model, features: FrozenVisionFeatures, image_grid_thw: torch.LongTensor,
                                 grids: list | None = None):
    """The ViT's output (as `get_image_features` returns it: per-image `pooler_output` and DeepStack tuples) from
    cached features, running the mergers when they train ("blocks"). `grids`: `image_grid_thw` as host integers, when
    the caller has them (no read of a device tensor)."""
    gap = unwrap_gap_model(model)
    visual = gap.model.visual
    dtype = next(visual.parameters()).dtype
    device = next(visual.parameters()).device
    if features.kind == "merged":
        levels = [level.to(device=device, dtype=dtype) for level in features.levels]
    else:
        hidden = features.levels.to(device=device, dtype=dtype)
        levels = [visual.merger(hidden[-1])] + [merger(tap) for merger, tap in zip(visual.deepstack_merger_list, hidden[:-1])]
    merge = visual.spatial_merge_size**2
    split_sizes = ((image_grid_thw.prod(-1) // merge).tolist() if grids is None
                   else [t * h * w // merge for t, h, w in grids])
    return BaseModelOutputWithDeepstackFeatures(
        pooler_output=torch.split(levels[0], split_sizes),
        deepstack_features=[torch.split(level, split_sizes) for level in levels[1:]],
    )
