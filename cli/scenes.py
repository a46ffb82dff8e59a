"""Scenes for the demo and `gap-mllm predict`: frames plus whatever geometry is known about them.

A bundled example is a SynthRooms scene (processing/synth) rendered on the fly, so it ships no
files and comes with exact intrinsics, poses, depth and object boxes: the demo can then draw
projected boxes on every frame and show a coloured point cloud. User frames come with nothing but
pixels: the first frame is drawn with an assumed pinhole camera and the 3D view shows boxes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from gap_mllm.processing.coordinates import backproject_depth, invert_rigid, world_boxes_to_camera

# The camera assumed for frames without calibration: a centred pinhole with a 60° horizontal field of
# view, typical of phone and ScanNet colour cameras. Only used to DRAW boxes, never fed to the model.
ASSUMED_FOV_X_DEGREES = 60.0
EXAMPLE_SIZE = (192, 256)  # (height, width): small, so the tiny model answers in about a second on CPU
EXAMPLE_FRAMES = 4
EXAMPLE_SEEDS = {"synthetic room A": 0, "synthetic room B": 1, "synthetic room C": 2}
MAX_CLOUD_POINTS = 20000


@dataclass
class Scene:
    """Frames of one scene and the geometry known about them.

    Attributes:
        views: the frames (RGB PIL images, one size).
        intrinsics: `[3, 3]` pinhole of the frames (assumed when `calibrated` is False).
        cam_to_first: `[V, 4, 4]` pose of each frame in the first frame's camera, or None if unknown.
        points, colors: a point cloud `[N, 3]` float32 / `[N, 3]` uint8 in the first camera, or None.
        reference_boxes: ground-truth boxes `[K, 9]` in the first camera (synthetic examples), labels in
            `reference_labels`.
        calibrated: whether `intrinsics` are the real ones.
    """

    views: list[Image.Image]
    intrinsics: np.ndarray
    cam_to_first: np.ndarray | None = None
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    reference_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))
    reference_labels: list[str] = field(default_factory=list)
    calibrated: bool = False


def assumed_intrinsics(height: int, width: int, fov_x_degrees: float = ASSUMED_FOV_X_DEGREES) -> np.ndarray:
    """A centred pinhole with square pixels and the given horizontal field of view."""
    focal = (width / 2) / np.tan(np.deg2rad(fov_x_degrees) / 2)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def scene_from_frames(views: list[Image.Image]) -> Scene:
    """A scene of uncalibrated user frames (no poses, no depth)."""
    if not views:
        raise ValueError("no frames given")
    width, height = views[0].size
    return Scene(views=list(views), intrinsics=assumed_intrinsics(height, width))


def synthetic_scene(seed: int = 0, num_frames: int = EXAMPLE_FRAMES, size: tuple[int, int] = EXAMPLE_SIZE) -> Scene:
    """A rendered SynthRooms scene with exact geometry, everything in the first frame's camera."""
    from gap_mllm.processing.synth import SynthConfig, SynthRooms

    generator = SynthRooms(SynthConfig(seed=seed, image_size=size, num_frames=num_frames))
    synth = generator.generate_scene(0)
    first_to_room = synth.cam_to_room[0]
    room_to_first = invert_rigid(first_to_room)
    cam_to_first = np.stack([room_to_first @ pose for pose in synth.cam_to_room])
    points, colors = [], []
    for frame, pose in zip(synth.frames, cam_to_first):
        cloud = backproject_depth(frame.depth, synth.intrinsics, pose).reshape(-1, 3)
        valid = np.isfinite(cloud).all(axis=1)
        points.append(cloud[valid])
        colors.append(frame.rgb.reshape(-1, 3)[valid])
    points, colors = np.concatenate(points), np.concatenate(colors)
    if len(points) > MAX_CLOUD_POINTS:  # a browser-friendly size; seeded so the view is reproducible
        keep = np.sort(np.random.default_rng(seed).choice(len(points), MAX_CLOUD_POINTS, replace=False))
        points, colors = points[keep], colors[keep]
    visible = synth.visible_pixels().sum(axis=0) > 0
    indices = [i for i, seen in enumerate(visible) if seen]
    boxes = world_boxes_to_camera(synth.world_boxes[indices], first_to_room) if indices else np.zeros((0, 9))
    return Scene(
        views=[Image.fromarray(frame.rgb) for frame in synth.frames],
        intrinsics=np.asarray(synth.intrinsics, dtype=np.float64),
        cam_to_first=cam_to_first,
        points=points.astype(np.float32),
        colors=colors.astype(np.uint8),
        reference_boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 9),
        reference_labels=[synth.objects[i].category for i in indices],
        calibrated=True,
    )
