"""The claims in miniature as markdown (lab/mini/claims.py computes them): a row per claim and per seed pair, each
figure's paired difference with its interval, and the verdicts in words; the section of RESULTS.md they make, and the
quote of its fresh-seed table that the README and the model card template carry between two comment lines."""

from __future__ import annotations

from pathlib import Path

from .ablation import ABLATION_STAGE0_COMMIT, ARM_STAGES
from .archived_states import archive_sentence, read_archive
from .markdown_sections import signed_cell

# (key, column title, higher is better, shown in percentage points)
FIGURES = (
    ("grounding_acc@0.25", "grounding Acc@0.25", True, True),
    ("frame_accuracy", "frame selection", True, True),
    ("detection_f1@0.25", "detection F1@0.25", True, True),
    ("captioning_cider@0.5", "CIDEr@0.5", True, False),
    ("marker_point_error_m_median", "marker point error m", False, False),
)
HELPS, HURTS, NO_EFFECT = "helps", "hurts at this scale", "no measurable effect"
# a claim's interval is over scenes, not over training runs: a helps / hurts no larger than what retraining the same
# arm on another seed moved that figure (a seed-to-seed row) is marked so, beside the interval's verdict
HELPS_WITHIN_NOISE, HURTS_WITHIN_NOISE = "helps, but no more than seed to seed", "hurts, but no more than seed to seed"
WITHIN_SEED_NOISE = {HELPS: HELPS_WITHIN_NOISE, HURTS: HURTS_WITHIN_NOISE}
# a seed pair is one arm trained twice: neither seed is the better one by design, so its verdict has no direction
SEEDS_DIFFER, NO_DIFFERENCE = "the seeds differ", "no measurable difference"
# the marker figure of a pair with an arm that never trained the marker task (lab/mini/arms.py `marker_task`): that arm
# never learned the answer format, so its point error says nothing of geometry
NOT_COMPARABLE = "not comparable (one arm never trained the marker task)"
CLAIMS_SECTION = "## The paper's claims in miniature"
SAMPLE_SETS = ("fresh_seeds", "test")  # the claims' sample sets, in the order the section shows them
# the lines around the quote in README.md and model_card.md (`python -m lab.mini --ablation --quote FILE` rewrites what
# is between); fixed lines, which the documents carry
QUOTE_BEGIN = "<!-- the paper's claims in miniature: written by `gap-mllm mini --ablation --quote`, from here -->"
QUOTE_END = "<!-- to here -->"
# what the arms cost is a timing, and timings live in bench/ (measured side by side in one run), not in this table
COST_SENTENCE = ("What each arm costs, seconds per training step with geometry on and off, is measured side by side in "
                 "bench/README.md, \"The ablation's arms\".")
# a verdict is one interval's; how to read a row (an interval the other sample set does not repeat, what a claim in
# miniature says of the full-size model) is the report's, and both the section and the quote point to it
ABLATION_REPORT = "reports/mini/claims-in-miniature.md"
READING_SENTENCE = ("What each claim does and does not say, and how to read a verdict the other sample set does not "
                    f"repeat: {ABLATION_REPORT}.")
VERDICTS_IN_WORDS = ("Verdicts: helps (interval wholly better than 0), hurts at this scale (wholly worse), no measurable "
                     "effect (it contains 0); a helps or hurts whose difference is no larger than a seed-to-seed row's "
                     "on that figure says \"but no more than seed to seed\": the interval is over scenes, not over "
                     "training runs.")
SEED_ROWS_SENTENCE = ("The seed-to-seed rows are the same arm trained twice: what noise looks like; their verdict says "
                      "only whether the two seeds differ (interval without 0) or not.")


def _in_words(verdicts: dict) -> str:
    """"helps: grounding Acc@0.25; no measurable effect: the rest" style summary of one pair's verdicts."""
    by_word: dict[str, list[str]] = {}
    for key, title, _, _ in FIGURES:
        by_word.setdefault(verdicts[key], []).append(title)
    order = (HELPS, HELPS_WITHIN_NOISE, HURTS, HURTS_WITHIN_NOISE, NO_EFFECT, SEEDS_DIFFER, NO_DIFFERENCE,
             NOT_COMPARABLE, "not measured")
    return "; ".join(f"{word}: {', '.join(by_word[word]) if len(by_word[word]) < len(FIGURES) else 'every figure'}"
                     for word in order if word in by_word)


def _row(label: str, pair: dict) -> str:
    if "missing" in pair:
        return f"| {label} | " + " | ".join("—" for _ in FIGURES) + f" | not evaluated yet: {', '.join(pair['missing'])} |"
    cells = " | ".join(signed_cell(pair["paired"][key], percent, digits=3) for key, _, _, percent in FIGURES)
    return f"| {label} | {cells} | {_in_words(pair['verdicts'])} |"


def claims_lines(claims: dict) -> list[str]:
    """The markdown table of one `claims_results`: a row per claim (and its second seed), then the seed-to-seed rows."""
    counts = claims["num_samples"] or {}
    lines = ["", f"On {claims['where']} ({claims['num_scenes']} scenes; {counts.get('grounding', 0)} grounding, "
                 f"{counts.get('detection', 0)} detection, {counts.get('captioning', 0)} captioning, "
                 f"{counts.get('marker', 0)} marker samples). A − B on the same samples with its 95 % interval from a "
                 "bootstrap over scenes; accuracies and F1 in percentage points; a negative point error is closer:", "",
             "| claim: A − B | " + " | ".join(title for _, title, _, _ in FIGURES) + " | verdict |",
             "|---|" + "---|" * (len(FIGURES) + 1)]
    for claim in claims["claims"]:
        lines.append(_row(f"{claim['claim']}: {claim['arm']} − {claim['without']}", claim))
        if "second" in claim:
            second = claim["second"]
            lines.append(_row(f"the same, second seed: {second['arm']} − {second['without']}", second))
    for pair in claims["seed_to_seed"]:
        lines.append(_row(f"seed to seed (noise): {pair['arm']} − {pair['without']}", pair))
    return lines


def _geometry(model: dict | None) -> str:
    if model is None:
        return "—"
    if not model["use_geometry"]:
        return "none"
    return f"VGGT, {'gated fusion' if model['fusion_method'] == 'gated' else 'added'}"


def _stage_cell(stage: dict | None) -> str:
    if stage is None:
        return "—"
    parts = (stage["recipe"], "no marker samples" if stage.get("marker_task") is False else None,
             f"{stage['steps']} steps" if stage["steps"] is not None else None,
             f"seed {stage['seed']}" if stage["seed"] is not None else None, stage["device"], stage.get("precision"))
    return ", ".join(str(part) for part in parts if part is not None)


def _final_cell(found: dict) -> str:
    final = found["final"]
    if final is None:
        return "its last step (no validation kept)" if ARM_STAGES[-1] in found["stages"] else "—"
    return (f"validation step {final['step']} (the best {final['metric'].removeprefix('gen_')}: "
            f"{final['value']:.3f})")


def _data_cell(found: dict) -> str:
    numbers = dict.fromkeys(str(stage.get("data", "no run state")) for stage in found["stages"].values())
    return " / ".join(numbers) or "—"


def _data_sentence(arms: dict[str, dict]) -> str:
    """Whether every stage trained on one data (numbered by lab/mini/arm_provenance.py), in words."""
    stages = [(name, stage) for name, found in arms.items() for stage in found["stages"].values()]
    numbers = {stage.get("data") for _, stage in stages}
    if numbers != {1}:
        return ("The stages did not all train on one data (column \"data\": another number is other data; \"no run "
                "state\": a stage trained without --run-state, whose data are not recorded).")
    rewritten = list(dict.fromkeys(name for name, stage in stages if stage["last_digit_files"]))
    most = max(stage["last_digit_files"] for _, stage in stages)
    again = (f" The sketches of {', '.join(rewritten)} differ from the first's only in the last digits of the numbers "
             f"of up to {most:,} text files, as data written again on another CPU do." if rewritten else "")
    return ("Every stage of every arm trained on the same data (1): the same files, image pixels and numbers, by the "
            "rule a resumed run is held to (training/data_sketch.py)." + again)


def provenance_lines(arms: dict[str, dict]) -> list[str]:
    """The table of where each arm was trained (`arms`: lab/mini/arm_provenance.py's `arms_provenance`), and whether
    every stage of every arm trained on one data."""
    lines = ["", "Where each arm was trained (its stages' `stage_done.json`, the validation step its last stage kept "
                 "as its final model, and the data each stage trained on, from its run state; every arm's frozen "
                 f"encoders are the sixth release's stage 0, commit {ABLATION_STAGE0_COMMIT}, checked by the digest of "
                 "its weights before any arm trains):", "",
             "| arm | geometry | stage 1 | stage 2 | final model | data | run state |", "|---|---|---|---|---|---|---|"]
    for name, found in arms.items():
        lines.append(f"| {name} | {_geometry(found['model'])} | {_stage_cell(found['stages'].get('stage1'))} | "
                     f"{_stage_cell(found['stages'].get('stage2'))} | {_final_cell(found)} | "
                     f"{_data_cell(found)} | {found['run_state'] or '—'} |")
    if any(found["stages"] for found in arms.values()):  # (no stage at all: nothing to compare)
        lines += ["", _data_sentence(arms)]
    roots = dict.fromkeys(Path(found["run_state"]).parent for found in arms.values() if found["run_state"])
    for archive in filter(None, map(read_archive, roots)):  # where the finished states went
        lines += ["", archive_sentence(archive)]
    return lines


def claims_section(results: dict) -> str:
    """The "claims in miniature" section of RESULTS.md from results.json's `"claims"` ({where: claims_results} for
    each of `SAMPLE_SETS`, and `"arms"`: where each arm was trained, lab/mini/arm_provenance.py)."""
    intro = ("The paper's claims, each as the difference between two arms of `python -m lab.mini --ablation` trained "
             "at one budget from the same stage 0 (lab/mini/ablation.py), judged on scenes no arm was trained or tuned "
             "on. "
             f"{VERDICTS_IN_WORDS} {SEED_ROWS_SENTENCE} {COST_SENTENCE} {READING_SENTENCE}")
    lines = [CLAIMS_SECTION, "", intro]
    for where in SAMPLE_SETS:
        lines += claims_lines(results["claims"][where])
    if results["claims"].get("arms"):
        lines += provenance_lines(results["claims"]["arms"])
    return "\n".join(lines) + "\n"


def claims_quote(claims: dict) -> str:
    """The block README.md and model_card.md quote (`claims` as results.json's `"claims"`): the fresh-seed table of
    the RESULTS.md section, word for word, with a sentence saying what the arms are and where the rest is."""
    intro = ("The paper's claims, measured in miniature by this package: arms of GAP-MLLM-Mini trained on "
             "SynthRooms at one budget from the same frozen encoders, each pair differing in one ingredient "
             "(`python -m lab.mini --ablation`, lab/mini/ablation.py), judged on scenes of generator seeds no arm was "
             f"trained or tuned on. {VERDICTS_IN_WORDS} {SEED_ROWS_SENTENCE} The test split's table is in mini/RESULTS.md, and "
             f"what each claim does and does not say in {ABLATION_REPORT}, both in the gap-mllm repository.")
    # the blank line last: the comment line below it must not read as a row of the table
    return "\n".join([intro, *claims_lines(claims["fresh_seeds"]), ""]) + "\n"
