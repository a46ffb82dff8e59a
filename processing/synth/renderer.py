"""Exact ray-caster for SynthRooms: RGB, metric z-depth and instance masks of cuboid scenes.

Why our own renderer: the scenes are unions of oriented cuboids inside a box-shaped room, so an
analytic ray/slab test gives depth and instance ids exact to float rounding, with no rasterisation
error, in pure numpy (no GL context, no extra dependency). pyrender/trimesh ray casting would need
an OpenGL or embree backend and would only approximate the same answer through triangles.

Conventions: OpenCV pinhole, pixel centres at integer (u, v); rays are scaled to z = 1 in the camera
frame, so the ray parameter t of a hit *is* its z-depth. Scene geometry is in the room frame.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..coordinates import pixel_rays
from .palette import TEXTURE_IDS, texture_factor
from .scene import STRUCTURE_IDS, RenderedFrame, Room, SceneObject

NEAR = 1e-6  # hits closer than this (metres along z) are ignored
_LIGHT = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])


class PartArrays:
    """All parts of a scene flattened into arrays (room frame).

    centres `[P, 3]`, rotations `[P, 3, 3]` (part-to-room; Rz(object yaw)), half sizes `[P, 3]`,
    owners `[P]` (object index), colours `[P, 3]`, textures `[P]` (texture ids), object-frame offsets
    `[P, 3]` (part centre in its object's frame, so textures follow the object), corners `[P, 8, 3]`.
    """

    def __init__(self, objects: list[SceneObject]):
        centres, rotations, halves, owners, colours, textures, offsets = [], [], [], [], [], [], []
        for index, obj in enumerate(objects):
            rotation = obj.rotation
            for part in obj.parts:
                centres.append(obj.center + rotation @ part.center)
                rotations.append(rotation)
                halves.append(part.size / 2)
                owners.append(index)
                colours.append(part.colour)
                textures.append(TEXTURE_IDS[part.texture])
                offsets.append(part.center)
        count = len(centres)
        self.centres = np.array(centres, dtype=np.float64).reshape(count, 3)
        self.rotations = np.array(rotations, dtype=np.float64).reshape(count, 3, 3)
        self.halves = np.array(halves, dtype=np.float64).reshape(count, 3)
        self.owners = np.array(owners, dtype=np.int32)
        self.colours = np.array(colours, dtype=np.float32).reshape(count, 3)
        self.textures = np.array(textures, dtype=np.int32)
        self.offsets = np.array(offsets, dtype=np.float64).reshape(count, 3)
        signs = np.array([[(i & 1) * 2 - 1, (i >> 1 & 1) * 2 - 1, (i >> 2 & 1) * 2 - 1] for i in range(8)])
        self.corners = self.centres[:, None] + np.einsum("pij,pkj->pki", self.rotations, signs[None] * self.halves[:, None])

    def __len__(self) -> int:
        return len(self.owners)


@lru_cache(maxsize=8)
def _cached_rays(height: int, width: int, k_bytes: bytes) -> np.ndarray:
    """Camera rays as three `[H, W]` component planes (x, y, z = 1): planes keep numpy ops contiguous."""
    k = np.frombuffer(k_bytes, dtype=np.float64).reshape(3, 3)
    rays = np.ascontiguousarray(np.moveaxis(pixel_rays(height, width, k), -1, 0), dtype=np.float32)
    rays.setflags(write=False)
    return rays


def _screen_rect(corners_cam: np.ndarray, k: np.ndarray, height: int, width: int):
    """Pixel rectangle (v0, v1, u0, u1) that contains a part's projection, or None if off-screen.

    A part that straddles the camera plane cannot be bounded by projecting its corners; then the
    whole image is searched (rare: cameras keep 0.3 m from every object).
    """
    z = corners_cam[:, 2]
    if np.all(z <= NEAR):
        return None
    if np.any(z <= NEAR):
        return 0, height, 0, width
    u = k[0, 0] * corners_cam[:, 0] / z + k[0, 1] * corners_cam[:, 1] / z + k[0, 2]
    v = k[1, 1] * corners_cam[:, 1] / z + k[1, 2]
    u0, u1 = max(int(np.floor(u.min())), 0), min(int(np.ceil(u.max())) + 1, width)
    v0, v1 = max(int(np.floor(v.min())), 0), min(int(np.ceil(v.max())) + 1, height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def _slab(dirs, origin, rotation, centre, half):
    """Ray / oriented-box intersection on component planes.

    `dirs` is a tuple of three equally shaped float32 arrays (room-frame ray directions), `rotation`
    the box-to-room matrix. Returns (t_near, t_far, nears, components, local_origin): a ray hits the
    box iff t_near <= t_far and t_near > 0; `nears[j]` is the entry parameter of slab j (the face
    entered is the j with nears[j] == t_near); `components[j]` the box-frame direction component j.
    Coefficients are Python floats so that the planes stay float32 (NEP 50).
    """
    local_origin = rotation.T @ (origin - centre)
    nears, components = [], []
    t_near = t_far = None
    with np.errstate(divide="ignore", invalid="ignore"):
        for j in range(3):
            # local direction component j = sum_i R[i, j] d_i; skip exact zeros (upright boxes).
            terms = [float(rotation[i, j]) * dirs[i] for i in range(3) if rotation[i, j] != 0.0]
            component = terms[0] if len(terms) == 1 else sum(terms[1:], terms[0])
            inv = 1.0 / component
            ta = float(-half[j] - local_origin[j]) * inv
            tb = float(half[j] - local_origin[j]) * inv
            near, far = np.minimum(ta, tb), np.maximum(ta, tb)
            t_near = near if t_near is None else np.maximum(t_near, near)
            t_far = far if t_far is None else np.minimum(t_far, far)
            nears.append(near)
            components.append(component)
    return t_near, t_far, nears, components, local_origin


def _lambert(normals: np.ndarray) -> np.ndarray:
    """Diffuse factor 0.55 + 0.45 |n . L| per normal `[..., 3]`; |.| lights both sides of thin parts."""
    return (0.55 + 0.45 * np.abs(normals @ _LIGHT)).astype(np.float32)


def render(room: Room, parts: PartArrays, cam_to_room: np.ndarray, intrinsics: np.ndarray, height: int, width: int) -> RenderedFrame:
    """Render one view: RGB `[H, W, 3]` uint8, z-depth `[H, W]` float32 (m), instance `[H, W]` int32.

    `cam_to_room` is the OpenCV camera-to-room pose (4x4), `intrinsics` the 3x3 K. Instance ids:
    object index + 1, or `STRUCTURE_IDS` for floor / walls / ceiling. The camera must be inside the room.
    Shading (base colour x texture x Lambert) is computed per surface while casting, so no per-pixel
    table gathers are needed beyond the final colour and instance lookups.
    """
    k = np.ascontiguousarray(intrinsics, dtype=np.float64)
    rays = _cached_rays(height, width, k.tobytes())  # [3, H, W], z = 1
    rotation, origin = cam_to_room[:3, :3], cam_to_room[:3, 3]
    # Room-frame directions, still scaled so that the ray parameter t is the camera z-depth.
    # float32 planes: depth is stored as float32 anyway, and this halves the memory traffic.
    dirs = tuple(float(rotation[i, 0]) * rays[0] + float(rotation[i, 1]) * rays[1] + float(rotation[i, 2]) for i in range(3))
    num_parts = len(parts)
    depth, surface, brightness = _cast_room(room, origin, dirs, num_parts)

    # Parts: slab test in each part's frame, restricted to the pixels its corners project to.
    # Nearest parts first, so that a part whose closest corner is behind everything already in its
    # window is skipped without a test (the usual case for occluded furniture).
    corners_cam = (parts.corners - origin) @ rotation if num_parts else np.zeros((0, 8, 3))
    nearest = corners_cam[:, :, 2].min(axis=1) if num_parts else np.zeros(0)
    face_lambert = _lambert(np.swapaxes(parts.rotations, 1, 2))  # [P, 3]: normal of face axis j = column j
    for p in np.argsort(nearest, kind="stable"):
        rect = _screen_rect(corners_cam[p], k, height, width)
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        window = (slice(v0, v1), slice(u0, u1))
        if nearest[p] > NEAR and nearest[p] >= depth[window].max():
            continue
        t_near, t_far, nears, components, local_origin = _slab(
            tuple(d[window] for d in dirs), origin, parts.rotations[p], parts.centres[p], parts.halves[p]
        )
        hit = (t_near <= t_far) & (t_near > NEAR) & (t_near < depth[window])
        if not hit.any():
            continue
        entry_axis = np.where(nears[0] == t_near, 0, np.where(nears[1] == t_near, 1, 2))
        shade = np.take(face_lambert[p], entry_axis)
        texture = int(parts.textures[p])
        if texture != TEXTURE_IDS["plain"]:
            # Object-frame hit point (part frame + the part's offset), in-face coordinates (a, b).
            offset = parts.offsets[p]
            local = [float(local_origin[j] + offset[j]) + t_near * components[j] for j in range(3)]
            a = np.where(entry_axis == 0, local[1], local[0])
            b = np.where(entry_axis == 2, local[1], local[2])
            shade = shade * texture_factor(texture, a, b)
        np.copyto(depth[window], t_near, where=hit)
        np.copyto(surface[window], np.int32(p), where=hit)
        np.copyto(brightness[window], shade, where=hit)

    colours = np.concatenate([parts.colours, _room_colours(room)]) * np.float32(255.0)
    rgb = (np.take(colours, surface, axis=0) * brightness[..., None] + 0.5).astype(np.uint8)
    instances = np.concatenate([parts.owners + 1, _ROOM_INSTANCES])
    return RenderedFrame(rgb=rgb, depth=depth, instance=np.take(instances, surface))


# Room faces are surfaces P + 2 * axis + (direction > 0): x = 0, x = W, y = 0, y = D, floor, ceiling.
_ROOM_INSTANCES = np.array([STRUCTURE_IDS["wall"]] * 4 + [STRUCTURE_IDS["floor"], STRUCTURE_IDS["ceiling"]], dtype=np.int32)


def _room_colours(room: Room) -> np.ndarray:
    return np.array([room.wall_colour] * 4 + [room.floor_colour, room.ceiling_colour], dtype=np.float32)


def _cast_room(room: Room, origin, dirs, num_parts: int):
    """Exit of every ray from the room box (the camera is inside): depth, surface id, brightness.

    Surface ids of room faces are `num_parts + 2 * axis + (direction > 0)`. Brightness is the Lambert
    term of the face times the floor texture (floor) or a faint 1 m panel pattern (walls).
    """
    bounds = (room.width, room.depth, room.height)
    exits = []
    with np.errstate(divide="ignore"):
        for i in range(3):
            exit_t = np.where(dirs[i] > 0, np.float32(bounds[i] - origin[i]), np.float32(-origin[i])) / dirs[i]
            exits.append(np.where(dirs[i] == 0, np.float32(np.inf), exit_t))  # +0.0 would give -inf
    depth = np.minimum(np.minimum(exits[0], exits[1]), exits[2])
    on_x = exits[0] == depth
    on_y = ~on_x & (exits[1] == depth)
    on_z = ~on_x & ~on_y
    positive = (on_x & (dirs[0] > 0)) | (on_y & (dirs[1] > 0)) | (on_z & (dirs[2] > 0))
    axis = on_y.astype(np.int32) + 2 * on_z
    surface = (num_parts + 2 * axis + positive).astype(np.int32)

    lambert = _lambert(np.eye(3))  # face normals are the room axes
    x = float(origin[0]) + dirs[0] * depth
    y = float(origin[1]) + dirs[1] * depth
    brightness = np.take(lambert, axis)
    floor = on_z & ~positive
    floor_pattern = texture_factor(TEXTURE_IDS[room.floor_texture], x, y)
    along = np.where(on_x, y, x)
    panels = np.float32(0.96) + np.float32(0.04) * (np.floor(along).astype(np.int32) & 1)
    brightness = brightness * np.where(floor, floor_pattern, np.where(on_z, np.float32(1.0), panels))
    return depth, surface, brightness.astype(np.float32)
