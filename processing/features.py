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

import math

import datasets
import numpy as np

from .errors import DataError
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


def _extremes(value) -> tuple[float, float] | None:
    """(lowest, highest) finite number of a number, a flat list of numbers or an array; None when there is none.
    Python ints stay exact (2**70 is not rounded); NaN and ±inf are left to each field's own rule (NaN: no
    proposal box, ...)."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            return (value.min(), value.max()) if value.size else None
        finite = value[np.isfinite(value)] if value.dtype.kind == "f" else value[:0]
        return (finite.min(), finite.max()) if finite.size else None
    items = value if isinstance(value, (list, tuple)) else [value]
    numbers = [v for v in items if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
               and (not isinstance(v, (float, np.floating)) or math.isfinite(v))]
    return (min(numbers), max(numbers)) if numbers else None


def _fit_error(path: str, value, dtype: str) -> str | None:
    """Why `value` (see `_extremes`) does not fit the numeric Arrow type `dtype`, or None when it does: an
    integer outside the type's range would stop the whole preparation (`DatasetGenerationError` naming
    nothing), a float above float32's largest value would be stored as infinity."""
    extremes = _extremes(value)
    if extremes is None:
        return None
    low, high = extremes
    if dtype.startswith(("int", "uint")):
        info = np.iinfo(dtype)
        if low < info.min or high > info.max:
            bad = int(low if low < info.min else high)
            return f"{path!r} holds {bad}, outside the range of its {dtype} field [{info.min}, {info.max}]"
    elif dtype in ("float16", "float32"):
        largest = float(np.finfo(dtype).max)
        magnitude = max(abs(float(low)), abs(float(high)))
        if magnitude > largest:
            return (f"{path!r} holds a value of magnitude {magnitude:g}, beyond the range of its {dtype} field "
                    f"(±{largest:g}): it would be stored as infinity")
    return None


def _misfit(value, feature, path: str) -> str | None:
    """The first value under `value` that does not fit `feature` (see `_fit_error`), walking nested lists and
    objects; None when everything fits."""
    if value is None:
        return None
    if isinstance(feature, dict):
        for name, sub_feature in feature.items():
            problem = _misfit(value.get(name) if isinstance(value, dict) else None, sub_feature, f"{path}.{name}")
            if problem:
                return problem
        return None
    if isinstance(feature, (datasets.List, datasets.Sequence, datasets.LargeList)):
        inner = feature.feature
        if isinstance(inner, datasets.Value) and isinstance(value, (list, tuple, np.ndarray)):
            return _fit_error(path, value, inner.dtype)
        for index, item in enumerate(value if isinstance(value, (list, tuple)) else []):
            problem = _misfit(item, inner, f"{path}[{index}]")
            if problem:
                return problem
        return None
    if isinstance(feature, datasets.Value):
        return _fit_error(path, value, feature.dtype)
    if isinstance(feature, (datasets.Array2D, datasets.Array3D, datasets.Array4D, datasets.Array5D)):
        return _fit_error(path, value, feature.dtype)
    return None  # strings, images, class labels: checked by their readers


def check_fits_features(example: dict, features, sample=None) -> None:
    """DataError naming the sample, the field and the range its stored type allows, for the first numeric value
    of `example` that does not fit its field in `features` (a `datasets.Features`, or a dict of features): the
    builders run it on every example before `datasets` encodes it (an object id of 2**40 in an int32 field, a
    box of 1e300 metres in a float32 one)."""
    for name, feature in features.items():
        problem = _misfit(example.get(name), feature, name)
        if problem:
            raise DataError(problem, sample=sample)
