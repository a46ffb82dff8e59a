"""3D dense captioning (Scan2Cap): CIDEr, BLEU-4, METEOR, ROUGE-L at the 0.5 IoU gate (docs/method.md §6.3).

Official semantics, in both modes:
    gate           a prediction is kept iff the sample's proposal IoU `iou` >= 0.5; otherwise it is
                   replaced by "" and STILL counts in the denominator.
    normalisation  prediction and every reference: "." -> " . ", "," -> " , ", lower case, then
                   "sos " + text + " eos". No PTB tokeniser, no other cleaning (`normalize_caption`).
    scorers        pycocoevalcap `Cider` (CIDEr-D), `Bleu(4)` (4th value), `Rouge` (ROUGE-L), and
                   `Meteor` (Java) when enabled. Scores are fractions here (the official tables x100).

Quirk worth knowing (worked example): the "sos"/"eos" wrapping makes a gated-out (empty) prediction
"sos eos", which shares two unigrams with every reference. For the reference "a chair ." the empty
prediction scores BLEU-1 = 2 matches / 2 words · brevity penalty exp(1 - 5/2) = 0.223 rather than 0.
CIDEr's IDF is computed over the evaluated set, so scores of different subsets are not comparable
and a single-sample CIDEr is always 0.

Modes: `official_compat=True` disables METEOR (commented out in the official GAP code); the default
enables it when `meteor=None`. METEOR needs Java and costs a few seconds of JVM start-up.

Text sent to the scorers (both modes): `meteor.sanitize_for_scorers` replaces line breaks and other
control characters and the METEOR separator "|||" by spaces (a newline in a caption used to hang the
METEOR subprocess forever). BLEU and CIDEr split on any whitespace, so they are unchanged; ROUGE-L
splits on single spaces, so a caption with a line break now scores its two words apart rather than as
one glued token. METEOR runs with a time limit per answer (`meteor_timeout`); any scorer failure is a
`ScorerError`, never a hang.
"""

from __future__ import annotations

import contextlib
import io
import shutil

from .meteor import METEOR_TIMEOUT, ScorerError, meteor_score, sanitize_for_scorers

CAPTION_IOU_GATE = 0.5
# the scores `caption_scores` computes at the gate: a benchmark summary names each with it (`gated_name`)
GATED_SCORES = ("cider", "bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l")


def gated_name(score: str, gate: float = CAPTION_IOU_GATE) -> str:
    """A caption score's name at the IoU gate, as Scan2Cap's tables write it (C@0.5): "cider" -> "cider@0.5". The
    summaries of `gap-mllm evaluate`, the lmms-eval tables and mini/RESULTS.md all use it, so one metric has one name
    (its value still depends on the evaluated set: CIDEr's IDF comes from its references)."""
    return f"{score}@{gate:g}"


def gated_score(metrics: dict, score: str, gate: float = CAPTION_IOU_GATE):
    """`metrics[gated_name(score)]`, or `metrics[score]` in a summary written before the scores carried the gate."""
    return metrics[gated_name(score, gate)] if gated_name(score, gate) in metrics else metrics[score]


def normalize_caption(text: str) -> str:
    """The official Scan2Cap normalisation: spaced "." and ",", lower case, wrapped in sos/eos."""
    return "sos " + text.replace(".", " . ").replace(",", " , ").lower() + " eos"


def gate_prediction(prediction: str, proposal_iou: float, gate: float = CAPTION_IOU_GATE) -> str:
    """The prediction if the proposal IoU passes the gate (>=), else the empty string."""
    return prediction if proposal_iou >= gate else ""


def java_available() -> bool:
    return shutil.which("java") is not None


def caption_scores(predictions, references, proposal_ious=None, meteor: bool | None = None,
                   official_compat: bool = False, gate: float = CAPTION_IOU_GATE,
                   meteor_timeout: float = METEOR_TIMEOUT) -> dict:
    """Corpus scores and per-sample scores.

    Args:
        predictions: `[N]` generated captions (raw model text).
        references: `[N]` lists of reference captions (each non-empty).
        proposal_ious: `[N]` proposal-vs-ground-truth IoUs (the sample's `iou` field); None = all 1.0.
        meteor: compute METEOR (Java); None = on unless `official_compat`.
        meteor_timeout: seconds METEOR may stay silent before it is stopped (`ScorerError`).
    Returns:
        `{"cider", "bleu4", "bleu1".."bleu3", "rouge_l", "meteor" (or None), "num_samples", "num_gated",
        "per_sample": {"cider": [N], "bleu4": [N], "rouge_l": [N], "meteor": [N] or None}}`.
    """
    # here, not at the top: pycocoevalcap is an optional dependency (the eval extra), needed by captioning only
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    predictions, references = list(predictions), [list(r) for r in references]
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if any(len(r) == 0 for r in references):
        raise ValueError("every sample needs at least one reference caption")
    ious = [1.0] * len(predictions) if proposal_ious is None else [float(v) for v in proposal_ious]
    if len(ious) != len(predictions):
        raise ValueError(f"{len(ious)} proposal IoUs for {len(predictions)} predictions")
    if meteor is None:
        meteor = not official_compat
    empty = {"cider": 0.0, "bleu1": 0.0, "bleu2": 0.0, "bleu3": 0.0, "bleu4": 0.0, "rouge_l": 0.0,
             "meteor": 0.0 if meteor else None, "num_samples": 0, "num_gated": 0,
             "per_sample": {"cider": [], "bleu4": [], "rouge_l": [], "meteor": [] if meteor else None}}
    if not predictions:
        return empty

    gated = [gate_prediction(p, iou, gate) for p, iou in zip(predictions, ious)]
    res = {i: [normalize_caption(sanitize_for_scorers(p))] for i, p in enumerate(gated)}
    gts = {i: [normalize_caption(sanitize_for_scorers(r)) for r in refs] for i, refs in enumerate(references)}

    try:
        cider, cider_each = Cider().compute_score(gts, res)
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its length ratios
            bleu, bleu_each = Bleu(4).compute_score(gts, res, verbose=0)
        rouge, rouge_each = Rouge().compute_score(gts, res)
    except Exception as error:  # noqa: BLE001 - the scorers raise assorted types on odd input
        raise ScorerError(f"caption scorer failed: {type(error).__name__}: {error}") from error
    out = {
        "cider": float(cider),
        "bleu1": float(bleu[0]), "bleu2": float(bleu[1]), "bleu3": float(bleu[2]), "bleu4": float(bleu[3]),
        "rouge_l": float(rouge),
        "meteor": None,
        "num_samples": len(predictions),
        "num_gated": sum(1 for iou in ious if iou < gate),
        "per_sample": {"cider": [float(v) for v in cider_each], "bleu4": [float(v) for v in bleu_each[3]],
                       "rouge_l": [float(v) for v in rouge_each], "meteor": None},
    }  # fmt: skip
    if meteor:
        if not java_available():
            raise RuntimeError("METEOR needs Java (`java` on PATH); pass meteor=False to skip it")
        score, each = meteor_score(gts, res, timeout=meteor_timeout)
        out["meteor"] = float(score)
        out["per_sample"]["meteor"] = [float(v) for v in each]
    return out
