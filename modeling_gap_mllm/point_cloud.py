"""Point clouds from VGGT's reconstruction, and to files: PLY (numpy only) and GLB (needs the optional `trimesh`).

`fuse_point_cloud` gathers the per-frame point maps of one sample into a `PointCloud` (confidence-filtered, coloured,
subsampled); `reconstruction_point_cloud` does it for a `GeometryReconstructionOutput`. PLY is written and read with
numpy only (binary little-endian, float32 xyz + optional uint8 rgb). This module is for users and front ends: the
model's remote code never imports it (a saved model folder carries no point cloud or file export). The point-map
maths (`depth_to_world_points`) lives in `modeling_vggt.py` and is re-exported here.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .modeling_vggt import GeometryReconstructionOutput, depth_to_camera_points, depth_to_world_points


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
    """Fuse the per-frame point maps of one sample into a [`PointCloud`]; `ValueError` on mismatched shapes.

    Args:
        points: `[S, H, W, 3]` world points (`depth_to_world_points` or the point head).
        confidence: `[S, H, W]`, or `None` to keep every finite point.
        images: `[S, 3, H, W]` RGB in [0, 1]; gives the cloud its colours.
        confidence_percentile: drop points below this percentile over all frames (0 keeps all; 50, VGGT's demo).
        min_confidence: also drop points below this absolute value (VGGT confidences are >= 1).
        max_points: seeded random subsample (`seed`) to at most this many points.
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


def reconstruction_point_cloud(
    output: GeometryReconstructionOutput,
    images: torch.Tensor | None = None,
    sample: int = 0,
    source: str | None = None,
    confidence_percentile: float = 50.0,
    max_points: int | None = None,
) -> PointCloud:
    """Fuse all frames of batch element `sample` of `output` into a [`PointCloud`] (`fuse_point_cloud`).

    Args:
        output: `GapMllmGeometryEncoder.reconstruct`'s output.
        images: `[B, S, 3, H, W]` RGB in [0, 1], the reconstructed frames; gives the cloud its colours.
        sample: the batch element.
        source: `"depth"` (depth unprojected with the predicted cameras, `output.world_points_from_depth()`; the
            default when both heads ran) or `"points"` (the point head).
        confidence_percentile: drop points below this percentile of their confidences.
        max_points: subsample to at most this many points.

    Raises:
        ValueError: an unknown `source`, or one whose heads did not run.
    """
    if source is None:
        source = "depth" if output.depth is not None and output.extrinsics is not None else "points"
    if source == "depth":
        points, confidence = output.world_points_from_depth()[sample], output.depth_conf[sample]
    elif source == "points":
        if output.world_points is None:
            raise ValueError("source='points' needs the point head (use_point_head)")
        points, confidence = output.world_points[sample], output.world_points_conf[sample]
    else:
        raise ValueError(f"source must be 'depth' or 'points', got {source!r}")
    return fuse_point_cloud(
        points,
        confidence,
        images[sample] if images is not None else None,
        confidence_percentile=confidence_percentile,
        max_points=max_points,
    )


def _ply_dtype(with_colors: bool) -> np.dtype:
    fields = [("x", "<f4"), ("y", "<f4"), ("z", "<f4")]
    if with_colors:
        fields += [("red", "u1"), ("green", "u1"), ("blue", "u1")]
    return np.dtype(fields)


def write_ply(path, points: np.ndarray, colors: np.ndarray | None = None) -> Path:
    """Binary little-endian PLY with `float x, y, z` and optional `uchar red, green, blue` per vertex."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 3)
    records = np.empty(len(points), dtype=_ply_dtype(colors is not None))
    records["x"], records["y"], records["z"] = points.T
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(points)}",
              "property float x", "property float y", "property float z"]
    if colors is not None:
        colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
        if len(colors) != len(points):
            raise ValueError(f"{len(colors)} colours for {len(points)} points")
        records["red"], records["green"], records["blue"] = colors.T
        header += ["property uchar red", "property uchar green", "property uchar blue"]
    header.append("end_header")
    path = Path(path)
    with open(path, "wb") as handle:
        handle.write(("\n".join(header) + "\n").encode("ascii"))
        handle.write(records.tobytes())
    return path


def read_ply(path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a PLY written by `write_ply` (binary little-endian, vertices only): `(points [N, 3], colors [N, 3] | None)`."""
    with open(path, "rb") as handle:
        header = []
        while True:
            line = handle.readline()
            if not line:
                raise ValueError(f"{path}: PLY header has no end_header")
            line = line.decode("ascii").strip()
            header.append(line)
            if line == "end_header":
                break
        payload = handle.read()
    if header[0] != "ply" or "format binary_little_endian 1.0" not in header:
        raise ValueError(f"{path}: only binary little-endian PLY files are supported")
    count = next(int(line.split()[-1]) for line in header if line.startswith("element vertex"))
    with_colors = "property uchar red" in header
    records = np.frombuffer(payload, dtype=_ply_dtype(with_colors), count=count)
    points = np.stack([records["x"], records["y"], records["z"]], axis=-1)
    colors = np.stack([records["red"], records["green"], records["blue"]], axis=-1) if with_colors else None
    return points, colors


def save_point_cloud(cloud: PointCloud, path) -> Path:
    """Save `cloud` as `.ply` (no dependency) or `.glb` (needs `trimesh`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".ply":
        return write_ply(path, cloud.points, cloud.colors)
    if suffix == ".glb":
        try:  # here, not at the top: trimesh is optional (the data, glb and space extras), only .glb needs it
            import trimesh
        except ImportError as error:
            raise ImportError("saving a point cloud as .glb needs trimesh: pip install trimesh") from error
        colors = None
        if cloud.colors is not None:
            colors = np.concatenate([cloud.colors, np.full((len(cloud.colors), 1), 255, np.uint8)], axis=1)
        scene = trimesh.Scene(trimesh.PointCloud(cloud.points, colors=colors))
        path.write_bytes(scene.export(file_type="glb"))
        return path
    raise ValueError(f"unsupported point cloud format {suffix!r}: use .ply or .glb")


__all__ = [
    "PointCloud",
    "depth_to_camera_points",
    "depth_to_world_points",
    "fuse_point_cloud",
    "read_ply",
    "reconstruction_point_cloud",
    "save_point_cloud",
    "write_ply",
]
