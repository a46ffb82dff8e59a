"""Camera trajectories of SynthRooms: a walk on an ellipse around the room centre, looking across.

Poses are OpenCV camera-to-room 4x4 matrices (x right, y down, z forward; room frame z up).
"""

from __future__ import annotations

import numpy as np

from .layout import point_to_footprint_distance
from .scene import Room, SceneObject

WALL_MARGIN = 0.4  # metres between the camera and any wall
OBJECT_MARGIN = 0.3  # metres between the camera and any object's footprint


def look_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-to-room rotation `[3, 3]` of an OpenCV camera (columns = camera x, y, z in the room).

    `yaw` is the heading of the optical axis about room z (0 = +x), `pitch` its elevation (negative =
    looking down), `roll` a rotation about the optical axis. Room z is up.
    """
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    right, down = c * right + s * down, -s * right + c * down
    return np.stack([right, down, forward], axis=1)


def camera_position_is_free(position: np.ndarray, room: Room, objects: list[SceneObject]) -> bool:
    """True if a camera centre keeps `WALL_MARGIN` from walls and `OBJECT_MARGIN` from every object."""
    x, y = position[:2]
    if not (WALL_MARGIN <= x <= room.width - WALL_MARGIN and WALL_MARGIN <= y <= room.depth - WALL_MARGIN):
        return False
    return all(point_to_footprint_distance(position, obj) >= OBJECT_MARGIN for obj in objects)


def ellipse_trajectory(rng: np.random.Generator, room: Room, num_frames: int) -> np.ndarray:
    """One candidate trajectory `[F, 4, 4]` (camera-to-room); the caller checks it is collision-free.

    The camera walks part of an ellipse around the room centre at 1.2-1.6 m height, looking towards
    the far side of the room with a slowly swinging heading, tilted 12-30 degrees down and rolled by
    up to 3 degrees (so targets exercise all three box angles).
    """
    centre = np.array([room.width / 2, room.depth / 2])
    scale = rng.uniform(0.15, 0.6)
    radii = scale * (np.array([room.width, room.depth]) / 2 - WALL_MARGIN)
    start = rng.uniform(-np.pi, np.pi)
    sweep = rng.uniform(1.2, 2.0) * np.pi * rng.choice([-1.0, 1.0])
    height = rng.uniform(1.2, 1.6)
    swing, swing_phase = rng.uniform(0.2, 0.9), rng.uniform(0, 2 * np.pi)
    pitch0 = -rng.uniform(0.2, 0.5)
    steps = np.linspace(0.0, 1.0, num_frames)
    poses = np.tile(np.eye(4), (num_frames, 1, 1))
    for i, s in enumerate(steps):
        angle = start + sweep * s
        xy = centre + radii * np.array([np.cos(angle), np.sin(angle)])
        # Look at the room centre's far side, swinging left/right along the walk.
        to_centre = np.arctan2(*(centre - xy)[::-1]) if np.linalg.norm(centre - xy) > 1e-6 else angle + np.pi
        heading = to_centre + swing * np.sin(2 * np.pi * s + swing_phase)
        pitch = pitch0 + 0.08 * np.sin(3 * np.pi * s)
        roll = 0.05 * np.sin(2 * np.pi * s + 1.0)
        poses[i, :3, :3] = look_rotation(heading, pitch, roll)
        poses[i, :3, 3] = [xy[0], xy[1], height + 0.03 * np.sin(4 * np.pi * s)]
    return poses


def sample_trajectory(rng, room: Room, objects: list[SceneObject], num_frames: int, attempts: int = 40):
    """A collision-free trajectory `[F, 4, 4]` and the objects kept.

    Tries `attempts` ellipses; if none is free, removes the object that blocks the most camera
    positions of the last try and starts again, so generation always ends (at worst in an empty room).
    """
    objects = list(objects)
    while True:
        for _ in range(attempts):
            poses = ellipse_trajectory(rng, room, num_frames)
            if all(camera_position_is_free(p[:3, 3], room, objects) for p in poses):
                return poses, objects
        blocking = [sum(point_to_footprint_distance(p[:3, 3], o) < OBJECT_MARGIN for p in poses) for o in objects]
        if not objects:
            raise RuntimeError("no collision-free camera trajectory even in an empty room; the room is too small")
        objects.pop(int(np.argmax(blocking)))
        for new_id, obj in enumerate(objects):
            obj.object_id = new_id
