"""SynthRooms: deterministic procedural scenes (room, furniture, camera walk, rendered frames).

Scene `i` of a generator with seed `s` depends only on (s, i) through `numpy.random.SeedSequence`,
so scenes can be generated in any order, in parallel, or again later, with identical results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .categories import CATEGORY_NAMES
from .layout import place_objects, sample_room
from .renderer import PartArrays, render
from .scene import SynthScene
from .trajectory import sample_trajectory


@dataclass
class SynthConfig:
    """Settings of SynthRooms; the defaults give ScanNet-like 640x480 scans.

    Geometry: `image_size` is (height, width) in pixels; `fov_x_degrees` the horizontal field of view
    of a centred pinhole (fx = fy); rooms are width x depth x height metres. Sampling: `num_frames`
    per scene (named every 10th raw frame), frames per sample of each task, samples per scene.
    `min_visible_fraction` of the image an object must cover in a frame to count as seen there.
    `stage2_neighbours`: grounding stage 2 takes the selected frame, this many following and this many
    preceding posed frames (official: 9, i.e. n, n+10, ..., n+90, then n-10, ..., n-90; docs/method.md §3.4).
    Named presets (the official-like default and the GAP-MLLM-Mini one): `processing/synth/presets.py`.
    """

    seed: int = 0
    image_size: tuple[int, int] = (480, 640)
    fov_x_degrees: float = 62.0
    num_frames: int = 48
    min_objects: int = 8
    max_objects: int = 14
    room_width: tuple[float, float] = (4.0, 7.0)
    room_depth: tuple[float, float] = (3.5, 6.0)
    room_height: tuple[float, float] = (2.5, 3.0)
    categories: tuple[str, ...] = CATEGORY_NAMES
    clip_frames: int = 4
    grounding_frames: int = 32
    caption_frames: int = 32
    qa_frames: int = 16
    recon_samples_per_scene: int = 8
    detection_clips_per_scene: int = 2
    captions_per_scene: int = 4
    min_visible_fraction: float = 0.002
    stage2_neighbours: int = 9
    jpeg_quality: int = 95
    frame_sampling: str = "uniform"  # or "space_aware" (processing.sampling)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def min_visible_pixels(self) -> int:
        return max(1, int(round(self.min_visible_fraction * self.image_size[0] * self.image_size[1])))


def pinhole_intrinsics(height: int, width: int, fov_x_degrees: float) -> np.ndarray:
    """3x3 K of a centred pinhole: fx = fy = (W / 2) / tan(fov_x / 2), principal point at the centre.

    The centre is ((W - 1) / 2, (H - 1) / 2) because pixel centres sit at integer coordinates.
    """
    focal = (width / 2) / np.tan(np.deg2rad(fov_x_degrees) / 2)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


class SynthRooms:
    """Procedural indoor scenes with exact ground truth.

    >>> gen = SynthRooms(SynthConfig(seed=0, image_size=(48, 64), num_frames=8))
    >>> scene = gen.generate_scene(0)   # a rendered `SynthScene`
    """

    def __init__(self, config: SynthConfig | None = None):
        self.config = config or SynthConfig()

    def scene_id(self, index: int) -> str:
        """ScanNet-style id: `synth{index:04d}_00`."""
        return f"synth{index:04d}_00"

    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        """Generator for scene `index`; `stream` separates independent uses (layout, language, ...)."""
        return np.random.default_rng(np.random.SeedSequence([self.config.seed, index, stream]))

    def layout_scene(self, index: int) -> SynthScene:
        """Room, objects, trajectory and cameras of scene `index`, without rendering."""
        cfg = self.config
        rng = self.rng(index)
        room = sample_room(rng, cfg.room_width, cfg.room_depth, cfg.room_height)
        num_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
        objects = place_objects(rng, room, num_objects, cfg.categories)
        cam_to_room, objects = sample_trajectory(rng, room, objects, cfg.num_frames)
        # A raw world that differs from the room frame by a yaw and a shift, like ScanNet's
        # axis_align_matrix (raw -> aligned).
        axis_align = np.eye(4)
        axis_align[:3, :3] = Rotation.from_euler("z", rng.uniform(-np.pi, np.pi)).as_matrix()
        axis_align[:3, 3] = [*rng.uniform(-3, 3, size=2), 0.0]
        height, width = cfg.image_size
        return SynthScene(
            scene_id=self.scene_id(index),
            seed=cfg.seed,
            room=room,
            objects=objects,
            intrinsics=pinhole_intrinsics(height, width, cfg.fov_x_degrees),
            image_size=(height, width),
            axis_align_matrix=axis_align,
            cam_to_room=cam_to_room,
            frame_names=[f"{10 * i:05d}" for i in range(cfg.num_frames)],
        )

    def generate_scene(self, index: int) -> SynthScene:
        """Scene `index` with every frame rendered (RGB, depth, instance masks)."""
        scene = self.layout_scene(index)
        parts = PartArrays(scene.objects)
        height, width = scene.image_size
        scene.frames = [render(scene.room, parts, pose, scene.intrinsics, height, width) for pose in scene.cam_to_room]
        return scene
