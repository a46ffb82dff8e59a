"""Exact IoU of oriented 9-DoF boxes, vectorised over many pairs (no pytorch3d).

Box: `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`, centred (the official origin (0.5, 0.5, 0.5)),
sizes along the box's own axes, angles in radians. The angles are turned into a rotation by
`processing.coordinates.euler_to_matrix(angles, euler_mode)`:

    euler_mode="zxy"       R = Ry(roll)·Rx(pitch)·Rz(yaw)   (scipy "zxy"; the data's convention, default)
    euler_mode="official"  R = Rz(yaw)·Rx(pitch)·Ry(roll)   (scipy "ZXY" = pytorch3d "ZXY"; the official IoU)

Method (exact up to float64 rounding). The intersection P = A ∩ B of two convex boxes is a convex
polytope. Every vertex of P is the meet of three independent face planes; two of them come from the
same box and, being non-parallel faces of a box, meet in one of its edges. So every vertex of P is an
extreme point of (edge of A) ∩ B or of (edge of B) ∩ A, i.e. an endpoint of an edge clipped by the
other box. We clip the 24 edges of each pair with a vectorised Liang-Barsky slab test, collect the
endpoints (at most 48 points) and take the volume of their convex hull (scipy / qhull). Coplanar or
fewer than 4 points mean a flat or empty intersection: volume 0.

Tolerance: the slabs are widened by `SLAB_EPS · (1 + largest size)` so that edges lying exactly on a
face of the other box (identical or face-sharing boxes) are not lost to rounding; this bounds the
volume error by O(1e-9) relative. Negative sizes describe the same point set as their absolute
values and are read that way here (the official reading); in the default mode the evaluators refuse such a
box before it gets here (`box_problem`: the tolerant parser's rule, so a box scores the same given as text or
as numbers).

Range: a box holding a value beyond ±BOX_VALUE_LIMIT (1e100 m) has no IoU in float64 (its volume, a product of
three sizes, and the squares in its distances overflow), so every such pair scores IoU 0, a miss, in both modes and
without numpy's overflow warnings; in the default mode the evaluators also refuse such a predicted box before it
gets here, as a non-finite one (`box_problem`: dropped in detection, "no box" in grounding). No room is within a
factor 1e90 of that bound, so no box of a scene is ever turned away by it.

Official-compat degenerate rule: pytorch3d's `box3d_overlap` raises "Planes have zero areas" when a
face triangle of either box has area < 1e-4 (side products a·b < 2e-4 m²), and the official code
turns any exception into IoU 0. `official_compat=True` reproduces that; the default does not (a thin
box has a well-defined IoU). pytorch3d also works in float32; our float64 values can differ from the
official ones by ~1e-6, which matters only for IoUs within that distance of a threshold.
"""

from __future__ import annotations

import numpy as np

from gap_mllm.processing.coordinates import EULER_MODES, UNIT_CORNERS, euler_to_matrix
from gap_mllm.tasks_gap_mllm import box_numbers

SLAB_EPS = 1e-9
BOX_VALUE_LIMIT = 1e100  # metres: beyond it a box's volume or distances overflow float64 (module docstring)
PYTORCH3D_FACE_AREA_EPS = 1e-4  # box3d_overlap(eps=1e-4): a face triangle smaller than this raises

# The 12 edges of a box as corner-index pairs (corner i has the unit signs of UNIT_CORNERS[i]:
# bit 0 -> x, bit 1 -> y, bit 2 -> z); an edge joins two corners that differ in one bit.
BOX_EDGES = np.array([(i, i | bit) for bit in (1, 2, 4) for i in range(8) if not i & bit], dtype=np.int64)


def _as_boxes(boxes, name: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim == 1:
        boxes = boxes[None]
    if boxes.ndim != 2 or boxes.shape[1] != 9:
        raise ValueError(f"{name} must have shape [N, 9] (or [9]), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{name} contains NaN or inf")
    return boxes


def box_problem(box, what: str = "bbox_3d") -> str | None:
    """What makes `box` unscorable in the default mode, or None: it must be 9 finite numbers with sizes >= 0,
    the rule the tolerant parser applies to answer text (`output_parsing.box_numbers`). The box-level
    evaluators (`GroundingEvaluator.add`, `DetectionEvaluator.add`) apply it too, so that a box with a negated
    size scores as it does in text (no box), not as the box of its absolute sizes."""
    try:
        values = np.asarray(box, dtype=np.float64).reshape(-1).tolist()
    except (TypeError, ValueError):
        return f"{what} is not a list of numbers"
    return box_numbers(values, what)[1] or box_range_problem(values, what)


def box_range_problem(box, what: str = "bbox_3d") -> str | None:
    """What puts `box` beyond the IoU's float64 range (a value beyond ±BOX_VALUE_LIMIT), or None."""
    values = np.abs(np.asarray(box, dtype=np.float64))
    if np.any(values > BOX_VALUE_LIMIT):
        return (f"{what} holds a value beyond ±{BOX_VALUE_LIMIT:g} ({float(values.max()):g}), where its volume and "
                "distances overflow")
    return None


def box_volume(boxes) -> np.ndarray:
    """Volumes `[N]` of boxes `[N, 9]` (product of the absolute sizes)."""
    return np.prod(np.abs(_as_boxes(boxes, "boxes")[:, 3:6]), axis=1)


def _frames(boxes: np.ndarray, euler_mode: str):
    """Centres `[N, 3]`, rotations `[N, 3, 3]` (local -> world), half sizes `[N, 3]`."""
    return boxes[:, 0:3], euler_to_matrix(boxes[:, 6:9], euler_mode), np.abs(boxes[:, 3:6]) / 2.0


def _clip_edges(start: np.ndarray, end: np.ndarray, half: np.ndarray, eps: np.ndarray):
    """Liang-Barsky clip of segments `[N, E, 3]` (in the clipping box's local frame) by the box
    `|x| <= half + eps` (`half` `[N, 3]`, `eps` `[N]`).

    Returns the clipped endpoints `[N, E, 2, 3]` and a validity mask `[N, E]`.
    """
    bound = (half + eps[:, None])[:, None, :]  # [N, 1, 3]
    direction = end - start
    flat = np.abs(direction) < 1e-15
    with np.errstate(divide="ignore", invalid="ignore"):
        t_a = (-bound - start) / direction
        t_b = (bound - start) / direction
    t_low = np.where(flat, -np.inf, np.minimum(t_a, t_b))
    t_high = np.where(flat, np.inf, np.maximum(t_a, t_b))
    # A segment parallel to a slab is inside it everywhere or nowhere.
    outside_parallel = flat & (np.abs(start) > bound)
    t0 = np.maximum(t_low.max(axis=-1), 0.0)
    t1 = np.minimum(t_high.min(axis=-1), 1.0)
    valid = (t0 <= t1) & ~outside_parallel.any(axis=-1)
    points = np.stack([start + t0[..., None] * direction, start + t1[..., None] * direction], axis=2)
    return points, valid


def _hull_volume(points: np.ndarray) -> float:
    """Convex-hull volume of `[K, 3]` points; 0 for fewer than 4 or (numerically) coplanar points."""
    if len(points) < 4:
        return 0.0
    centred = points - points.mean(axis=0)
    scale = np.abs(centred).max()
    if scale == 0.0 or np.linalg.matrix_rank(centred / scale, tol=1e-10) < 3:
        return 0.0
    # here, not at the top: scipy.spatial takes most of a second to import, and `gap-mllm evaluate --help` imports
    # this package for its task names (tests/test_cli_startup.py)
    from scipy.spatial import ConvexHull, QhullError

    try:
        return float(ConvexHull(centred).volume)
    except QhullError:  # flat intersection that passed the rank test within rounding
        return 0.0


def intersection_volume(boxes_a, boxes_b, euler_mode: str = "zxy") -> np.ndarray:
    """Exact intersection volumes `[N]` of the box pairs `(boxes_a[i], boxes_b[i])`, each `[N, 9]`."""
    if euler_mode not in EULER_MODES:
        raise ValueError(f"euler_mode must be one of {EULER_MODES}, got {euler_mode!r}")
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if a.shape != b.shape:
        raise ValueError(f"boxes_a and boxes_b must have the same shape, got {a.shape} and {b.shape}")
    volumes = np.zeros(len(a))
    if len(a) == 0:
        return volumes
    centre_a, rot_a, half_a = _frames(a, euler_mode)
    centre_b, rot_b, half_b = _frames(b, euler_mode)
    # Bounding-sphere test: pairs that cannot touch skip the clipping and the hull.
    reach = np.linalg.norm(half_a, axis=1) + np.linalg.norm(half_b, axis=1)
    close = np.linalg.norm(centre_a - centre_b, axis=1) <= reach * (1.0 + 1e-9)
    if not close.any():
        return volumes
    idx = np.flatnonzero(close)
    centre_a, rot_a, half_a = centre_a[idx], rot_a[idx], half_a[idx]
    centre_b, rot_b, half_b = centre_b[idx], rot_b[idx], half_b[idx]
    eps = SLAB_EPS * (1.0 + np.maximum(half_a.max(axis=1), half_b.max(axis=1)) * 2.0)

    def edges_in_other_frame(centre, rot, half, centre_o, rot_o):
        corners = np.einsum("nij,nkj->nki", rot, 2.0 * half[:, None, :] * UNIT_CORNERS[None]) + centre[:, None]
        local = np.einsum("nki,nij->nkj", corners - centre_o[:, None], rot_o)  # world -> other's frame
        return local[:, BOX_EDGES[:, 0]], local[:, BOX_EDGES[:, 1]]

    start, end = edges_in_other_frame(centre_a, rot_a, half_a, centre_b, rot_b)
    points_ab, valid_ab = _clip_edges(start, end, half_b, eps)  # A's edges in B's frame
    points_ab = np.einsum("nij,nepj->nepi", rot_b, points_ab) + centre_b[:, None, None]
    start, end = edges_in_other_frame(centre_b, rot_b, half_b, centre_a, rot_a)
    points_ba, valid_ba = _clip_edges(start, end, half_a, eps)  # B's edges in A's frame
    points_ba = np.einsum("nij,nepj->nepi", rot_a, points_ba) + centre_a[:, None, None]

    points = np.concatenate([points_ab, points_ba], axis=1).reshape(len(idx), -1, 3)  # [n, 48, 3]
    valid = np.repeat(np.concatenate([valid_ab, valid_ba], axis=1), 2, axis=1)  # [n, 48]
    limit = np.minimum(np.prod(2 * half_a, axis=1), np.prod(2 * half_b, axis=1))
    for j in np.flatnonzero(valid.sum(axis=1) >= 4):
        volumes[idx[j]] = min(_hull_volume(points[j][valid[j]]), limit[j])
    return volumes


def _pytorch3d_would_raise(boxes: np.ndarray) -> np.ndarray:
    """`[N]` True where pytorch3d's `_check_nonzero` raises: a face triangle area (a·b/2) < 1e-4."""
    s = np.abs(boxes[:, 3:6])
    products = np.stack([s[:, 0] * s[:, 1], s[:, 1] * s[:, 2], s[:, 0] * s[:, 2]], axis=1)
    return products.min(axis=1) / 2.0 < PYTORCH3D_FACE_AREA_EPS


def box_iou_pairs(boxes_a, boxes_b, euler_mode: str = "zxy", official_compat: bool = False) -> np.ndarray:
    """IoU `[N]` of the pairs `(boxes_a[i], boxes_b[i])`, boxes `[N, 9]` (or one `[9]` each).

    Args:
        euler_mode: "zxy" (R = Ry·Rx·Rz, default) or "official" (R = Rz·Rx·Ry); see module docstring.
        official_compat: also apply pytorch3d's degenerate-face rule (IoU 0 when either box has a face
            with a·b < 2e-4 m²).
    Returns:
        float64 IoUs in [0, 1]; 0 where the union is empty.
    """
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if a.shape != b.shape:
        raise ValueError(f"boxes_a and boxes_b must have the same shape, got {a.shape} and {b.shape}")
    iou = np.zeros(len(a))
    # a pair with a box beyond the float64 range is a miss (module docstring), never computed: no overflow
    scored = ~(np.abs(a) > BOX_VALUE_LIMIT).any(axis=1) & ~(np.abs(b) > BOX_VALUE_LIMIT).any(axis=1)
    if not scored.any():
        return iou
    a, b = a[scored], b[scored]
    inter = intersection_volume(a, b, euler_mode)
    union = box_volume(a) + box_volume(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.where(union > 0, inter / union, 0.0)
    if official_compat:
        values = np.where(_pytorch3d_would_raise(a) | _pytorch3d_would_raise(b), 0.0, values)
    iou[scored] = np.clip(values, 0.0, 1.0)
    return iou


def box_iou_matrix(boxes_a, boxes_b, euler_mode: str = "zxy", official_compat: bool = False) -> np.ndarray:
    """IoU matrix `[N, M]` between every box of `boxes_a` `[N, 9]` and of `boxes_b` `[M, 9]`."""
    a, b = _as_boxes(boxes_a, "boxes_a"), _as_boxes(boxes_b, "boxes_b")
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    rows = np.repeat(a, len(b), axis=0)
    cols = np.tile(b, (len(a), 1))
    return box_iou_pairs(rows, cols, euler_mode, official_compat).reshape(len(a), len(b))


def box_iou(box_a, box_b, euler_mode: str = "zxy", official_compat: bool = False) -> float:
    """IoU of two single boxes (`[9]` each) as a Python float."""
    return float(box_iou_pairs(box_a, box_b, euler_mode, official_compat)[0])
