"""Data classes of a SynthRooms scene.

Frames: the room frame ("aligned world") has z up, the floor at z = 0 and the room spanning
[0, width] x [0, depth] x [0, height] metres. It plays the role of the ScanNet axis-aligned world.
Poses written to disk live in a "raw world" related by `axis_align_matrix` (raw -> aligned), exactly
like ScanNet, so that code which forgets the axis alignment fails on synthetic data too.
Cameras are OpenCV (x right, y down, z forward); poses are camera-to-world 4x4.
Boxes are 9-vectors [cx, cy, cz, sx, sy, sz, yaw, pitch, roll] with R = Ry(roll) Rx(pitch) Rz(yaw)
(scipy "zxy"); objects stand upright, so their world boxes have pitch = roll = 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..coordinates import invert_rigid


@dataclass
class Part:
    """One oriented cuboid of an object, in the object frame (origin = object box centre, z up).

    `center` and `size` are metres in the object frame; `colour` is linear RGB in [0, 1].
    """

    center: np.ndarray
    size: np.ndarray
    colour: np.ndarray
    texture: str


@dataclass
class SceneObject:
    """A piece of furniture: a category, attributes and parts, placed with a yaw about world z.

    `center` (3,) and `size` (3,) describe the object's 9-DoF box in the room frame: the tight box of
    its parts, sizes along the object axes (x width, y depth with the back at +y, z height).
    """

    object_id: int
    category: str
    center: np.ndarray
    size: np.ndarray
    yaw: float
    colour: str
    texture: str
    parts: list[Part]
    against_wall: bool = False

    @property
    def box(self) -> np.ndarray:
        """World box `[9]` = [cx, cy, cz, sx, sy, sz, yaw, 0, 0]."""
        return np.concatenate([self.center, self.size, [self.yaw, 0.0, 0.0]]).astype(np.float64)

    @property
    def rotation(self) -> np.ndarray:
        """Object-to-room rotation `[3, 3]` = Rz(yaw)."""
        from scipy.spatial.transform import Rotation  # here: scipy.spatial is slow to import (a command's --help)

        return Rotation.from_euler("z", self.yaw).as_matrix()

    def footprint(self) -> np.ndarray:
        """Floor-plan corners `[4, 2]` of the box, counter-clockwise."""
        half = self.size[:2] / 2
        local = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64) * half
        return local @ self.rotation[:2, :2].T + self.center[:2]


@dataclass
class Room:
    """The room box: width along x, depth along y, height along z (metres); surface looks."""

    width: float
    depth: float
    height: float
    floor_colour: np.ndarray
    wall_colour: np.ndarray
    ceiling_colour: np.ndarray
    floor_texture: str

    @property
    def floor_area(self) -> float:
        """Floor area in square metres (the VSI-Bench "room size" answer)."""
        return float(self.width * self.depth)


@dataclass
class RenderedFrame:
    """One rendered view.

    rgb `[H, W, 3]` uint8; depth `[H, W]` float32 z-depth in metres (every pixel hits a surface);
    instance `[H, W]` int32 with object index + 1 for objects and one of `STRUCTURE_IDS` for the
    room's floor (0), walls (-1) and ceiling (-2).
    """

    rgb: np.ndarray
    depth: np.ndarray
    instance: np.ndarray


STRUCTURE_IDS = {"floor": 0, "wall": -1, "ceiling": -2}


@dataclass
class SynthScene:
    """A generated scene with its camera trajectory and rendered frames.

    `cam_to_room` `[F, 4, 4]`: camera-to-room (aligned world) poses; `cam_to_world` are the same poses
    in the raw world (`inv(axis_align_matrix) @ cam_to_room`), as written to `posed_images`.
    `intrinsics` `[3, 3]` is shared by colour and depth (same resolution). `frame_names` are the
    5-digit raw frame numbers (every 10th raw frame, as in ScanNet posed_images).
    """

    scene_id: str
    seed: int
    room: Room
    objects: list[SceneObject]
    intrinsics: np.ndarray
    image_size: tuple[int, int]  # (height, width)
    axis_align_matrix: np.ndarray
    cam_to_room: np.ndarray
    frame_names: list[str]
    frames: list[RenderedFrame] = field(default_factory=list)

    @property
    def cam_to_world(self) -> np.ndarray:
        """Raw-world camera-to-world poses `[F, 4, 4]` (what ScanNet stores per frame)."""
        return invert_rigid(self.axis_align_matrix) @ self.cam_to_room

    @property
    def world_boxes(self) -> np.ndarray:
        """Object boxes `[N, 9]` in the room (axis-aligned) frame."""
        return np.stack([obj.box for obj in self.objects]) if self.objects else np.zeros((0, 9))

    def visible_pixels(self) -> np.ndarray:
        """`[F, N]` count of pixels of each object in each frame (from the instance masks; cached)."""
        cached = getattr(self, "_visible_pixels", None)
        if cached is not None and cached.shape == (len(self.frames), len(self.objects)):
            return cached
        counts = np.zeros((len(self.frames), len(self.objects)), dtype=np.int64)
        for index, frame in enumerate(self.frames):
            ids = frame.instance[frame.instance > 0]
            counts[index] = np.bincount(ids, minlength=len(self.objects) + 1)[1:]
        self._visible_pixels = counts
        return counts

    def label_of(self, instance_id: int) -> str:
        """Semantic label of an instance id: the object category, or floor / wall / ceiling."""
        if instance_id > 0:
            return self.objects[instance_id - 1].category
        return {value: key for key, value in STRUCTURE_IDS.items()}[int(instance_id)]
