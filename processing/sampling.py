"""Frame sampling: uniform, and the space-aware sampling of Spatial-MLLM (docs/method.md §9.3).

Space-aware sampling voxelises the world points seen by each candidate frame and greedily picks the
frame that adds the most not-yet-covered voxels (maximum coverage) until the budget is reached. The
points may come from given depth + poses (ScanNet, SynthRooms) or from an estimator such as VGGT's
point head (pass them to `space_aware_from_points`). Selected indices are returned in temporal order:
the first of them is the reference (first) frame of every target.
"""

from __future__ import annotations

import numpy as np

from .coordinates import backproject_depth, intrinsics_3x3

DEFAULT_VOXEL_SIZE = 0.1  # metres; Spatial-MLLM's exact value is not recorded (docs/method.md §9.3)


def uniform_indices(num_frames: int, num_samples: int, start: int = 0, stop: int | None = None) -> list[int]:
    """`num_samples` evenly spaced indices in [start, stop) including both ends (all if fewer).

    Spacing: round(linspace(start, stop - 1, num_samples)), duplicates impossible when
    num_samples <= stop - start.
    """
    stop = num_frames if stop is None else stop
    if not 0 <= start < stop <= num_frames:
        raise ValueError(f"need 0 <= start < stop <= num_frames, got start={start}, stop={stop}, num_frames={num_frames}")
    if num_samples <= 0:
        raise ValueError(f"num_samples must be positive, got {num_samples}")
    count = stop - start
    if num_samples >= count:
        return list(range(start, stop))
    return [int(i) for i in np.round(np.linspace(start, stop - 1, num_samples)).astype(int)]


def voxel_keys(points: np.ndarray, voxel_size: float) -> np.ndarray:
    """Unique voxel ids (int64) of finite points `[N, 3]`; voxels are axis-aligned cubes of `voxel_size`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    points = points[np.all(np.isfinite(points), axis=1)]
    cells = np.floor(points / voxel_size).astype(np.int64)
    # 21 bits per axis (+-1e6 voxels) packed into one int64.
    cells += 1 << 20
    if np.any((cells < 0) | (cells >= 1 << 21)):
        raise ValueError("points too far from the origin for this voxel size")
    return np.unique((cells[:, 0] << 42) | (cells[:, 1] << 21) | cells[:, 2])


def space_aware_from_points(points_per_frame, num_samples: int, voxel_size: float = DEFAULT_VOXEL_SIZE) -> list[int]:
    """Greedy maximum voxel coverage over frames; `points_per_frame` is a list of `[N_i, 3]` world points.

    Ties go to the earliest frame. Once nothing new can be covered, the remaining budget is filled
    with the unselected frames closest to uniform spacing. Returns sorted frame indices.
    """
    num_frames = len(points_per_frame)
    if num_samples >= num_frames:
        return list(range(num_frames))
    keys = [set(voxel_keys(p, voxel_size).tolist()) for p in points_per_frame]
    covered: set[int] = set()
    selected: list[int] = []
    while len(selected) < num_samples:
        gains = [-1 if i in selected else len(k - covered) for i, k in enumerate(keys)]
        best = int(np.argmax(gains))
        if gains[best] <= 0:
            break
        selected.append(best)
        covered |= keys[best]
    if len(selected) < num_samples:
        remaining = [i for i in uniform_indices(num_frames, num_frames) if i not in selected]
        fill = uniform_indices(len(remaining), num_samples - len(selected))
        selected += [remaining[i] for i in fill]
    return sorted(selected)


def space_aware_indices(
    depth,
    intrinsics,
    cam_to_world,
    num_samples: int,
    voxel_size: float = DEFAULT_VOXEL_SIZE,
    pixel_stride: int = 4,
    max_depth: float | None = None,
) -> list[int]:
    """Space-aware sampling from depth maps `[F, H, W]` (metres, 0 = missing), intrinsics (`[3, 3]`
    or `[F, 3, 3]`) and camera-to-world poses `[F, 4, 4]` (OpenCV camera).

    Every `pixel_stride`-th pixel in both directions is back-projected (coverage is a coarse measure);
    depths beyond `max_depth` are ignored (far, unreliable sensor depth).
    """
    depth = np.asarray(depth, dtype=np.float64)[:, ::pixel_stride, ::pixel_stride]
    k = intrinsics_3x3(intrinsics)
    if k.ndim == 2:
        k = np.broadcast_to(k, (len(depth), 3, 3))
    # Subsampling the grid scales the intrinsics: pixel (u, v) of the strided map is (s u, s v).
    scaled = k.copy()
    scaled[:, :2, :] /= pixel_stride
    points = []
    for d, kk, pose in zip(depth, scaled, np.asarray(cam_to_world, dtype=np.float64)):
        if max_depth is not None:
            d = np.where(d <= max_depth, d, 0.0)
        points.append(backproject_depth(d, kk, pose).reshape(-1, 3))
    return space_aware_from_points(points, num_samples, voxel_size)
