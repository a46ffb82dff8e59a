"""VGGT's 9-d camera encoding `absT_quaR_FoV` and its conversion to OpenCV extrinsics / intrinsics.

Encoding (docs/vggt.md §5): `[t_x, t_y, t_z, q_x, q_y, q_z, q_w, fov_h, fov_w]`, with
- `[R | t]` the OpenCV **camera-from-world** extrinsic (x right, y down, z forward): `x_cam = R·x_world + t`;
- `q` the rotation `R` as a quaternion, **scalar last** (XYZW), standardised so that `q_w >= 0`;
- `fov_h, fov_w` the vertical and horizontal fields of view in radians of an image of size (H, W)
  whose pinhole intrinsics have the principal point at the image centre `(W/2, H/2)`:
  `f_y = (H/2) / tan(fov_h/2)`, `f_x = (W/2) / tan(fov_w/2)`.

Both directions keep the input dtype (the reference casts encodings to fp32), so a round trip in
float64 is exact to ~1e-12.
"""

import torch


def quaternion_to_matrix(quaternions: torch.Tensor) -> torch.Tensor:
    """XYZW quaternions `[..., 4]` (need not be unit: normalised implicitly) → rotation matrices `[..., 3, 3]`."""
    x, y, z, w = torch.unbind(quaternions, dim=-1)
    two_s = 2.0 / (quaternions * quaternions).sum(dim=-1)
    matrix = torch.stack(
        (
            1 - two_s * (y * y + z * z),
            two_s * (x * y - z * w),
            two_s * (x * z + y * w),
            two_s * (x * y + z * w),
            1 - two_s * (x * x + z * z),
            two_s * (y * z - x * w),
            two_s * (x * z - y * w),
            two_s * (y * z + x * w),
            1 - two_s * (x * x + y * y),
        ),
        dim=-1,
    )
    return matrix.reshape(quaternions.shape[:-1] + (3, 3))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `[..., 3, 3]` → unit XYZW quaternions `[..., 4]` with `w >= 0`.

    Numerically robust (the method of PyTorch3D that VGGT uses): four candidate quaternions are
    formed, each divided by one of `2|w|, 2|x|, 2|y|, 2|z|`, and the best-conditioned one (largest
    denominator) is kept.
    """
    if matrix.shape[-2:] != (3, 3):
        raise ValueError(f"rotation matrices must have shape [..., 3, 3], got {tuple(matrix.shape)}")
    batch_shape = matrix.shape[:-2]
    m00, m01, m02, m10, m11, m12, m20, m21, m22 = torch.unbind(matrix.reshape(batch_shape + (9,)), dim=-1)
    # |w|, |x|, |y|, |z| (times 2), from the diagonal
    q_abs = torch.stack(
        [1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22, 1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], dim=-1
    )
    q_abs = torch.where(q_abs > 0, torch.sqrt(q_abs.clamp(min=0)), torch.zeros_like(q_abs))
    # row i: the quaternion (w, x, y, z) multiplied by 2·q_abs[i]
    candidates = torch.stack(
        [
            torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
            torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
            torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
            torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
        ],
        dim=-2,
    )
    floor = torch.tensor(0.1, dtype=q_abs.dtype, device=q_abs.device)
    candidates = candidates / (2.0 * q_abs[..., None].max(floor))
    best = q_abs.argmax(dim=-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(batch_shape + (1, 4))).squeeze(-2)
    xyzw = wxyz[..., [1, 2, 3, 0]]
    return torch.where(xyzw[..., 3:4] < 0, -xyzw, xyzw)


def pose_encoding_to_extrinsics_intrinsics(
    pose_encoding: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode `absT_quaR_FoV` encodings.

    Args:
        pose_encoding: `[..., 9]` (e.g. `[B, S, 9]`).
        image_size: `(H, W)` in pixels of the images the fields of view refer to.

    Returns:
        `extrinsics [..., 3, 4]` (OpenCV camera-from-world `[R | t]`) and
        `intrinsics [..., 3, 3]` `[[f_x, 0, W/2], [0, f_y, H/2], [0, 0, 1]]`, both in the dtype of the input.
    """
    if pose_encoding.shape[-1] != 9:
        raise ValueError(f"pose encodings must have 9 values in the last dimension, got {tuple(pose_encoding.shape)}")
    height, width = image_size
    translation = pose_encoding[..., :3]
    rotation = quaternion_to_matrix(pose_encoding[..., 3:7])
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    fov_h, fov_w = pose_encoding[..., 7], pose_encoding[..., 8]
    intrinsics = torch.zeros(pose_encoding.shape[:-1] + (3, 3), dtype=pose_encoding.dtype, device=pose_encoding.device)
    intrinsics[..., 0, 0] = (width / 2.0) / torch.tan(fov_w / 2.0)
    intrinsics[..., 1, 1] = (height / 2.0) / torch.tan(fov_h / 2.0)
    intrinsics[..., 0, 2] = width / 2.0
    intrinsics[..., 1, 2] = height / 2.0
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics


def extrinsics_intrinsics_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Encode cameras as `absT_quaR_FoV` (inverse of `pose_encoding_to_extrinsics_intrinsics`).

    Args:
        extrinsics: `[..., 3, 4]` OpenCV camera-from-world `[R | t]` (a `[..., 4, 4]` matrix is accepted too).
        intrinsics: `[..., 3, 3]` pinhole intrinsics; only `f_x` and `f_y` are encoded (the principal point
            is assumed at the image centre, skew zero).
        image_size: `(H, W)` in pixels.

    Returns:
        `[..., 9]` in the dtype of `extrinsics`.
    """
    height, width = image_size
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    quaternion = matrix_to_quaternion(rotation)
    fov_h = 2 * torch.atan((height / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([translation, quaternion, fov_h[..., None], fov_w[..., None]], dim=-1).to(extrinsics.dtype)


def activate_pose_encoding(raw: torch.Tensor) -> torch.Tensor:
    """The camera head's output activation: translation and quaternion linear, fields of view ReLU."""
    return torch.cat([raw[..., :7], torch.relu(raw[..., 7:])], dim=-1)


__all__ = [
    "activate_pose_encoding",
    "extrinsics_intrinsics_to_pose_encoding",
    "matrix_to_quaternion",
    "pose_encoding_to_extrinsics_intrinsics",
    "quaternion_to_matrix",
]
