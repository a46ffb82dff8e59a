"""Depth + cameras → point maps, and confidence-filtered point clouds fused from them.

Conventions (VGGT, docs/vggt.md §5): pixel (u, v) = (column, row) with integer coordinates
at pixel centres as VGGT's own unprojection does; OpenCV cameras; extrinsics are camera-from-world
`[R | t]`, so `x_cam = depth · K⁻¹ [u, v, 1]ᵀ` and `x_world = Rᵀ (x_cam − t)`. VGGT's world frame is
the camera of its reference frame; its scale is normalised, not metric.

Only the maths the model's `reconstruct()` needs lives here; writing PLY / GLB files is in
`point_cloud.py` (`save_point_cloud`), which the remote code never imports.
"""

from dataclasses import dataclass

import numpy as np
import torch


def depth_to_camera_points(depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps into their cameras.

    Args:
        depth: `[..., H, W]` or `[..., H, W, 1]` (z along the optical axis).
        intrinsics: `[..., 3, 3]` pinhole, zero skew.

    Returns:
        `[..., H, W, 3]` camera-frame points.
    """
    if depth.shape[-1] == 1 and depth.ndim >= 3:
        depth = depth[..., 0]
    height, width = depth.shape[-2:]
    rows, cols = torch.meshgrid(
        torch.arange(height, dtype=depth.dtype, device=depth.device),
        torch.arange(width, dtype=depth.dtype, device=depth.device),
        indexing="ij",
    )
    fx = intrinsics[..., 0, 0, None, None]
    fy = intrinsics[..., 1, 1, None, None]
    cx = intrinsics[..., 0, 2, None, None]
    cy = intrinsics[..., 1, 2, None, None]
    x = (cols - cx) * depth / fx
    y = (rows - cy) * depth / fy
    return torch.stack([x, y, depth], dim=-1)


def depth_to_world_points(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Unproject depth maps to world points.

    Args:
        depth: `[..., H, W]` or `[..., H, W, 1]`.
        extrinsics: `[..., 3, 4]` camera-from-world `[R | t]`.
        intrinsics: `[..., 3, 3]`.

    Returns:
        `[..., H, W, 3]` world points, `Rᵀ (x_cam − t)`.
    """
    camera_points = depth_to_camera_points(depth, intrinsics)
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    shifted = camera_points - translation[..., None, None, :]
    # row-vector form of Rᵀ·p: p · R
    return torch.einsum("...hwi,...ij->...hwj", shifted, rotation)


@dataclass
class PointCloud:
    """A coloured point cloud: `points [N, 3]` float32, `colors [N, 3]` uint8 or `None`,
    `frame_index [N]` int64 (the frame each point came from) or `None`."""

    points: np.ndarray
    colors: np.ndarray | None = None
    frame_index: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.points)


def fuse_point_cloud(
    points: torch.Tensor,
    confidence: torch.Tensor | None = None,
    images: torch.Tensor | None = None,
    confidence_percentile: float = 50.0,
    min_confidence: float | None = None,
    max_points: int | None = None,
    seed: int = 0,
) -> PointCloud:
    """Fuse per-frame point maps of one sample into one point cloud.

    Args:
        points: `[S, H, W, 3]` world points (from `depth_to_world_points` or the point head).
        confidence: `[S, H, W]`; points below the `confidence_percentile`-th percentile (over all frames)
            or below `min_confidence` are dropped. `None` keeps every finite point.
        images: `[S, 3, H, W]` RGB in [0, 1] for the colours (optional).
        confidence_percentile: 0 keeps all, 50 keeps the most confident half (VGGT demo default).
        min_confidence: absolute threshold applied as well (VGGT confidences are >= 1).
        max_points: random subsample (seeded) to at most this many points.
        seed: seed of that subsample.

    Returns:
        [`PointCloud`] with colours when `images` is given.
    """
    if points.ndim != 4 or points.shape[-1] != 3:
        raise ValueError(f"points must be [frames, H, W, 3], got {tuple(points.shape)}")
    points = points.detach().float().cpu()
    keep = torch.isfinite(points).all(dim=-1)
    if confidence is not None:
        confidence = confidence.detach().float().cpu()
        if confidence.shape != points.shape[:-1]:
            raise ValueError(f"confidence {tuple(confidence.shape)} does not match points {tuple(points.shape[:-1])}")
        if confidence_percentile > 0:
            threshold = torch.quantile(confidence[keep], confidence_percentile / 100.0) if keep.any() else 0.0
            keep &= confidence >= threshold
        if min_confidence is not None:
            keep &= confidence >= min_confidence
    frame_index = torch.arange(points.shape[0])[:, None, None].expand(points.shape[:-1])
    cloud_points = points[keep].numpy().astype(np.float32)
    frames = frame_index[keep].numpy().astype(np.int64)
    colors = None
    if images is not None:
        if images.shape[0] != points.shape[0] or tuple(images.shape[-2:]) != tuple(points.shape[1:3]):
            raise ValueError(f"images {tuple(images.shape)} do not match points {tuple(points.shape)}")
        rgb = images.detach().float().cpu().permute(0, 2, 3, 1).clamp(0, 1)
        colors = (rgb[keep] * 255).round().to(torch.uint8).numpy()
    if max_points is not None and len(cloud_points) > max_points:
        chosen = np.sort(np.random.default_rng(seed).choice(len(cloud_points), size=max_points, replace=False))
        cloud_points, frames = cloud_points[chosen], frames[chosen]
        colors = colors[chosen] if colors is not None else None
    return PointCloud(points=cloud_points, colors=colors, frame_index=frames)


__all__ = ["PointCloud", "depth_to_camera_points", "depth_to_world_points", "fuse_point_cloud"]
