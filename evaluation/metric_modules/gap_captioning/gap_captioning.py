"""GAP-MLLM / Scan2Cap dense captioning: CIDEr, BLEU-4, METEOR, ROUGE-L with the 0.5 IoU gate."""

import datasets
import evaluate

from gap_mllm.evaluation.caption_metrics import caption_scores

_DESCRIPTION = """Predictions are captions, references lists of reference captions. Compute kwargs:
`proposal_ious` (per-sample proposal IoU; a caption counts only if >= 0.5, default all 1.0),
`meteor` (None: on unless official_compat; needs Java), `official_compat`. Official normalisation
("sos ... eos", spaced punctuation, lower case), pycocoevalcap scorers."""


class GapCaptioning(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.List(datasets.Value("string"))}),
        )  # fmt: skip

    def _compute(self, predictions, references, proposal_ious=None, meteor=None, official_compat=False):
        out = caption_scores(predictions, references, proposal_ious, meteor=meteor, official_compat=official_compat)
        out.pop("per_sample")
        return out
