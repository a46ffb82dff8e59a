"""SynthRooms: deterministic procedural scenes (room, furniture, camera walk, rendered frames).

Scene `i` of a generator with seed `s` depends only on (s, i) through `numpy.random.SeedSequence`,
so scenes can be generated in any order, in parallel, or again later, with identical results.

Limits, checked before any work (`scene_count_problem`, `scene_size_problem`, `object_count_problem`): at most
`MAX_SCENES` scenes, frames of at most `MAX_IMAGE_SIDE` pixels a side, a scene that fits the machine's memory while
it is rendered, and no more objects than a room can hold.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .categories import CATEGORY_NAMES
from .layout import place_objects, room_capacity, sample_room
from .renderer import PartArrays, render
from .scene import SynthScene
from .trajectory import sample_trajectory

# Scene ids are ScanNet's four digits (synth0000_00 ... synth9999_00, as scene0000_00): a fifth digit would sort
# synth10000_00 before synth1000_00, so sorted ids would no longer be in scene order.
MAX_SCENES = 10_000
MAX_IMAGE_SIDE = 65_500  # frames are written as JPEG, whose largest side libjpeg (and PIL) writes is 65,500 pixels
# What one scene holds in memory while it is rendered, at least (measured with tracemalloc at 64x80 to 480x640
# pixels): its frames until they are written (RGB 3, depth 4, instance ids 4 bytes a pixel; with each frame's pose,
# name and arrays, FRAME_BYTES more), and the renderer's buffers of the frame in progress.
HELD_BYTES_PER_PIXEL = 11
FRAME_BYTES = 512
RENDER_BYTES_PER_PIXEL = 64


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


def scene_memory_bytes(config: SynthConfig) -> int:
    """The memory one scene of `config` needs while it is rendered, at least (`HELD_BYTES_PER_PIXEL` ...)."""
    height, width = config.image_size
    pixels = height * width
    return config.num_frames * (pixels * HELD_BYTES_PER_PIXEL + FRAME_BYTES) + pixels * RENDER_BYTES_PER_PIXEL


def machine_memory_bytes() -> int | None:
    """The machine's physical memory, or None where the system does not say (no `os.sysconf`)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def in_gib(size: int) -> str:
    """`size` bytes in words: "3.2 GiB", "4,658.8 GiB"."""
    return f"{size / 2**30:,.1f} GiB"


def scene_count_problem(count: int) -> str | None:
    """Why `count` scenes cannot be written (more than `MAX_SCENES`), or None; the words follow the count given."""
    if count <= MAX_SCENES:
        return None
    return (f"is more than the {MAX_SCENES:,} scenes SynthRooms writes (scene ids keep ScanNet's four digits, "
            f"synth0000_00 to synth{MAX_SCENES - 1}_00, so that they sort in scene order)")


def scene_size_problem(config: SynthConfig, workers: int = 1) -> str | None:
    """Why scenes of `config` cannot be rendered, `workers` at a time, or None: a frame side above `MAX_IMAGE_SIDE`,
    or more memory than the machine has (`scene_memory_bytes` for each worker). Checked before anything is
    allocated; the words, with what to do, follow the frame size and count given."""
    height, width = config.image_size
    if max(height, width) > MAX_IMAGE_SIDE:
        return f"are larger than JPEG frames go ({MAX_IMAGE_SIDE:,} pixels a side): give smaller frames"
    memory = machine_memory_bytes()
    needed = workers * scene_memory_bytes(config)
    if memory is None or needed <= memory:
        return None
    scenes = "a scene (its frames are held until written)" if workers == 1 else \
        f"{workers} scenes at once, one a worker (their frames are held until written)"
    fewer = "smaller or fewer frames" + ("" if workers == 1 else ", or fewer workers")
    return (f"need at least {in_gib(needed)} of memory to render {scenes}, more than this machine's {in_gib(memory)}: "
            f"give {fewer}")


def object_count_problem(config: SynthConfig) -> str | None:
    """Why scenes of `config` cannot hold the objects asked for (`max_objects` above what a room of its size ranges
    can ever hold, `room_capacity`), or None; the words, with what to do, follow the count given. Checked before any
    work: placing each object takes up to 60 tries against every placed one, all in vain beyond the capacity."""
    capacity = room_capacity(config.categories, config.room_width, config.room_depth)
    if config.max_objects <= capacity:
        return None
    return (f"is more objects than a room of these settings holds (at most {capacity}: its largest floor, "
            f"{config.room_width[1]:g}x{config.room_depth[1]:g} m, over the smallest footprint; an object that finds no "
            f"free spot is left out): give at most {capacity}")


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
        """Raises ValueError for frames that cannot be rendered on this machine (`scene_size_problem`), or more
        objects than a room holds (`object_count_problem`)."""
        self.config = config or SynthConfig()
        problem = scene_size_problem(self.config)
        if problem is not None:
            height, width = self.config.image_size
            raise ValueError(f"{self.config.num_frames} frames of {height}x{width} pixels (num_frames, image_size) "
                             f"{problem}")
        problem = object_count_problem(self.config)
        if problem is not None:
            raise ValueError(f"max_objects {self.config.max_objects} {problem}")

    def scene_id(self, index: int) -> str:
        """ScanNet-style id: `synth{index:04d}_00`, for 0 <= index < MAX_SCENES (ValueError otherwise)."""
        if not 0 <= index < MAX_SCENES:
            raise ValueError(f"scene index {index} is outside 0 to {MAX_SCENES - 1}: scene ids keep ScanNet's four "
                             "digits")
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
