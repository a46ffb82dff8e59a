"""Spatial QA with VSI-Bench scoring: mean relative accuracy for numbers, accuracy for choices."""

import datasets
import evaluate

from gap_mllm.evaluation.spatial_qa_metrics import spatial_qa_scores

_DESCRIPTION = """Predictions are answers, references the ground-truth strings; compute kwarg
`question_types` (VSI-Bench type per sample) selects MRA or accuracy; `official_compat=True` scores exactly as
VSI-Bench (no whitespace stripping). Returns overall and per_type."""


class GapSpatialQA(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, question_types=None, official_compat=False):
        if question_types is None:
            raise ValueError("gap_spatial_qa needs question_types=[...] (one VSI-Bench type per sample)")
        out = spatial_qa_scores(predictions, references, question_types, official_compat)
        out.pop("per_sample")
        return out
