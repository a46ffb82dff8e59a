"""Spatial questions with exact answers, in the VSI-Bench categories (route planning excluded).

Numerical answers (count, absolute distance, object size, room size) are exact ground truth
(VSI-Bench scores them with mean relative accuracy); multiple-choice answers (relative distance,
relative direction, appearance order) are option letters, asked only when the right option wins by
a clear margin. Objects named by category are unique in the scene, as in VSI-Bench.
Distances are closest-point distances between boxes (metres); directions are on the floor plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .layout import footprint_distance
from .scene import SynthScene

QUESTION_TYPES = (
    "object_counting",
    "object_abs_distance",
    "object_size_estimation",
    "room_size_estimation",
    "object_rel_distance",
    "object_rel_direction",
    "obj_appearance_order",
)
NUMERICAL_SUFFIX = "\nPlease answer the question using a single word or phrase."
CHOICE_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
LETTERS = "ABCD"
REL_DISTANCE_MARGIN = 0.3  # metres between the closest and the second-closest option
DIRECTION_MARGIN = np.deg2rad(15.0)  # minimum angle to a quadrant boundary
# VSI-Bench's "hard" relative-direction question (its quadrant form); processing/tasks/ reads the
# three objects back from it to ask the same triple in VSI-Bench's easy and medium forms
DIRECTION_QUESTION = (
    "If I am standing by the {standing} and facing the {facing}, is the {target} to my front-left, front-right, "
    "back-left, or back-right? The directions refer to the quadrants of a Cartesian plane (if I am standing at the "
    "origin and facing along the positive y-axis)."
)
QUADRANTS = ("front-left", "front-right", "back-left", "back-right")  # the options, in this order (A-D)


@dataclass
class SpatialQuestion:
    """One question: type, text (without images), options ("A. chair", ...), exact ground truth."""

    question_type: str
    question: str
    ground_truth: str
    options: list[str] = field(default_factory=list)

    @property
    def prompt_text(self) -> str:
        if self.options:
            return self.question + "\n" + "\n".join(self.options) + CHOICE_SUFFIX
        return self.question + NUMERICAL_SUFFIX


def question_of(prompt_text: str, options: list[str]) -> str:
    """The question of a `SpatialQuestion.prompt_text` (the inverse: options and answer instruction removed).

    Raises:
        ValueError: the text does not end with these options and the instruction of its kind.
    """
    ending = ("\n" + "\n".join(options) + CHOICE_SUFFIX) if options else NUMERICAL_SUFFIX
    if not prompt_text.endswith(ending):
        raise ValueError(f"spatial question text {prompt_text!r} does not end with {ending!r}")
    return prompt_text[: -len(ending)]


def _unique_visible(scene: SynthScene, visible: np.ndarray) -> list[int]:
    """Indices of objects whose category occurs once in the scene and that are seen in the clip."""
    counts: dict[str, int] = {}
    for obj in scene.objects:
        counts[obj.category] = counts.get(obj.category, 0) + 1
    return [i for i, obj in enumerate(scene.objects) if counts[obj.category] == 1 and visible[i]]


def _choice(rng, correct: str, distractors: list[str]) -> tuple[list[str], str]:
    options = [correct] + list(distractors[:3])
    order = rng.permutation(len(options))
    shuffled = [options[i] for i in order]
    letter = LETTERS[shuffled.index(correct)]
    return [f"{LETTERS[i]}. {text}" for i, text in enumerate(shuffled)], letter


def spatial_questions(scene: SynthScene, frame_indices, min_pixels: int, rng: np.random.Generator) -> list[SpatialQuestion]:
    """At most one question of each type for the clip `frame_indices` of `scene` (fewer if no
    question of a type can be asked unambiguously)."""
    pixels = scene.visible_pixels()[list(frame_indices)]  # [F, N]
    seen = pixels >= min_pixels
    visible = seen.any(axis=0)
    objects = scene.objects
    unique = _unique_visible(scene, visible)
    out: list[SpatialQuestion] = []

    # Counting: a category all of whose instances are seen (then the room count is the video count).
    by_category: dict[str, list[int]] = {}
    for i, obj in enumerate(objects):
        by_category.setdefault(obj.category, []).append(i)
    countable = sorted(c for c, idx in by_category.items() if all(visible[i] for i in idx))
    if countable:
        category = countable[int(rng.integers(len(countable)))]
        out.append(SpatialQuestion("object_counting", f"How many {category}(s) are in this room?", str(len(by_category[category]))))

    if len(unique) >= 2:
        a, b = rng.choice(unique, size=2, replace=False)
        distance = footprint_distance(objects[a], objects[b])
        out.append(
            SpatialQuestion(
                "object_abs_distance",
                "Measuring from the closest point of each object, what is the direct distance between the "
                f"{objects[a].category} and the {objects[b].category} (in meters)?",
                f"{distance:.2f}",
            )
        )
    if unique:
        a = int(rng.choice(unique))
        longest_cm = float(objects[a].size.max() * 100.0)
        out.append(
            SpatialQuestion(
                "object_size_estimation",
                "What is the length of the longest dimension (length, width, or height) of the "
                f"{objects[a].category}, measured in centimeters?",
                f"{longest_cm:.0f}",
            )
        )
    out.append(
        SpatialQuestion(
            "room_size_estimation",
            "What is the size of this room (in square meters)? If multiple rooms are shown, estimate the size of the combined space.",
            f"{scene.room.floor_area:.2f}",
        )
    )

    question = _relative_distance(scene, unique, rng)
    if question:
        out.append(question)
    question = _relative_direction(scene, unique, rng)
    if question:
        out.append(question)
    question = _appearance_order(scene, unique, seen, rng)
    if question:
        out.append(question)
    return out


def _relative_distance(scene, unique, rng):
    objects = scene.objects
    for target in rng.permutation(unique):
        others = [i for i in unique if i != target]
        if len(others) < 4:
            return None
        picked = list(rng.choice(others, size=4, replace=False))
        distances = np.array([footprint_distance(objects[target], objects[i]) for i in picked])
        order = np.argsort(distances)
        if distances[order[1]] - distances[order[0]] < REL_DISTANCE_MARGIN:
            continue
        names = [objects[i].category for i in picked]
        correct = names[order[0]]
        options, letter = _choice(rng, correct, [n for n in names if n != correct])
        listed = ", ".join(names)
        return SpatialQuestion(
            "object_rel_distance",
            f"Measuring from the closest point of each object, which of these objects ({listed}) is the closest to the {objects[target].category}?",
            letter,
            options,
        )
    return None


def direction_angle(standing, facing, target) -> float:
    """Angle (radians, in (-pi, pi]) of `target` seen from `standing` while facing `facing` (floor-plan points,
    room z up): 0 straight ahead, positive to the left."""
    forward = np.asarray(facing[:2], float) - np.asarray(standing[:2], float)
    relative = np.asarray(target[:2], float) - np.asarray(standing[:2], float)
    left = np.array([-forward[1], forward[0]])  # forward turned +90 degrees about z (up)
    return float(np.arctan2(relative @ left, relative @ forward))


def direction_quadrant(standing, facing, target) -> tuple[str, float]:
    """Quadrant ("front-left", ...) of `target` for an observer at `standing` facing `facing`
    (floor-plan points, room z up), and the angle (radians) to the nearest quadrant boundary."""
    angle = direction_angle(standing, facing, target)
    front = "front" if abs(angle) < np.pi / 2 else "back"
    side = "left" if angle > 0 else "right"
    margin = min(abs(angle), abs(np.pi - abs(angle)), abs(abs(angle) - np.pi / 2))
    return f"{front}-{side}", float(margin)


def _relative_direction(scene, unique, rng):
    objects = scene.objects
    if len(unique) < 3:
        return None
    for _ in range(20):
        a, b, c = (int(i) for i in rng.permutation(unique)[:3])
        quadrant, margin = direction_quadrant(objects[a].center, objects[b].center, objects[c].center)
        if margin < DIRECTION_MARGIN:
            continue
        options = [f"{LETTERS[i]}. {text}" for i, text in enumerate(QUADRANTS)]
        return SpatialQuestion(
            "object_rel_direction",
            DIRECTION_QUESTION.format(standing=objects[a].category, facing=objects[b].category, target=objects[c].category),
            LETTERS[QUADRANTS.index(quadrant)],
            options,
        )
    return None


def _appearance_order(scene, unique, seen, rng):
    first = {i: int(np.argmax(seen[:, i])) for i in unique}
    by_frame: dict[int, int] = {}
    for i in rng.permutation(unique):
        by_frame.setdefault(first[int(i)], int(i))  # one object per first-appearance frame
    if len(by_frame) < 4:
        return None
    chosen = [by_frame[f] for f in rng.choice(sorted(by_frame), size=4, replace=False)]
    names = [scene.objects[i].category for i in chosen]
    correct_order = [scene.objects[i].category for i in sorted(chosen, key=lambda i: first[i])]
    correct = ", ".join(correct_order)
    distractors = []
    while len(distractors) < 3:
        permuted = ", ".join(rng.permutation(correct_order))
        if permuted != correct and permuted not in distractors:
            distractors.append(permuted)
    options, letter = _choice(rng, correct, distractors)
    return SpatialQuestion(
        "obj_appearance_order",
        f"What will be the first-time appearance order of the following categories in the video: {', '.join(names)}?",
        letter,
        options,
    )
