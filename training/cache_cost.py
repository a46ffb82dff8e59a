"""What the geometry-feature cache costs on disk, and a refusal before it fills a disk that lacks the room.

One cached view holds every fusion level's tapped VGGT features at every VGGT patch, in float16:

    bytes per view   = levels × 2C × patches per view × 2          (2C = 2 × geometry hidden size)
    bytes per sample = views × bytes per view                      (+ a 128-byte .npy header)
    disk for N       = N × bytes per sample

At the real size (VGGT-1B: C = 1024, 4 levels) a 336×448 view (official training: 24×32 = 768 patches)
is 4 × 2048 × 768 × 2 = 12.6 MB; a 4-view pre-training sample 50.3 MB; 100,000 such samples 5.0 TB.
A 364×476 view (official inference: 26×34 = 884 patches) is 14.5 MB; a 32-view grounding sample 463 MB.

`GeometryFeatureCache.build` logs this for its own configuration and calls `ensure_disk_room` before it
writes the first entry: when the free space (`shutil.disk_usage`) cannot hold the samples still to be
cached plus a safety margin, it raises `CacheDiskError` naming the sizes and what to do; nothing is
written, and entries already in the folder are kept.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

BYTES_PER_VALUE = 2  # float16
NPY_HEADER_BYTES = 128  # numpy's .npy header for these arrays (format 1.0, padded to 64-byte alignment)
DISK_MARGIN_FRACTION = 0.05  # keep 5% of the disk free on top of the estimate


class CacheDiskError(OSError):
    """The geometry-feature cache would not fit on its disk."""


@dataclass(frozen=True)
class CacheCost:
    """Disk cost of the geometry-feature cache for one configuration.

    Attributes:
        levels: fusion levels cached (4 for GAP-MLLM).
        channels: channels per level, 2 × geometry hidden size (2048 for VGGT-1B).
        patches_per_view: VGGT patches of one view (h × w of the 14-px grid).
        views_per_sample: views of one sample.
    """

    levels: int
    channels: int
    patches_per_view: int
    views_per_sample: int

    @property
    def bytes_per_view(self) -> int:
        return self.levels * self.channels * self.patches_per_view * BYTES_PER_VALUE

    @property
    def bytes_per_sample(self) -> int:
        return self.views_per_sample * self.bytes_per_view + NPY_HEADER_BYTES

    def bytes_for(self, num_samples: int) -> int:
        return num_samples * self.bytes_per_sample

    def describe(self, num_samples: int | None = None) -> str:
        text = (f"{self.levels} levels × {self.channels} channels × {self.patches_per_view} patches × "
                f"{BYTES_PER_VALUE} B = {format_bytes(self.bytes_per_view)} per view, "
                f"{format_bytes(self.bytes_per_sample)} per {self.views_per_sample}-view sample")
        if num_samples is not None:
            text += f", {format_bytes(self.bytes_for(num_samples))} for {num_samples} samples"
        return text


def format_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(count) < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def cache_cost(config, views_per_sample: int, patch_grid: tuple[int, int]) -> CacheCost:
    """The cost for a `GapMllmConfig` with `views_per_sample` views of `patch_grid = (h, w)` VGGT patches
    (e.g. (24, 32) for 336×448 frames)."""
    return CacheCost(levels=config.num_fusion_levels, channels=2 * config.geometry_config.hidden_size,
                     patches_per_view=patch_grid[0] * patch_grid[1], views_per_sample=views_per_sample)


def cost_of_entry(levels) -> CacheCost:
    """The cost implied by one sample's features (per level a `[S, h, w, 2C]` tensor, as the cache stores)."""
    views, height, width, channels = levels[0].shape
    return CacheCost(levels=len(levels), channels=channels, patches_per_view=height * width, views_per_sample=views)


def ensure_disk_room(directory, cost: CacheCost, num_samples: int, margin: float = DISK_MARGIN_FRACTION) -> None:
    """Log the cost of caching `num_samples` more samples and raise `CacheDiskError` if the disk holding
    `directory` lacks that room plus `margin` × its size."""
    needed = cost.bytes_for(num_samples)
    usage = shutil.disk_usage(Path(directory))
    logger.info("geometry-feature cache %s: %s; %s free on its disk", directory, cost.describe(num_samples),
                format_bytes(usage.free))
    reserve = int(margin * usage.total)
    if needed + reserve > usage.free:
        raise CacheDiskError(
            f"the geometry-feature cache in {directory} needs about {format_bytes(needed)} for {num_samples} more "
            f"samples ({cost.describe()}) but its disk has {format_bytes(usage.free)} free (keeping "
            f"{format_bytes(reserve)} spare); free space, point cache.directory at a larger disk, cache fewer "
            "samples, or train without the cache (cache.enabled: false) and recompute the features on the GPU."
        )
