"""Geometry-feature cache: the frozen geometry encoder runs once per sample, ever.

The VGGT aggregator is frozen (docs/method.md §8.3), so its tapped features depend only on its weights and
on its input. `GeometryFeatureCache.build` runs it once over a dataset and stores, per sample, the
features of every fusion level as one float16 array `[L, S, h, w, 2C]` (`<key>.npy`, read back
memory-mapped); `CachedGeometryCollator` then puts them in the batch as `geometry_features` and drops
`geometry_pixel_values`, so training never runs the encoder (GeometryAlignedModel's forward).

Invalidation, by construction rather than by bookkeeping:

    directory   <root>/<fingerprint>/: the fingerprint hashes the encoder's weights and buffers, its
                config and the level → layer map, so new weights or a new tapping give a new folder
    key         hash of the sample's exact encoder input (its views' valid `geometry_pixel_values`
                region, marker painted, and grid): any change of images, marker, preprocessing mode,
                pixel limits or resize gives a new key, and a stale entry is never read

Entries are written to a temporary file and renamed, so concurrent writers (several processes) and a
killed run never leave a half-written entry behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gap_mllm.processing.errors import DataError

from .cache_cost import cost_of_entry, ensure_disk_room
from .param_groups import unwrap_gap_model

FLOAT16_MAX = float(np.finfo(np.float16).max)


# Geometry-config fields that decide the aggregator's tapped features. Everything else in the config
# (dtype bookkeeping that differs before and after a save/reload, the source checkpoint's name, the
# reconstruction heads, transformers' generic fields) must not change the cache folder.
FEATURE_CONFIG_FIELDS = (
    "image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio",
    "num_register_tokens", "layer_norm_eps", "qk_norm", "rope_frequency", "patch_embed_num_hidden_layers",
    "patch_embed_num_register_tokens", "patch_embed_layer_norm_eps", "tapped_layers", "reference_frame",
    "image_mean", "image_std", "autocast_dtype",
)  # fmt: skip


def encoder_fingerprint(model) -> str:
    """Hex digest of what the tapped features depend on: the aggregator's weights and buffers (values,
    shapes, dtypes), the geometry-config fields of `FEATURE_CONFIG_FIELDS`, the level → layer map and the
    device type the encoder runs on (autocast).
    Stable across `save_pretrained` / `from_pretrained`."""
    gap = unwrap_gap_model(model)
    geometry = gap.config.geometry_config
    settings = {name: getattr(geometry, name, None) for name in FEATURE_CONFIG_FIELDS}
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    digest.update(json.dumps(gap.config.level_geometry_layers).encode())
    encoder = getattr(gap.geometry_encoder, "aggregator", gap.geometry_encoder)
    # autocast_dtype "auto" runs bf16 autocast on CUDA only: the device type decides the numbers too
    digest.update(next(encoder.parameters()).device.type.encode())
    # the aggregator alone produces the tapped features (VGGT's reconstruction heads do not feed them)
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_unusable_reason(model) -> str | None:
    """Why the geometry-feature cache cannot serve `model`, or None when it can.

    The cache replaces the encoder's forward, so a trainable encoder would receive no gradient (its
    weights would silently never change), and a model without geometry has nothing to cache.
    """
    gap = unwrap_gap_model(model)
    if not gap.config.use_geometry:
        return "the model has use_geometry=False (no geometry encoder)"
    trainable = [name for name, p in gap.geometry_encoder.named_parameters() if p.requires_grad]
    if trainable:
        return (f"the geometry encoder is trainable ({len(trainable)} tensors, e.g. {trainable[0]}): cached features "
                "would stop its gradient, so it would never change")
    return None


@dataclass
class CacheStats:
    computed: int = 0
    reused: int = 0
    skipped: int = 0


class GeometryFeatureCache:
    """Per-sample store of the encoder's tapped features for one encoder (see the module docstring).

    Args:
        directory: the cache root; entries go to `<directory>/<fingerprint>/`.
        model: the GAP-MLLM (or a wrapper of it) whose encoder is cached.
    """

    def __init__(self, directory, model):
        reason = cache_unusable_reason(model)
        if reason is not None:
            raise ValueError(f"cannot use a geometry-feature cache: {reason}. Turn the cache off (cache.enabled=false).")
        gap = unwrap_gap_model(model)
        self.fingerprint = encoder_fingerprint(gap)
        self.folder = Path(directory) / self.fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)
        self.patch_size = gap.config.geometry_config.patch_size
        self.num_levels = gap.config.num_fusion_levels

    # ------------------------------------------------------------------ keys
    def sample_inputs(self, batch) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sample of a processor batch: its encoder input `[S, 3, 14h, 14w]` and grid rows `[S, 3]`."""
        grids = batch["image_grid_thw"]
        pixels = batch["geometry_pixel_values"]
        out, start = [], 0
        for count in batch["geometry_views_per_sample"].tolist():
            _, h, w = grids[start].tolist()
            out.append((pixels[start : start + count, :, : h * self.patch_size, : w * self.patch_size], grids[start : start + count]))
            start += count
        return out

    @staticmethod
    def key(pixels: torch.Tensor, grids: torch.Tensor) -> str:
        """Hash of one sample's exact encoder input (shape, float32 values, grid)."""
        digest = hashlib.blake2b(digest_size=16)
        digest.update(str(tuple(pixels.shape)).encode())
        digest.update(pixels.detach().to(torch.float32).contiguous().numpy().tobytes())
        digest.update(grids.detach().to(torch.int64).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def batch_keys(self, batch) -> list[str]:
        return [self.key(pixels, grids) for pixels, grids in self.sample_inputs(batch)]

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.npy"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    # ------------------------------------------------------------------ storage
    def store(self, key: str, levels: list[torch.Tensor]) -> None:
        """Write one sample's features (per level `[S, h, w, 2C]`) as float16 `[L, S, h, w, 2C]`."""
        array = torch.stack([level.detach().float().cpu() for level in levels]).numpy()
        if not np.isfinite(array).all() or np.abs(array).max() > FLOAT16_MAX:
            raise ValueError(f"geometry features of cache key {key} are not finite in float16; the cache cannot hold them")
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(handle, "wb") as file:
            np.save(file, array.astype(np.float16))
        os.replace(temporary, self.path(key))

    def load(self, key: str) -> list[torch.Tensor]:
        """One sample's features: per level a float16 `[S, h, w, 2C]` tensor (read from a memory map)."""
        try:
            mapped = np.load(self.path(key), mmap_mode="r")
        except FileNotFoundError as error:
            raise KeyError(
                f"geometry cache {self.folder} has no entry {key}: build it first (GeometryFeatureCache.build) "
                "with the same model, data and processor"
            ) from error
        return [torch.from_numpy(np.array(mapped[level])) for level in range(mapped.shape[0])]

    # ------------------------------------------------------------------ filling
    @torch.no_grad()
    def build(self, model, dataset, collator, batch_size: int = 1, skip_errors: bool = False) -> CacheStats:
        """Run the encoder on every sample of `dataset` (through `collator`, marker painted) that has no
        entry yet, and store the features. Returns how many were computed, reused and skipped.

        skip_errors: a batch the collator rejects (`DataError`, e.g. a bad sample under the "skip" policy)
            is left out instead of stopping; training meets and reports it again.
        """
        gap = unwrap_gap_model(model)
        was_training = gap.training
        gap.eval()
        stats = CacheStats()
        try:
            for start in range(0, len(dataset), batch_size):
                examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                try:
                    batch = collator(examples)
                except DataError:
                    if not skip_errors:
                        raise
                    stats.skipped += len(examples)
                    continue
                keys = self.batch_keys(batch)
                missing = [index for index, key in enumerate(keys) if key not in self]
                stats.reused += len(keys) - len(missing)
                if not missing:
                    continue
                device = gap.device
                features = gap.get_geometry_features(
                    batch["geometry_pixel_values"].to(device),
                    batch["image_grid_thw"].to(device),
                    batch["geometry_views_per_sample"].tolist(),
                )
                for index in missing:
                    if stats.computed == 0:  # log the cost; refuse before writing if the disk lacks the room
                        ensure_disk_room(self.folder, cost_of_entry([level[index] for level in features]),
                                         len(dataset) - start - index)
                    self.store(keys[index], [level[index] for level in features])
                    stats.computed += 1
        finally:
            gap.train(was_training)
        return stats


class CachedGeometryCollator:
    """Wrap a collator: replace `geometry_pixel_values` by the cached `geometry_features`
    (per level, one float16 `[S_b, h_b, w_b, 2C]` tensor per sample). A missing entry is a KeyError."""

    def __init__(self, collator, cache: GeometryFeatureCache):
        self.collator = collator
        self.cache = cache

    def __call__(self, examples):
        batch = self.collator(examples)
        per_sample = [self.cache.load(key) for key in self.cache.batch_keys(batch)]
        batch["geometry_features"] = [[sample[level] for sample in per_sample] for level in range(self.cache.num_levels)]
        del batch["geometry_pixel_values"]
        return batch
