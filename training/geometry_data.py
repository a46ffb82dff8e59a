"""Stage 0 data: multi-view clips with exact depth and cameras, normalised as VGGT trains.

`GeometryClips(data_root, split, processor)` draws clips of `clip_frames` posed frames from the scenes
of a split (ScanNet `posed_images` layout: colour, depth, pose, intrinsics) and returns, per clip:

    images          `[S, 3, Hg, Wg]` float in [0, 1]: exactly the geometry-encoder input the GAP-MLLM
                    processor makes of these frames (its `geometry_pixel_values`), so the encoder trained
                    here sees at stage 0 what it sees inside GAP-MLLM later
    depth           `[S, Hg, Wg]` normalised depth (0 = invalid), sampled at the resized pixel centres
    points          `[S, Hg, Wg, 3]` normalised points in the first frame's camera (the pointmap target)
    pose_encoding   `[S, 9]` VGGT's `absT_quaR_FoV` of every frame relative to frame 0 (normalised t)
    match_index     `[S-1, P]` the frame-0 patch showing each geometry patch's point of frames 1..S-1 (−1: not
                    visible there), and match_offset `[S-1, P, 2]` its image offset: the cross-view matching
                    targets (training/cross_view_matching.py)
    intrinsics      `[S, 3, 3]` of the resized frames
    scale           `[]` the normalisation scale (metres per unit)

Normalisation (VGGT): world = camera of frame 0; the scale is the mean distance of all valid points
of the clip to that camera's centre; depth, translations and points are divided by it. A clip is
therefore scale free, and its metric size is `scale`.

Clip choice: clip `i` depends only on (seed, i): scene `i mod n_scenes`, a random window of
`window_fraction` of the scene's frames (or, with `min_window_fraction`, of a share drawn uniformly between the
two, so clips mix nearby and distant views), `clip_frames` frames spread uniformly over it (the mini data's
detection / reconstruction clips are drawn the same way), so the data is endless and reproducible.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gap_mllm.processing.annotation_files import ANNOTATIONS_SUBDIR
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.dataset_identity import SYNTHROOMS_INFO, read_dataset_info
from gap_mllm.processing.errors import DataError
from gap_mllm.processing.scannet_layout import (
    DEPTH_INTRINSIC_FILE,
    INTRINSIC_FILE,
    companion_path,
    posed_images_dir,
    read_color,
    read_depth,
    read_intrinsics,
    read_pose,
)
from gap_mllm.processing.sampling import uniform_indices

from .aux_targets import camera_encoding
from .cross_view_matching import patch_correspondences


def split_scene_ids(data_root, split: str) -> list[str]:
    """Scene ids of `split`: SynthRooms' `synthrooms/dataset_info.json` when present, else every scene
    referenced by the split's annotation files (real ScanNet layouts)."""
    root = Path(data_root)
    info = read_dataset_info(root)
    if info is not None:
        splits = info["splits"]
        if split not in splits:
            raise DataError(f"no split {split!r} (splits: {sorted(splits)})", path=root / SYNTHROOMS_INFO)
        return list(splits[split])
    scenes = set()
    for path in sorted((root / ANNOTATIONS_SUBDIR).glob(f"*_{split}_*frames*.json")):
        for record in load_annotation_file(path):
            for image in record.get("images", []) if isinstance(record, dict) else []:
                scenes.add(Path(image).parent.name)
    if not scenes:
        raise ValueError(f"no scene of split {split!r} found under {root} (no dataset_info.json, no annotation file)")
    return sorted(scenes)


def resized_intrinsics(intrinsics: np.ndarray, source_size: tuple[int, int], target_size: tuple[int, int]) -> np.ndarray:
    """K of an image resized from `source_size` to `target_size` ((H, W)), pixel centres at integers:
    u' = (u + 0.5)·sx − 0.5."""
    sy, sx = target_size[0] / source_size[0], target_size[1] / source_size[1]
    k = np.array(intrinsics, dtype=np.float64)
    k[0, 0] *= sx
    k[1, 1] *= sy
    k[0, 2] = (k[0, 2] + 0.5) * sx - 0.5
    k[1, 2] = (k[1, 2] + 0.5) * sy - 0.5
    return k


def sample_at_centres(depth: np.ndarray, target_size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour depth at the pixel centres of a `target_size` resize (no blending across edges)."""
    height, width = depth.shape
    rows = np.clip(np.floor((np.arange(target_size[0]) + 0.5) * height / target_size[0]).astype(int), 0, height - 1)
    cols = np.clip(np.floor((np.arange(target_size[1]) + 0.5) * width / target_size[1]).astype(int), 0, width - 1)
    return depth[np.ix_(rows, cols)]


def camera_points(depth: np.ndarray, intrinsics: np.ndarray) -> np.ndarray:
    """`[H, W, 3]` camera-frame points of a depth map (OpenCV, pixel centres at integers)."""
    height, width = depth.shape
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    x = (cols - intrinsics[0, 2]) * depth / intrinsics[0, 0]
    y = (rows - intrinsics[1, 2]) * depth / intrinsics[1, 1]
    return np.stack([x, y, depth], axis=-1)


def normalised_clip_targets(depth: np.ndarray, intrinsics: np.ndarray, cam_to_world: np.ndarray, image_size: tuple[int, int]) -> dict:
    """VGGT-normalised targets of one clip.

    Args:
        depth: `[S, H, W]` metres (0 = invalid); intrinsics `[S, 3, 3]`; cam_to_world `[S, 4, 4]`; image_size (H, W).

    Returns:
        dict of float32 tensors: `depth [S, H, W]`, `points [S, H, W, 3]` (frame-0 camera), `pose_encoding
        [S, 9]`, `scale []` (see the module docstring).
    """
    first_from_world = np.linalg.inv(cam_to_world[0])
    points = []
    for view in range(depth.shape[0]):
        local = camera_points(depth[view], intrinsics[view])
        to_first = first_from_world @ cam_to_world[view]
        points.append(local @ to_first[:3, :3].T + to_first[:3, 3])
    points = np.stack(points)
    valid = depth > 0
    if not valid.any():
        raise ValueError("clip has no valid depth")
    scale = float(np.linalg.norm(points[valid], axis=-1).mean())
    relative = cam_to_world.copy()
    relative[:, :3, 3] /= scale  # translations in normalised units; rotations unchanged
    encoding = camera_encoding(intrinsics, relative, image_size)
    return {
        "depth": torch.from_numpy((depth / scale).astype(np.float32)),
        "points": torch.from_numpy((points * valid[..., None] / scale).astype(np.float32)),
        "pose_encoding": encoding.float(),
        "scale": torch.tensor(scale, dtype=torch.float32),
    }


class GeometryClips(torch.utils.data.Dataset):
    """Endless, reproducible clips of a split (see the module docstring).

    Args:
        data_root: ScanNet-layout folder (SynthRooms output or real ScanNet posed images).
        split: "train", "val", "test", ...
        processor: the GapMllmProcessor whose geometry input the encoder will receive.
        clip_frames: frames per clip (S).
        num_clips: dataset length (clips are drawn with replacement from the scenes).
        window_fraction: the clip's frames are spread over a random window of this share of the scene.
        seed: clip `i` depends only on (seed, i).
        min_window_fraction: when set, each clip's share is drawn uniformly in [min_window_fraction, window_fraction].
        patch_size: the geometry encoder's patch, for the matching targets (14, as VGGT).
    """

    def __init__(self, data_root, split: str, processor, clip_frames: int = 4, num_clips: int = 10_000,
                 window_fraction: float = 0.5, seed: int = 0, min_window_fraction: float | None = None,
                 patch_size: int = 14):
        for name, value in (("window_fraction", window_fraction), ("min_window_fraction", min_window_fraction)):
            if value is not None and not 0 < value <= 1:
                raise ValueError(f"{name}={value}: a share of the scene's frames, in (0, 1]")
        if min_window_fraction is not None and min_window_fraction > window_fraction:
            raise ValueError(f"min_window_fraction={min_window_fraction} is above window_fraction={window_fraction}")
        self.media_root = posed_images_dir(data_root)
        self.scenes = split_scene_ids(data_root, split)
        self.frames = {}
        for scene in self.scenes:
            stems = sorted((p.stem for p in (self.media_root / scene).glob("*.jpg")), key=int)
            if len(stems) < clip_frames:
                raise ValueError(f"scene {scene} has {len(stems)} frames, fewer than clip_frames={clip_frames}")
            self.frames[scene] = stems
        self.processor = processor
        self.clip_frames = clip_frames
        self.num_clips = num_clips
        self.window_fraction = window_fraction
        self.min_window_fraction = min_window_fraction
        self.patch_size = patch_size
        self.seed = seed

    def __len__(self) -> int:
        return self.num_clips

    def clip(self, index: int) -> tuple[str, list[str]]:
        """(scene id, frame stems) of clip `index`."""
        rng = np.random.default_rng([self.seed, index])
        scene = self.scenes[index % len(self.scenes)]
        stems = self.frames[scene]
        fraction = self.window_fraction
        if self.min_window_fraction is not None:
            fraction = float(rng.uniform(self.min_window_fraction, self.window_fraction))
        window = min(len(stems), max(self.clip_frames, int(round(fraction * len(stems)))))
        start = int(rng.integers(0, len(stems) - window + 1))
        return scene, [stems[i] for i in uniform_indices(len(stems), self.clip_frames, start, start + window)]

    def __getitem__(self, index: int) -> dict:
        scene, stems = self.clip(index)
        folder = self.media_root / scene
        limits = self.processor.pixel_limits
        images, depths, poses, intrinsics = [], [], [], []
        # depth targets live on the depth sensor's grid (ScanNet: its own intrinsics; SynthRooms: the colour grid)
        k_file = folder / DEPTH_INTRINSIC_FILE
        k = read_intrinsics(k_file if k_file.is_file() else folder / INTRINSIC_FILE)
        for stem in stems:
            colour = folder / f"{stem}.jpg"
            _, geometry, _ = self.processor._prepare_view(read_color(colour), limits)
            size = tuple(geometry.shape[-2:])
            npy = companion_path(colour, ".npy")
            depth = read_depth(npy if npy.is_file() else companion_path(colour, ".png"))
            images.append(geometry)
            depths.append(sample_at_centres(depth, size))
            intrinsics.append(resized_intrinsics(k, depth.shape, size))
            poses.append(read_pose(companion_path(colour, ".txt")))
        targets = normalised_clip_targets(np.stack(depths), np.stack(intrinsics), np.stack(poses), size)
        intrinsics = torch.from_numpy(np.stack(intrinsics)).float()
        match_index, match_offset = patch_correspondences(targets["depth"], targets["points"], intrinsics, self.patch_size)
        return {"images": torch.stack(images), "intrinsics": intrinsics, "scene_id": scene, **targets,
                "match_index": match_index, "match_offset": match_offset}

