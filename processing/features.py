"""`datasets` feature schemas of the GAP-MLLM tasks: the fields every task shares and the building blocks of
the task-specific ones, which each task's builder declares next to its task (processing/builders.py).

Conventions: images are lists of `Image()` (one per view, sample order = frame order, view 0 is the
reference frame); depth `[V, H, W]` float32 metres (0 = missing); intrinsics `[V, 3, 3]` (colour K);
cam_to_world `[V, 4, 4]` float64 camera-to-world poses in the raw world (OpenCV camera; `cam2global` of
a record without cameras is an empty `[0, 4, 4]`, absent 4x4 matrices are None); boxes are
9-vectors [cx, cy, cz, sx, sy, sz, yaw, pitch, roll] with R = Ry(roll) Rx(pitch) Rz(yaw) (scipy
"zxy"), in the first frame's camera frame unless the field says world (`gt_bbox`: axis-aligned world).
"""

from __future__ import annotations

import datasets

from .synth.categories import CATEGORY_NAMES

# EmbodiedScan / official detection vocabulary (docs/method.md §6.1, `cate31` without its duplicate "lamp"
# and with "towel" spelled correctly) plus the SynthRooms categories.
OFFICIAL_CATEGORIES = (
    "chair", "pillow", "cabinet", "table", "lamp", "couch", "desk", "stand", "bed", "backpack", "bathtub",
    "ottoman", "dresser", "bin", "toilet", "refrigerator", "stove", "microwave", "monitor", "computer",
    "window", "shelf", "curtain", "plant", "stairs", "picture", "book", "bottle", "towel", "sink",
)  # fmt: skip
DEFAULT_CLASS_NAMES = tuple(dict.fromkeys(OFFICIAL_CATEGORIES + CATEGORY_NAMES + ("door", "radiator")))

BOX = datasets.List(datasets.Value("float32"), length=9)
MATRIX_4X4 = datasets.Array2D(shape=(4, 4), dtype="float64")
POSES = datasets.Array3D(shape=(None, 4, 4), dtype="float64")


def common_features() -> dict:
    """Fields of every task: ids, the views, the human prompt (with `<image>` placeholders) and answer."""
    return {
        "id": datasets.Value("string"),
        "scene_id": datasets.Value("string"),
        "images": datasets.List(datasets.Image()),
        "image_paths": datasets.List(datasets.Value("string")),
        "prompt": datasets.Value("string"),
        "answer": datasets.Value("string"),
    }


def geometry_features(depth_size: tuple[int, int] | None, load_poses: bool) -> dict:
    """Optional per-view geometry: depth (needs a fixed (H, W) for Array3D) and intrinsics + poses."""
    out = {}
    if depth_size is not None:
        out["depth"] = datasets.Array3D(shape=(None, *depth_size), dtype="float32")
    if load_poses:
        out["intrinsics"] = datasets.Array3D(shape=(None, 3, 3), dtype="float64")
        out["cam_to_world"] = POSES
    return out
