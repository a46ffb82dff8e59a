"""VGGT reconstruction heads beside the geometry encoder: shapes, activations, pose encoding, point clouds.

Numerical parity of the heads with the reference VGGT code was checked outside the test suite (the
reference is not a dependency); these tests pin the conventions and the invariants.
"""

import math

import numpy as np
import pytest
import torch

from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig
from gap_mllm.modeling_vggt import (
    GapMllmDptResidualUnit,
    GapMllmGeometryEncoder,
    activate_depth,
    activate_points,
    pose_encoding_to_extrinsics_intrinsics,
    quaternion_to_matrix,
)
from gap_mllm.point_cloud import (
    PointCloud,
    depth_to_camera_points,
    depth_to_world_points,
    fuse_point_cloud,
    read_ply,
    reconstruction_point_cloud,
    save_point_cloud,
    write_ply,
)
from gap_mllm.training.aux_targets import extrinsics_intrinsics_to_pose_encoding, matrix_to_quaternion

TINY_HEADS = dict(
    image_size=56, hidden_size=32, num_hidden_layers=4, num_attention_heads=2, patch_embed_num_hidden_layers=2,
    tapped_layers=[1, 3], use_camera_head=True, use_depth_head=True, use_point_head=True,
    camera_head_num_attention_heads=4, camera_head_trunk_depth=2, camera_head_num_iterations=3,
    dpt_features=16, dpt_out_channels=[8, 16, 32, 32], dpt_layers=[0, 1, 2, 3],
)


def tiny_encoder(**overrides) -> GapMllmGeometryEncoder:
    torch.manual_seed(0)
    encoder = GapMllmGeometryEncoder(GapMllmGeometryConfig(**{**TINY_HEADS, **overrides})).eval()
    with torch.no_grad():  # non-trivial values for the parameters nn.Module leaves at constants
        encoder.aggregator.camera_token.normal_()
        encoder.aggregator.register_token.normal_()
        encoder.camera_head.empty_pose_tokens.normal_()
    return encoder


def random_rotations(count: int, generator: torch.Generator) -> torch.Tensor:
    quaternions = torch.randn(count, 4, dtype=torch.float64, generator=generator)
    return quaternion_to_matrix(quaternions)


# ------------------------------------------------------------------------------------------ heads
def test_reconstruct_shapes_activations_and_features():
    encoder = tiny_encoder()
    images = torch.rand(2, 3, 3, 42, 70)
    with torch.no_grad():
        out = encoder.reconstruct(images)
        features = encoder(images).layer_features
    assert out.pose_encoding.shape == (2, 3, 9)
    assert len(out.pose_encoding_iterations) == 3 and out.pose_encoding_iterations[-1] is out.pose_encoding
    assert out.extrinsics.shape == (2, 3, 3, 4) and out.intrinsics.shape == (2, 3, 3, 3)
    assert out.depth.shape == (2, 3, 42, 70, 1) and out.depth_conf.shape == (2, 3, 42, 70)
    assert out.world_points.shape == (2, 3, 42, 70, 3) and out.world_points_conf.shape == (2, 3, 42, 70)
    assert out.patch_grid == (3, 5) and out.image_size == (42, 70)
    # activations: FoV ReLU, depth exp, confidences 1 + exp
    assert (out.pose_encoding[..., 7:] >= 0).all()
    assert (out.depth > 0).all() and (out.depth_conf > 1).all() and (out.world_points_conf > 1).all()
    # intrinsics decoded from the FoV with the principal point at the centre
    assert torch.equal(out.intrinsics[..., 0, 2], torch.full((2, 3), 35.0))
    assert torch.equal(out.intrinsics[..., 1, 2], torch.full((2, 3), 21.0))
    # one aggregator pass gives the same features as the plain forward
    for a, b in zip(out.layer_features, features):
        assert torch.equal(a, b)


def test_reconstruct_needs_a_head():
    encoder = GapMllmGeometryEncoder(GapMllmGeometryConfig(**{**TINY_HEADS, "use_camera_head": False,
                                                             "use_depth_head": False, "use_point_head": False}))
    assert not any(name.endswith("_head") for name, _ in encoder.named_children())
    with pytest.raises(ValueError, match="no reconstruction head is enabled"):
        encoder.reconstruct(torch.rand(1, 2, 3, 28, 28))


def test_dpt_frame_chunking_does_not_change_results():
    encoder = tiny_encoder()
    images = torch.rand(1, 5, 3, 28, 42)
    with torch.no_grad():
        whole = encoder.reconstruct(images, frames_chunk_size=8)
        chunked = encoder.reconstruct(images, frames_chunk_size=2)
    torch.testing.assert_close(chunked.depth, whole.depth, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunked.world_points_conf, whole.world_points_conf, rtol=1e-6, atol=1e-6)


def test_reference_frame_last_reverses_frames_around_the_heads():
    first, last = tiny_encoder(), tiny_encoder(reference_frame="last")
    last.load_state_dict(first.state_dict())
    images = torch.rand(1, 3, 3, 28, 28)
    with torch.no_grad():
        expected = first.reconstruct(images.flip(1))
        got = last.reconstruct(images)
    assert torch.equal(got.pose_encoding, expected.pose_encoding.flip(1))
    assert torch.equal(got.depth, expected.depth.flip(1))
    assert torch.equal(got.layer_features[0], expected.layer_features[0].flip(1))


def test_dpt_activations_and_residual_unit():
    raw = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    assert torch.equal(activate_depth(raw), torch.exp(raw))
    torch.testing.assert_close(activate_points(raw), torch.tensor([-(math.e**2 - 1), -(math.e**0.5 - 1), 0.0,
                                                                   math.e**0.5 - 1, math.e**2 - 1]))
    # VGGT's residual unit adds relu(x) (its in-place ReLU rewrites the skip input), not x
    unit = GapMllmDptResidualUnit(4)
    with torch.no_grad():
        unit.conv2.weight.zero_()
        unit.conv2.bias.zero_()
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(unit(x), torch.relu(x))


def test_head_config_is_validated_only_when_enabled():
    GapMllmGeometryConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, tapped_layers=[1, 3])  # heads off
    with pytest.raises(ValueError, match="dpt_layers contains 4: valid layers are 0..3"):
        GapMllmGeometryConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, tapped_layers=[1, 3],
                              use_depth_head=True)
    with pytest.raises(ValueError, match="camera_head_num_attention_heads"):
        GapMllmGeometryConfig(**{**TINY_HEADS, "camera_head_num_attention_heads": 5})
    with pytest.raises(ValueError, match="4 entries"):
        GapMllmGeometryConfig(**{**TINY_HEADS, "dpt_layers": [0, 1, 2]})


# ------------------------------------------------------------------------------------------ pose encoding
def test_pose_encoding_round_trip_is_exact_in_float64():
    generator = torch.Generator().manual_seed(0)
    rotation = random_rotations(24, generator).reshape(2, 12, 3, 3)
    translation = torch.randn(2, 12, 3, dtype=torch.float64, generator=generator)
    extrinsics = torch.cat([rotation, translation[..., None]], dim=-1)
    height, width = 392, 518
    focal = torch.rand(2, 12, 2, dtype=torch.float64, generator=generator) * 500 + 200
    intrinsics = torch.zeros(2, 12, 3, 3, dtype=torch.float64)
    intrinsics[..., 0, 0], intrinsics[..., 1, 1] = focal[..., 0], focal[..., 1]
    intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 2, 2] = width / 2, height / 2, 1.0

    encoding = extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, (height, width))
    assert encoding.shape == (2, 12, 9) and encoding.dtype == torch.float64
    assert (encoding[..., 6] >= 0).all()  # standardised quaternion: w >= 0
    torch.testing.assert_close(encoding[..., 3:7].norm(dim=-1), torch.ones(2, 12, dtype=torch.float64), rtol=0, atol=1e-12)
    decoded_extrinsics, decoded_intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (height, width))
    torch.testing.assert_close(decoded_extrinsics, extrinsics, rtol=0, atol=1e-12)
    torch.testing.assert_close(decoded_intrinsics, intrinsics, rtol=0, atol=1e-9)
    re_encoded = extrinsics_intrinsics_to_pose_encoding(decoded_extrinsics, decoded_intrinsics, (height, width))
    torch.testing.assert_close(re_encoded, encoding, rtol=0, atol=1e-12)


def test_pose_encoding_conventions():
    # identity camera, 90° fields of view: t = 0, q = (0, 0, 0, 1) scalar last, f = size / 2
    encoding = torch.tensor([[[0.0, 0, 0, 0, 0, 0, 1, math.pi / 2, math.pi / 2]]], dtype=torch.float64)
    extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(encoding, (100, 200))
    torch.testing.assert_close(extrinsics[0, 0], torch.eye(3, 4, dtype=torch.float64))
    torch.testing.assert_close(intrinsics[0, 0], torch.tensor([[100.0, 0, 100], [0, 50, 50], [0, 0, 1]], dtype=torch.float64))
    # a rotation of +90° about z, written XYZW = (0, 0, sin 45°, cos 45°)
    quaternion = torch.tensor([0, 0, math.sin(math.pi / 4), math.cos(math.pi / 4)], dtype=torch.float64)
    rotation = quaternion_to_matrix(quaternion)
    torch.testing.assert_close(rotation, torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64))
    # the sign is standardised (w >= 0); -q is the same rotation
    torch.testing.assert_close(matrix_to_quaternion(quaternion_to_matrix(-quaternion)), quaternion)


# ------------------------------------------------------------------------------------------ point clouds
def camera_looking_down_z(translation=(0.5, -0.25, 2.0)) -> tuple[torch.Tensor, torch.Tensor]:
    rotation = quaternion_to_matrix(torch.tensor([0.1, -0.2, 0.05, 0.97], dtype=torch.float64))
    extrinsics = torch.cat([rotation, torch.tensor(translation, dtype=torch.float64)[:, None]], dim=-1)
    intrinsics = torch.tensor([[40.0, 0, 16], [0, 45, 12], [0, 0, 1]], dtype=torch.float64)
    return extrinsics, intrinsics


def test_depth_to_world_points_projects_back_to_the_pixels():
    extrinsics, intrinsics = camera_looking_down_z()
    depth = torch.rand(24, 32, dtype=torch.float64) * 3 + 1
    world = depth_to_world_points(depth[..., None], extrinsics, intrinsics)
    assert world.shape == (24, 32, 3)
    camera = world @ extrinsics[:, :3].T + extrinsics[:, 3]  # x_cam = R x_world + t
    torch.testing.assert_close(camera[..., 2], depth, rtol=0, atol=1e-12)
    pixels = camera @ intrinsics.T
    rows, cols = torch.meshgrid(torch.arange(24.0, dtype=torch.float64), torch.arange(32.0, dtype=torch.float64), indexing="ij")
    torch.testing.assert_close(pixels[..., 0] / pixels[..., 2], cols, rtol=0, atol=1e-9)
    torch.testing.assert_close(pixels[..., 1] / pixels[..., 2], rows, rtol=0, atol=1e-9)
    # batched form = per-frame form
    batched = depth_to_world_points(depth.expand(2, 3, 24, 32), extrinsics.expand(2, 3, 3, 4), intrinsics.expand(2, 3, 3, 3))
    assert torch.equal(batched[1, 2], world)
    assert torch.equal(depth_to_camera_points(depth, intrinsics)[..., 2], depth)


def test_fused_point_cloud_filters_by_confidence_and_round_trips_through_ply(tmp_path):
    generator = torch.Generator().manual_seed(0)
    points = torch.randn(3, 4, 5, 3, generator=generator)
    confidence = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5) + 1
    images = torch.rand(3, 3, 4, 5, generator=generator)
    cloud = fuse_point_cloud(points, confidence, images, confidence_percentile=50.0)
    keep = confidence >= torch.quantile(confidence, 0.5)
    assert len(cloud) == int(keep.sum()) == 30
    np.testing.assert_array_equal(cloud.points, points[keep].numpy())
    np.testing.assert_array_equal(cloud.colors, (images.permute(0, 2, 3, 1)[keep] * 255).round().to(torch.uint8).numpy())
    np.testing.assert_array_equal(cloud.frame_index, np.repeat([1, 2], [10, 20]))
    assert len(fuse_point_cloud(points, confidence, confidence_percentile=0.0, max_points=7)) == 7

    path = save_point_cloud(cloud, tmp_path / "cloud.ply")
    read_points, read_colors = read_ply(path)
    np.testing.assert_array_equal(read_points, cloud.points)
    np.testing.assert_array_equal(read_colors, cloud.colors)
    write_ply(tmp_path / "plain.ply", cloud.points)
    assert read_ply(tmp_path / "plain.ply")[1] is None

    trimesh = pytest.importorskip("trimesh")
    loaded = trimesh.load(path)
    np.testing.assert_array_equal(np.asarray(loaded.vertices, dtype=np.float32), cloud.points)
    np.testing.assert_array_equal(np.asarray(loaded.colors)[:, :3], cloud.colors)
    glb = save_point_cloud(PointCloud(cloud.points, cloud.colors), tmp_path / "cloud.glb")
    scene = trimesh.load(glb)
    geometry = next(iter(scene.geometry.values()))
    np.testing.assert_allclose(np.asarray(geometry.vertices), cloud.points, rtol=0, atol=1e-6)


def test_reconstruction_point_cloud_from_depth_and_points(tmp_path):
    encoder = tiny_encoder()
    images = torch.rand(1, 2, 3, 28, 42)
    with torch.no_grad():
        out = encoder.reconstruct(images)
    from_depth = reconstruction_point_cloud(out, images, confidence_percentile=0.0)
    assert len(from_depth) == 2 * 28 * 42
    np.testing.assert_allclose(from_depth.points.reshape(2, 28, 42, 3), out.world_points_from_depth()[0].numpy(), rtol=1e-6)
    from_points = reconstruction_point_cloud(out, images, source="points", confidence_percentile=25.0)
    assert 0 < len(from_points) < 2 * 28 * 42
    assert save_point_cloud(from_points, tmp_path / "points.ply").stat().st_size > 0
