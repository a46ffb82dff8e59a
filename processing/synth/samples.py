"""Training / evaluation records of every task, built from a SynthRooms scene in the official schemas: the pieces the
task modules write their records with (gap_mllm.processing.tasks, `PackageTask.synth_records`), and `scene_records`.

Each record is the dict that goes into the task's annotation JSON (docs/method.md §7.2, §7.3):
`images` (paths relative to posed_images), `conversations` (human prompt with one `<image>` per
frame, gpt answer written by `gap_mllm.tasks_gap_mllm`), plus the task fields (`pixel_coords`,
`boxes`, `cam2img`, `cam2global`, `axis_align_matrix`, `gt_bbox`, `iou`, `annotations`). We add
`id`, `scene_id` and, where it helps, `object_id` and `question_type`; readers ignore unknown keys.

Frames: all targets are in the OpenCV camera frame of the sample's first image, metres; boxes use
R = Ry(roll) Rx(pitch) Rz(yaw) (scipy "zxy"). `gt_bbox` is in the axis-aligned world (the room frame).
"""

from __future__ import annotations

import numpy as np

from ..coordinates import world_boxes_to_camera
from ..sampling import space_aware_indices, uniform_indices
from ..tasks import in_data_order, package_tasks
from .scene import SynthScene


def image_path(scene: SynthScene, frame: int) -> str:
    """Annotation image path of a frame: "<scene_id>/<5-digit raw frame>.jpg"."""
    return f"{scene.scene_id}/{scene.frame_names[frame]}.jpg"


def conversation(human: str, answer: str) -> list[dict]:
    """A record's `conversations`: the human turn and the answer."""
    return [{"from": "human", "value": human}, {"from": "gpt", "value": answer}]


def camera_boxes(scene: SynthScene, object_indices, reference_frame: int) -> np.ndarray:
    """Boxes `[K, 9]` of objects in the camera frame of `reference_frame` (room boxes mapped by the
    room-frame pose; identical to using raw-world poses with the axis-align matrix)."""
    boxes = scene.world_boxes[list(object_indices)]
    return world_boxes_to_camera(boxes, scene.cam_to_room[reference_frame]) if len(boxes) else np.zeros((0, 9))


def camera_box_angles(scene: SynthScene) -> np.ndarray:
    """`[frames × objects, 3]`: the yaw, pitch and roll of every object's box in the camera of every frame of
    `scene`. A target's boxes are in the camera of one of its frames (a clip's first, stage 2's selected frame), so
    these hold the angles of every box target the scene gives (processing/box_angles.py records their ranges)."""
    objects = range(len(scene.objects))
    return np.concatenate([camera_boxes(scene, objects, frame)[:, 6:9] for frame in range(len(scene.cam_to_room))])


def camera_tilts(scene: SynthScene) -> np.ndarray:
    """`[frames]`: how far each frame's camera looks down, radians (the optical axis below the room's horizontal;
    room z is up): the typical one is what an upright object's box angles depend on (processing/box_angles.py)."""
    forward_up = np.clip(np.asarray(scene.cam_to_room)[:, 2, 2], -1.0, 1.0)  # the optical axis' room-z component
    return -np.arcsin(forward_up)


def choose_clip(scene: SynthScene, num_samples: int, rng, method: str = "uniform", window: int | None = None) -> list[int]:
    """Frame indices of one clip: `num_samples` frames in a random window of `window` frames
    (default: half the trajectory), spaced uniformly or chosen by space-aware coverage."""
    total = len(scene.frames)
    window = min(total, window or max(num_samples, total // 2))
    start = int(rng.integers(0, total - window + 1))
    if method == "uniform":
        return uniform_indices(total, num_samples, start, start + window)
    if method == "space_aware":
        picks = space_aware_indices(
            np.stack([scene.frames[i].depth for i in range(start, start + window)]),
            scene.intrinsics,
            scene.cam_to_room[start : start + window],
            num_samples,
        )
        return [start + i for i in picks]
    raise ValueError(f"unknown frame sampling {method!r}; use 'uniform' or 'space_aware'")


def common_record(scene: SynthScene, frames, task: str, number: int) -> dict:
    """The fields every record of a scene has: `id` (from `task`, a short name, and `number`), `scene_id`, `images`."""
    return {
        "id": f"{scene.scene_id}_{task}_{number:04d}",
        "scene_id": scene.scene_id,
        "images": [image_path(scene, f) for f in frames],
    }


def camera_fields(scene: SynthScene, frames) -> dict:
    cam2img = np.eye(4)
    cam2img[:3, :3] = scene.intrinsics
    return {
        "cam2img": cam2img.tolist(),
        "cam2global": scene.cam_to_world[list(frames)].tolist(),
        "axis_align_matrix": scene.axis_align_matrix.tolist(),
    }


def first_clear_frame(pixels: np.ndarray, min_pixels: int) -> int | None:
    """Index of the first frame where an object covers >= half its best coverage (and >= min_pixels)."""
    if pixels.max() < min_pixels:
        return None
    return int(np.flatnonzero(pixels >= max(min_pixels, 0.5 * pixels.max()))[0])


def scene_records(scene: SynthScene, config, rng) -> dict[str, list[dict]]:
    """Every task's records for one scene, by task: those of each task module with SynthRooms samples
    (`PackageTask.synth_records`, gap_mllm.processing.tasks; a task in stages: each stage's), drawn from `rng` in the
    order of the tasks' data (`PackageTask.data_order`)."""
    writers = {task.name: task.synth_records for task in package_tasks() if task.synth_records is not None}
    out: dict[str, list[dict]] = {}
    for name in in_data_order(writers):
        records = writers[name](scene, config, rng)
        out.update(records if isinstance(records, dict) else {name: records})
    return out
