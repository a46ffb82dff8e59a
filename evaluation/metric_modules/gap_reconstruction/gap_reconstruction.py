"""GAP-MLLM marker-pointmap reconstruction: accuracy / completion / overall, raw and Sim(3)-aligned."""

import datasets
import evaluate

from gap_mllm.evaluation.reconstruction_metrics import ReconstructionEvaluator
from gap_mllm.tasks_gap_mllm import parse_pointmap

_DESCRIPTION = """Predictions and references are answer texts `{"pointmap": [x, y, z], ...}`; compute kwarg
`scene_ids` (one per sample) groups the points into scenes (default: one scene). Per-scene metrics,
then the mean over scenes; the official headline is aligned["overall"]."""


class GapReconstruction(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
        )

    def _compute(self, predictions, references, scene_ids=None, official_compat=False):
        ev = ReconstructionEvaluator(official_compat=official_compat)
        scene_ids = scene_ids or ["scene"] * len(predictions)
        for scene, text, truth in zip(scene_ids, predictions, references):
            ev.add(scene, parse_pointmap(text).point, parse_pointmap(truth).point)
        out = ev.compute()
        out.pop("per_scene")
        return out
