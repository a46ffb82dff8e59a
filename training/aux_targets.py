"""Targets of the auxiliary losses, built at collate time from the data's ground truth.

The geometry encoder of this package has no VGGT camera/depth heads, so the camera and depth targets
come from the dataset (SynthRooms has exact ones; ScanNet has sensor depth and poses), not from a
VGGT teacher as in GeoVR. Only the "grid" preprocessing mode is supported: there the Qwen grid covers
the whole frame, so a resized depth map lines up with the visual tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from gap_mllm.modeling_vggt import extrinsics_intrinsics_to_pose_encoding

from .config import AuxLossConfig


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
