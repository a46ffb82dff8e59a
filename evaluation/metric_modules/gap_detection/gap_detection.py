"""GAP-MLLM 3D video object detection: official greedy matching, P / R / F1 at IoU > 0.25 (+ AP)."""

import datasets
import evaluate

from gap_mllm.evaluation.detection_metrics import DetectionEvaluator
from gap_mllm.processing.scoring.detection_parsing import detection_predictions

_DESCRIPTION = """Predictions are raw model answers (read by gap_mllm.processing.scoring.detection_parsing: the tolerant
parser by default, the official line-by-line reading with official_compat=True);
references are the sample's ground-truth boxes `[{"label": str, "bbox_3d": [9 floats]}]` in the first
frame's OpenCV camera frame. Returns per-category and split precision / recall / F1 / AP25 / AP50 and
the headline "f1" (mean F1 over cate31). `official_compat=True` reproduces the official numbers."""


class GapDetection(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.List({"label": datasets.Value("string"), "bbox_3d": datasets.List(datasets.Value("float64"))}),
            }),
        )  # fmt: skip

    def _compute(self, predictions, references, official_compat=False):
        ev = DetectionEvaluator(official_compat=official_compat)
        for text, gt in zip(predictions, references):
            pred = detection_predictions(text, official_compat)
            ev.add(pred.labels, pred.boxes, [g["label"] for g in gt], [g["bbox_3d"] for g in gt], pred.valid, pred.dropped)
        return ev.compute()
