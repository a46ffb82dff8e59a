"""SynthRooms ground truth is exact: depth, poses, masks, boxes and first-frame targets agree."""

from __future__ import annotations

import numpy as np
import pytest

from gap_mllm.processing.coordinates import (
    backproject_depth,
    backproject_pixel,
    box_corners,
    camera_boxes_to_world,
    invert_rigid,
    points_in_boxes,
    project,
    transform_points,
)
from gap_mllm.processing.synth.categories import CATEGORY_NAMES
from gap_mllm.processing.synth.layout import rectangles_overlap
from gap_mllm.processing.synth.renderer import PartArrays, render
from gap_mllm.processing.synth.scene import STRUCTURE_IDS, Part, Room, SceneObject
from gap_mllm.processing.synth.trajectory import camera_position_is_free
from gap_mllm.tasks_gap_mllm import parse_detection

from .test_data_fixtures import TINY_CONFIG, tiny_dataset, tiny_generator, tiny_scene  # noqa: F401

SURFACE_TOL = 1e-4  # metres: float32 depth at <= 10 m is good to ~1e-6 m; 1e-4 leaves a wide margin


def part_boxes(obj: SceneObject) -> np.ndarray:
    """World 9-DoF boxes of an object's parts (R = Rz(yaw))."""
    return np.array([[*(obj.center + obj.rotation @ p.center), *p.size, obj.yaw, 0, 0] for p in obj.parts])


def distance_to_box_surface(points, box):
    """Unsigned distance of points inside/near a box to its nearest face."""
    rotation = np.array([[np.cos(box[6]), -np.sin(box[6]), 0], [np.sin(box[6]), np.cos(box[6]), 0], [0, 0, 1]])
    local = (points - box[:3]) @ rotation
    return np.min(np.abs(np.abs(local) - box[3:6] / 2), axis=1)


def test_at_least_ten_categories_with_varied_attributes():
    assert len(CATEGORY_NAMES) >= 10
    generator = tiny_generator()
    objects = [o for i in range(4) for o in generator.layout_scene(i).objects]
    assert len({o.category for o in objects}) >= 6
    assert len({o.colour for o in objects}) >= 5 and len({o.texture for o in objects}) >= 3
    assert len({round(o.yaw, 3) for o in objects}) == len(objects)  # yaw varies per object


def test_objects_do_not_overlap_and_stay_in_the_room(tiny_scene):
    scene, _ = tiny_scene
    for i, a in enumerate(scene.objects):
        corners = a.footprint()
        assert np.all(corners >= 0) and np.all(corners[:, 0] <= scene.room.width) and np.all(corners[:, 1] <= scene.room.depth)
        assert abs(a.center[2] - a.size[2] / 2) < 1e-12  # resting on the floor
        for b in scene.objects[i + 1 :]:
            assert not rectangles_overlap(corners, b.footprint())
    for pose in scene.cam_to_room:
        assert camera_position_is_free(pose[:3, 3], scene.room, scene.objects)


def test_object_box_is_the_tight_box_of_its_parts(tiny_scene):
    scene, _ = tiny_scene
    for obj in scene.objects:
        corners = box_corners(part_boxes(obj)).reshape(-1, 3)
        assert points_in_boxes(corners, obj.box[None], tolerance=1e-9).all()
        local = (corners - obj.center) @ obj.rotation
        np.testing.assert_allclose(local.max(0) - local.min(0), obj.size, atol=1e-9)


def test_depth_backprojects_onto_the_surface_inside_the_box(tiny_scene):
    scene, _ = tiny_scene
    room = scene.room
    checked = 0
    for frame, pose in zip(scene.frames, scene.cam_to_room):
        points = backproject_depth(frame.depth, scene.intrinsics, pose).reshape(-1, 3)
        instance = frame.instance.ravel()
        for index, obj in enumerate(scene.objects):
            mask = instance == index + 1
            if not mask.any():
                continue
            on_object = points[mask]
            assert points_in_boxes(on_object, obj.box[None], tolerance=SURFACE_TOL).all()
            parts = part_boxes(obj)
            inside_part = points_in_boxes(on_object, parts, tolerance=SURFACE_TOL)
            surface = np.stack([distance_to_box_surface(on_object, p) for p in parts], axis=1)
            # Every point is on the surface of one of the object's parts.
            assert np.all(np.min(np.where(inside_part, surface, np.inf), axis=1) < SURFACE_TOL)
            checked += int(mask.sum())
        floor = points[instance == STRUCTURE_IDS["floor"]]
        np.testing.assert_allclose(floor[:, 2], 0.0, atol=SURFACE_TOL)
        ceiling = points[instance == STRUCTURE_IDS["ceiling"]]
        np.testing.assert_allclose(ceiling[:, 2], room.height, atol=SURFACE_TOL)
        walls = points[instance == STRUCTURE_IDS["wall"]]
        to_wall = np.min(np.abs(np.stack([walls[:, 0], walls[:, 0] - room.width, walls[:, 1], walls[:, 1] - room.depth])), axis=0)
        assert np.all(to_wall < SURFACE_TOL)
    assert checked > 1000


def test_renderer_matches_an_analytic_single_box_scene():
    room = Room(6.0, 6.0, 3.0, np.full(3, 0.5), np.full(3, 0.8), np.full(3, 0.9), "wooden")
    cube = SceneObject(0, "bin", np.array([3.0, 4.0, 0.5]), np.ones(3), 0.0, "red", "plain", [Part(np.zeros(3), np.ones(3), np.array([0.8, 0.1, 0.1]), "plain")])
    pose = np.eye(4)
    pose[:3, :3] = np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float)  # camera looks along +y, level
    pose[:3, 3] = [3.0, 1.0, 0.5]
    k = np.array([[50.0, 0, 31.5], [0, 50.0, 23.5], [0, 0, 1]])
    frame = render(room, PartArrays([cube]), pose, k, 48, 64)
    # The front face of the cube is at y = 3.5, i.e. 2.5 m ahead; it spans +-0.5 m -> +-10 px.
    assert frame.instance[23, 31] == 1 and frame.depth[23, 31] == pytest.approx(2.5, abs=1e-6)
    assert frame.instance[23, 31 + 11] != 1 and frame.instance[23, 31 + 9] == 1
    # Beyond the cube the ray meets the far wall (y = 6 -> 5 m ahead); straight up-left: room structure.
    assert frame.depth[23, 5] == pytest.approx(5.0, abs=1e-5) and frame.instance[23, 5] == STRUCTURE_IDS["wall"]
    assert frame.instance[47, 31] == STRUCTURE_IDS["floor"]


def test_points_seen_in_two_frames_reproject_within_a_pixel(tiny_scene):
    scene, _ = tiny_scene
    k = scene.intrinsics
    height, width = scene.image_size
    errors = []
    for a in range(0, len(scene.frames) - 2, 2):
        b = a + 2
        fa, fb = scene.frames[a], scene.frames[b]
        points = backproject_depth(fa.depth, k, scene.cam_to_room[a])
        v, u = np.nonzero(fa.instance > 0)
        world = points[v, u]
        q, z = project(world, k, scene.cam_to_room[b])
        r = np.round(q).astype(int)
        ok = (z > 0) & (r[:, 0] >= 0) & (r[:, 0] < width) & (r[:, 1] >= 0) & (r[:, 1] < height)
        r, world, z, v, u = r[ok], world[ok], z[ok], v[ok], u[ok]
        same = (fb.instance[r[:, 1], r[:, 0]] == fa.instance[v, u]) & (np.abs(fb.depth[r[:, 1], r[:, 0]] - z) < 0.02)
        back = backproject_depth(fb.depth, k, scene.cam_to_room[b])[r[same, 1], r[same, 0]]
        pa, _ = project(back, k, scene.cam_to_room[a])
        errors.append(np.linalg.norm(pa - np.stack([u[same], v[same]], 1), axis=1))
    errors = np.concatenate(errors)
    assert len(errors) > 500
    # Rounding to B's pixel grid moves a point by <= 0.71 px there; back in A that stays below a pixel.
    assert np.percentile(errors, 99) < 1.0 and np.median(errors) < 0.5


def test_poses_are_raw_world_related_by_the_axis_alignment(tiny_scene):
    scene, _ = tiny_scene
    np.testing.assert_allclose(scene.axis_align_matrix @ scene.cam_to_world, scene.cam_to_room, atol=1e-12)
    assert not np.allclose(scene.axis_align_matrix, np.eye(4))


def test_first_frame_detection_targets_transform_back_to_world_boxes(tiny_scene):
    scene, records = tiny_scene
    assert records["detection"]
    for record in records["detection"]:
        first = scene.frame_names.index(record["images"][0].split("/")[1].split(".")[0])
        pose, align = np.array(record["cam2global"][0]), np.array(record["axis_align_matrix"])
        np.testing.assert_allclose(pose, scene.cam_to_world[first], atol=1e-12)
        camera = np.array([b["bbox_3d"] for b in record["boxes"]])
        world = camera_boxes_to_world(camera, pose, align)
        for box, entry in zip(world, record["boxes"]):
            candidates = [o for o in scene.objects if o.category == entry["label"]]
            # Same corners in the same order: same centre, sizes and rotation (angles may differ at gimbal lock).
            assert min(np.abs(box_corners(box) - box_corners(o.box)).max() for o in candidates) < 1e-9
        # The answer text holds the same boxes to 2 decimals: corners within the rounding error.
        parsed = parse_detection(record["conversations"][1]["value"])
        assert [b.label for b in parsed.boxes] == [b["label"] for b in record["boxes"]]
        for box, exact in zip(parsed.boxes, camera):
            # 0.005 m per coordinate + 0.005 rad per angle on a <= 2.3 m box: corners within 4 cm.
            assert np.abs(box_corners(box.to_list()) - box_corners(exact)).max() < 0.04


def test_reconstruction_targets_are_the_marked_pixels_in_first_frame_coordinates(tiny_scene):
    scene, records = tiny_scene
    for record in records["reconstruction"]:
        view, x, y = record["pixel_coords"]
        frames = [scene.frame_names.index(p.split("/")[1][:5]) for p in record["images"]]
        depth = scene.frames[frames[view]].depth[y, x]
        world = backproject_pixel(x, y, float(depth), scene.intrinsics, scene.cam_to_room[frames[view]])
        expected = transform_points(world, invert_rigid(scene.cam_to_room[frames[0]]))
        answer = record["conversations"][1]["value"]
        point = [float(v) for v in answer.split("[")[1].split("]")[0].split(",")]
        np.testing.assert_allclose(point, expected, atol=0.005 + 1e-9)
        assert scene.label_of(int(scene.frames[frames[view]].instance[y, x])) in answer


def test_generation_is_deterministic_by_seed():
    generator = tiny_generator()
    a, b = generator.generate_scene(1), generator.generate_scene(1)
    np.testing.assert_array_equal(a.frames[3].rgb, b.frames[3].rgb)
    np.testing.assert_array_equal(a.frames[3].depth, b.frames[3].depth)
    np.testing.assert_array_equal(a.cam_to_room, b.cam_to_room)
    other = generator.layout_scene(2)
    assert not np.allclose(a.cam_to_room[0], other.cam_to_room[0])
    assert TINY_CONFIG.seed == generator.config.seed
