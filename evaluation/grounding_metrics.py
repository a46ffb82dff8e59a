"""3D visual grounding (ScanRefer): Acc@0.25, Acc@0.5 and mIoU (method.md §3.3, §5.2).

Per sample the predicted box (camera frame of the frame selected in stage 1) is moved to the
axis-aligned world with `E = axis_align_matrix · cam2global[k]`: centre `E·c`, rotation
`E[:3,:3]·R(angles)` re-encoded as angles with the same convention, sizes unchanged. Its IoU with
`gt_bbox` is the sample score; a failed parse, a missing frame or any transform / IoU error gives 0.
Acc@t = share of samples with IoU >= t (NON-strict, unlike detection); mIoU = mean IoU; the
denominator is every sample.

Euler conventions:
    default                "zxy" (R = Ry·Rx·Rz) in the transform and in the IoU.
    official_compat=True   "zxy" in the transform (as the official code), "ZXY" (Rz·Rx·Ry) in the IoU
                           plus pytorch3d's degenerate-box rule. The two agree whenever the world
                           boxes are gravity-aligned (pitch = roll = 0), since then both are Rz(yaw).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gap_mllm.processing.coordinates import camera_boxes_to_world

from .box_iou import box_iou

GROUNDING_THRESHOLDS = (0.25, 0.5)


def grounding_iou(pred_box_camera, gt_box_world, cam_to_world=None, axis_align_matrix=None,
                  official_compat: bool = False) -> float:
    """IoU of a predicted camera-frame box against the world ground truth; 0.0 on any failure.

    Args:
        pred_box_camera: 9 numbers in the OpenCV frame of the selected frame, or None (parse failure).
        gt_box_world: 9 numbers in the (axis-aligned) world.
        cam_to_world: 4x4 pose of the selected frame (`cam2global[k]`); None if the prediction is
            already in the world frame.
        axis_align_matrix: 4x4, or None for identity.
    """
    if pred_box_camera is None:
        return 0.0
    try:
        box = np.asarray(pred_box_camera, dtype=np.float64).reshape(9)
        if cam_to_world is not None:
            box = camera_boxes_to_world(box[None], cam_to_world, axis_align_matrix)[0]
        return box_iou(box, gt_box_world, "official" if official_compat else "zxy", official_compat)
    except Exception:  # noqa: BLE001 - the official scorer maps every failure of a sample to IoU 0
        return 0.0


@dataclass
class GroundingEvaluator:
    """Accumulates per-sample IoUs (`add` / `add_iou`) and reports Acc@0.25, Acc@0.5, mIoU."""

    official_compat: bool = False
    thresholds: tuple = GROUNDING_THRESHOLDS
    ious: list = field(default_factory=list)

    def add(self, pred_box_camera, gt_box_world, cam_to_world=None, axis_align_matrix=None) -> float:
        iou = grounding_iou(pred_box_camera, gt_box_world, cam_to_world, axis_align_matrix, self.official_compat)
        self.ious.append(iou)
        return iou

    def add_iou(self, iou: float) -> None:
        self.ious.append(float(iou))

    def compute(self) -> dict:
        """`{"acc@0.25", "acc@0.5", "miou", "num_samples", "hits@0.25", "hits@0.5"}`; 0.0 when empty."""
        return grounding_scores(self.ious, self.thresholds)


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
