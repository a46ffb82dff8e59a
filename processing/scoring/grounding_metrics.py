"""3D visual grounding (ScanRefer): Acc@0.25, Acc@0.5 and mIoU (docs/method.md §5.4, §6.2).

Per sample the predicted box (camera frame of the frame selected in stage 1) is moved to the
axis-aligned world with `E = axis_align_matrix · cam2global[k]`: centre `E·c`, rotation
`E[:3,:3]·R(angles)` re-encoded as angles with the same convention, sizes unchanged. Its IoU with
`gt_bbox` is the sample score. Acc@t = share of counted samples with IoU >= t (NON-strict, unlike
detection); mIoU = mean IoU over the counted samples.

Real poses are rounded (ScanNet stores 6 decimals), so `E` is orthonormal only to ~1e-6. The default
transform uses the nearest rotation for both the centre and the angles
(`processing.coordinates.orthonormalize_rigid`) and refuses only matrices further than `RIGID_TOLERANCE`
(1e-3) from a rigid motion. `official_compat=True` is the released `inference_vg_stagerefer.py` exactly
(`official_camera_box_to_world`): the centre is moved with the raw product of the stored matrices
`(E @ [c, 1])[:3]` (no rigidity check: a finite matrix is used as it is), the rotation is
`Rotation.from_matrix(E[:3, :3] @ R)` (scipy returns the nearest rotation) read back as "zxy" angles, and
the sizes are kept as given. The two differ by ~1e-6 of the distance for 6-decimal poses (IoUs ~1e-5
apart). In official_compat the stage-2 answer is also read the official way (`official_stage2_box` in
`tasks.py`), and a record without `axis_align_matrix` fails as it does there (IoU 0, counted).

Negative sizes: the tolerant parser refuses a predicted box with a negative size (no box: IoU 0, counted,
the parse reason in the row), and a ground-truth box with one is a data failure. A box given as numbers
(`GroundingEvaluator.add`, `score_grounding`) follows the same rule (`box_iou.box_problem`): a predicted box
of 9 numbers that are not all finite or have a negative size is "no box in the answer", the problem in
`detail` (a box of another shape is the caller's error: ValueError); so is, in both modes, a predicted box holding
a value beyond ±1e100 (`box_iou.BOX_VALUE_LIMIT`: its transform and IoU would overflow float64). The official code
keeps the sizes as written; its IoU (pytorch3d `box3d_overlap` on the box corners) orients every face by the
box centre and takes absolute volumes, so a negated size describes the same box: official_compat scores
it as the box of the absolute sizes (an oracle with negated sizes scores 1.0 there, as officially).

Samples without an IoU are never scored 0 in silence: each gets a reason, and `compute()` reports
`unscored: {reason: count}` in both modes. Which of them count in the denominator:

    reason (UNSCORED_*)                    default              official_compat=True
    no box in the answer                   IoU 0, counted       IoU 0, counted
    selected frame out of range            IoU 0, counted       IoU 0, counted
    camera pose unusable (data)            excluded             IoU 0, counted
    ground-truth box unusable (data)       excluded             IoU 0, counted

A model that gives no usable answer is wrong, so it scores 0 in both modes. A sample whose own
annotation cannot be used (a non-finite or non-rigid pose, a broken `gt_bbox`) says nothing about the
model: the default leaves it out of the denominator (`num_excluded`); official_compat keeps the
official rule (any failure of a sample is IoU 0 and counts).

Euler conventions:
    default                "zxy" (R = Ry·Rx·Rz) in the transform and in the IoU.
    official_compat=True   "zxy" in the transform (as the official code), "ZXY" (Rz·Rx·Ry) in the IoU
                           plus pytorch3d's degenerate-box rule. The two agree whenever the world
                           boxes are gravity-aligned (pitch = roll = 0), since then both are Rz(yaw).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from gap_mllm.processing.coordinates import camera_boxes_to_world, camera_to_world_transform, orthonormalize_rigid

from .box_iou import box_iou, box_problem, box_range_problem

GROUNDING_THRESHOLDS = (0.25, 0.5)

UNSCORED_NO_BOX = "no box in the answer"
UNSCORED_FRAME = "selected frame out of range"
UNSCORED_POSE = "camera pose unusable"
UNSCORED_GT = "ground-truth box unusable"
MODEL_FAILURES = (UNSCORED_NO_BOX, UNSCORED_FRAME)  # counted as IoU 0 in both modes
DATA_FAILURES = (UNSCORED_POSE, UNSCORED_GT)  # excluded by default, IoU 0 in official_compat


@dataclass(frozen=True)
class GroundingScore:
    """One sample's result.

    Attributes:
        iou: the IoU, or None when it could not be computed (see `reason`).
        reason: None when scored, else one of the `UNSCORED_*` reasons.
        detail: the underlying error message for data failures (for the per-sample report).
    """

    iou: float | None
    reason: str | None = None
    detail: str | None = None

    def counts(self, official_compat: bool) -> bool:
        """Whether the sample is in the denominator (module docstring table)."""
        return self.reason is None or official_compat or self.reason in MODEL_FAILURES

    def value(self, official_compat: bool) -> float | None:
        """The per-sample score: the IoU, 0.0 for an unscored sample that counts, None if excluded."""
        if self.iou is not None:
            return self.iou
        return 0.0 if self.counts(official_compat) else None


def _gt_box(gt_box_world, official_compat: bool) -> np.ndarray:
    try:
        box = np.asarray(gt_box_world, dtype=np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (9,) or not np.all(np.isfinite(box)):
        raise ValueError(f"gt_bbox must be 9 finite numbers, got {gt_box_world!r:.120}")
    problem = None if official_compat else box_problem(box, "gt_bbox")
    if problem:
        raise ValueError(problem)
    return box


def official_camera_box_to_world(box, extrinsic) -> np.ndarray:
    """The official stage-2 post-processing of one camera-frame box `[9]` with `extrinsic` `[4, 4]` =
    axis_align_matrix @ cam2global[k] as stored (not cleaned): centre `(E @ [c, 1])[:3]`, rotation
    `Rotation.from_matrix(E[:3, :3] @ R_zxy(angles))` read back as "zxy" angles, sizes as given.
    Raises what scipy raises on a matrix it cannot read (non-finite, determinant <= 0)."""
    box = np.asarray(box, dtype=np.float64).reshape(9)
    extrinsic = np.asarray(extrinsic, dtype=np.float64)
    centre = (extrinsic @ np.r_[box[0:3], 1.0])[:3]
    from scipy.spatial.transform import Rotation  # here: scipy.spatial is slow to import (gap-mllm evaluate --help)

    rotation = Rotation.from_matrix(extrinsic[:3, :3] @ Rotation.from_euler("zxy", box[6:9]).as_matrix())
    return np.r_[centre, box[3:6], rotation.as_euler("zxy")]


def _world_transform(cam_to_world, axis_align_matrix, official_compat: bool) -> np.ndarray:
    """E = axis_align_matrix @ cam_to_world: cleaned (default) or as stored (official); ValueError when unusable."""
    transform = camera_to_world_transform(cam_to_world, axis_align_matrix)
    if not official_compat:
        return orthonormalize_rigid(transform, "axis_align_matrix @ cam2global[k]")
    if transform.shape != (4, 4) or not np.all(np.isfinite(transform)):
        raise ValueError(f"axis_align_matrix @ cam2global[k] must be a finite 4x4 matrix, got shape {transform.shape}"
                         + ("" if transform.shape != (4, 4) else " with NaN or inf"))
    return transform


def score_grounding(pred_box_camera, gt_box_world, cam_to_world=None, axis_align_matrix=None,
                    official_compat: bool = False) -> GroundingScore:
    """IoU of a predicted camera-frame box against the world ground truth, or the reason there is none.

    Args:
        pred_box_camera: 9 finite numbers in the OpenCV frame of the selected frame, or None (no box parsed).
        gt_box_world: 9 numbers in the (axis-aligned) world.
        cam_to_world: 4x4 pose of the selected frame (`cam2global[k]`); None if the prediction is
            already in the world frame.
        axis_align_matrix: 4x4, or None for identity.
        official_compat: the official transform and IoU (module docstring).
    """
    # The sample's own data is checked first: when it is broken, no answer can be scored.
    try:
        gt = _gt_box(gt_box_world, official_compat)
    except ValueError as error:
        return GroundingScore(None, UNSCORED_GT, str(error))
    transform = None
    if cam_to_world is not None:
        try:
            transform = _world_transform(cam_to_world, axis_align_matrix, official_compat)
        except (TypeError, ValueError) as error:
            return GroundingScore(None, UNSCORED_POSE, str(error))
    if pred_box_camera is None:
        return GroundingScore(None, UNSCORED_NO_BOX)
    box = np.asarray(pred_box_camera, dtype=np.float64).reshape(9)  # another shape is the caller's error
    # a box beyond the IoU's float64 range is no box in either mode (its transform would overflow too)
    problem = (box_range_problem if official_compat else box_problem)(box, "the predicted bbox_3d")
    if problem:  # what the parser does with the same values in text: no box (IoU 0, counted)
        return GroundingScore(None, UNSCORED_NO_BOX, problem)
    if transform is not None and official_compat:
        try:
            box = official_camera_box_to_world(box, transform)
        except (ValueError, np.linalg.LinAlgError) as error:  # e.g. a reflection: scipy refuses it
            return GroundingScore(None, UNSCORED_POSE, f"scipy cannot read the rotation of the pose ({error})")
    elif transform is not None:
        box = camera_boxes_to_world(box[None], transform)[0]
    return GroundingScore(box_iou(box, gt, "official" if official_compat else "zxy", official_compat))


def selected_pose(record: dict, k: int):
    """`cam2global[k]` of an annotation record, or None when the record has no pose for frame k."""
    poses = record.get("cam2global")
    if not isinstance(poses, (list, tuple, np.ndarray)) or not 0 <= k < len(poses):
        return None
    return poses[k]


def score_grounding_record(record: dict, k: int, pred_box_camera, official_compat: bool = False,
                           no_box_detail: str | None = None) -> GroundingScore:
    """Score one ScanRefer record given the selected frame `k` and the parsed stage-2 box (or None, with
    `no_box_detail` saying why).

    A frame outside the record's images is `UNSCORED_FRAME`; a record without a pose for frame k is
    `UNSCORED_POSE` (a missing pose is never read as "the box is already in the world"); in official_compat
    so is a record without `axis_align_matrix` (the official code fails on it, IoU 0)."""
    if not 0 <= k < len(record["images"]):
        return GroundingScore(None, UNSCORED_FRAME, f"frame {k} of {len(record['images'])}")
    pose = selected_pose(record, k)
    if pose is None:
        return GroundingScore(None, UNSCORED_POSE, f"the record has no cam2global[{k}]")
    if official_compat and record.get("axis_align_matrix") is None:
        return GroundingScore(None, UNSCORED_POSE, "the record has no axis_align_matrix (the official code fails: IoU 0)")
    score = score_grounding(pred_box_camera, record.get("gt_bbox"), pose, record.get("axis_align_matrix"), official_compat)
    if score.reason == UNSCORED_NO_BOX and no_box_detail:
        return GroundingScore(None, UNSCORED_NO_BOX, no_box_detail)
    return score


@dataclass
class GroundingEvaluator:
    """Accumulates samples (`add`, or `add_score` for a score computed elsewhere) and reports
    Acc@0.25, Acc@0.5, mIoU over the counted samples and the unscored samples by reason."""

    official_compat: bool = False
    thresholds: tuple = GROUNDING_THRESHOLDS
    ious: list = field(default_factory=list)
    unscored: Counter = field(default_factory=Counter)
    num_excluded: int = 0

    def add(self, pred_box_camera, gt_box_world, cam_to_world=None, axis_align_matrix=None) -> GroundingScore:
        score = score_grounding(pred_box_camera, gt_box_world, cam_to_world, axis_align_matrix, self.official_compat)
        self.add_score(score)
        return score

    def add_score(self, score: GroundingScore) -> None:
        if score.reason is not None:
            self.unscored[score.reason] += 1
        value = score.value(self.official_compat)
        if value is None:
            self.num_excluded += 1
        else:
            self.ious.append(float(value))

    def compute(self) -> dict:
        """`{"acc@0.25", "acc@0.5", "miou", "num_samples" (the denominator), "hits@0.25", "hits@0.5",
        "num_excluded", "unscored": {reason: count}}`; rates are 0.0 when nothing counts."""
        out = grounding_scores(self.ious, self.thresholds)
        out["num_excluded"] = self.num_excluded
        out["unscored"] = dict(sorted(self.unscored.items()))
        return out


def grounding_scores(ious, thresholds=GROUNDING_THRESHOLDS) -> dict:
    """Acc@t (IoU >= t) and mIoU over all samples; 0.0 for an empty list, like the official code."""
    ious = np.asarray(list(ious), dtype=np.float64)
    total = len(ious)
    out = {"num_samples": total, "miou": float(ious.mean()) if total else 0.0}
    for t in thresholds:
        hits = int((ious >= t).sum())
        out[f"acc@{t:g}"] = hits / total if total else 0.0
        out[f"hits@{t:g}"] = hits
    return out
