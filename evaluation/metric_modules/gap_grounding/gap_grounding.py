"""GAP-MLLM 3D visual grounding: Acc@0.25, Acc@0.5 (IoU >=) and mIoU; a failed parse scores IoU 0, and every
sample without an IoU is reported in `unscored: {reason: count}` (evaluation/grounding_metrics.py)."""

import datasets
import evaluate
import numpy as np

from gap_mllm.evaluation.grounding_metrics import GroundingEvaluator
from gap_mllm.tasks_gap_mllm import parse_grounding

_DESCRIPTION = """Predictions are raw stage-2 answers `{"bbox_3d": [...]}` in the camera frame of the
selected frame; references are `{"gt_bbox": [9 floats, world], "camera_to_world": [16 floats, row-major
4x4 = axis_align_matrix @ cam2global[k]]}` (use the identity for predictions already in the world)."""


class GapGrounding(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": {"gt_bbox": datasets.List(datasets.Value("float64")),
                               "camera_to_world": datasets.List(datasets.Value("float64"))},
            }),
        )  # fmt: skip

    def _compute(self, predictions, references, official_compat=False):
        ev = GroundingEvaluator(official_compat=official_compat)
        for text, ref in zip(predictions, references):
            box = parse_grounding(text).box
            ev.add(None if box is None else box.to_list(), ref["gt_bbox"], np.asarray(ref["camera_to_world"]).reshape(4, 4))
        return ev.compute()
