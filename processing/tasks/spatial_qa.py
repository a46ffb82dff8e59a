"""The package side of spatial question answering: its data, its VSI-Bench scoring and rows, its lmms-eval task and
card.

Scoring (`lmms_eval/tasks/vsibench/utils.py` semantics).

Answer extraction (`fuzzy_matching`): the first space-separated word of the prediction with trailing
dots removed ("B. chair" -> "B", "3.5 meters" -> "3.5"); with official_compat a numerical answer is read
as lmms-eval 0.7.3 reads it instead (the first number anywhere in it, below).

    multiple choice  accuracy: 1 iff the extracted word equals the ground-truth letter, case-insensitive
    numerical        mean relative accuracy (MRA): the mean over the 10 confidence levels
                     C = 0.50, 0.55, ..., 0.95 of [ |pred - gt| / gt <= 1 - C ] (non-strict);
                     an unparsable answer scores 0; a ground truth that is not a finite number is a
                     ValueError naming it (VSI-Bench's float() fails on it too).

Two modes:
    default                the extraction first strips surrounding whitespace (" B" -> "B") and the
                           ground truth is compared stripped. The relative error is taken against |gt|,
                           and on a zero ground truth, where the formula divides by zero, an exact answer
                           (the number 0) scores 1.0 and any other 0.0: its relative error is infinite, so
                           it passes no level (docs/deviations.md §2.3).
    official_compat=True   VSI-Bench exactly as lmms-eval 0.7.3 scores a generated answer (the release the
                           plugin pins; its vsibench task on the same answers gives the same numbers,
                           tests/test_lmms_eval_vsibench.py): the answer is stripped (lmms-eval's
                           `ConfigurableTask.process_results` strips every generate_until answer), then
                           multiple choice: `answer.split(" ")[0].rstrip(".").strip()` compared with the
                           ground truth as written (`pred.lower() == target.lower()`); numerical: the first
                           number anywhere in the answer, digits or English number words
                           (`extract_number`: "about 3 m" and "three" read 3);
                           a zero numerical ground truth is a ValueError (VSI-Bench divides by it:
                           ZeroDivisionError), and the relative error is divided by gt as written (a negative
                           gt passes every level).

Aggregation: mean score per question type; `object_rel_direction_{easy,medium,hard}` are merged into
`object_rel_direction` (their mean, as VSI-Bench reports them); "overall" = mean over the question
types present (each type weighs the same, whatever its number of questions). VSI-Bench merges only when
"easy" is present and then needs all three (it fails with a KeyError otherwise; official_compat raises a
ValueError saying so); without "easy" it keeps "medium" and "hard" as two types. official_compat follows
that rule; the default merges whichever subtypes are present. `object_rel_direction` without a subtype
(what SynthRooms writes; VSI-Bench's data never has it) is scored as a multiple-choice type in both modes.

VSI-Bench rows (`vsibench_rows`, `gap-mllm export-vsibench`): SynthRooms spatial questions in the schema of
`nyu-visionx/VSI-Bench`, config "full".

One row per question, the fields of VSI-Bench's own rows:

    {"id": int, "dataset": "synthrooms", "scene_name": scene id, "question_type": VSI-Bench type,
     "question": the question alone, "options": ["A. ...", ...] or None, "ground_truth": letter or number text}

plus `record_id`, the SynthRooms record the row comes from (VSI-Bench's task ignores it). VSI-Bench's lmms-eval task
reads the row's video at `<dataset>/<scene_name>.mp4`; its prompt adds the options and the answer instruction itself,
so `question` holds neither.

Types: SynthRooms asks VSI-Bench's categories except route planning (processing/synth/spatial_qa.py). Its
`object_rel_direction` question is VSI-Bench's "hard" form word for word (the quadrant of the target), so it becomes
`object_rel_direction_hard`; the same three objects are also asked in VSI-Bench's easy and medium forms, because
lmms-eval 0.7.3's vsibench aggregation averages the three direction subtypes and fails with a KeyError when one is
missing (`_compute_all_subscores` pops each), whatever else the data holds. Their answers are exact, from the
scene's boxes (`synthrooms/<scene>.json`) and the generator's own geometry (`direction_angle`, 0 straight ahead,
positive to the left):

    easy    "left" / "right": the side of the target (the hard question already keeps it >= 15 degrees away from
            straight ahead and straight behind)
    medium  "back" when the observer would turn at least 135 degrees to face the target, else the side; asked only
            when the angle is >= 15 degrees (the generator's margin) away from 135 degrees

A numerical question with a zero truth (two touching objects: distance 0.00) is left out and counted: VSI-Bench's
score divides by the truth (lmms-eval raises ZeroDivisionError).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gap_mllm.tasks_gap_mllm import options_problem

from ..annotation_files import segments_from_placeholders
from ..errors import DataError
from ..record_schema import ANSWER_TEXT, TEXT, TEXT_LIST, RecordField, read_fields
from ..sampling import uniform_indices
from ..synth.samples import common_record, conversation
from ..synth.spatial_qa import (
    DIRECTION_MARGIN,
    DIRECTION_QUESTION,
    LETTERS,
    QUADRANTS,
    QUESTION_TYPES,
    direction_angle,
    question_of,
    spatial_questions,
)
from . import PackageTask

NUMERICAL_TYPES = ("object_counting", "object_abs_distance", "object_size_estimation", "room_size_estimation")
CHOICE_TYPES = ("object_rel_distance", "object_rel_direction", "object_rel_direction_easy",
                "object_rel_direction_medium", "object_rel_direction_hard", "route_planning", "obj_appearance_order")
DIRECTION_SUBTYPES = ("object_rel_direction_easy", "object_rel_direction_medium", "object_rel_direction_hard")
MRA_LEVELS = np.linspace(0.5, 0.95, 10)


def fuzzy_matching(prediction: str, official_compat: bool = False) -> str:
    """VSI-Bench answer extraction: first space-separated word, trailing dots stripped (the default strips
    surrounding whitespace first; official_compat does not, as VSI-Bench's function: `score_answer` strips the
    answer before, as lmms-eval does)."""
    if not official_compat:
        prediction = prediction.strip()
    return prediction.split(" ")[0].rstrip(".").strip()


def _to_float(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def mean_relative_accuracy(prediction: float | None, target: float, official_compat: bool = False) -> float:
    """MRA over C in {0.50, ..., 0.95}: mean of [|p - t| / |t| <= 1 - C]; 0.0 if p is None. t == 0 (where the
    formula divides by zero): 1.0 if p == 0 (exact), else 0.0 (an infinite relative error passes no level).
    official_compat divides by t as written (VSI-Bench) and raises ValueError for t == 0."""
    if prediction is None:
        return 0.0
    if target == 0:
        if official_compat:
            raise ValueError("a zero numerical ground truth: VSI-Bench divides by it (ZeroDivisionError), so "
                             "official_compat cannot score it")
        return 1.0 if prediction == 0 else 0.0
    relative = abs(prediction - target) / (target if official_compat else abs(target))
    return float(np.mean(relative <= 1.0 - MRA_LEVELS))


def is_numerical(question_type: str) -> bool:
    if question_type in NUMERICAL_TYPES:
        return True
    if question_type in CHOICE_TYPES:
        return False
    raise ValueError(f"unknown VSI-Bench question type {question_type!r}")


def score_answer(prediction: str, ground_truth: str, question_type: str, official_compat: bool = False) -> float:
    """Score of one answer in [0, 1] (MRA for numerical types, exact-match accuracy for choices); see the
    module docstring for what official_compat changes."""
    if official_compat:  # lmms-eval strips every generated answer before its task scores it
        prediction = (prediction or "").strip()
    answer = fuzzy_matching(prediction or "", official_compat)
    if is_numerical(question_type):
        target = _to_float(ground_truth)
        if target is None:  # never read as 0: an answer "0" would then score 1.0
            raise ValueError(f"numerical ground truth {ground_truth!r} of a {question_type} question is not a finite "
                             "number")
        if official_compat and target == 0:
            raise ValueError(f"numerical ground truth {ground_truth!r}: VSI-Bench divides by it (ZeroDivisionError), "
                             "so official_compat cannot score it")
        value = extract_number(prediction) if official_compat else _to_float(answer)
        return mean_relative_accuracy(value, target, official_compat)
    if official_compat:
        return 1.0 if answer.lower() == str(ground_truth).lower() else 0.0
    return 1.0 if answer.lower() == str(ground_truth).strip().lower() else 0.0


def aggregate_spatial_scores(scores, question_types, official_compat: bool = False) -> dict:
    """`{"overall", "per_type": {type: mean}, "counts": {type: n}, "num_samples"}` (see module docstring)."""
    by_type: dict[str, list[float]] = defaultdict(list)
    for score, qtype in zip(scores, question_types):
        by_type[qtype].append(float(score))
    per_type = {t: float(np.mean(v)) for t, v in sorted(by_type.items())}
    counts = {t: len(v) for t, v in sorted(by_type.items())}
    present = [t for t in DIRECTION_SUBTYPES if t in per_type]
    if official_compat and DIRECTION_SUBTYPES[0] not in per_type:
        present = []  # VSI-Bench merges only when "easy" is present; otherwise the subtypes stay types
    elif official_compat and present and len(present) < len(DIRECTION_SUBTYPES):
        missing = sorted(set(DIRECTION_SUBTYPES) - set(present))
        raise ValueError(f"the data has object_rel_direction_easy but no {', '.join(missing)}: VSI-Bench's aggregation "
                         "needs all three then (it fails with a KeyError), so official_compat cannot report it")
    subtypes = [per_type.pop(t) for t in present]
    if subtypes and "object_rel_direction" not in per_type:
        per_type["object_rel_direction"] = float(np.mean(subtypes))
    overall = float(np.mean(list(per_type.values()))) if per_type else 0.0
    return {"overall": overall, "per_type": per_type, "counts": counts, "num_samples": sum(counts.values())}


def spatial_qa_scores(predictions, ground_truths, question_types, official_compat: bool = False) -> dict:
    """Score and aggregate; also returns `per_sample` scores in input order."""
    predictions, ground_truths, question_types = list(predictions), list(ground_truths), list(question_types)
    if not len(predictions) == len(ground_truths) == len(question_types):
        raise ValueError("predictions, ground_truths and question_types must have the same length")
    scores = [score_answer(p, g, t, official_compat) for p, g, t in zip(predictions, ground_truths, question_types)]
    out = aggregate_spatial_scores(scores, question_types, official_compat)
    out["per_sample"] = scores
    return out


# -------------------------------------------------------------------- VSI-Bench's number reading

NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9,
    "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15, "sixteen": 16,
    "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50,
    "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
}  # fmt: skip
DIGITS = re.compile(r"-?\d+(?:\.\d+)?")
WORD = re.compile(r"[a-z]+")


def _word_run(text: str) -> tuple[int | None, list[str]]:
    """Start of the first number word and the number words that follow it ("and" skipped), up to another word."""
    start, run = None, []
    for match in WORD.finditer(text):
        word = match.group(0)
        if start is None:
            if word in NUMBER_WORDS:
                start, run = match.start(), [word]
        elif word == "and":
            continue
        elif word in NUMBER_WORDS:
            run.append(word)
        else:
            break
    return start, run


def _words_value(run: list[str]) -> float:
    total, current = 0, 0
    for word in run:
        value = NUMBER_WORDS[word]
        if value == 100:
            current = max(current, 1) * 100
        elif value == 1000:
            total += max(current, 1) * 1000
            current = 0
        else:
            current += value
    return float(total + current)


def extract_number(text) -> float | None:
    """The first number of `text` as lmms-eval 0.7.3's VSI-Bench reads it; None if there is none (the answer scores 0).

    `lmms_eval/tasks/vsibench/utils.py::extract_number` (re-implemented: the package scores without lmms-eval
    installed; tests/test_vsibench_scoring.py checks it against lmms-eval's own on many texts). A number is either
    digits (`-?\\d+(\\.\\d+)?`: "3", "-2.5", "1e3" reads 1) or a run of English number words ("three", "twenty-one",
    "three hundred and twenty-one"; "and" inside the run is skipped); whichever starts first in the (lower-cased,
    stripped) text wins, so "one apple, room 2" reads 1.
    """
    if text is None:
        return None
    text = str(text).strip().lower()
    if not text:
        return None
    digits = DIGITS.search(text)
    start, run = _word_run(text)
    if digits is not None and (start is None or digits.start() < start):
        return float(digits.group(0))
    return None if start is None else _words_value(run)


# ------------------------------------------------------------------------------------------ data


def features(class_names) -> dict:
    """The builder's features of a spatial question: its VSI-Bench type, its options and its exact answer."""
    import datasets  # the data extra: the scoring below runs without it

    return {
        "question_type": datasets.ClassLabel(names=list(QUESTION_TYPES)),
        "options": datasets.List(datasets.Value("string")),
        "ground_truth": datasets.Value("string"),
    }


FIELDS = (
    RecordField("question_type", TEXT),
    RecordField("options", TEXT_LIST, default=[], nullable=True),  # VSI-Bench: null for numerical questions
)


def fields(record, answer, num_images, key, builder) -> dict:
    """The question's fields of one annotation record; the ground truth defaults to the answer text."""
    values = read_fields(record, (*FIELDS, RecordField("ground_truth", ANSWER_TEXT, default=answer)), key)
    names = builder.info.features["question_type"].names
    if values["question_type"] not in names:
        raise DataError(f"unknown question_type {values['question_type']!r}; expected one of {names}", sample=key)
    return values


def synth_records(scene, config, rng) -> list[dict]:
    """One record per spatial question (VSI-Bench categories) about `config.qa_frames` frames of a SynthRooms scene,
    taken evenly."""
    frames = uniform_indices(len(scene.frames), config.qa_frames)
    records = []
    for n, question in enumerate(spatial_questions(scene, frames, config.min_visible_pixels, rng)):
        record = common_record(scene, frames, "spatial", n)
        prompt = TASK.spec.annotation_prompt(len(frames), query=question.prompt_text)
        record["conversations"] = conversation(prompt, question.ground_truth)
        record["question_type"] = question.question_type
        record["options"] = question.options
        record["ground_truth"] = question.ground_truth
        records.append(record)
    return records


# ------------------------------------------------------------------------------------------ benchmark

# the fields scoring reads, as the builder reads them
SCORED_FIELDS = (RecordField("ground_truth", ANSWER_TEXT), RecordField("question_type", TEXT))


def oracle(record, media_root) -> list[str]:
    return [str(record["ground_truth"])]


def evaluate(records, outputs, ids, official_compat=False, **_):
    """(per-sample rows, `aggregate_spatial_scores` summary) of the answers `outputs` (one `[text]` per record)."""
    scores = []
    for sid, record, raw in zip(ids, records, outputs):
        fields = read_fields(record, SCORED_FIELDS, sid)
        try:
            scores.append(score_answer(raw[0], fields["ground_truth"], fields["question_type"], official_compat))
        except ValueError as error:
            raise ValueError(f"{TASK.name} sample {sid!r}: {error}") from error
    rows = [{"id": sid, "index": i, "raw": raw, "parsed": TASK.spec.parse(raw[0]).answer or "",
             "question_type": r["question_type"], "score": s}
            for i, (sid, r, raw, s) in enumerate(zip(ids, records, outputs, scores))]
    return rows, aggregate_spatial_scores(scores, [r["question_type"] for r in records], official_compat)


def metric(predictions, references, question_types=None, official_compat=False) -> dict:
    """The `evaluate` module's compute: `overall`, `per_type`, `counts`, `num_samples`."""
    if question_types is None:
        raise ValueError(f"gap_{TASK.name} needs question_types=[...] (one VSI-Bench type per sample)")
    out = spatial_qa_scores(predictions, references, question_types, official_compat)
    out.pop("per_sample")
    return out


def per_category_bars(metrics: dict):
    """The mean score per question type: `(names, {series: values}, title)`, None when the summary has none."""
    if not metrics.get("per_type"):
        return None
    names = list(metrics["per_type"])
    return names, {"score": [metrics["per_type"][t] for t in names]}, "Spatial QA per question type"


# ------------------------------------------------------------------------------------------ VSI-Bench rows

DATASET_NAME = "synthrooms"  # the rows' `dataset`: the video folder under lmms-eval's vsibench cache
HARD_DIRECTION = "object_rel_direction_hard"
DIRECTION_FORMS = {  # VSI-Bench's wording of the three forms; {standing}, {facing}, {target} are categories
    "object_rel_direction_easy": "If I am standing by the {standing} and facing the {facing}, is the {target} to the "
                                 "left or the right of the {facing}?",
    "object_rel_direction_medium": "If I am standing by the {standing} and facing the {facing}, is the {target} to my "
                                   "left, right, or back? An object is to my back if I would have to turn at least 135 "
                                   "degrees in order to face it.",
    HARD_DIRECTION: DIRECTION_QUESTION,
}
DIRECTION_OPTIONS = {"object_rel_direction_easy": ("left", "right"),
                     "object_rel_direction_medium": ("left", "right", "back"), HARD_DIRECTION: QUADRANTS}
BACK_ANGLE = np.deg2rad(135.0)  # VSI-Bench: "to my back if I would have to turn at least 135 degrees"
SYNTH_TO_VSIBENCH = {"object_rel_direction": HARD_DIRECTION}  # every other SynthRooms type keeps its name
ZERO_TRUTH = "numerical question with a zero truth"  # the reason counted for such a skipped question


def _template_pattern(template: str) -> re.Pattern:
    """A regex reading the three categories back out of a question written with `template` (each named once)."""
    pattern = re.escape(template)
    for name in ("standing", "facing", "target"):
        pattern = pattern.replace(re.escape("{" + name + "}"), f"(?P<{name}>.+)")
    return re.compile(pattern + r"\Z")


HARD_PATTERN = _template_pattern(DIRECTION_QUESTION)


def direction_answers(angle: float) -> dict[str, str | None]:
    """The answer text of each direction form for a target at `angle` (radians, `direction_angle`); None where the
    form would be ambiguous (medium within the margin of 135 degrees)."""
    side = "left" if angle > 0 else "right"
    medium = None
    if abs(abs(angle) - BACK_ANGLE) >= DIRECTION_MARGIN:
        medium = "back" if abs(angle) >= BACK_ANGLE else side
    front = "front" if abs(angle) < np.pi / 2 else "back"
    return {"object_rel_direction_easy": side, "object_rel_direction_medium": medium, HARD_DIRECTION: f"{front}-{side}"}


def lettered(choices) -> list[str]:
    """`["A. left", "B. right", ...]`: options as VSI-Bench writes them."""
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(choices)]


def record_question(record: dict) -> str:
    """The question alone of a SynthRooms spatial QA record (its human turn without views, options, instruction)."""
    prompt = record["conversations"][0]["value"]
    text = segments_from_placeholders(prompt, len(record["images"]))[-1]
    return question_of(text, list(record["options"]))


def direction_rows(record: dict, question: str, centres: dict[str, np.ndarray]) -> list[dict]:
    """The easy, medium and hard rows of one SynthRooms direction record (medium left out when ambiguous).

    Args:
        centres: category -> box centre `[3]` (room frame) of the scene's objects named once.

    Raises:
        ValueError: the question is not SynthRooms' direction question, names an object the scene does not hold
            once, or the scene's boxes give another quadrant than the record's answer.
    """
    match = HARD_PATTERN.match(question)
    if match is None:
        raise ValueError(f"record {record['id']!r}: not SynthRooms' relative-direction question: {question!r}")
    names = match.groupdict()
    missing = [name for name in names.values() if name not in centres]
    if missing:
        raise ValueError(f"record {record['id']!r}: the scene has no single {', '.join(missing)}")
    angle = direction_angle(*(centres[names[key]] for key in ("standing", "facing", "target")))
    answers = direction_answers(angle)
    recorded = QUADRANTS[LETTERS.index(record["ground_truth"])]
    if answers[HARD_DIRECTION] != recorded:
        raise ValueError(f"record {record['id']!r}: the scene's boxes give {answers[HARD_DIRECTION]}, the record says "
                         f"{recorded}; the scene file does not belong to this annotation file")
    rows = []
    for question_type, answer in answers.items():
        if answer is None:
            continue
        choices = DIRECTION_OPTIONS[question_type]
        rows.append({"question_type": question_type, "question": DIRECTION_FORMS[question_type].format(**names),
                     "options": lettered(choices), "ground_truth": LETTERS[choices.index(answer)]})
    return rows


def vsibench_rows(records: list[dict], scene_centres: Callable[[str], dict[str, np.ndarray]]) -> tuple[list[dict], Counter]:
    """VSI-Bench rows (ids 0, 1, ... in record order) of SynthRooms spatial QA records, and the skipped questions
    counted by reason.

    Args:
        records: the records of a `spatial_qa_<split>_<N>frames.json` file.
        scene_centres: scene id -> {category: box centre} of the objects named once in the scene.
    """
    rows: list[dict] = []
    skipped: Counter = Counter()
    for record in records:
        question = record_question(record)
        base = {"dataset": DATASET_NAME, "scene_name": record["scene_id"], "record_id": record["id"]}
        if record["question_type"] == "object_rel_direction":
            found = direction_rows(record, question, scene_centres(record["scene_id"]))
        elif not record["options"] and float(record["ground_truth"]) == 0:
            skipped[ZERO_TRUTH] += 1
            continue
        else:
            found = [{"question_type": SYNTH_TO_VSIBENCH.get(record["question_type"], record["question_type"]),
                      "question": question, "options": list(record["options"]) or None,
                      "ground_truth": str(record["ground_truth"])}]
        for row in found:
            rows.append({"id": len(rows), **base, **row})
    return rows, skipped


@dataclass(frozen=True)
class VsiBenchExport:
    """What `gap-mllm export-vsibench` needs of the task (`PackageTask.vsibench`).

    Attributes:
        rows: `(records, scene_centres) -> (rows, skipped)`: `vsibench_rows`.
        dataset: the rows' `dataset`, the video folder under lmms-eval's vsibench cache.
        required_types: the question types lmms-eval's vsibench aggregation needs (all three direction subtypes).
    """

    rows: Callable[..., tuple]
    dataset: str
    required_types: tuple[str, ...]


TASK = PackageTask(
    name="spatial_qa",
    annotation_file="spatial_qa_{split}_{frames}frames.json",
    features=features,
    fields=fields,
    headline=("overall", "mean over question types (MRA / accuracy)"),
    logged_metrics={"overall": "overall"},
    oracle=oracle,
    evaluate=evaluate,
    lmms_title="GAP-MLLM VSI-Bench-style spatial question answering (mean over question types of MRA / accuracy).",
    metric=metric,
    metric_description="""Predictions are answers, references the ground-truth strings; compute kwarg
`question_types` (VSI-Bench type per sample) selects MRA or accuracy; `official_compat=True` scores exactly as
VSI-Bench (no whitespace stripping). Returns overall and per_type.""",
    card=("visual-question-answering", "spatial QA", "spatial question answering"),
    per_category_bars=per_category_bars,
    query_help="the question",
    query_missing="a question about the scene",
    query_problem=options_problem,  # a letter asked for and no options read: its grammar would force a number on it
    answer_fields=("answer",),
    synth_records=synth_records,
    synth_frames="qa_frames",
    exports={"mean_relative_accuracy": mean_relative_accuracy, "spatial_qa_scores": spatial_qa_scores},
    vsibench=VsiBenchExport(rows=vsibench_rows, dataset=DATASET_NAME, required_types=tuple(DIRECTION_FORMS)),
)
