"""The paper's claims in miniature: each claim of lab/mini/ablation.py as paired differences over scenes.

For one set of samples every arm answered (the ablation's fresh seeds, or the run's test split), each claim's pair
of arms (`CLAIMS`: the arm with the ingredient minus the arm without) is compared on the same samples, with a 95 %
interval from a **cluster bootstrap over scenes** (evaluation/confidence.py, `groups`): the samples of one scene share
its rooms, objects and frames, so they are drawn together, never counted as independent evidence. Beside the claims,
the same differences between two seeds of one arm (`SEED_PAIRS`) show what retraining alone changes.

    grounding Acc@0.25, frame selection    per-sample hits (an unscored answer counts 0, as the runner's)
    detection F1@0.25                      the pooled F1 of the summed per-sample counts, recomputed per resample
    CIDEr@0.5                              per-sample CIDEr (each seed's IDF, as the runner scores it)
    marker point error (median, m)         lower is better; samples either arm left unparsed are left out

A verdict per figure, in words: **helps** where the interval lies wholly on the better side of 0, **hurts at this
scale** where it lies wholly on the worse side, **no measurable effect** otherwise; a seed pair, whose sides are
the same arm, says only **the seeds differ** (an interval without 0) or **no measurable difference**. A claim whose
arms are not both evaluated yet says which are missing, so a table written after each arm is honest about what it
answers.

A claim's interval is over scenes: it says how sure the difference between these two trained models is, not how
sure the difference between the two recipes is, which a third training run could move. So a helps / hurts whose
difference is no larger than the largest seed-to-seed difference measured on that figure and those samples is
marked **but no more than seed to seed**. Two seeds of two arms are a description of noise, not an estimate of its
spread: the mark is a reading aid, not a test.
"""

from __future__ import annotations

import json
from pathlib import Path

from gap_mllm.evaluation.confidence import paired_difference, paired_statistic_difference
from gap_mllm.evaluation.marker_metrics import paired_marker_difference

from .ablation import ABLATION_FRESH_SEEDS, CLAIMS, SEED_PAIRS
from .arm_provenance import arms_provenance
from .arms import ARMS
from .claims_table import (CLAIMS_SECTION, FIGURES, HELPS, HURTS, NO_DIFFERENCE, NO_EFFECT, NOT_COMPARABLE, QUOTE_BEGIN,
                           QUOTE_END, SEEDS_DIFFER, WITHIN_SEED_NOISE, claims_quote, claims_section)
from .fresh_seeds import figures_of, model_figures
from .kept_answers import answers_folder, evaluation_folders
from .markdown_sections import block_between, document_section, with_block, with_section
from .sample_rows import f1_of_counts

RESAMPLES = 1000
MARKER_FIGURE = "marker_point_error_m_median"


def _check_same_samples(a: dict, b: dict) -> None:
    for task in ("grounding", "detection", "captioning", "marker"):
        if a[task]["ids"] != b[task]["ids"]:
            raise ValueError(f"{a['label']} and {b['label']} did not answer the same {task} samples in the same order: "
                             f"evaluate both on the same scenes with the same --eval-limit")


def paired_over_scenes(a: dict, b: dict, resamples: int = RESAMPLES) -> dict:
    """A − B of every figure (`FIGURES`) for two arms' `figures_of` (lab/mini/fresh_seeds.py) on the same samples,
    each with its 95 % interval over bootstrap resamples of whole scenes (`num_groups` scenes)."""
    _check_same_samples(a, b)
    grounding, detection, captioning, marker = (a[task] for task in ("grounding", "detection", "captioning", "marker"))
    return {
        "grounding_acc@0.25": paired_difference(grounding["hits"], b["grounding"]["hits"], resamples=resamples,
                                                groups=grounding["scenes"]),
        "frame_accuracy": paired_difference(grounding["frame_hits"], b["grounding"]["frame_hits"], resamples=resamples,
                                            groups=grounding["scenes"]),
        # the pooled F1 is recomputed on every resample: a fifth of the resamples (as the release rule's)
        "detection_f1@0.25": paired_statistic_difference(detection["counts"], b["detection"]["counts"], f1_of_counts,
                                                         resamples=resamples // 5, groups=detection["scenes"]),
        "captioning_cider@0.5": paired_difference(captioning["scores"], b["captioning"]["scores"], resamples=resamples,
                                                  groups=captioning["scenes"]),
        MARKER_FIGURE: paired_marker_difference(
            marker["predictions"], b["marker"]["predictions"], marker["answers"], marker["marked_frames"],
            resamples=resamples, groups=marker["scenes"]).get("all"),
    }


def verdict(found: dict | None, higher_is_better: bool) -> str:
    """The module docstring's verdict of one paired difference ("not measured" without one)."""
    if found is None:
        return "not measured"
    low, high = found["ci95"]
    if (low > 0) if higher_is_better else (high < 0):
        return HELPS
    if (high < 0) if higher_is_better else (low > 0):
        return HURTS
    return NO_EFFECT


def seed_verdict(found: dict | None) -> str:
    """The verdict of a seed pair's difference (the same arm trained twice, so no side is the better one): whether
    the two seeds differ measurably (an interval without 0) or not."""
    if found is None:
        return "not measured"
    low, high = found["ci95"]
    return SEEDS_DIFFER if low > 0 or high < 0 else NO_DIFFERENCE


def _pair(figures: dict, arm: str, without: str, resamples: int, seeds: bool = False) -> dict:
    """A − B of two arms (`seeds`: two seeds of one arm, judged by `seed_verdict`), or the arms not evaluated yet."""
    missing = [name for name in (arm, without) if name not in figures]
    if missing:
        return {"arm": arm, "without": without, "missing": missing}
    paired = paired_over_scenes(figures[arm], figures[without], resamples)
    verdicts = {key: seed_verdict(paired[key]) if seeds else verdict(paired[key], higher)
                for key, _, higher, _ in FIGURES}
    if not all(ARMS[name].marker_task for name in (arm, without) if name in ARMS):
        paired[MARKER_FIGURE], verdicts[MARKER_FIGURE] = None, NOT_COMPARABLE
    return {"arm": arm, "without": without, "paired": paired, "verdicts": verdicts}


def seed_noise(seed_pairs: list[dict]) -> dict[str, float]:
    """{figure: the largest |A − B| of the measured seed pairs}: how far retraining one arm on another seed moved
    that figure on these samples (no entry while no seed pair is measured)."""
    noise: dict[str, float] = {}
    for pair in seed_pairs:
        for key, found in pair.get("paired", {}).items():
            if found is not None:
                noise[key] = max(noise.get(key, 0.0), abs(found["difference"]))
    return noise


def against_seed_noise(pair: dict, noise: dict[str, float]) -> dict:
    """A claim's pair with each helps / hurts whose difference is no larger than `noise`'s for its figure marked
    "but no more than seed to seed" (`WITHIN_SEED_NOISE`): its interval is over scenes, and a difference between two
    training runs that retraining one arm alone matches is no evidence of the ingredient."""
    if "verdicts" not in pair:
        return pair
    marked = {key: WITHIN_SEED_NOISE[word] if word in WITHIN_SEED_NOISE and key in noise
              and abs(pair["paired"][key]["difference"]) <= noise[key] else word
              for key, word in pair["verdicts"].items()}
    return {**pair, "verdicts": marked}


def claims_results(figures: dict[str, dict], where: str, resamples: int = RESAMPLES) -> dict:
    """Every claim and seed pair over `figures` ({arm: `figures_of`} of the arms evaluated on one set of samples,
    `where` naming it): results.json's `"claims"` entry for that set. `seed_noise` holds each figure's largest
    seed-to-seed difference, against which the claims' verdicts are read (`against_seed_noise`)."""
    first = next(iter(figures.values()), None)
    seed_pairs = [_pair(figures, arm, other, resamples, seeds=True) for arm, other in SEED_PAIRS]
    noise = seed_noise(seed_pairs)

    def judged(arm: str, without: str) -> dict:
        return against_seed_noise(_pair(figures, arm, without, resamples), noise)

    return {"where": where,
            "num_samples": {task: first[task]["num_samples"] for task in ("grounding", "detection", "captioning", "marker")}
            if first else None,
            "num_scenes": len(set(first["grounding"]["scenes"])) if first else 0,
            "claims": [{"claim": claim.name, **judged(claim.arm, claim.without),
                        **({"second": judged(*claim.second)} if claim.second else {})}
                       for claim in CLAIMS],
            "seed_to_seed": seed_pairs,
            "seed_noise": noise}


# ------------------------------------------------------------------------------------------- the run's claims


def run_claims(run, arms: list[str]) -> dict:
    """{where: `claims_results`} over the arms of an ablation run (`run`: lab/mini/pipeline.py's MiniRun) evaluated on
    the ablation's fresh seeds and on the run's test split (lab/mini/pipeline.py, `evaluate_arm` and `evaluate_fresh`),
    and "arms": where each of them was trained (lab/mini/arm_provenance.py)."""
    seeds = "-".join(str(seed) for seed in (ABLATION_FRESH_SEEDS[0], ABLATION_FRESH_SEEDS[-1]))
    fresh = {arm: model_figures(run.out, arm, ABLATION_FRESH_SEEDS) for arm in arms}
    test = {arm: figures_of(arm, [("test", run.results_dir(arm), run.data)]) for arm in arms}
    return {"fresh_seeds": claims_results(fresh, f"scenes of the fresh seeds {seeds}"),
            "test": claims_results(test, "the test split"), "arms": arms_provenance(run, arms)}


def check_quote_block(path) -> None:
    """`--quote path` names a file with the quote block (`QUOTE_BEGIN` … `QUOTE_END`): else a clear error, before
    anything is trained."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"--quote {path}: no such file")
    block_between(Path(path).read_text(encoding="utf-8"), QUOTE_BEGIN, QUOTE_END, f"--quote {path}")


def check_no_claims_lost(run_state, arms, outputs) -> None:
    """Refuse (ValueError, one line, before anything is trained) a run that would rewrite the claims of `outputs`
    (the --table and --quote options given, as "--table FILE"; none: nothing to refuse) over `arms` while the run
    state `run_state` keeps answers of other arms: the claims are written over the run's arms, so those arms' rows,
    answered by an earlier run, would read "not evaluated yet"."""
    left_out = sorted(name for name in ARMS if name not in arms and evaluation_folders([answers_folder(run_state, name)]))
    if left_out and outputs:
        raise ValueError(
            f"{' and '.join(outputs)} would be rewritten over {', '.join(arms)} alone, and the claims of "
            f"{', '.join(left_out)}, whose answers --run-state {run_state} keeps, would read \"not evaluated yet\": "
            "name those arms too (a finished arm is rebuilt from its run state and answered from its kept answers, "
            "not trained again; make mini-ablation runs them all), or leave --table and --quote out")


def write_quotes(claims: dict, quotes) -> None:
    """The fresh-seed claims (`claims_quote`) between the comment lines of each of `quotes` (README.md, model_card.md);
    the rest of each file as it is, a file already up to date not written."""
    body = claims_quote(claims)
    for path in quotes:
        current = Path(path).read_text(encoding="utf-8")
        updated = with_block(current, QUOTE_BEGIN, QUOTE_END, body, f"--quote {path}")
        if updated != current:
            Path(path).write_text(updated, encoding="utf-8")


def write_claims(run, arms: list[str], table: Path | None = None, quotes=()) -> dict:
    """The claims over `arms` (those trained and evaluated so far) into `<run>/results/claims.json` and CLAIMS.md,
    into `table`'s claims section when given (`python -m lab.mini --ablation --table mini/RESULTS.md`: the rest of
    that file, the release's table, is left as it is) and into the quote block of each of `quotes` (`--quote`).
    Returns the claims."""
    claims = run_claims(run, arms)
    folder = run.results_dir()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "claims.json").write_text(json.dumps(claims, indent=1))
    section = claims_section({"claims": claims})
    (folder / "CLAIMS.md").write_text(section, encoding="utf-8")
    if table is not None:
        current = Path(table).read_text(encoding="utf-8")
        if document_section(current, CLAIMS_SECTION) != section:
            Path(table).write_text(with_section(current, CLAIMS_SECTION, section), encoding="utf-8")
    write_quotes(claims, quotes)
    return claims

