"""What the feature cache costs on disk, and a refusal before it fills a disk that lacks the room.

One cached view holds every fusion level's tapped VGGT features at every VGGT patch and the frozen ViT's output
(every level at every merged token, or the blocks' hidden states when the mergers train), in float16. The features
are stored once per distinct tower input (a sample's views with its marker, training/feature_cache.py), the tokens
once per sample:

    geometry bytes per view = levels × 2C × patches per view × 2
    ViT bytes per view      = levels × (patches / merge²) × D_out × 2       ("merged")
    bytes per input         = views × (geometry + ViT bytes per view) + a file header
    bytes per sample        = bytes per input + the tokens and a file header    (every sample a tower input of its own)
    disk for N samples on M distinct inputs = M × bytes per input + N × (tokens + header)

At the real size (VGGT-1B: C = 1024, 4 levels; Qwen3-VL-2B: D_out = 2048, merge 2) a 336×448 view (official
training: 24×32 = 768 patches, 192 merged tokens) is 12.6 MB of geometry + 3.1 MB of ViT = 15.7 MB; a 4-view
pre-training sample 62.9 MB; 100,000 such samples 6.3 TB. A 364×476 view (official inference: 26×34 = 884 patches)
is 14.5 + 3.6 MB; a 32-view grounding sample 579 MB.

`FeatureCache.build` logs this for its own configuration (from the first sample it writes) and calls
`ensure_disk_room` before it writes the first entry: when the free space (`shutil.disk_usage`) cannot hold the
samples still to be cached (on at most their distinct pairs of views and marker, `view_input_count`) plus a safety
margin, it raises `CacheDiskError` naming the sizes, the cache's own
device and folder (`cache.directory` may be on another disk than the run's output folder) and what to do; nothing
is written, and entries already in the folder are kept. A disk that fills up later, while entries are written, is
named the same way (`FeatureCache._write`).

Whether the cache pays off at all is decided before it is built, from the run's own numbers (`cache_skip_reason`):
filling it runs the frozen towers at most once on every sample of the training and held-out sets (once per distinct
input: fewer where samples share views); without it they run once per sample a step or an evaluation reads. It is built
only when the run would read more samples than the cache encodes, `steps × samples per step + evaluations × held-out
samples > training + held-out samples`: a 2-step run of 16 from a 1,216-sample set reads 32 samples and would encode
1,216 first, so it trains without the cache and the log says so in one line. `cache.enabled: always` builds it anyway (a
cache in a shared folder that later runs reuse). """

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from gap_mllm.processing.errors import DiskFullError, device_of

logger = logging.getLogger(__name__)

BYTES_PER_VALUE = 2  # float16
HEADER_BYTES = 1024  # about what a safetensors header of an entry's dozen tensors takes (names, shapes, offsets)
DISK_MARGIN_FRACTION = 0.05  # keep 5% of the disk free on top of the estimate ...
# ... but never more than 2 GiB: 5 % of a large shared disk (12.6 GB of 252 GB) refused a 200 kB cache on a disk
# with 13 GB free; the spare room only keeps the cache from filling the disk (checkpoints check their own room)
DISK_MARGIN_CAP_BYTES = 2 * 2**30


class CacheDiskError(DiskFullError):
    """The feature cache would not fit on its disk (the message names that disk and the cache folder: the command
    line shows it as it is)."""


@dataclass(frozen=True)
class CacheCost:
    """Disk cost of the feature cache for one configuration.

    Attributes:
        bytes_per_view: the cached features of one view (geometry + ViT).
        views_per_sample: views of one sample.
        other_bytes: the rest of a sample's storage (tokens, file headers).
    """

    bytes_per_view: int
    views_per_sample: int
    other_bytes: int = 0

    @property
    def bytes_per_input(self) -> int:
        """The features of one tower input (a sample's views)."""
        return self.views_per_sample * self.bytes_per_view

    @property
    def bytes_per_sample(self) -> int:
        """A sample whose tower input is its own."""
        return self.bytes_per_input + self.other_bytes

    def bytes_for(self, num_samples: int, num_inputs: int | None = None) -> int:
        """`num_samples` samples on `num_inputs` distinct tower inputs (None: each its own)."""
        inputs = num_samples if num_inputs is None else num_inputs
        return inputs * self.bytes_per_input + num_samples * self.other_bytes

    def describe(self, num_samples: int | None = None, num_inputs: int | None = None) -> str:
        text = (f"{format_bytes(self.bytes_per_view)} per view, "
                f"{format_bytes(self.bytes_per_sample)} per {self.views_per_sample}-view sample")
        if num_samples is not None:
            text += f", {format_bytes(self.bytes_for(num_samples, num_inputs))} for {num_samples} samples"
            if num_inputs is not None:
                text += f" on at most {num_inputs} distinct tower inputs"
        return text


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def cache_cost(config, views_per_sample: int, patch_grid: tuple[int, int], vision: str | None = "merged") -> CacheCost:
    """The feature cost for a `GapMllmConfig` with `views_per_sample` views of `patch_grid = (h, w)` patches
    (e.g. (24, 32) for 336×448 frames), the ViT cached as `vision` ("merged", "blocks" or None); tokens and
    header left out."""
    patches = patch_grid[0] * patch_grid[1]
    vision_config = config.vision_config
    levels = 1 + len(vision_config.deepstack_visual_indexes)
    per_view = 0
    if config.use_geometry:
        per_view += config.num_fusion_levels * config.geometry_config.feature_size * patches * BYTES_PER_VALUE
    if vision == "merged":
        per_view += levels * (patches // vision_config.spatial_merge_size**2) * vision_config.out_hidden_size * BYTES_PER_VALUE
    elif vision == "blocks":
        per_view += levels * patches * vision_config.hidden_size * BYTES_PER_VALUE
    return CacheCost(bytes_per_view=per_view, views_per_sample=views_per_sample)


def cost_of_sample(sample: dict, dtype) -> CacheCost:
    """The cost implied by one sample as the cache stores it (a `split_batch` dict with its tower features, as
    `FeatureCache.encode_towers` gives them), features in `dtype`."""
    views = int(sample["image_grid_thw"].shape[0])
    itemsize = torch.empty((), dtype=dtype).element_size()
    features = sum(level.numel() for level in sample.get("geometry_features", ()))
    vision = sample.get("vision_features")
    if vision is not None:
        features += sum(level.numel() for level in vision.levels) if vision.kind == "merged" else vision.levels.numel()
    other = sum(sample[name].numel() * sample[name].element_size() for name in ("input_ids", "labels", "mm_token_type_ids")
                if name in sample) + 2 * HEADER_BYTES  # the sample's entry and (shared) its tower entry
    return CacheCost(bytes_per_view=features * itemsize // views, views_per_sample=views, other_bytes=other)


def ensure_disk_room(directory, cost: CacheCost, num_samples: int, num_inputs: int | None = None,
                     margin: float = DISK_MARGIN_FRACTION) -> None:
    """Log the cost of caching `num_samples` more samples on at most `num_inputs` distinct tower inputs (None: each
    its own) and raise `CacheDiskError` if the disk holding `directory` lacks that room plus `margin` × its size (at
    most `DISK_MARGIN_CAP_BYTES`)."""
    needed = cost.bytes_for(num_samples, num_inputs)
    usage = shutil.disk_usage(Path(directory))
    device = device_of(directory)
    logger.info("feature cache %s: %s; %s free on %s", directory, cost.describe(num_samples, num_inputs),
                format_bytes(usage.free), device)
    reserve = min(int(margin * usage.total), DISK_MARGIN_CAP_BYTES)
    if needed + reserve > usage.free:
        raise CacheDiskError(
            f"the feature cache in {directory} needs about {format_bytes(needed)} for {num_samples} more "
            f"samples{f' on at most {num_inputs} distinct tower inputs' if num_inputs is not None else ''} "
            f"({cost.describe()}) but its disk, {device}, has {format_bytes(usage.free)} free (keeping "
            f"{format_bytes(reserve)} spare); free space, point cache.directory at a larger disk, cache fewer "
            "samples, or train without the cache (cache.enabled: false) and recompute the features on the GPU."
        )


# `cache.enabled` (training/config.py CacheConfig): build the cache even where `cache_skip_reason` finds it costs more
ALWAYS = "always"


def samples_per_step(args) -> int:
    """Samples one optimizer step reads, over every process (`TrainingArguments`: batch × accumulation × world)."""
    return args.train_batch_size * args.gradient_accumulation_steps * args.world_size


def training_steps(args, train_samples: int) -> int:
    """The run's optimizer steps: `max_steps` when set, else its epochs of `train_samples` (as Trainer counts)."""
    if args.max_steps > 0:
        return args.max_steps
    return math.ceil(args.num_train_epochs * math.ceil(train_samples / samples_per_step(args)))


def evaluations(args, steps: int) -> int:
    """How many times Trainer evaluates the held-out set in `steps` steps (`eval_strategy`, `eval_steps`)."""
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    if strategy == "steps":
        every = args.eval_steps or args.logging_steps
        every = math.ceil(every * steps) if every < 1 else int(every)  # a fraction of the run, as Trainer reads it
        return steps // max(every, 1)
    if strategy == "epoch":
        return math.ceil(args.num_train_epochs)
    return 0


def cache_skip_reason(args, train_samples: int, eval_samples: int = 0) -> str | None:
    """None when the feature cache pays off for this run (module docstring), else the one line that says why it is not
    built. `args`: the run's `TrainingArguments`; `train_samples` / `eval_samples`: the sets the cache would encode
    (a task repeated by `data.task_repeats` counts its copies: a copy reuses its entry, and samples that share their
    views share one tower entry, so the count is an upper bound of the encoder's work and the cache is, if anything,
    built a little too seldom)."""
    steps = training_steps(args, train_samples)
    per_step = samples_per_step(args)
    checks = evaluations(args, steps) if eval_samples else 0
    # a run counted in epochs reads each sample once an epoch (its last batch may be short)
    train_reads = steps * per_step if args.max_steps > 0 else math.ceil(args.num_train_epochs * train_samples)
    reads = train_reads + checks * eval_samples
    encoded = train_samples + eval_samples
    if reads > encoded:
        return None
    held_out = f" and {checks} evaluation(s) of {eval_samples:,}" if checks else ""
    return (f"feature cache not built: this run reads {reads:,} samples ({steps:,} step(s) of {per_step}{held_out}), "
            f"no more than the {encoded:,} the cache would encode first, so the frozen towers run in the steps instead "
            f"(cache.enabled: {ALWAYS} builds it anyway)")
