"""Point clouds to files: PLY (numpy only) and GLB (needs the optional `trimesh` package).

PLY is written and read with numpy only (binary little-endian, float32 xyz + optional uint8 rgb).
This module is for users and front ends: the model's remote code never imports it (a saved model folder
carries no file export). The point-map maths (`depth_to_world_points`, `fuse_point_cloud`, `PointCloud`)
lives in `modeling_vggt.py` and is re-exported here.
"""

from pathlib import Path

import numpy as np

from .modeling_vggt import PointCloud, depth_to_camera_points, depth_to_world_points, fuse_point_cloud


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
    "save_point_cloud",
    "write_ply",
]
