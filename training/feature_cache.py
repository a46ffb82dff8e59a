"""Feature cache: the frozen encoders run once per distinct input they see, the processor once per sample, ever.

In stages 1 and 2 the Qwen ViT and VGGT are frozen (docs/method.md §8.3), so what they give a sample depends only on
their weights and on the tensors they receive: the sample's views as the processor prepares them, with whatever is
painted on them (the marker). Samples often share those views (the questions, boxes and captions of one scene's
frames), so the cache keeps two kinds of entry. `FeatureCache.build` runs the collator chain (processor, marker,
answer-only labels, auxiliary targets) once per sample and the frozen part of each tower (training/frozen_towers.py
says where each tower is cut) once per distinct tower input, and stores one safetensors file for each:

    towers/<tower key>     the features of one tower input
                 geometry    the VGGT taps, `geometry.<level>` `[V, h, w, 2C]`                  (when VGGT is frozen)
                 vision      "merged": `vision.<level>` `[N, D_out]`; "blocks": `vision.blocks` `[K + 1, P, D_vit]`
                                                                                            (when the ViT is cached)
    samples/<sample key>   what the sample adds: input_ids, labels, mm_token_type_ids `[L]` (no padding),
                           image_grid_thw `[V, 3]`, the targets of the enabled auxiliary losses, and (metadata
                           "towers") the key of its tower entry

`CachedCollator` then makes every training batch from those files: no image is decoded, the processor and the
cached towers never run, and the batch is padded or packed (training/sample_tensors.py). When a tower is trainable
it is not cached: the collator runs the processor for its input, as without a cache, and takes the other tower's
features from the cache.

Invalidation, by construction rather than bookkeeping:

    folder      <directory>/<fingerprint>/: the fingerprint hashes the layout version (`CACHE_LAYOUT`), the frozen
                weights of each cached tower (with the config fields that change its output), the processor's
                settings, tokenizer and chat template, the collator's settings (labels, marker, auxiliary targets),
                the storage dtype and the source of the modules that turn a sample into tensors: new weights,
                settings or code give a new folder
    sample key  hash of the sample's content as the collator reads it: the encoded bytes of every view (or the file
                they name), prompt, answer, marker pixel, and depth/poses: any change gives a new key, and a stale
                entry is never read
    tower key   hash of the very tensors the towers receive (`TOWER_INPUT_KEYS`: the ViT's patches, VGGT's pixels,
                the grids; names, dtypes, shapes and bytes), as the processor made them for the sample: the same
                views with the marker elsewhere, or none, are another input; the same bytes are the same features

The sample key hashes the encoded image files, not decoded pixels, so a training batch needs no decoding: the
dataset's images are read undecoded (`undecoded_images`). The tower key is computed where the processor runs (the
build) and recorded in the sample's entry, which is written after its tower entry. Entries are written to a
temporary file and renamed, so concurrent writers and a killed run never leave a half-written entry; a full disk
while writing is a `DiskFullError` naming the cache's own device and folder. A folder records its layout in
`layout.json`; one of another layout (an earlier version's: entries at its top, no record) is refused by name
(`CacheLayoutError`), never read, and earlier versions' folders beside it are named in a warning (their disk can be
freed).

Bad samples. A sample the collator rejects while the cache is built (under `data.on_bad_sample: skip`) gets a `.bad`
entry with the reason. The run's policy decides what a `.bad` entry (this run's or an earlier run's) does, in one rule
(`FeatureCache.serve_bad`): under `skip` the sample is skipped and counted by name (`CacheStats.skipped_names`, the
warnings, and the trainer's end-of-run warning); under `raise` it stops the run with a `DataError` naming the sample
and the reason.

Damaged entries. An entry (a sample's or a tower's) that is empty, truncated or lacks a tensor this configuration
stores (a disk error, a copy cut short) is never served. `build` checks every entry it would reuse (the safetensors
header against the file's size and the expected tensor names; no tensor data is read) and recomputes a damaged one,
with a warning naming it and the cache folder. Read while training (`load`), where the towers cannot run, a damaged
entry is removed (a `.damaged` note with the reason takes its place), named once in a warning with the folder, and
its sample is skipped and counted (a damaged tower entry: every sample that shares it); the next `build` recomputes
it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import PIL.Image
import safetensors.torch
import torch
import xxhash  # a dependency of datasets
from safetensors import SafetensorError
from tqdm.auto import tqdm

from gap_mllm import image_utils_gap_mllm, processing_gap_mllm, tasks_gap_mllm
from gap_mllm.image_utils_gap_mllm import read_image_file
from gap_mllm.processing import collator as collator_module
from gap_mllm.processing.errors import DataError, DiskFullError, device_of, names_full_disk

from . import aux_targets, frozen_towers, sample_tensors
from .bad_samples import SKIPPED_KEY, names_text, sample_name
from .cache_cost import cost_of_sample, ensure_disk_room
from .frozen_towers import (
    frozen_vision_features,
    geometry_cache_unusable_reason,
    geometry_fingerprint,
    split_vision_features,
    vision_cache_kind,
    vision_fingerprint,
)
from .loss_weights import sample_label_weights
from .param_groups import unwrap_gap_model
from .sample_tensors import TOWER_INPUT_KEYS, FrozenVisionFeatures, collate_samples, split_batch, tower_inputs

logger = logging.getLogger(__name__)
STORAGE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# Modules whose code decides what a sample's tensors are: a change there must not serve an old entry.
_CODE_MODULES = (processing_gap_mllm, image_utils_gap_mllm, tasks_gap_mllm, collator_module,
                 aux_targets, sample_tensors, frozen_towers)
# Sample fields the collator chain reads (the images are hashed apart, from their encoded bytes).
_CONTENT_FIELDS = ("prompt", "answer", "pixel_coords", "depth", "intrinsics", "cam_to_world")


# tensors every sample entry holds (the tokens); a tower entry's follow the configuration (`expected_tower_tensors`)
_TOKEN_TENSORS = ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw")
SAFETENSORS_LENGTH_BYTES = 8  # a safetensors file: an 8-byte little-endian header length, the JSON header, the data
# The folder layout (module docstring), part of the fingerprint and recorded in each folder's LAYOUT_FILE.
# 1: one entry per sample, features included (entries at the folder's top, no record); 2: tower and sample entries.
CACHE_LAYOUT = 2
LAYOUT_FILE = "layout.json"
TOWERS_KEY = "towers"  # a sample entry's metadata field naming its tower entry


class CacheUnusableError(ValueError):
    """No tower of the model can be cached (both trainable, or no geometry and a trainable ViT)."""


class CacheLayoutError(ValueError):
    """A cache folder of another layout than this version's (`CACHE_LAYOUT`): refused by name, never read."""


class DamagedEntryError(DataError):
    """A feature-cache entry that cannot be served (empty, truncated, a tensor missing); already reported and set
    aside: its sample is skipped until the next `build` recomputes it."""


def safetensors_damage(file, size: int, expected) -> str | None:
    """What is wrong with a safetensors file of `size` bytes read from binary `file` (only its header is read), or
    None: it is empty or cut short, its header does not parse, or it lacks a tensor of `expected`."""
    return safetensors_header(file, size, expected)[0]


def safetensors_header(file, size: int, expected) -> tuple[str | None, dict]:
    """`(damage, header)` of a safetensors file (`safetensors_damage`); the header's `__metadata__` (a dict, empty
    when there is none) is what is read of a sound file, `{}` for a damaged one."""
    if size == 0:
        return "the file is empty", {}
    head = file.read(SAFETENSORS_LENGTH_BYTES)
    if len(head) < SAFETENSORS_LENGTH_BYTES:
        return f"the file is cut short ({size} bytes)", {}
    length = int.from_bytes(head, "little")
    if SAFETENSORS_LENGTH_BYTES + length > size:
        return f"the file is cut short inside its header ({size} bytes)", {}
    try:
        header = json.loads(file.read(length))
        ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
        metadata = dict(header.get("__metadata__") or {})
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        return "its header does not parse", {}
    needed = SAFETENSORS_LENGTH_BYTES + length + max(ends, default=0)
    if size < needed:
        return f"the file is cut short ({size} of {needed} bytes)", {}
    missing = [name for name in expected if name not in header]
    return (f"tensor(s) {', '.join(missing)} missing", {}) if missing else (None, metadata)


def _non_finite_features(tensors: dict) -> str | None:
    """What makes a loaded entry's features unusable: NaN or infinite values (no entry is stored so, `store` refuses
    them; a changed or damaged file can hold them). Checked on the CPU tensors the file was read into, before the
    batch reaches the model, so that such an entry is named as itself, not as a diverged training step."""
    bad = [name for name, tensor in sorted(tensors.items())
           if name.startswith(("geometry.", "vision.")) and not _all_finite(tensor)]
    return f"its features {', '.join(bad)} hold NaN or infinite values" if bad else None


def _all_finite(tensor: torch.Tensor) -> bool:
    """Whether every element of a CPU tensor is finite, by one sum in a wider type: NaN and infinities carry into
    the sum, and finite values cannot overflow it (float16 into float32, the others into float64). About 5x faster
    than an elementwise `isfinite` on the CPU for float16 (measured on a 3.2 M-element entry: 37 vs 213 ms on a
    loaded 2-core machine), which matters on the collator's path."""
    if tensor.dtype == torch.float16:
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is the NaN looked for, not a warning
            return bool(np.isfinite(tensor.numpy().sum(dtype=np.float32)))
    return bool(torch.isfinite(tensor.sum(dtype=torch.float64)))


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
        elif view.get("bytes") is not None:  # upright, as datasets' own decoding and every reader give it
            views.append(read_image_file(io.BytesIO(view["bytes"])))
        else:
            views.append(read_image_file(view["path"]))
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


def tower_key(sample: dict) -> str:
    """Hex digest of the tensors the towers receive for one processed sample (a `split_batch` dict): the name, dtype,
    shape and bytes of each of `TOWER_INPUT_KEYS` it holds. Samples of the same views and the same marker (or none)
    get the same key; a marker painted elsewhere changes the pixels, so the key."""
    digest = xxhash.xxh3_128()
    for name in TOWER_INPUT_KEYS:
        tensor = sample.get(name)
        if tensor is None:
            continue
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"\0{name}\0{tensor.dtype}{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def view_input_count(dataset: datasets.Dataset) -> int:
    """How many distinct tower inputs `dataset` (read with `undecoded_images`) can hold at most: its distinct pairs of
    encoded views and marker pixel (the marker counted even where it is not painted, so never fewer than the inputs
    the towers see). Reads the encoded bytes only (no decoding): the disk estimate of `build`."""
    columns = [name for name in ("images", "pixel_coords") if name in dataset.column_names]
    seen = set()
    for rows in dataset.select_columns(columns).iter(batch_size=256):
        for index, views in enumerate(rows["images"]):
            digest = xxhash.xxh3_128()
            for view in views:
                data = view.get("bytes")
                data = data if data is not None else str(view["path"]).encode("utf-8", "surrogateescape")
                digest.update(len(data).to_bytes(8, "little"))
                digest.update(data)
            coords = rows["pixel_coords"][index] if "pixel_coords" in rows else None
            digest.update(repr(None if coords is None else [int(v) for v in coords]).encode())
            seen.add(digest.digest())
    return len(seen)


def _without_remote_code_maps(settings):
    """`settings` (a processor's `to_dict`) without its `auto_map` entries at any depth: they name the files the Hub's
    `trust_remote_code` loads a class from, which decide no tensor (the code itself is hashed, `_CODE_MODULES`). A
    folder written by `save_pretrained` has them and a processor built in memory has not: the same processing made
    two keys, and the ablation's arm without stage 1 (built from stage 0 in memory) filled a second 22 GB cache of
    the very features its sibling arms had cached."""
    if isinstance(settings, dict):
        return {name: _without_remote_code_maps(value) for name, value in settings.items() if name != "auto_map"}
    return settings


def processing_fingerprint(processor, collator_settings: dict) -> str:
    """Hex digest of everything besides the weights that decides a sample's tensors: the processor's settings,
    chat template and tokenizer, the collator's settings and the code of `_CODE_MODULES`."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(_without_remote_code_maps(processor.to_dict()), sort_keys=True, default=str).encode())
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
    """What one `build` did: sample entries computed (`recomputed` of them replaced damaged ones, theirs or their
    tower entry's), reused, and bad samples skipped (by name); `encoded`: the tower inputs the towers ran on (the
    others of the computed samples were already in the cache, or shared within the build)."""

    computed: int = 0
    reused: int = 0
    skipped: int = 0
    recomputed: int = 0
    encoded: int = 0
    skipped_names: list = field(default_factory=list)

    def __str__(self) -> str:
        text = (f"{self.computed} computed ({self.recomputed} replacing damaged entries), {self.reused} reused, "
                f"{self.skipped} skipped; the towers ran on {self.encoded} distinct input(s)")
        return text + (f" (bad samples: {names_text(self.skipped_names)})" if self.skipped_names else "")


class FeatureCache:
    """Store of the frozen towers' outputs per distinct tower input and of each sample's tokens (module docstring).

    Args:
        directory: the cache root; entries go to `<directory>/<fingerprint>/`.
        model: the GAP-MLLM (or a wrapper of it) whose frozen towers are cached.
        processor: its `GapMllmProcessor`.
        collator_settings: what else decides a sample's tensors (e.g. `{"marker": True, "aux": {...}}`).
        dtype: storage dtype of the features ("float16", "bfloat16" or "float32"; tokens stay integers).

    Raises:
        CacheLayoutError: the folder holds a cache of another layout (an earlier version's).
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
        self.merge_size = gap.config.vision_config.spatial_merge_size
        self.num_levels = gap.config.num_fusion_levels if gap.config.use_geometry else 0
        digest = hashlib.blake2b(digest_size=16)
        digest.update(f"layout {CACHE_LAYOUT}".encode())
        digest.update(dtype.encode())
        digest.update(processing_fingerprint(processor, collator_settings or {}).encode())
        if self.caches_geometry:
            digest.update(b"geometry" + geometry_fingerprint(gap).encode())
        if self.vision_kind is not None:
            digest.update(b"vision" + vision_fingerprint(gap, self.vision_kind).encode())
        self.fingerprint = digest.hexdigest()
        self.folder = Path(directory) / self.fingerprint
        self._open_folder()
        self.skipped_names: list[str] = []  # bad samples skipped so far (by this process), each named once

    def _open_folder(self) -> None:
        """Create the folder with its layout record, or check an existing one's (`CacheLayoutError` for another
        layout); name the folders of earlier layouts beside it in a warning (never read: their disk can be freed)."""
        record = self.folder / LAYOUT_FILE
        if self.folder.is_dir():
            problem = _layout_problem(self.folder)
            if problem is not None:
                raise CacheLayoutError(
                    f"the feature cache folder {self.folder} {problem}, not this version's layout {CACHE_LAYOUT}: it "
                    "cannot be read. Delete that folder (this run fills a new one), or point cache.directory elsewhere")
        else:
            siblings = sorted(self.folder.parent.iterdir()) if self.folder.parent.is_dir() else []
            old = [folder.name for folder in siblings if folder.is_dir() and _layout_problem(folder)]
            if old:
                logger.warning("feature cache %s: %d folder(s) of an earlier cache layout there are never read by this "
                               "version (%s); delete them to free their disk", self.folder.parent, len(old),
                               ", ".join(old))
        (self.folder / "samples").mkdir(parents=True, exist_ok=True)
        (self.folder / "towers").mkdir(exist_ok=True)
        if not record.is_file():
            self._write(record, lambda file: file.write(json.dumps({"layout": CACHE_LAYOUT}).encode()))

    def describe(self) -> str:
        vision = f"ViT: {self.vision_kind} ({self.vision_reason})" if self.vision_kind else f"ViT not cached ({self.vision_reason})"
        geometry = "VGGT: cached" if self.caches_geometry else f"VGGT not cached ({self.geometry_reason})"
        return f"{vision}; {geometry}; folder {self.folder}"

    # ------------------------------------------------------------------ entries
    def path(self, key: str) -> Path:
        """The entry of the sample of `key` (`sample_key`)."""
        return self.folder / "samples" / f"{key}.safetensors"

    def bad_path(self, key: str) -> Path:
        return self.folder / "samples" / f"{key}.bad"

    def damaged_path(self, key: str) -> Path:
        return self.folder / "samples" / f"{key}.damaged"

    def tower_path(self, towers: str) -> Path:
        """The entry of the tower input of `towers` (`tower_key`)."""
        return self.folder / "towers" / f"{towers}.safetensors"

    def tower_damaged_path(self, towers: str) -> Path:
        return self.folder / "towers" / f"{towers}.damaged"

    def __contains__(self, key: str) -> bool:
        """Whether `key` has a servable entry or a `.bad` one (a damaged entry does not count: it is recomputed)."""
        return self.is_bad(key) or self.entry_damage(key) is None

    def is_bad(self, key: str) -> bool:
        return self.bad_path(key).is_file()

    def bad_reason(self, key: str) -> str | None:
        """Why the sample of `key` was marked bad, or None when it was not."""
        try:
            return self.bad_path(key).read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def serve_bad(self, key: str, name: str, skip: bool) -> bool:
        """The rule for a `.bad` entry under the run's policy (`skip`: data.on_bad_sample is "skip"): True when the
        sample `name` is marked bad and is to be skipped (it is counted by name); False when it is not marked.

        Raises:
            DataError: it is marked bad and the policy is "raise" (the mark may be an earlier `skip` run's).
        """
        reason = self.bad_reason(key)
        if reason is None:
            return False
        if not skip:
            raise DataError(f"marked bad in the feature cache {self.folder} when it was built under data.on_bad_sample: "
                            f"skip ({reason}); fix the sample, or train with data.on_bad_sample: skip to leave it out",
                            sample=name)
        if name not in self.skipped_names:
            self.skipped_names.append(name)
            logger.warning("feature cache: skipping bad sample %r (marked when the cache was built): %s", name, reason)
        return True

    def expected_tensors(self) -> list[str]:
        """The tensors every sample entry holds (the aux targets vary by sample and are not checked)."""
        return list(_TOKEN_TENSORS)

    def expected_tower_tensors(self) -> list[str]:
        """The tensors every tower entry of this configuration holds."""
        names = [f"geometry.{level}" for level in range(self.num_levels)] if self.caches_geometry else []
        names += {"merged": ["vision.0"], "blocks": ["vision.blocks"]}.get(self.vision_kind, [])
        return names

    def _sample_state(self, key: str) -> tuple[str | None, str | None]:
        """`(damage, tower key)` of the sample entry of `key`: "no entry", what is wrong with it (its header only is
        read), or None and the tower entry it names."""
        try:
            with open(self.path(key), "rb") as file:
                damage, metadata = safetensors_header(file, os.fstat(file.fileno()).st_size, self.expected_tensors())
        except FileNotFoundError:
            return "no entry", None
        if damage is None and not metadata.get(TOWERS_KEY):
            damage = "it names no tower entry"
        return damage, metadata.get(TOWERS_KEY)

    def towers_of(self, key: str) -> str | None:
        """The key of the tower entry the sample entry of `key` names (None: no sound sample entry)."""
        damage, towers = self._sample_state(key)
        return towers if damage is None else None

    def tower_damage(self, towers: str) -> str | None:
        """What makes the tower entry `towers` unservable ("no entry" or `safetensors_damage`), or None. Header only."""
        try:
            with open(self.tower_path(towers), "rb") as file:
                return safetensors_damage(file, os.fstat(file.fileno()).st_size, self.expected_tower_tensors())
        except FileNotFoundError:
            return "no entry"

    def entry_damage(self, key: str) -> str | None:
        """What makes the sample of `key` unservable ("no entry", a damage of its entry or of the tower entry it
        names), or None when both are sound. Reads the headers only."""
        damage, towers = self._sample_state(key)
        if damage is not None:
            return damage
        damage = self.tower_damage(towers)
        return None if damage is None else f"its tower entry {towers}: {damage}"

    def store(self, key: str, towers: str, sample: dict) -> None:
        """Write the entry of one sample (a `split_batch` dict) naming its tower entry `towers` (written first)."""
        tensors = {}
        for name in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw", "aux_camera", "aux_scale"):
            if name in sample:
                tensors[name] = sample[name]
        for index, depth in enumerate(sample.get("aux_depth", ())):
            tensors[f"aux_depth.{index}"] = depth
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        self._write(self.path(key), lambda file: file.write(safetensors.torch.save(tensors, metadata={TOWERS_KEY: towers})))

    def store_towers(self, towers: str, features: dict) -> None:
        """Write the tower entry `towers`: `features` holds `geometry_features` / `vision_features` as cached."""
        tensors = {}
        for level, level_features in enumerate(features.get("geometry_features", ())):
            tensors[f"geometry.{level}"] = self._features(level_features, towers)
        vision = features.get("vision_features")
        if vision is not None:
            if vision.kind == "merged":
                for level, level_features in enumerate(vision.levels):
                    tensors[f"vision.{level}"] = self._features(level_features, towers)
            else:
                tensors["vision.blocks"] = self._features(vision.levels, towers)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        kind = vision.kind if vision is not None else ""
        self._write(self.tower_path(towers), lambda file: file.write(safetensors.torch.save(tensors, metadata={"vision": kind})))
        self.tower_damaged_path(towers).unlink(missing_ok=True)

    def mark_bad(self, key: str, reason: str) -> None:
        self._write(self.bad_path(key), lambda file: file.write(reason.encode("utf-8")))

    def _features(self, tensor: torch.Tensor, key: str) -> torch.Tensor:
        stored = tensor.detach().to(self.dtype)
        if not torch.isfinite(stored).all():
            raise ValueError(f"features of cache key {key} are not finite in {self.dtype}; the cache cannot hold them")
        return stored

    def _write(self, path: Path, write) -> None:
        try:
            handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        except OSError as error:
            raise self._disk_error(error) from error
        try:
            with os.fdopen(handle, "wb") as file:
                write(file)
            os.replace(temporary, path)
        except BaseException as error:
            Path(temporary).unlink(missing_ok=True)
            if isinstance(error, OSError):
                raise self._disk_error(error) from error
            raise

    def _disk_error(self, error: OSError) -> OSError:
        """`error` itself, or for a full disk a `DiskFullError` naming the cache's device and folder (a temporary
        file's descriptor names neither, and the command's output folder may be on another disk)."""
        if not names_full_disk(error):
            return error
        return DiskFullError(f"no space left on {device_of(self.folder)} while writing the feature cache in {self.folder}; "
                             "free space there, or point cache.directory at a larger disk, then run again (the entries "
                             "already written are kept and reused)")

    def _read(self, path: Path, expected, what: str, name: str | None, set_aside) -> tuple[dict, dict]:
        """`(tensors, metadata)` of the entry at `path`, checked (header, sizes, `expected` names, finite features);
        a damaged one is set aside (`set_aside(damage)`) and a `DamagedEntryError` naming `what` raised."""
        with open(path, "rb") as file:
            data = file.read()
        damage, metadata = safetensors_header(io.BytesIO(data), len(data), expected)
        try:
            tensors = safetensors.torch.load(data) if damage is None else None
        except SafetensorError as error:  # a header that parses and sizes that add up, yet unreadable
            damage = f"unreadable ({error})"
        if damage is None:
            damage = _non_finite_features(tensors)
        if damage is not None:
            set_aside(damage)
            raise DamagedEntryError(f"feature cache {what} in {self.folder} is damaged ({damage}); set aside, the "
                                    "next build recomputes it", sample=name)
        return tensors, metadata

    def load(self, key: str, name: str | None = None) -> dict:
        """One sample as `collate_samples` takes it (features in the storage dtype); `name`: the sample's, for messages.

        Raises:
            DamagedEntryError: its entry or its tower entry is damaged (then set aside and reported once) or was set
                aside earlier.
            KeyError: there is no entry (the cache was not built for this sample).
        """
        try:
            tensors, metadata = self._read(self.path(key), self.expected_tensors(), f"entry {key}", name,
                                           lambda damage: self.set_aside(key, damage, name))
        except FileNotFoundError as error:
            if self.damaged_path(key).is_file():  # set aside earlier (and reported then)
                raise DamagedEntryError(f"feature cache entry {key} in {self.folder} was damaged and set aside; the next "
                                        "build recomputes it", sample=name) from None
            raise KeyError(f"feature cache {self.folder} has no entry {key}: build it first (FeatureCache.build) with "
                           "the same model, processor and data") from error
        towers = metadata.get(TOWERS_KEY)
        if not towers:
            damage = "it names no tower entry"
            self.set_aside(key, damage, name)
            raise DamagedEntryError(f"feature cache entry {key} in {self.folder} is damaged ({damage}); set aside, the "
                                    "next build recomputes it", sample=name)
        try:
            features, _ = self._read(self.tower_path(towers), self.expected_tower_tensors(), f"tower entry {towers}",
                                     name, lambda damage: self.set_aside_towers(towers, damage, name))
        except FileNotFoundError:
            if self.tower_damaged_path(towers).is_file():  # set aside earlier (and reported then)
                raise DamagedEntryError(f"feature cache tower entry {towers} in {self.folder} was damaged and set "
                                        "aside; the next build recomputes it", sample=name) from None
            damage = f"its tower entry {towers} is missing"
            self.set_aside(key, damage, name)
            raise DamagedEntryError(f"feature cache entry {key} in {self.folder} is damaged ({damage}); set aside, the "
                                    "next build recomputes it", sample=name) from None
        sample = {name: tensors[name] for name in ("input_ids", "labels", "mm_token_type_ids", "image_grid_thw",
                                                   "aux_camera", "aux_scale") if name in tensors}
        depth_views = sorted(int(name.split(".")[1]) for name in tensors if name.startswith("aux_depth."))
        if depth_views:
            sample["aux_depth"] = [tensors[f"aux_depth.{index}"] for index in depth_views]
        if self.caches_geometry:
            sample["geometry_features"] = [features[f"geometry.{level}"] for level in range(self.num_levels)]
        if self.vision_kind == "merged":
            levels = sorted(int(name.split(".")[1]) for name in features if name.startswith("vision.") and name != "vision.blocks")
            sample["vision_features"] = FrozenVisionFeatures("merged", [features[f"vision.{level}"] for level in levels])
        elif self.vision_kind == "blocks":
            sample["vision_features"] = FrozenVisionFeatures("blocks", features["vision.blocks"])
        return sample

    def set_aside(self, key: str, damage: str, name: str | None = None) -> None:
        """Replace a damaged sample entry by a `.damaged` note with the reason, and name it in a warning (once: the
        entry is gone afterwards). Used where the towers cannot run to recompute it (while training)."""
        self._set_aside(self.path(key), self.damaged_path(key), f"entry {key}", damage, name, "its sample is")

    def set_aside_towers(self, towers: str, damage: str, name: str | None = None) -> None:
        """`set_aside` for the tower entry `towers`: every sample that shares it is skipped until the next build."""
        self._set_aside(self.tower_path(towers), self.tower_damaged_path(towers), f"tower entry {towers}", damage, name,
                        "the samples that share it are")

    def _set_aside(self, path: Path, note: Path, what: str, damage: str, name: str | None, skipped: str) -> None:
        self._write(note, lambda file: file.write(damage.encode("utf-8")))
        try:
            path.unlink()
        except FileNotFoundError:
            return  # another process set it aside first and warned
        sample = f" (sample {name!r})" if name is not None else ""
        logger.warning("feature cache %s: %s%s is damaged (%s); removed, %s skipped until the next build recomputes "
                       "it", self.folder, what, sample, damage, skipped)

    # ------------------------------------------------------------------ filling
    @torch.no_grad()
    def build(self, model, dataset, collator, batch_size: int = 16, skip_errors: bool = False) -> CacheStats:
        """Run `collator` (the run's chain before the cache) on every sample of `dataset` (read with
        `undecoded_images`) that has no entry yet, and the frozen towers on each distinct tower input among them that
        has none either, and store them. Returns how many samples were computed, reused and skipped (bad samples,
        under `skip_errors`: marked so training skips them too), and how many tower inputs were encoded.

        Entries from earlier builds are checked, not trusted: a `.bad` one follows this build's policy
        (`serve_bad`: skipped and named under `skip_errors`, else a `DataError` naming the sample and the reason),
        and a damaged one (a sample's or a tower's) is recomputed with a warning naming it and the cache folder.

        Raises:
            DataError: a bad sample, with `skip_errors=False`.
        """
        gap = unwrap_gap_model(model)
        was_training = gap.training
        gap.eval()
        stats = CacheStats()
        warned: set[str] = set()  # damaged tower entries named in this build (many samples may share one)
        try:
            for start in tqdm(range(0, len(dataset), batch_size), desc="feature cache", unit="batch", mininterval=30):
                examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
                keys = [sample_key(example) for example in examples]
                good = []
                for index in self._to_compute(examples, keys, start, skip_errors, stats, warned):
                    example = decoded_example(examples[index])
                    try:
                        batch = collator([example])  # the chain names a bad sample (BadSampleGuard)
                    except DataError as error:
                        if not skip_errors:
                            raise
                        logger.warning("feature cache: skipping bad sample %r: %s", sample_name(example, index), error)
                        self.mark_bad(keys[index], str(error))
                        stats.skipped += 1
                        stats.skipped_names.append(sample_name(example, start + index))
                        self.skipped_names.append(sample_name(example, start + index))  # new: not named before
                        continue
                    batch.pop(SKIPPED_KEY, None)
                    (sample,) = split_batch(batch)  # its tensors: the processor runs once per sample, alone
                    good.append((index, sample, tower_key(sample)))
                if not good:
                    continue
                new = {}  # tower key → (index, sample) of that input, for inputs without a sound entry (each once)
                for index, sample, towers in good:
                    damage = None if towers in new else self.tower_damage(towers)
                    if damage is None:
                        continue
                    if damage != "no entry" and towers not in warned:  # a new sample on damaged features
                        warned.add(towers)
                        logger.warning("feature cache %s: tower entry %s (sample %r) is damaged (%s); recomputing it",
                                       self.folder, towers, sample_name(examples[index], start + index), damage)
                    new[towers] = (index, sample)
                features = self.encode_towers(gap, [sample for _, sample in new.values()])
                for (towers, (index, sample)), tower_features in zip(new.items(), features):
                    if stats.computed == 0 and stats.encoded == 0:  # log the cost; refuse before writing if short of room
                        self._ensure_room(dataset, start + good[0][0], {**sample, **tower_features})
                    self.store_towers(towers, tower_features)
                    stats.encoded += 1
                for index, sample, towers in good:
                    if stats.computed == 0 and stats.encoded == 0:  # every input already cached: its features' cost
                        self._ensure_room(dataset, start + index, {**sample, **self.load_towers(towers)})
                    self.store(keys[index], towers, sample)
                    self.damaged_path(keys[index]).unlink(missing_ok=True)
                    stats.computed += 1
        finally:
            gap.train(was_training)
        return stats

    def _ensure_room(self, dataset, position: int, sample: dict) -> None:
        """`ensure_disk_room` before the first write of a build, from the cost of `sample` (with its features) for
        the samples of `dataset` from `position` on and at most their distinct tower inputs (`view_input_count`)."""
        remaining = len(dataset) - position
        inputs = min(remaining, view_input_count(dataset))
        ensure_disk_room(self.folder, cost_of_sample(sample, self.dtype), remaining, inputs)

    def load_towers(self, towers: str) -> dict:
        """The features of the tower entry `towers`, as `load` puts them in a sample."""
        tensors = safetensors.torch.load_file(self.tower_path(towers))
        features = {}
        if self.caches_geometry:
            features["geometry_features"] = [tensors[f"geometry.{level}"] for level in range(self.num_levels)]
        if self.vision_kind == "merged":
            levels = sorted(int(name.split(".")[1]) for name in tensors if name.startswith("vision.") and name != "vision.blocks")
            features["vision_features"] = FrozenVisionFeatures("merged", [tensors[f"vision.{level}"] for level in levels])
        elif self.vision_kind == "blocks":
            features["vision_features"] = FrozenVisionFeatures("blocks", tensors["vision.blocks"])
        return features

    def _to_compute(self, examples: list[dict], keys: list[str], start: int, skip_errors: bool, stats: CacheStats,
                    warned: set[str]) -> list[int]:
        """Indices of `examples` whose entries are to be computed: no entry, or a damaged one, or a damaged tower
        entry (warned once per entry, counted in `stats.recomputed`); sound entries count as reused, `.bad` ones
        follow `serve_bad`."""
        missing = []
        for index, (example, key) in enumerate(zip(examples, keys)):
            name = sample_name(example, start + index)
            if self.serve_bad(key, name, skip_errors):
                stats.skipped += 1
                stats.skipped_names.append(name)
                continue
            damage, towers = self._sample_state(key)
            if damage is None:
                tower_damage = self.tower_damage(towers)
                if tower_damage is None:
                    stats.reused += 1
                    continue
                if towers not in warned:
                    warned.add(towers)
                    if self.tower_damaged_path(towers).is_file():  # set aside while training, and named then
                        logger.info("feature cache %s: recomputing tower entry %s, set aside as damaged", self.folder,
                                    towers)
                    else:
                        logger.warning("feature cache %s: tower entry %s (sample %r) is damaged (%s); recomputing it",
                                       self.folder, towers, name, tower_damage)
                stats.recomputed += 1
            elif damage != "no entry":
                logger.warning("feature cache %s: entry %s (sample %r) is damaged (%s); recomputing it", self.folder,
                               key, name, damage)
                stats.recomputed += 1
            elif self.damaged_path(key).is_file():  # set aside while training, and named then
                logger.info("feature cache %s: recomputing entry %s (sample %r), set aside as damaged", self.folder, key, name)
                stats.recomputed += 1
            missing.append(index)
        return missing

    def encode_towers(self, model, samples: list[dict]) -> list[dict]:
        """The cached towers' outputs (`geometry_features`, `vision_features`) for each of `samples` (`split_batch`
        dicts holding their tower inputs), run as one batch."""
        if not samples:
            return []
        gap = unwrap_gap_model(model)
        device = gap.device
        batch = tower_inputs(samples)
        outputs = [{} for _ in samples]
        views = [int(v) for v in batch["geometry_views_per_sample"].tolist()]
        if self.caches_geometry:
            levels = gap.get_geometry_features(batch["geometry_pixel_values"].to(device), batch["image_grid_thw"].to(device), views)
            for index, output in enumerate(outputs):
                output["geometry_features"] = [level[index] for level in levels]
        if self.vision_kind is not None:
            features = frozen_vision_features(gap, batch["pixel_values"].to(device), batch["image_grid_thw"].to(device), self.vision_kind)
            for output, part in zip(outputs, split_vision_features(features, batch["image_grid_thw"], views, self.merge_size)):
                output["vision_features"] = part
        return outputs


def _layout_problem(folder: Path) -> str | None:
    """Why `folder` is not a cache folder of this layout ("holds entries of layout 1 ...", "records layout N"), or
    None when it is one or holds no cache (empty, or unrelated files)."""
    try:
        record = json.loads((folder / LAYOUT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not folder.is_dir():
            return None
        entries = next((path for pattern in ("*.safetensors", "*.bad", "*.damaged") for path in folder.glob(pattern)), None)
        return None if entries is None else "holds cache entries of layout 1 (one file per sample, features included)"
    except (OSError, ValueError) as error:
        return f"has an unreadable {LAYOUT_FILE} ({error})"
    layout = record.get("layout") if isinstance(record, dict) else None
    return None if layout == CACHE_LAYOUT else f"records layout {layout!r} in {LAYOUT_FILE}"


class CachedCollator:
    """Training batches from a `FeatureCache` (module docstring), padded or packed (training/sample_tensors.py).

    Args:
        collator: the run's chain before the cache (processor, labels, aux targets, `BadSampleGuard`); runs only
            when a tower is not cached, for that tower's input. Its `policy` (data.on_bad_sample) also decides
            what a sample marked bad in the cache does (`FeatureCache.serve_bad`).
        cache: a built `FeatureCache`.
        pad_token_id, padding_side: the tokenizer's.
        packing: pack the samples into rows (`collate_samples`); `row_tokens` caps a row's length.
        spatial_merge_size: the ViT's merge size (packed M-RoPE positions).
    """

    def __init__(self, collator, cache: FeatureCache, pad_token_id: int, padding_side: str = "left", packing: bool = False,
                 spatial_merge_size: int = 2, row_tokens: int | None = None):
        self.collator = collator
        self.cache = cache
        self.skip_bad = getattr(collator, "policy", "raise") == "skip"
        self.layout = {"pad_token_id": pad_token_id, "padding_side": padding_side, "packing": packing,
                       "spatial_merge_size": spatial_merge_size, "row_tokens": row_tokens}

    def _entries(self, examples: list[dict]) -> list[tuple[dict, dict]]:
        """`(example, cached entry)` of the samples served: those marked bad (under skip) and those whose entry is
        damaged (set aside and reported) are left out."""
        served = []
        for index, example in enumerate(examples):
            key, name = sample_key(example), sample_name(example, index)
            if self.cache.serve_bad(key, name, self.skip_bad):
                continue
            try:
                served.append((example, self.cache.load(key, name)))
            except DamagedEntryError:
                continue
        return served

    def __call__(self, examples: list[dict]) -> dict:
        served = self._entries(examples)
        skipped = len(examples) - len(served)
        if not served:
            names = [sample_name(example, index) for index, example in enumerate(examples)]
            raise DataError(f"no sample of a batch can be served from the feature cache {self.cache.folder} ({names}): "
                            "each is marked bad or its entry is damaged (see the warnings above); fix the data, or "
                            "run again to have damaged entries recomputed")
        if self.cache.complete:  # an entry holds no loss weight (it is a training setting): each from its example
            samples = [sample_label_weights(cached, example) for example, cached in served]
        else:
            batch = self.collator([decoded_example(example) for example, _ in served])
            skipped += int(batch.pop(SKIPPED_KEY, torch.tensor(0)))
            samples = split_batch(batch)
            if len(samples) != len(served):
                raise RuntimeError("the collator dropped samples the feature cache has entries for; rebuild the cache")
            for sample, (_, cached) in zip(samples, served):
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
