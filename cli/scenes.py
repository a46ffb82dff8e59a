"""Scenes for the demo and `gap-mllm predict`: frames plus whatever geometry is known about them.

A bundled example is a SynthRooms scene (processing/synth) rendered on the fly, so it ships no
files and comes with exact intrinsics, poses, depth and object boxes: the demo can then draw
projected boxes on every frame and show a coloured point cloud. User frames come with nothing but
pixels. When the model's geometry encoder has VGGT's camera and depth heads, `reconstructed_scene`
estimates them: a point cloud fused from the predicted depth and cameras, and frame 0's intrinsics
for drawing boxes (VGGT's scale is normalised, not metric). Otherwise the first frame is drawn with an
assumed pinhole camera and the 3D view shows boxes only.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from PIL import Image

from gap_mllm.image_utils_gap_mllm import VGGT_PAD_SIZE, vggt_pad_boxes
from gap_mllm.point_cloud import reconstruction_point_cloud
from gap_mllm.processing.coordinates import (
    backproject_depth,
    backproject_pixel,
    invert_rigid,
    transform_points,
    world_boxes_to_camera,
)
from gap_mllm.processing.synth import SynthRooms
from gap_mllm.processing.synth.language import captions, describe
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.samples import choose_clip

from .example_rooms import EXAMPLE_FRAMES, EXAMPLE_IMAGE_SIZE, EXAMPLE_PRESET, EXAMPLE_SEED_BASE, EXAMPLE_SEEDS  # noqa: F401 - EXAMPLE_SEEDS: re-exported

# The camera assumed for frames without calibration: a centred pinhole with a 60° horizontal field of
# view, typical of phone and ScanNet colour cameras. Only used to DRAW boxes, never fed to the model.
ASSUMED_FOV_X_DEGREES = 60.0
MAX_CLOUD_POINTS = 20000
CLOUD_CONFIDENCE_PERCENTILE = 50.0  # keep the most confident half of the depth pixels (VGGT demo default)
CAMERA_EXACT, CAMERA_ESTIMATED, CAMERA_ASSUMED = "exact", "estimated", "assumed"
# Why uploaded frames of a model without VGGT's heads get no point cloud, and how to get one (predict, Space).
POINT_CLOUD_HOWTO = (
    "Uploaded frames get no point cloud: this model's geometry encoder has no camera and depth heads (an "
    "official GAP checkpoint stores the VGGT aggregator only). For one, build the model with "
    "`GapMllmForConditionalGeneration.from_qwen3_vl(..., vggt_weights=\"facebook/VGGT-1B\", "
    "geometry_config={\"use_camera_head\": True, \"use_depth_head\": True})`.")


@dataclass
class Scene:
    """Frames of one scene and the geometry known about them.

    Attributes:
        views: the frames (RGB PIL images, one size).
        intrinsics: `[3, 3]` pinhole of the frames (assumed when `calibrated` is False).
        cam_to_first: `[V, 4, 4]` pose of each frame in the first frame's camera, or None if unknown.
        points, colors: a point cloud `[N, 3]` float32 / `[N, 3]` uint8 in the first camera, or None.
        reference_boxes: ground-truth boxes `[K, 9]` in the first camera (synthetic examples), labels in
            `reference_labels`.
        example_inputs: for bundled examples, one request per task with its exact answer: `grounding`
            (`query`, `box` = the described object's box), `captioning` (`box`, `references`), `reconstruction`
            (`marker` = (view, x, y) on an object, `point` in the first camera, `label`).
        calibrated: whether `intrinsics` are the real ones.
        camera: where `intrinsics` come from: `"exact"` (synthetic), `"estimated"` (VGGT's camera head)
            or `"assumed"` (`ASSUMED_FOV_X_DEGREES`).
        note: why an estimate was not used (shown to the user), or "".
    """

    views: list[Image.Image]
    intrinsics: np.ndarray
    cam_to_first: np.ndarray | None = None
    points: np.ndarray | None = None
    colors: np.ndarray | None = None
    reference_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 9)))
    reference_labels: list[str] = field(default_factory=list)
    calibrated: bool = False
    camera: str = CAMERA_ASSUMED
    note: str = ""
    example_inputs: dict = field(default_factory=dict)


def assumed_intrinsics(height: int, width: int, fov_x_degrees: float = ASSUMED_FOV_X_DEGREES) -> np.ndarray:
    """A centred pinhole with square pixels and the given horizontal field of view."""
    focal = (width / 2) / np.tan(np.deg2rad(fov_x_degrees) / 2)
    return np.array([[focal, 0.0, (width - 1) / 2], [0.0, focal, (height - 1) / 2], [0.0, 0.0, 1.0]])


def scene_from_frames(views: list[Image.Image]) -> Scene:
    """A scene of uncalibrated user frames (no poses, no depth)."""
    if not views:
        raise ValueError("no frames given")
    width, height = views[0].size
    return Scene(views=list(views), intrinsics=assumed_intrinsics(height, width))


def can_reconstruct(model) -> bool:
    """Whether `model` has VGGT's camera and depth heads (a point cloud needs both)."""
    geometry = getattr(model.config, "geometry_config", None)
    return (getattr(model, "geometry_encoder", None) is not None and geometry is not None
            and bool(geometry.use_camera_head) and bool(geometry.use_depth_head))


def geometry_images(processor, views: list[Image.Image]) -> torch.Tensor:
    """`[1, S, 3, Hg, Wg]` in [0, 1]: exactly the VGGT input the processor makes for these views."""
    inputs = processor(images=[list(views)], text=[""], return_tensors="pt")
    return inputs["geometry_pixel_values"][None]


def unmarked_geometry_images(inputs, marker) -> torch.Tensor | None:
    """`geometry_images` of a request's frames read from the request's own processor output `inputs` (one sample;
    the VGGT input does not depend on the text), or None when the request's `marker` was painted into its frames
    (the reconstruction is made from the frames as they are) or there are no `inputs`."""
    if inputs is None or marker is not None:
        return None
    return inputs["geometry_pixel_values"][None]


def intrinsics_for_frame(intrinsics, geometry_size: tuple[int, int], frame_size: tuple[int, int],
                         box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Pinhole `intrinsics` of an image of `geometry_size` (H, W) rescaled to a frame of `frame_size`
    (W, H, as PIL reports it): the processor resized the whole frame, so each axis scales on its own. `box`: where
    the frame lies, `(left, top, width, height)`, in the white square the processor padded it into when the frames
    were of different shapes (`vggt_pad_boxes`); the square was resized then, and the padding is taken off here."""
    (geo_h, geo_w), (width, height) = geometry_size, frame_size
    left, top, box_width, box_height = box or (0, 0, width, height)
    canvas_width, canvas_height = (VGGT_PAD_SIZE, VGGT_PAD_SIZE) if box else (width, height)
    to_canvas = np.diag([canvas_width / geo_w, canvas_height / geo_h, 1.0])
    sx, sy = width / box_width, height / box_height
    to_frame = np.array([[sx, 0.0, -left * sx], [0.0, sy, -top * sy], [0.0, 0.0, 1.0]])
    return to_frame @ to_canvas @ np.asarray(intrinsics, dtype=np.float64)


def _drop_padding(output, boxes, geometry_size: tuple[int, int]) -> None:
    """Depth and points of the white padding (`vggt_pad_boxes`) made NaN in `output`, so that no cloud holds them."""
    (geo_h, geo_w), scale = geometry_size, VGGT_PAD_SIZE
    rows, columns = (torch.arange(n, dtype=torch.float64) + 0.5 for n in (geo_h, geo_w))  # pixel centres
    for frame, (left, top, width, height) in enumerate(boxes):
        inside_rows = (rows * scale / geo_h >= top) & (rows * scale / geo_h < top + height)
        inside_columns = (columns * scale / geo_w >= left) & (columns * scale / geo_w < left + width)
        padding = ~(inside_rows[:, None] & inside_columns[None, :])
        for maps in (output.depth, output.world_points):
            if maps is not None:
                maps[:, frame, padding.to(maps.device)] = float("nan")


def _usable_camera(intrinsics: np.ndarray) -> bool:
    focal = np.array([intrinsics[0, 0], intrinsics[1, 1]])
    return bool(np.isfinite(intrinsics).all() and (focal > 0).all())


def _to_first_camera(points: np.ndarray, extrinsics_first: np.ndarray) -> np.ndarray:
    """World points → frame 0's camera (`R p + t`); a no-op when VGGT's world already is frame 0's camera."""
    rotation, translation = extrinsics_first[:3, :3], extrinsics_first[:3, 3]
    return (points @ rotation.T + translation).astype(np.float32)


@torch.no_grad()
def reconstructed_scene(model, processor, views: list[Image.Image], max_points: int = MAX_CLOUD_POINTS,
                        images: torch.Tensor | None = None) -> Scene:
    """A scene of user frames with the geometry VGGT's heads estimate (needs `can_reconstruct(model)`); `images`:
    their VGGT input `[1, S, 3, Hg, Wg]` when the caller has it (`unmarked_geometry_images`), else the processor
    makes it (`geometry_images`).

    Point cloud: depth unprojected with the predicted cameras, the most confident half kept, coloured
    by the frames, in frame 0's OpenCV camera (normalised scale, not metric). Intrinsics: frame 0's,
    rescaled from the VGGT input size to the frame size, used to draw the boxes. When the camera
    estimate is unusable (non-finite or non-positive focal length), the frames keep the assumed camera
    and no cloud, and `note` says so."""
    scene = scene_from_frames(views)
    encoder = model.geometry_encoder
    parameter = next(encoder.parameters())
    images = (geometry_images(processor, views) if images is None else images).to(device=parameter.device,
                                                                                  dtype=parameter.dtype)
    output = encoder.reconstruct(images)
    boxes = vggt_pad_boxes([view.size for view in views], [f"frame {index}" for index in range(len(views))])
    if boxes is not None:  # frames of different shapes, padded by the processor: the padding is no scene
        _drop_padding(output, boxes, tuple(images.shape[-2:]))
    first_intrinsics = output.intrinsics[0, 0].detach().double().cpu().numpy()
    if not _usable_camera(first_intrinsics):
        scene.note = "the camera head's estimate for frame 0 is unusable (non-finite focal length)"
        return scene
    cloud = reconstruction_point_cloud(output, images.float(), source="depth",
                                       confidence_percentile=CLOUD_CONFIDENCE_PERCENTILE, max_points=max_points)
    extrinsics_first = output.extrinsics[0, 0].detach().double().cpu().numpy()
    scene.intrinsics = intrinsics_for_frame(first_intrinsics, tuple(images.shape[-2:]), views[0].size,
                                            boxes[0] if boxes else None)
    scene.points = _to_first_camera(cloud.points, extrinsics_first)
    scene.colors = cloud.colors
    scene.camera = CAMERA_ESTIMATED
    return scene


def synthetic_scene(seed: int = 0, num_frames: int = EXAMPLE_FRAMES, size: tuple[int, int] | None = None) -> Scene:
    """A rendered SynthRooms scene (the `mini` preset at `EXAMPLE_IMAGE_SIZE`, its own 128x160; `size` = (height,
    width) overrides it) with exact geometry, everything in the first frame's camera: `num_frames` frames spread
    over half the camera walk (as the mini data's detection clips), and one request per task with its answer. More frames than
    the preset's walk renders (24) make the walk that long, and the clip is then all of it: the scene always has
    `num_frames` distinct views (it used to return the walk's 24 for 32 asked).

    Raises:
        ValueError: `num_frames` is not a positive number.
    """
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise ValueError(f"num_frames={num_frames!r}: give a positive number of frames")
    overrides = {"seed": EXAMPLE_SEED_BASE + seed, "image_size": tuple(size) if size is not None else EXAMPLE_IMAGE_SIZE}
    config = synth_config(EXAMPLE_PRESET, **overrides)
    generator = SynthRooms(replace(config, num_frames=max(config.num_frames, num_frames)))
    synth = generator.generate_scene(0)
    clip = choose_clip(synth, num_frames, generator.rng(0, 2))
    first_to_room = synth.cam_to_room[clip[0]]
    room_to_first = invert_rigid(first_to_room)
    cam_to_first = np.stack([room_to_first @ synth.cam_to_room[i] for i in clip])
    frames = [synth.frames[i] for i in clip]
    points, colors = [], []
    for frame, pose in zip(frames, cam_to_first):
        cloud = backproject_depth(frame.depth, synth.intrinsics, pose).reshape(-1, 3)
        valid = np.isfinite(cloud).all(axis=1)
        points.append(cloud[valid])
        colors.append(frame.rgb.reshape(-1, 3)[valid])
    points, colors = np.concatenate(points), np.concatenate(colors)
    if len(points) > MAX_CLOUD_POINTS:  # a browser-friendly size; seeded so the view is reproducible
        keep = np.sort(np.random.default_rng(seed).choice(len(points), MAX_CLOUD_POINTS, replace=False))
        points, colors = points[keep], colors[keep]
    visible = synth.visible_pixels()[clip].sum(axis=0) > 0
    indices = [i for i, seen in enumerate(visible) if seen]
    boxes = world_boxes_to_camera(synth.world_boxes[indices], first_to_room) if indices else np.zeros((0, 9))
    return Scene(
        views=[Image.fromarray(frame.rgb) for frame in frames],
        intrinsics=np.asarray(synth.intrinsics, dtype=np.float64),
        cam_to_first=cam_to_first,
        points=points.astype(np.float32),
        colors=colors.astype(np.uint8),
        reference_boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 9),
        reference_labels=[synth.objects[i].category for i in indices],
        calibrated=True,
        camera=CAMERA_EXACT,
        example_inputs=_example_inputs(synth, clip, indices, np.asarray(boxes).reshape(-1, 9), generator.rng(0, 3)),
    )


def _example_inputs(synth, clip, indices, boxes, rng) -> dict:
    """One request per task for a bundled example, with its exact answer (see `Scene.example_inputs`)."""
    inputs = {}
    pixels = synth.visible_pixels()[clip]
    # the most visible object that has a unique description (ScanRefer-style), else the most visible one
    order = sorted(range(len(indices)), key=lambda k: -pixels[:, indices[k]].sum())
    described = [(k, describe(synth, indices[k], rng)) for k in order]
    described = [(k, text) for k, text in described if text is not None]
    if described:
        k, text = described[0]
        inputs["grounding"] = {"query": text, "box": boxes[k].tolist(), "label": synth.objects[indices[k]].category}
    if order:
        k = order[0]
        inputs["captioning"] = {"box": boxes[k].tolist(), "references": captions(synth, indices[k])}
        # the marker: the centre pixel of that object's largest visible area, in the view showing it most
        view = int(np.argmax(pixels[:, indices[k]]))
        rows, cols = np.nonzero(synth.frames[clip[view]].instance == indices[k] + 1)
        y, x = int(np.median(rows)), int(np.median(cols))
        frame = synth.frames[clip[view]]
        point_room = backproject_pixel(x, y, float(frame.depth[y, x]), synth.intrinsics, synth.cam_to_room[clip[view]])
        point = transform_points(point_room, invert_rigid(synth.cam_to_room[clip[0]]))
        inputs["reconstruction"] = {"marker": (view, x, y), "point": [float(v) for v in point],
                                    "label": synth.label_of(int(frame.instance[y, x]))}
    return inputs
