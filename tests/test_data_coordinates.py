"""Coordinate helpers: Euler conventions, box transforms, projection (processing/coordinates.py)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation

from gap_mllm.processing import coordinates as C


def rx(a):
    return Rotation.from_euler("x", a).as_matrix()


def ry(a):
    return Rotation.from_euler("y", a).as_matrix()


def rz(a):
    return Rotation.from_euler("z", a).as_matrix()


angles = st.tuples(*(st.floats(-3.1, 3.1, allow_nan=False) for _ in range(3)))


@given(angles)
@settings(max_examples=50, deadline=None)
def test_euler_conventions_are_the_documented_products(triple):
    yaw, pitch, roll = triple
    np.testing.assert_allclose(C.euler_to_matrix(triple), ry(roll) @ rx(pitch) @ rz(yaw), atol=1e-12)
    np.testing.assert_allclose(C.euler_to_matrix(triple, "official"), rz(yaw) @ rx(pitch) @ ry(roll), atol=1e-12)


@given(angles)
@settings(max_examples=50, deadline=None)
def test_matrix_to_euler_rebuilds_the_same_rotation(triple):
    matrix = C.euler_to_matrix(triple)
    np.testing.assert_allclose(C.euler_to_matrix(C.matrix_to_euler(matrix)), matrix, atol=1e-9)


def test_unknown_euler_mode_is_rejected():
    with pytest.raises(ValueError, match="euler_mode"):
        C.euler_to_matrix([0, 0, 0], "xyz")


def test_rotation_matches_scipy_extrinsic_zxy():
    rng = np.random.default_rng(0)
    for yaw, pitch, roll in rng.uniform(-np.pi, np.pi, size=(20, 3)):
        expected = Rotation.from_euler("zxy", [yaw, pitch, roll]).as_matrix()
        np.testing.assert_allclose(C.euler_to_matrix([yaw, pitch, roll]), expected, atol=1e-12)


def test_box_corners_are_the_target_format_corners():
    """`R · (size ⊙ c) + center` for c ∈ {−½, ½}³, x fastest, R = Ry(roll)·Rx(pitch)·Rz(yaw)."""
    box = [0.4, -0.2, 2.1, 0.9, 0.5, 1.3, 0.7, 1.1, -2.9]
    rotation = ry(box[8]) @ rx(box[7]) @ rz(box[6])
    unit = [[x, y, z] for z in (-0.5, 0.5) for y in (-0.5, 0.5) for x in (-0.5, 0.5)]
    expected = [rotation @ (np.array(box[3:6]) * c) + box[0:3] for c in np.array(unit)]
    np.testing.assert_allclose(C.box_corners(box), expected, atol=1e-12)


def test_corners_of_a_yawed_box():
    corners = C.box_corners([1.0, 2.0, 3.0, 2.0, 4.0, 6.0, np.pi / 2, 0.0, 0.0])
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.mean(axis=0), [1.0, 2.0, 3.0], atol=1e-12)
    # a 90° yaw about z swaps the x/y extents: x spans ±2 (size_y/2), y spans ±1 (size_x/2)
    np.testing.assert_allclose(corners.max(axis=0) - corners.min(axis=0), [4.0, 2.0, 6.0], atol=1e-12)


def random_rigid(rng):
    transform = np.eye(4)
    transform[:3, :3] = Rotation.random(random_state=rng).as_matrix()
    transform[:3, 3] = rng.uniform(-3, 3, size=3)
    return transform


def test_box_transform_round_trip_and_corners_move_rigidly():
    rng = np.random.default_rng(0)
    boxes = np.concatenate([rng.uniform(-2, 2, (5, 3)), rng.uniform(0.1, 2, (5, 3)), rng.uniform(-1.4, 1.4, (5, 3))], axis=1)
    transform = random_rigid(rng)
    moved = C.transform_boxes(boxes, transform)
    np.testing.assert_allclose(C.box_corners(moved), C.transform_points(C.box_corners(boxes), transform), atol=1e-9)
    back = C.transform_boxes(moved, C.invert_rigid(transform))
    np.testing.assert_allclose(C.box_corners(back), C.box_corners(boxes), atol=1e-9)
    np.testing.assert_array_equal(moved[:, 3:6], boxes[:, 3:6])


def test_world_camera_box_maps_are_inverse_and_use_axis_alignment():
    rng = np.random.default_rng(1)
    pose, align = random_rigid(rng), random_rigid(rng)
    world = np.array([[1.0, 2.0, 0.5, 0.6, 0.4, 1.0, 0.3, 0.0, 0.0]])
    camera = C.world_boxes_to_camera(world, pose, align)
    # Official grounding post-processing: E = align @ pose, c_w = E c, R_w = E_R R_s.
    e = align @ pose
    np.testing.assert_allclose(e[:3, :3] @ camera[0, :3] + e[:3, 3], world[0, :3], atol=1e-9)
    np.testing.assert_allclose(e[:3, :3] @ C.euler_to_matrix(camera[0, 6:]), C.euler_to_matrix(world[0, 6:]), atol=1e-9)
    np.testing.assert_allclose(C.box_corners(C.camera_boxes_to_world(camera, pose, align)), C.box_corners(world), atol=1e-9)


def test_non_rigid_transforms_are_rejected():
    scale = np.diag([2.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="not a rigid motion"):
        C.transform_boxes(np.zeros(9), scale)
    bad = np.eye(4)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        C.check_rigid(bad)


def test_project_and_backproject_are_inverse_with_opencv_pixel_centres():
    k = np.array([[100.0, 0, 39.5], [0, 100.0, 29.5], [0, 0, 1]])
    pose = random_rigid(np.random.default_rng(2))
    depth = np.full((60, 80), 2.5)
    points = C.backproject_depth(depth, k, pose)
    pixels, z = C.project(points.reshape(-1, 3), k, pose)
    v, u = np.meshgrid(np.arange(60), np.arange(80), indexing="ij")
    np.testing.assert_allclose(pixels, np.stack([u.ravel(), v.ravel()], 1), atol=1e-9)
    np.testing.assert_allclose(z, 2.5, atol=1e-12)
    # The principal point looks straight down the optical axis.
    np.testing.assert_allclose(C.backproject_pixel(39.5, 29.5, 3.0, k), [0, 0, 3.0], atol=1e-12)


def test_missing_depth_backprojects_to_nan():
    points = C.backproject_depth(np.array([[0.0, 1.0]]), np.eye(3))
    assert np.isnan(points[0, 0]).all() and np.isfinite(points[0, 1]).all()


def test_poses_relative_to_first_make_view_zero_the_identity():
    rng = np.random.default_rng(3)
    poses = np.stack([random_rigid(rng) for _ in range(3)])
    relative = C.poses_relative_to_first(poses)
    np.testing.assert_allclose(relative[0], np.eye(4), atol=1e-12)
    np.testing.assert_allclose(poses[0] @ relative[2], poses[2], atol=1e-12)


def test_points_in_boxes_respects_rotation():
    box = np.array([[0, 0, 0, 2.0, 0.2, 0.2, np.pi / 2, 0, 0]])  # long axis turned onto y
    inside = C.points_in_boxes(np.array([[0, 0.9, 0], [0.9, 0, 0]]), box)
    assert inside[:, 0].tolist() == [True, False]
