"""Room and furniture layout of SynthRooms: non-overlapping objects standing on the floor.

Geometry is 2-D on the floor plan (objects are upright cuboid unions resting on z = 0), so
overlap and distance tests are exact convex-polygon computations.
"""

from __future__ import annotations

import numpy as np

from .categories import CATEGORIES, Category, build_parts
from .palette import COLOUR_NAMES, COLOURS, TEXTURES
from .scene import Room, SceneObject

# Wall index -> (yaw that turns the object's back (+y) towards that wall).
# Walls: 0 is y = 0, 1 is x = width, 2 is y = depth, 3 is x = 0.
_WALL_YAWS = (np.pi, -np.pi / 2, 0.0, np.pi / 2)
WALL_GAP = 0.02  # metres between a wall and the back of an object placed against it
CLEARANCE = 0.08  # minimum floor-plan gap between two objects


def sample_room(rng: np.random.Generator, width_range, depth_range, height_range) -> Room:
    """A rectangular room with random size (metres) and surface colours."""
    wall_tint = rng.uniform(0.75, 0.95, size=3)
    return Room(
        width=float(rng.uniform(*width_range)),
        depth=float(rng.uniform(*depth_range)),
        height=float(rng.uniform(*height_range)),
        floor_colour=rng.uniform(0.35, 0.7, size=3),
        wall_colour=wall_tint,
        ceiling_colour=np.array([0.95, 0.95, 0.95]),
        floor_texture=str(rng.choice(["wooden", "checkered"])),
    )


def rectangles_overlap(a: np.ndarray, b: np.ndarray, clearance: float = 0.0) -> bool:
    """Separating-axis test of two convex quads `[4, 2]`; True if closer than `clearance`."""
    for poly in (a, b):
        edges = np.roll(poly, -1, axis=0) - poly
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        normals /= np.linalg.norm(normals, axis=1, keepdims=True)
        proj_a, proj_b = a @ normals.T, b @ normals.T  # [4, 4]
        if np.any(proj_a.max(0) + clearance <= proj_b.min(0)) or np.any(proj_b.max(0) + clearance <= proj_a.min(0)):
            return False
    return True


def point_to_footprint_distance(point: np.ndarray, obj: SceneObject) -> float:
    """Floor-plan distance (metres) from a 2-D point to an object's box footprint (0 inside)."""
    local = obj.rotation[:2, :2].T @ (np.asarray(point[:2]) - obj.center[:2])
    outside = np.maximum(np.abs(local) - obj.size[:2] / 2, 0.0)
    return float(np.linalg.norm(outside))


def footprint_distance(a: SceneObject, b: SceneObject) -> float:
    """Closest distance (metres) between two objects' boxes.

    Both boxes rest on the floor (z from 0), so their height ranges overlap and the 3-D closest
    distance equals the 2-D distance between the footprints: 0 if they overlap, else the smallest
    vertex-to-edge distance (exact for convex polygons).
    """
    pa, pb = a.footprint(), b.footprint()
    if rectangles_overlap(pa, pb):
        return 0.0
    best = np.inf
    for poly_v, poly_e in ((pa, pb), (pb, pa)):
        starts, ends = poly_e, np.roll(poly_e, -1, axis=0)
        seg = ends - starts  # [4, 2]
        rel = poly_v[:, None, :] - starts[None]  # [4 vertices, 4 edges, 2]
        t = np.clip((rel * seg).sum(-1) / (seg * seg).sum(-1), 0.0, 1.0)
        closest = starts[None] + t[..., None] * seg[None]
        best = min(best, float(np.linalg.norm(poly_v[:, None, :] - closest, axis=-1).min()))
    return best


def _inside_room(footprint: np.ndarray, room: Room, margin: float = 0.005) -> bool:
    return bool(
        np.all(footprint[:, 0] >= margin)
        and np.all(footprint[:, 0] <= room.width - margin)
        and np.all(footprint[:, 1] >= margin)
        and np.all(footprint[:, 1] <= room.depth - margin)
    )


def _candidate(rng, category: Category, room: Room, object_id: int) -> SceneObject:
    size = tuple(float(rng.uniform(*r)) for r in (category.width, category.depth, category.height))
    colour = str(rng.choice(COLOUR_NAMES))
    texture = str(rng.choice(TEXTURES, p=[0.45, 0.2, 0.15, 0.2]))
    parts, box_size = build_parts(category, size, np.array(COLOURS[colour]), texture)
    against_wall = bool(rng.random() < category.wall_probability)
    half_w, half_d = box_size[0] / 2, box_size[1] / 2
    if against_wall:
        wall = int(rng.integers(4))
        yaw = _WALL_YAWS[wall] + float(rng.uniform(-0.05, 0.05))
        # Distance of the centre from the wall so that the (slightly rotated) back clears it.
        offset = half_d * np.cos(yaw - _WALL_YAWS[wall]) + half_w * abs(np.sin(yaw - _WALL_YAWS[wall])) + WALL_GAP
        along_x = float(rng.uniform(0.0, room.width))
        along_y = float(rng.uniform(0.0, room.depth))
        x, y = [(along_x, offset), (room.width - offset, along_y), (along_x, room.depth - offset), (offset, along_y)][wall]
    else:
        yaw = float(rng.uniform(-np.pi, np.pi))
        x, y = float(rng.uniform(0.0, room.width)), float(rng.uniform(0.0, room.depth))
    yaw = float((yaw + np.pi) % (2 * np.pi) - np.pi)
    return SceneObject(
        object_id=object_id,
        category=category.name,
        center=np.array([x, y, box_size[2] / 2]),
        size=np.asarray(box_size, dtype=np.float64),
        yaw=yaw,
        colour=colour,
        texture=texture,
        parts=parts,
        against_wall=against_wall,
    )


def room_capacity(categories, width_range, depth_range) -> int:
    """The most objects of `categories` a room of the given size ranges can ever hold: its largest floor over the
    smallest footprint with its `CLEARANCE` (`place_objects` leaves out an object that finds no free spot, so more are
    never placed; a real room, with mixed sizes, holds far fewer)."""
    smallest = min((CATEGORIES[name].width[0] + CLEARANCE) * (CATEGORIES[name].depth[0] + CLEARANCE)
                   for name in categories)
    return int(width_range[1] * depth_range[1] / smallest)


def place_objects(rng: np.random.Generator, room: Room, num_objects: int, categories=None, attempts: int = 60):
    """Place up to `num_objects` non-overlapping objects; categories drawn uniformly (repeats allowed).

    An object that finds no free spot within `attempts` tries is dropped (the room is full); object
    ids are consecutive in the returned list.
    """
    names = list(categories or CATEGORIES)
    placed: list[SceneObject] = []
    for _ in range(num_objects):
        category = CATEGORIES[str(rng.choice(names))]
        for _ in range(attempts):
            obj = _candidate(rng, category, room, len(placed))
            footprint = obj.footprint()
            if not _inside_room(footprint, room):
                continue
            if any(rectangles_overlap(footprint, other.footprint(), CLEARANCE) for other in placed):
                continue
            placed.append(obj)
            break
    return placed
