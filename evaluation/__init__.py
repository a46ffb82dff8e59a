"""Evaluation with the official GAP-MLLM semantics: oriented 3D box IoU, task metrics, task runners.

Conventions and the official-compat differences: README.md in this folder. Heavy dependencies
(pycocoevalcap, matplotlib, the model) are imported only where they are used. The task runners
(`gap_mllm.evaluation.runner.run_evaluation`) read annotation files through the `datasets` builders, so
they are not imported here: the metrics stay importable without `datasets`.
"""

from .box_iou import box_iou, box_iou_matrix, box_iou_pairs, box_volume, intersection_volume
from .caption_metrics import caption_scores, gate_prediction, normalize_caption
from .category_lists import CLEAN_SPLITS, OFFICIAL_SPLITS
from .detection_metrics import DetectionEvaluator, match_sample
from .grounding_metrics import GroundingEvaluator, GroundingScore, grounding_scores, score_grounding
from .reconstruction_metrics import ReconstructionEvaluator, chamfer_metrics, point_score, umeyama_sim3
from .spatial_qa_metrics import mean_relative_accuracy, spatial_qa_scores

__all__ = [
    "box_iou", "box_iou_matrix", "box_iou_pairs", "box_volume", "intersection_volume",
    "caption_scores", "gate_prediction", "normalize_caption",
    "CLEAN_SPLITS", "OFFICIAL_SPLITS",
    "DetectionEvaluator", "match_sample",
    "GroundingEvaluator", "GroundingScore", "grounding_scores", "score_grounding",
    "ReconstructionEvaluator", "chamfer_metrics", "point_score", "umeyama_sim3",
    "mean_relative_accuracy", "spatial_qa_scores",
]  # fmt: skip
