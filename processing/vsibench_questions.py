"""SynthRooms spatial questions as VSI-Bench rows (the schema of `nyu-visionx/VSI-Bench`, config "full").

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
from collections import Counter
from collections.abc import Callable

import numpy as np

from .annotation_files import segments_from_placeholders
from .synth.spatial_qa import DIRECTION_MARGIN, DIRECTION_QUESTION, LETTERS, QUADRANTS, direction_angle, question_of

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
