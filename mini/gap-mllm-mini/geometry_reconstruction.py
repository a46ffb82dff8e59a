"""3D reconstruction with VGGT's heads on top of the geometry encoder: cameras, depth, points, point clouds.

`run_reconstruction` runs the aggregator once, for the union of the layers the caller needs (the
tapped layers, the DPT layers, the last layer for the camera token), then the enabled heads in fp32
semantics (autocast off, as in the reference). `GapMllmGeometryEncoder.reconstruct` is the public entry.
"""

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput

from .point_maps import PointCloud, depth_to_world_points, fuse_point_cloud
from .pose_encoding import pose_encoding_to_extrinsics_intrinsics


@dataclass
class GeometryReconstructionOutput(ModelOutput):
    """Output of `GapMllmGeometryEncoder.reconstruct` (fields of disabled heads are `None`).

    Frames are in input order. World frame = the camera of VGGT's reference frame (frame 0, or the
    last frame with `reference_frame="last"`); scale normalised, not metric.

    Args:
        pose_encoding: `[B, S, 9]` `absT_quaR_FoV` of the last refinement iteration (camera head).
        pose_encoding_iterations: one `[B, S, 9]` per iteration.
        extrinsics: `[B, S, 3, 4]` OpenCV camera-from-world `[R | t]`.
        intrinsics: `[B, S, 3, 3]` pinhole, principal point at the image centre.
        depth: `[B, S, H, W, 1]` (`exp` activation), depth_conf `[B, S, H, W]` (`1 + exp`).
        world_points: `[B, S, H, W, 3]` (point head, `sign·expm1`), world_points_conf `[B, S, H, W]`.
        layer_features: the encoder's usual output, one `[B, S, h·w, 2C]` per tapped layer.
        patch_grid: `(h, w)`.
        image_size: `(H, W)`.
    """

    pose_encoding: torch.Tensor | None = None
    pose_encoding_iterations: tuple[torch.Tensor, ...] | None = None
    extrinsics: torch.Tensor | None = None
    intrinsics: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    depth_conf: torch.Tensor | None = None
    world_points: torch.Tensor | None = None
    world_points_conf: torch.Tensor | None = None
    layer_features: tuple[torch.Tensor, ...] | None = None
    patch_grid: tuple[int, int] | None = None
    image_size: tuple[int, int] | None = None

    def world_points_from_depth(self) -> torch.Tensor:
        """`[B, S, H, W, 3]`: depth unprojected with the predicted cameras (VGGT's README finds this more
        accurate than the point head)."""
        if self.depth is None or self.extrinsics is None:
            raise ValueError("world_points_from_depth needs the depth and camera heads (use_depth_head, use_camera_head)")
        return depth_to_world_points(self.depth.float(), self.extrinsics.float(), self.intrinsics.float())

    def point_cloud(
        self,
        images: torch.Tensor | None = None,
        sample: int = 0,
        source: str | None = None,
        confidence_percentile: float = 50.0,
        max_points: int | None = None,
    ) -> PointCloud:
        """Fuse all frames of one sample into a point cloud.

        Args:
            images: the `[B, S, 3, H, W]` input, for colours (optional).
            sample: which batch element.
            source: `"depth"` (depth + cameras) or `"points"` (point head); default: depth when available.
            confidence_percentile: drop points below this percentile of the matching confidence.
            max_points: random subsample size.
        """
        if source is None:
            source = "depth" if self.depth is not None and self.extrinsics is not None else "points"
        if source == "depth":
            points, confidence = self.world_points_from_depth()[sample], self.depth_conf[sample]
        elif source == "points":
            if self.world_points is None:
                raise ValueError("source='points' needs the point head (use_point_head)")
            points, confidence = self.world_points[sample], self.world_points_conf[sample]
        else:
            raise ValueError(f"source must be 'depth' or 'points', got {source!r}")
        return fuse_point_cloud(
            points,
            confidence,
            images[sample] if images is not None else None,
            confidence_percentile=confidence_percentile,
            max_points=max_points,
        )


def _flip_frames(value):
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(item.flip(1) for item in value)
    return value.flip(1)


def run_reconstruction(encoder, images: torch.Tensor, frames_chunk_size: int | None = None) -> GeometryReconstructionOutput:
    """Aggregator + enabled heads on `images [B, S, 3, H, W]` in [0, 1] (see `GeometryReconstructionOutput`)."""
    config = encoder.config
    camera_head = getattr(encoder, "camera_head", None)
    depth_head = getattr(encoder, "depth_head", None)
    point_head = getattr(encoder, "point_head", None)
    if camera_head is None and depth_head is None and point_head is None:
        raise ValueError(
            "no reconstruction head is enabled: set use_camera_head / use_depth_head / use_point_head in the "
            "geometry config and load VGGT weights that contain them"
        )
    aggregator = encoder.aggregator
    aggregator.check_images(images)
    reverse = config.reference_frame == "last"
    if reverse:
        images = images.flip(1)
    tapped = list(config.tapped_layers)
    last_layer = config.num_hidden_layers - 1
    needed = set(tapped)
    if camera_head is not None:
        needed.add(last_layer)
    if depth_head is not None or point_head is not None:
        needed.update(config.dpt_layers)
    layers = sorted(needed)
    outputs = dict(zip(layers, aggregator(images, layers)))
    num_special = aggregator.num_special_tokens
    image_size = tuple(images.shape[-2:])
    result = {}
    with torch.autocast(device_type=images.device.type, enabled=False):
        if camera_head is not None:
            iterations = camera_head(outputs[last_layer][:, :, 0])
            extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(iterations[-1], image_size)
            result.update(pose_encoding=iterations[-1], pose_encoding_iterations=iterations,
                          extrinsics=extrinsics, intrinsics=intrinsics)
        if depth_head is not None or point_head is not None:
            dpt_tokens = [outputs[layer][:, :, num_special:] for layer in config.dpt_layers]
        if depth_head is not None:
            result["depth"], result["depth_conf"] = depth_head(dpt_tokens, image_size, frames_chunk_size)
        if point_head is not None:
            result["world_points"], result["world_points_conf"] = point_head(dpt_tokens, image_size, frames_chunk_size)
    result["layer_features"] = tuple(outputs[layer][:, :, num_special:] for layer in tapped)
    if reverse:
        result = {key: _flip_frames(value) for key, value in result.items()}
    patch = config.patch_size
    return GeometryReconstructionOutput(
        **result, patch_grid=(image_size[0] // patch, image_size[1] // patch), image_size=image_size
    )


__all__ = ["GeometryReconstructionOutput", "run_reconstruction"]
