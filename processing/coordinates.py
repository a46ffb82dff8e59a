"""Coordinate helpers shared by the data layer, the output parsers and the evaluators.

Conventions (docs/design.md §9, docs/method.md §5):

* Camera frame: OpenCV, x right, y down, z forward, metres. A pixel (u, v) has its centre at the
  integer coordinates (u, v) (OpenCV), so `K @ [X/Z, Y/Z, 1]` gives the pixel centre directly.
* Poses are camera-to-world 4x4 matrices (ScanNet `posed_images/<frame>.txt`): `X_w = P @ X_c`.
* "World" is whatever frame the poses live in (ScanNet raw world). The ScanNet axis-aligned world is
  `axis_align_matrix @ raw world`; camera -> aligned world is `E = axis_align_matrix @ P` (docs/method.md §5.1).
* The first-frame frame is the camera frame of view 0 of a sample; every task target is written there.
* Boxes are 9-vectors `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`: centre (m), sizes along the box's
  own axes (m), angles in radians decoded as R = Ry(roll) @ Rx(pitch) @ Rz(yaw), i.e. scipy
  `Rotation.from_euler("zxy", [yaw, pitch, roll])` (lower case = extrinsic). This is the reading the
  data uses. The official detection IoU reads the same triple as the intrinsic "ZXY",
  R = Rz(yaw) @ Rx(pitch) @ Ry(roll); it is only available through `euler_mode="official"`.
* Corners: `centre + R @ (size * c)` for the unit-cube corners c in `UNIT_CORNERS` (±0.5).
* Stored poses are rounded (ScanNet keeps 6 decimals), so their rotation parts are orthonormal only to
  ~1e-6. Box transforms first replace the rotation part by the nearest proper rotation (SVD polar
  factor U·Vᵀ; the rotation closest in the Frobenius norm, which is also what scipy's
  `Rotation.from_matrix` returns and so what the official grounding code gets), and refuse matrices
  further than `RIGID_TOLERANCE` from a rotation (a scale, a shear, a reflection, a corrupt file).
"""

from __future__ import annotations

import warnings

import numpy as np

EULER_MODES = ("zxy", "official")

# Unit-cube corners, x varying fastest; corner i has signs ((i & 1), (i >> 1 & 1), (i >> 2 & 1)).
UNIT_CORNERS = np.array(
    [[(i & 1) - 0.5, ((i >> 1) & 1) - 0.5, ((i >> 2) & 1) - 0.5] for i in range(8)], dtype=np.float64
)


def _scipy_sequence(euler_mode: str) -> str:
    if euler_mode == "zxy":
        return "zxy"  # extrinsic: Ry(roll) @ Rx(pitch) @ Rz(yaw)
    if euler_mode == "official":
        return "ZXY"  # intrinsic: Rz(yaw) @ Rx(pitch) @ Ry(roll), the official IoU reading
    raise ValueError(f"euler_mode must be one of {EULER_MODES}, got {euler_mode!r}")


def euler_to_matrix(angles, euler_mode: str = "zxy") -> np.ndarray:
    """Box angles `[..., 3]` = (yaw, pitch, roll) in radians -> rotation matrices `[..., 3, 3]`.

    `euler_mode="zxy"` (default, the data's convention): R = Ry(roll) @ Rx(pitch) @ Rz(yaw), scipy
    `from_euler("zxy", ...)`. `euler_mode="official"`: R = Rz(yaw) @ Rx(pitch) @ Ry(roll), the
    official detection IoU's reading (scipy "ZXY"), for reproducing official numbers only.
    """
    angles = np.asarray(angles, dtype=np.float64)
    flat = angles.reshape(-1, 3)
    from scipy.spatial.transform import Rotation  # here: scipy.spatial takes most of a second to import
    matrices = Rotation.from_euler(_scipy_sequence(euler_mode), flat).as_matrix()
    return matrices.reshape(*angles.shape[:-1], 3, 3)


def matrix_to_euler(matrices, euler_mode: str = "zxy") -> np.ndarray:
    """Rotation matrices `[..., 3, 3]` -> (yaw, pitch, roll) `[..., 3]`, inverse of `euler_to_matrix`.

    Ranges: yaw, roll in [-pi, pi], pitch in [-pi/2, pi/2]. At gimbal lock (|pitch| = pi/2) the
    triple is not unique; the one returned still rebuilds the same matrix, so compare boxes through
    `euler_to_matrix` or `box_corners`, never through raw angles.
    """
    matrices = np.asarray(matrices, dtype=np.float64)
    flat = matrices.reshape(-1, 3, 3)
    with warnings.catch_warnings():
        # scipy warns at gimbal lock; the result is still a valid decomposition (see docstring).
        warnings.simplefilter("ignore", UserWarning)
        from scipy.spatial.transform import Rotation  # here: scipy.spatial takes most of a second to import
        angles = Rotation.from_matrix(flat).as_euler(_scipy_sequence(euler_mode))
    return angles.reshape(*matrices.shape[:-2], 3)


def box_corners(boxes, euler_mode: str = "zxy") -> np.ndarray:
    """9-DoF boxes `[..., 9]` -> corners `[..., 8, 3]` = centre + R @ (size * UNIT_CORNERS).

    R from `euler_to_matrix(angles, euler_mode)` (default R = Ry(roll) @ Rx(pitch) @ Rz(yaw)).
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    rotation = euler_to_matrix(boxes[..., 6:9], euler_mode)
    local = boxes[..., None, 3:6] * UNIT_CORNERS  # [..., 8, 3]
    return np.einsum("...ij,...kj->...ki", rotation, local) + boxes[..., None, 0:3]


# Largest accepted deviation of a pose's rotation part from a rotation (|singular value - 1|) and of
# its last row from [0, 0, 0, 1]. Rounded poses are far inside it (6 decimals: ~1e-6, 4 decimals:
# ~1e-4); a 0.1 % scale or any shear of that size is outside.
RIGID_TOLERANCE = 1e-3


def check_rigid(transform, name: str = "transform", atol: float = RIGID_TOLERANCE) -> np.ndarray:
    """Return `transform` as a float64 4x4 array; raise ValueError naming it unless it is a rigid motion
    up to `atol` (finite; rotation part with singular values in 1 ± atol and det > 0; last row
    [0, 0, 0, 1] ± atol). The matrix is returned unchanged: see `orthonormalize_rigid` to clean it.

    Boxes keep their sizes only under rotations + translations, so every box transform checks this.
    """
    transform = np.asarray(transform, dtype=np.float64)
    if transform.shape != (4, 4):
        raise ValueError(f"{name} must be 4x4, got shape {transform.shape}")
    if not np.all(np.isfinite(transform)):
        raise ValueError(f"{name} contains NaN or inf")
    singular_values = np.linalg.svd(transform[:3, :3], compute_uv=False)
    if np.max(np.abs(singular_values - 1.0)) > atol or np.linalg.det(transform[:3, :3]) <= 0:
        raise ValueError(
            f"{name} is not a rigid motion (rotation part has singular values {np.round(singular_values, 6).tolist()} "
            f"and determinant {np.linalg.det(transform[:3, :3]):.6g}; a rotation has 1, 1, 1 and +1, tolerance {atol:g})"
        )
    if not np.allclose(transform[3], [0, 0, 0, 1], atol=atol):
        raise ValueError(f"{name} last row must be [0, 0, 0, 1], got {transform[3].tolist()}")
    return transform


def nearest_rotation(matrix) -> np.ndarray:
    """The proper rotation closest to `matrix` `[3, 3]` in the Frobenius norm: U·Vᵀ from its SVD
    (the polar factor), with the last singular direction flipped if needed so that det = +1."""
    u, _, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    if np.linalg.det(u @ vt) < 0:
        u[:, -1] = -u[:, -1]
    return u @ vt


def orthonormalize_rigid(transform, name: str = "transform", atol: float = RIGID_TOLERANCE) -> np.ndarray:
    """`check_rigid`, then a copy whose rotation part is `nearest_rotation` of it and whose last row is
    exactly [0, 0, 0, 1]; the translation is kept. For a 6-decimal ScanNet pose this moves the rotation
    by ~1e-6, so points 5 m away move by ~5e-6 m."""
    transform = check_rigid(transform, name, atol).copy()
    transform[:3, :3] = nearest_rotation(transform[:3, :3])
    transform[3] = (0.0, 0.0, 0.0, 1.0)
    return transform


def invert_rigid(transform) -> np.ndarray:
    """Inverse of a rigid 4x4 `[R t; 0 1]` as `[R^T, -R^T t; 0 1]` (exact up to rounding)."""
    transform = np.asarray(transform, dtype=np.float64)
    rotation, translation = transform[..., :3, :3], transform[..., :3, 3]
    inverse = np.zeros_like(transform)
    inverse[..., :3, :3] = np.swapaxes(rotation, -1, -2)
    inverse[..., :3, 3] = -np.einsum("...ji,...j->...i", rotation, translation)
    inverse[..., 3, 3] = 1.0
    return inverse


def transform_points(points, transform) -> np.ndarray:
    """Apply a 4x4 transform to points `[..., 3]`: `X' = T[:3, :3] @ X + T[:3, 3]`."""
    points = np.asarray(points, dtype=np.float64)
    transform = np.asarray(transform, dtype=np.float64)
    return points @ transform[:3, :3].T + transform[:3, 3]


def camera_to_world(points_camera, cam_to_world) -> np.ndarray:
    """OpenCV camera points `[..., 3]` -> world points, with the camera-to-world pose (4x4)."""
    return transform_points(points_camera, cam_to_world)


def world_to_camera(points_world, cam_to_world) -> np.ndarray:
    """World points `[..., 3]` -> OpenCV camera points of the camera with pose `cam_to_world` (4x4)."""
    return transform_points(points_world, invert_rigid(cam_to_world))


def transform_boxes(boxes, transform, euler_mode: str = "zxy") -> np.ndarray:
    """Move 9-DoF boxes `[N, 9]` (or `[9]`) by a rigid 4x4 `transform`.

    centre' = T @ centre; R' = T[:3, :3] @ R(angles); sizes unchanged; angles' re-encoded with the
    same convention (default R = Ry(roll) @ Rx(pitch) @ Rz(yaw), scipy "zxy"). This is the grounding
    post-processing of docs/method.md §5.4 when `transform = axis_align_matrix @ cam2global[k]`.

    `transform` is first cleaned by `orthonormalize_rigid` (rounded poses are not exactly orthonormal;
    ValueError if it is not within `RIGID_TOLERANCE` of a rigid motion), and both the centre and the
    rotation use the cleaned matrix, so a box moved there and back is exactly the box. The official
    code moves the centre with the raw matrix and gets the same rotation through scipy's
    `from_matrix`; the centres differ by ~1e-6 of the distance for 6-decimal poses (the evaluation's
    official_compat uses that recipe: `processing.scoring.grounding_metrics.official_camera_box_to_world`).
    """
    transform = orthonormalize_rigid(transform)
    boxes = np.asarray(boxes, dtype=np.float64)
    out = boxes.copy()
    out[..., 0:3] = transform_points(boxes[..., 0:3], transform)
    rotation = transform[:3, :3] @ euler_to_matrix(boxes[..., 6:9], euler_mode)
    out[..., 6:9] = matrix_to_euler(rotation, euler_mode)
    return out


def camera_to_world_transform(cam_to_world, axis_align_matrix=None) -> np.ndarray:
    """Camera -> (axis-aligned) world 4x4: `axis_align_matrix @ cam_to_world` (identity if None)."""
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    if axis_align_matrix is None:
        return cam_to_world
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite poses are reported by check_rigid
        return np.asarray(axis_align_matrix, dtype=np.float64) @ cam_to_world


def world_boxes_to_camera(boxes_world, cam_to_world, axis_align_matrix=None) -> np.ndarray:
    """World boxes `[N, 9]` -> boxes in the OpenCV frame of the camera with pose `cam_to_world`.

    If `axis_align_matrix` is given the boxes are in the axis-aligned world (ScanRefer `gt_bbox`) and
    the poses in the raw world, so the world -> camera map is `inv(axis_align_matrix @ cam_to_world)`.
    Angles: R = Ry(roll) @ Rx(pitch) @ Rz(yaw) (scipy "zxy") in and out.
    """
    transform = camera_to_world_transform(cam_to_world, axis_align_matrix)
    return transform_boxes(boxes_world, invert_rigid(orthonormalize_rigid(transform, "camera-to-world")))


def camera_boxes_to_world(boxes_camera, cam_to_world, axis_align_matrix=None) -> np.ndarray:
    """Inverse of `world_boxes_to_camera`: camera-frame boxes -> (axis-aligned) world boxes.

    This is the official grounding post-processing (docs/method.md §5.4): E = axis_align @ cam2global[k],
    c_w = E @ c, R_w = E[:3, :3] @ R(angles), all angles read as scipy "zxy".
    """
    return transform_boxes(boxes_camera, camera_to_world_transform(cam_to_world, axis_align_matrix))


def poses_relative_to_first(cam_to_world) -> np.ndarray:
    """Poses `[V, 4, 4]` (camera-to-world) -> camera-to-first-camera poses `inv(P_0) @ P_i`.

    View 0 becomes the identity: this is the "first-frame" coordinate system of every task target.
    """
    cam_to_world = np.asarray(cam_to_world, dtype=np.float64)
    return invert_rigid(cam_to_world[0]) @ cam_to_world


def intrinsics_3x3(intrinsics) -> np.ndarray:
    """Accept a 3x3 or a ScanNet-style 4x4 intrinsic matrix and return the 3x3 `K`."""
    intrinsics = np.asarray(intrinsics, dtype=np.float64)
    if intrinsics.shape[-2:] == (4, 4):
        return intrinsics[..., :3, :3]
    if intrinsics.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be 3x3 or 4x4, got shape {intrinsics.shape}")
    return intrinsics


def project(points_world, intrinsics, cam_to_world) -> tuple[np.ndarray, np.ndarray]:
    """World points `[..., 3]` -> (pixels `[..., 2]` as (u, v), depth `[...]` = camera z in metres).

    OpenCV pinhole, pixel centres at integer coordinates. Points behind the camera get depth <= 0;
    their pixel coordinates are meaningless and left to the caller to mask.
    """
    camera = world_to_camera(points_world, cam_to_world)
    k = intrinsics_3x3(intrinsics)
    depth = camera[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * camera[..., 0] / depth + k[0, 1] * camera[..., 1] / depth + k[0, 2]
        v = k[1, 1] * camera[..., 1] / depth + k[1, 2]
    return np.stack([u, v], axis=-1), depth


def pixel_rays(height: int, width: int, intrinsics) -> np.ndarray:
    """Camera-frame rays `[H, W, 3]` through every pixel centre, scaled so that z = 1.

    `depth[..., None] * pixel_rays(...)` is then the camera-frame point of a z-depth map.
    """
    k = intrinsics_3x3(intrinsics)
    v, u = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    y = (v - k[1, 2]) / k[1, 1]
    x = (u - k[0, 2] - k[0, 1] * y) / k[0, 0]
    return np.stack([x, y, np.ones_like(x)], axis=-1)


def backproject_depth(depth, intrinsics, cam_to_world=None) -> np.ndarray:
    """z-depth map `[H, W]` (metres) -> points `[H, W, 3]` in the world (or camera frame if no pose).

    Pixels with depth <= 0 or NaN give NaN points (ScanNet stores missing depth as 0).
    """
    depth = np.asarray(depth, dtype=np.float64)
    points = pixel_rays(*depth.shape, intrinsics) * depth[..., None]
    points[~(depth > 0)] = np.nan
    if cam_to_world is not None:
        points = camera_to_world(points, cam_to_world)
    return points


def backproject_pixel(u: float, v: float, depth: float, intrinsics, cam_to_world=None) -> np.ndarray:
    """One pixel (u, v) with z-depth `depth` -> a 3-vector in the world (or camera frame if no pose)."""
    k = intrinsics_3x3(intrinsics)
    y = (v - k[1, 2]) / k[1, 1]
    x = (u - k[0, 2] - k[0, 1] * y) / k[0, 0]
    point = np.array([x * depth, y * depth, depth], dtype=np.float64)
    return point if cam_to_world is None else camera_to_world(point, cam_to_world)


def points_in_boxes(points, boxes, tolerance: float = 0.0, euler_mode: str = "zxy") -> np.ndarray:
    """Inside test `[P, B]` of points `[P, 3]` against 9-DoF boxes `[B, 9]` (faces grown by `tolerance`).

    Box rotation R = Ry(roll) @ Rx(pitch) @ Rz(yaw) (scipy "zxy") unless `euler_mode="official"`.
    """
    points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    rotation = euler_to_matrix(boxes[:, 6:9], euler_mode)  # [B, 3, 3]
    local = np.einsum("bji,pbj->pbi", rotation, points[:, None, :] - boxes[None, :, 0:3])
    return np.all(np.abs(local) <= boxes[None, :, 3:6] / 2 + tolerance, axis=-1)
