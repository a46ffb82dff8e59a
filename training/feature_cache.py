"""Feature cache: the frozen encoders (and the processor) run once per sample, ever.

In stages 1 and 2 the Qwen ViT and VGGT are frozen (docs/method.md §8.3), so what they give a sample depends only on
their weights and on the sample. `FeatureCache.build` runs the collator chain (processor, marker, answer-only
labels, auxiliary targets) and the frozen part of each tower once per sample (training/frozen_towers.py says where
each tower is cut) and stores, per sample, one safetensors file:

    tokens      input_ids, labels, mm_token_type_ids `[L]` (no padding), image_grid_thw `[V, 3]`, and the targets
                of the enabled auxiliary losses
    geometry    the VGGT taps, `geometry.<level>` `[V, h, w, 2C]`                  (when VGGT is frozen)
    vision      "merged": `vision.<level>` `[N, D_out]`; "blocks": `vision.blocks` `[K + 1, P, D_vit]`
                                                                                   (when the ViT is cached)

`CachedCollator` then makes every training batch from those files: no image is decoded, the processor and the
cached towers never run, and the batch is padded or packed (training/sample_tensors.py). When a tower is trainable
it is not cached: the collator runs the processor for its input, as without a cache, and takes the other tower's
features from the cache.

Invalidation, by construction rather than bookkeeping:

    folder   <directory>/<fingerprint>/: the fingerprint hashes the frozen weights of each cached tower (with the
             config fields that change its output), the processor's settings, tokenizer and chat template, the
             collator's settings (labels, marker, auxiliary targets), the storage dtype and the source of the
             modules that turn a sample into tensors: new weights, settings or code give a new folder
    key      hash of the sample's content as the collator reads it: the encoded bytes of every view (or the file
             they name), prompt, answer, marker pixel, and depth/poses: any change gives a new key, and a stale
             entry is never read

The key hashes the encoded image files, not decoded pixels, so a training batch needs no decoding: the dataset's
images are read undecoded (`undecoded_images`). Entries are written to a temporary file and renamed, so concurrent
writers and a killed run never leave a half-written entry. A sample the collator rejects while the cache is built
(under `data.on_bad_sample: skip`) gets a `.bad` entry with the reason, and training skips and counts it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import safetensors.torch
import torch
import xxhash  # a dependency of datasets
from tqdm.auto import tqdm

from gap_mllm import chat_format, control_tokens, image_alignment, processing_gap_mllm, visual_prompt
from gap_mllm.processing import collator as collator_module
from gap_mllm.processing.errors import DataError

from . import aux_targets, frozen_towers, sample_tensors
from .bad_samples import SKIPPED_KEY, sample_name
from .cache_cost import cost_of_sample, ensure_disk_room
from .frozen_towers import (
    frozen_vision_features,
    geometry_cache_unusable_reason,
    geometry_fingerprint,
    split_vision_features,
    vision_cache_kind,
    vision_fingerprint,
)
from .param_groups import unwrap_gap_model
from .sample_tensors import FrozenVisionFeatures, collate_samples, split_batch

logger = logging.getLogger(__name__)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Modules whose code decides what a sample's tensors are: a change there must not serve an old entry.
_CODE_MODULES = (processing_gap_mllm, image_alignment, visual_prompt, chat_format, control_tokens, collator_module,
                 aux_targets, sample_tensors, frozen_towers)
# Sample fields the collator chain reads (the images are hashed apart, from their encoded bytes).
_CONTENT_FIELDS = ("prompt", "answer", "pixel_coords", "depth", "intrinsics", "cam_to_world")


class CacheUnusableError(ValueError):
    """No tower of the model can be cached (both trainable, or no geometry and a trainable ViT)."""


def cache_unusable_reason(model) -> str | None:
    """Why nothing of `model` can be cached (None when at least one tower can)."""
    vision_kind, vision_why = vision_cache_kind(model)
    geometry_why = geometry_cache_unusable_reason(model)
    if vision_kind is None and geometry_why is not None:
        return f"{vision_why}; and {geometry_why}"
    return None


def undecoded_images(dataset: datasets.Dataset) -> datasets.Dataset:
    """`dataset` with its `images` column left encoded (`{"bytes", "path"}` per view), as the cache keys and
    `CachedCollator` read it (no image is decoded for a cached sample)."""
    return dataset.cast_column("images", datasets.List(datasets.Image(decode=False)))


def decoded_example(example: dict) -> dict:
    """`example` with its encoded views decoded to PIL images (what the processor takes)."""
    views = []
    for view in example["images"]:
        if isinstance(view, PIL.Image.Image):
            views.append(view)
        elif view.get("bytes") is not None:
            views.append(PIL.Image.open(io.BytesIO(view["bytes"])))
        else:
            views.append(PIL.Image.open(view["path"]))
    return {**example, "images": views}


def sample_key(example: dict) -> str:
    """Hex digest of what the collator chain reads from `example` (module docstring): the encoded bytes of each
    view (or of the file it names) and the fields of `_CONTENT_FIELDS`."""
    digest = xxhash.xxh3_128()
    for view in example["images"]:
        if isinstance(view, PIL.Image.Image):
            raise TypeError("the feature cache keys samples on their encoded image files: read the dataset with "
                            "undecoded_images(dataset) (training/feature_cache.py)")
        data = view.get("bytes")
        if data is None:
            data = Path(view["path"]).read_bytes()
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    for name in _CONTENT_FIELDS:
        value = example.get(name)
        digest.update(f"\0{name}\0".encode())
        if isinstance(value, str):
            digest.update(value.encode("utf-8"))
        elif value is not None:
            array = np.asarray(value)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def processing_fingerprint(processor, collator_settings: dict) -> str:
    """Hex digest of everything besides the weights that decides a sample's tensors: the processor's settings,
    chat template and tokenizer, the collator's settings and the code of `_CODE_MODULES`."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(processor.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(processor.chat_template).encode())
    tokenizer = json.loads(processor.tokenizer.backend_tokenizer.to_str())
    for state in ("padding", "truncation"):  # set by each call (e.g. padding=True), not part of the vocabulary
        tokenizer.pop(state, None)
    digest.update(json.dumps(tokenizer, sort_keys=True).encode())
    digest.update(json.dumps(collator_settings, sort_keys=True, default=str).encode())
    for module in _CODE_MODULES:
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


@dataclass
class CacheStats:
    computed: int = 0
    reused: int = 0
    skipped: int = 0


class FeatureCache:
    """Per-sample store of a sample's tokens and its frozen towers' outputs (module docstring).

    Args:
        directory: the cache root; entries go to `<directory>/<fingerprint>/`.
        model: the GAP-MLLM (or a wrapper of it) whose frozen towers are cached.
        processor: its `GapMllmProcessor`.
        collator_settings: what else decides a sample's tensors (e.g. `{"marker": True, "aux": {...}}`).
        dtype: storage dtype of the features ("float16", "bfloat16" or "float32"; tokens stay integers).
    """

    def __init__(self, directory, model, processor, collator_settings: dict | None = None, dtype: str = "float16"):
        reason = cache_unusable_reason(model)
        if reason is not None:
            raise CacheUnusableError(f"cannot use a feature cache: {reason}. Turn the cache off (cache.enabled=false).")
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"cache dtype {dtype!r}; choose from {sorted(STORAGE_DTYPES)}")
        gap = unwrap_gap_model(model)
        self.dtype = STORAGE_DTYPES[dtype]
        self.vision_kind, self.vision_reason = vision_cache_kind(gap)
        self.geometry_reason = geometry_cache_unusable_reason(gap)
        self.caches_geometry = self.geometry_reason is None
        # every tower the model has is cached: batches come from the entries alone
        self.complete = self.vision_kind is not None and (self.caches_geometry or not gap.config.use_geometry)
        self.merge_size = gap.config.vlm_config.vision_config.spatial_merge_size
        self.num_levels = gap.config.num_fusion_levels if gap.config.use_geometry else 0
        digest = hashlib.blake2b(digest_size=16)
        digest.update(dtype.encode())
        digest.update(processing_fingerprint(processor, collator_settings or {}).encode())
        if self.caches_geometry:
            digest.update(b"geometry" + geometry_fingerprint(gap).encode())
        if self.vision_kind is not None:
            digest.update(b"vision" + vision_fingerprint(gap, self.vision_kind).encode())
        self.fingerprint = digest.hexdigest()
        self.folder = Path(directory) / self.fingerprint
        self.folder.mkdir(parents=True, exist_ok=True)

    def describe(self) -> str:
        vision = f"ViT: {self.vision_kind} ({self.vision_reason})" if self.vision_kind else f"ViT not cached ({self.vision_reason})"
        geometry = "VGGT: cached" if self.caches_geometry else f"VGGT not cached ({self.geometry_reason})"
        return f"{vision}; {geometry}; folder {self.folder}"

    # ------------------------------------------------------------------ entries
    def path(self, key: str) -> Path:
        return self.folder / f"{key}.safetensors"

    def bad_path(self, key: str) -> Path:
        return self.folder / f"{key}.bad"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file() or self.bad_path(key).is_file()

    def is_bad(self, key: str) -> bool:
        return self.bad_path(key).is_file()

    def store(self, key: str, sample: dict) -> None:
        """Write one sample (a `split_batch` dict with `geometry_features` / `vision_features` as cached)."""
        tensors = {}
        for name in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw", "aux_camera", "aux_scale"):
            if name in sample:
                tensors[name] = sample[name]
        for index, depth in enumerate(sample.get("aux_depth", ())):
            tensors[f"aux_depth.{index}"] = depth
        for level, features in enumerate(sample.get("geometry_features", ())):
            tensors[f"geometry.{level}"] = self._features(features, key)
        vision = sample.get("vision_features")
        if vision is not None:
            if vision.kind == "merged":
                for level, features in enumerate(vision.levels):
                    tensors[f"vision.{level}"] = self._features(features, key)
            else:
                tensors["vision.blocks"] = self._features(vision.levels, key)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        kind = vision.kind if vision is not None else ""
        self._write(self.path(key), lambda file: file.write(safetensors.torch.save(tensors, metadata={"vision": kind})))

    def mark_bad(self, key: str, reason: str) -> None:
        self._write(self.bad_path(key), lambda file: file.write(reason.encode("utf-8")))

    def _features(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        stored = tensor.detach().to(self.dtype)
        if not torch.isfinite(stored).all():
            raise ValueError(f"features of cache key {key} are not finite in {self.dtype}; the cache cannot hold them")
        return stored

    def _write(self, path: Path, write) -> None:
        handle, temporary = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, key: str) -> dict:
        """One sample as `collate_samples` takes it (features in the storage dtype)."""
        try:
            with open(self.path(key), "rb") as file:
                data = file.read()
        except FileNotFoundError as error:
            raise KeyError(f"feature cache {self.folder} has no entry {key}: build it first (FeatureCache.build) with "
                           "the same model, processor and data") from error
        tensors = safetensors.torch.load(data)
        sample = {name: tensors[name] for name in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw",
                                                   "aux_camera", "aux_scale") if name in tensors}
        depth_views = sorted(int(name.split(".")[1]) for name in tensors if name.startswith("aux_depth."))
        if depth_views:
            sample["aux_depth"] = [tensors[f"aux_depth.{index}"] for index in depth_views]
        if self.caches_geometry:
            sample["geometry_features"] = [tensors[f"geometry.{level}"] for level in range(self.num_levels)]
        if self.vision_kind == "merged":
            levels = sorted(int(name.split(".")[1]) for name in tensors if name.startswith("vision.") and name != "vision.blocks")
            sample["vision_features"] = FrozenVisionFeatures("merged", [tensors[f"vision.{level}"] for level in levels])
        elif self.vision_kind == "blocks":
            sample["vision_features"] = FrozenVisionFeatures("blocks", tensors["vision.blocks"])
        return sample

    # ------------------------------------------------------------------ filling
    @torch.no_grad()
    def build(self, model, dataset, collator, batch_size: int = 16, skip_errors: bool = False) -> CacheStats:
        """Run `collator` (the run's chain before the cache) and the frozen towers on every sample of `dataset`
        (read with `undecoded_images`) that has no entry yet, and store them. Returns how many were computed,
        reused and skipped (bad samples, under `skip_errors`: marked so training skips them too)."""
        gap = unwrap_gap_model(model)
        was_training = gap.training
        gap.eval()
        stats = CacheStats()
        try:
            for start in tqdm(range(0, len(dataset), batch_size), desc="feature cache", unit="batch", mininterval=30):
                examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                keys = [sample_key(example) for example in examples]
                missing = [index for index, key in enumerate(keys) if key not in self]
                stats.reused += len(keys) - len(missing)
                good = []
                for index in missing:
                    example = decoded_example(examples[index])
                    try:
                        collator([example])  # the chain names a bad sample (BadSampleGuard)
                    except DataError as error:
                        if not skip_errors:
                            raise
                        logger.warning("feature cache: skipping bad sample %r: %s", sample_name(example, index), error)
                        self.mark_bad(keys[index], str(error))
                        stats.skipped += 1
                        continue
                    good.append((index, example))
                if not good:
                    continue
                batch = collator([example for _, example in good])
                batch.pop(SKIPPED_KEY, None)
                samples = self.encode(gap, batch)
                for (index, _), sample in zip(good, samples):
                    if stats.computed == 0:  # log the cost; refuse before writing if the disk lacks the room
                        ensure_disk_room(self.folder, cost_of_sample(sample, self.dtype), len(dataset) - start - index)
                    self.store(keys[index], sample)
                    stats.computed += 1
        finally:
            gap.train(was_training)
        return stats

    def encode(self, model, batch: dict) -> list[dict]:
        """The per-sample dicts of a collated batch with the cached towers' outputs in place of their inputs."""
        gap = unwrap_gap_model(model)
        device = gap.device
        samples = split_batch(batch)
        views = [int(v) for v in batch["geometry_views_per_sample"].tolist()]
        if self.caches_geometry:
            levels = gap.get_geometry_features(batch["geometry_pixel_values"].to(device), batch["image_grid_thw"].to(device), views)
            for index, sample in enumerate(samples):
                sample["geometry_features"] = [level[index] for level in levels]
                sample.pop("geometry_pixel_values", None)
        if self.vision_kind is not None:
            features = frozen_vision_features(gap, batch["pixel_values"].to(device), batch["image_grid_thw"].to(device), self.vision_kind)
            for sample, part in zip(samples, split_vision_features(features, batch["image_grid_thw"], views, self.merge_size)):
                sample["vision_features"] = part
                sample.pop("pixel_values", None)
        return samples


class CachedCollator:
    """Training batches from a `FeatureCache` (module docstring), padded or packed (training/sample_tensors.py).

    Args:
        collator: the run's chain before the cache (processor, labels, aux targets, `BadSampleGuard`); runs only
            when a tower is not cached, for that tower's input.
        cache: a built `FeatureCache`.
        pad_token_id, padding_side: the tokenizer's.
        packing: pack the samples into rows (`collate_samples`); `row_tokens` caps a row's length.
        spatial_merge_size: the ViT's merge size (packed M-RoPE positions).
    """

    def __init__(self, collator, cache: FeatureCache, pad_token_id: int, padding_side: str = "left", packing: bool = False,
                 spatial_merge_size: int = 2, row_tokens: int | None = None):
        self.collator = collator
        self.cache = cache
        self.layout = {"pad_token_id": pad_token_id, "padding_side": padding_side, "packing": packing,
                       "spatial_merge_size": spatial_merge_size, "row_tokens": row_tokens}

    def __call__(self, examples: list[dict]) -> dict:
        keys = [sample_key(example) for example in examples]
        good = [(example, key) for example, key in zip(examples, keys) if not self.cache.is_bad(key)]
        skipped = len(examples) - len(good)
        if not good:
            names = [sample_name(example, index) for index, example in enumerate(examples)]
            raise DataError(f"every sample of a batch was marked bad when the feature cache was built ({names}); fix the data")
        if self.cache.complete:
            samples = [self.cache.load(key) for _, key in good]
        else:
            batch = self.collator([decoded_example(example) for example, _ in good])
            skipped += int(batch.pop(SKIPPED_KEY, torch.tensor(0)))
            samples = split_batch(batch)
            if len(samples) != len(good):
                raise RuntimeError("the collator dropped samples the feature cache has entries for; rebuild the cache")
            for sample, (_, key) in zip(samples, good):
                cached = self.cache.load(key)
                for name in ("geometry_features", "vision_features"):
                    if name in cached:
                        sample[name] = cached[name]
                if "geometry_features" in cached:
                    sample.pop("geometry_pixel_values", None)
                if "vision_features" in cached:
                    sample.pop("pixel_values", None)
        batch = collate_samples(samples, **self.layout)
        batch[SKIPPED_KEY] = torch.tensor(skipped)
        return batch
