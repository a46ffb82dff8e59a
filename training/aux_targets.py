"""Targets of the auxiliary losses, built at collate time from the data's ground truth.

The geometry encoder of this package has no VGGT camera/depth heads, so the camera and depth targets
come from the dataset (SynthRooms has exact ones; ScanNet has sensor depth and poses), not from a
VGGT teacher as in GeoVR. Only the "grid" preprocessing mode is supported: there the Qwen grid covers
the whole frame, so a resized depth map lines up with the visual tokens. The camera targets are VGGT's pose
encodings (`extrinsics_intrinsics_to_pose_encoding`, the inverse of the camera head's decoding).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .config import AuxLossConfig


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """Rotation matrices `[..., 3, 3]` (else `ValueError`) → unit XYZW quaternions `[..., 4]` with `w >= 0`."""
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


def extrinsics_intrinsics_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Encode cameras as `absT_quaR_FoV` `[..., 9]` (inverse of `modeling_vggt.pose_encoding_to_extrinsics_intrinsics`):
    OpenCV camera-from-world `extrinsics [..., 3, 4]` (or `[..., 4, 4]`; its dtype is the output's), `intrinsics
    [..., 3, 3]` (only `f_x`, `f_y` are encoded: principal point at the centre, zero skew), `image_size` `(H, W)` in
    pixels."""
    height, width = image_size
    rotation = extrinsics[..., :3, :3]
    translation = extrinsics[..., :3, 3]
    quaternion = matrix_to_quaternion(rotation)
    fov_h = 2 * torch.atan((height / 2.0) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2.0) / intrinsics[..., 0, 0])
    return torch.cat([translation, quaternion, fov_h[..., None], fov_w[..., None]], dim=-1).to(extrinsics.dtype)


def camera_encoding(intrinsics: np.ndarray, cam_to_world: np.ndarray, image_size: tuple[int, int]) -> torch.Tensor:
    """VGGT's `absT_quaR_FoV` of every view, in VGGT's world frame (= camera of view 0).

    Args:
        intrinsics: `[V, 3, 3]` pinhole K of the frames (pixels of `image_size`).
        cam_to_world: `[V, 4, 4]` OpenCV camera-to-world poses (metres).
        image_size: (H, W) of the frames.

    Returns:
        `[V, 9]` float32: t (3) and quaternion XYZW with w ≥ 0 (4) of the camera-from-reference
        extrinsic `x_cam = R·x_ref + t`, then fov_h = 2·atan(H/2 / f_y), fov_w = 2·atan(W/2 / f_x).
    """
    cam_to_world = torch.as_tensor(np.asarray(cam_to_world), dtype=torch.float64)
    intrinsics = torch.as_tensor(np.asarray(intrinsics), dtype=torch.float64)
    # camera-from-reference = inverse(cam_to_world_v) · cam_to_world_0
    extrinsics = torch.linalg.inv(cam_to_world) @ cam_to_world[0]
    return extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, image_size).float()


def depth_on_token_grid(depth: torch.Tensor, merged_grid: tuple[int, int], patch: int) -> torch.Tensor:
    """Area-resample a depth map `[H, W]` (metres, ≤ 0 invalid) to `[h_m·k, w_m·k]`; a cell is valid
    (> 0) only when more than half of its area was valid, and then holds the mean of the valid depths."""
    depth = torch.as_tensor(depth, dtype=torch.float32)
    size = (merged_grid[0] * patch, merged_grid[1] * patch)
    valid = (depth > 0).float()[None, None]
    summed = F.interpolate((depth.clamp(min=0))[None, None], size=size, mode="area")
    coverage = F.interpolate(valid, size=size, mode="area")
    resampled = torch.where(coverage > 0.5, summed / coverage.clamp(min=1e-6), torch.zeros_like(summed))
    return resampled[0, 0]


class AuxTargetCollator:
    """Wrap a collator and add the targets of the enabled auxiliary losses to its batch.

    Adds `aux_camera` `[V_total, 9]` (poses), `aux_depth` (one `[h_m·k, w_m·k]` tensor per view) and
    `aux_scale` `[B]` (median valid depth of the sample, metres). Examples need `intrinsics` and
    `cam_to_world` (builder `load_poses=True`) and/or `depth` (`load_depth=True`).
    """

    def __init__(self, collator, aux: AuxLossConfig, merge_size: int = 2):
        self.collator = collator
        self.aux = aux
        self.merge_size = merge_size

    def __call__(self, examples: list[dict]):
        batch = self.collator(examples)
        grids = batch["image_grid_thw"].tolist()
        merged = [(h // self.merge_size, w // self.merge_size) for _, h, w in grids]
        if self.aux.needs_poses:
            cameras = []
            for example in examples:
                width, height = example["images"][0].size
                cameras.append(camera_encoding(example["intrinsics"], example["cam_to_world"], (height, width)))
            batch["aux_camera"] = torch.cat(cameras)
        if self.aux.needs_depth:
            depths, scales, view = [], [], 0
            for example in examples:
                sample_depth = torch.as_tensor(np.asarray(example["depth"]), dtype=torch.float32)
                valid = sample_depth[sample_depth > 0]
                scales.append(valid.median() if valid.numel() else torch.tensor(math.nan))
                for frame in sample_depth:
                    depths.append(depth_on_token_grid(frame, merged[view], self.aux.depth_patch))
                    view += 1
            batch["aux_depth"] = depths
            batch["aux_scale"] = torch.stack(scales)
        return batch
