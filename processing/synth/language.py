"""Referring expressions and captions written from SynthRooms ground truth.

A referring expression must pick exactly one object of the scene (ScanRefer semantics). It is built
from filters applied to the objects of the target's category: colour, texture, a size or height
superlative, or a distance relation to an anchor whose category occurs once. Every candidate is
checked against the whole scene, and superlatives/relations need a clear margin, so the answer is
never a near tie.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .categories import CATEGORIES
from .layout import footprint_distance
from .scene import SceneObject, SynthScene

SIZE_MARGIN = 1.25  # a "largest" object must be >= 25 % larger (volume) than the runner-up
HEIGHT_MARGIN = 0.10  # metres, for "tallest" / "shortest"
DISTANCE_MARGIN = 0.30  # metres, for "closest to" / "farthest from"


@dataclass(frozen=True)
class Referring:
    """A unique description of `object_index`: the words used and the full sentence."""

    object_index: int
    text: str
    uses: tuple[str, ...]  # which cues it relies on: "category", "colour", "texture", "size", "relation"


def _volume(obj: SceneObject) -> float:
    return float(np.prod(obj.size))


def _superlative(group: list[int], values: list[float], largest: bool, margin_ok) -> int | None:
    order = np.argsort(values)[::-1] if largest else np.argsort(values)
    if len(group) < 2:
        return None
    best, second = values[order[0]], values[order[1]]
    return group[order[0]] if margin_ok(best, second) else None


def _texture_word(texture: str) -> str:
    return "" if texture == "plain" else texture


def referring_expressions(scene: SynthScene, index: int) -> list[Referring]:
    """All unique descriptions found for object `index` (simplest first). Empty if none is unique."""
    objects = scene.objects
    target = objects[index]
    same = [i for i, o in enumerate(objects) if o.category == target.category]
    counts = {}
    for o in objects:
        counts[o.category] = counts.get(o.category, 0) + 1
    out: list[Referring] = []
    cat = target.category

    if len(same) == 1:
        out.append(Referring(index, f"the {cat}.", ("category",)))
    same_colour = [i for i in same if objects[i].colour == target.colour]
    if len(same) > 1 and len(same_colour) == 1:
        out.append(Referring(index, f"the {target.colour} {cat}.", ("category", "colour")))
    same_texture = [i for i in same if objects[i].texture == target.texture]
    if len(same) > 1 and len(same_texture) == 1 and target.texture != "plain":
        out.append(Referring(index, f"the {target.texture} {cat}.", ("category", "texture")))

    if len(same) > 1:
        volumes = [_volume(objects[i]) for i in same]
        for largest, word in ((True, "largest" if len(same) > 2 else "larger"), (False, "smallest" if len(same) > 2 else "smaller")):
            ok = (lambda a, b: a >= SIZE_MARGIN * b) if largest else (lambda a, b: b >= SIZE_MARGIN * a)
            if _superlative(same, volumes, largest, ok) == index:
                out.append(Referring(index, f"the {word} {cat}.", ("category", "size")))
        heights = [objects[i].size[2] for i in same]
        for tallest, word in ((True, "tallest" if len(same) > 2 else "taller"), (False, "shortest" if len(same) > 2 else "shorter")):
            ok = (lambda a, b: a - b >= HEIGHT_MARGIN) if tallest else (lambda a, b: b - a >= HEIGHT_MARGIN)
            if _superlative(same, heights, tallest, ok) == index:
                out.append(Referring(index, f"the {word} {cat}.", ("category", "size")))
        anchors = [j for j, o in enumerate(objects) if counts[o.category] == 1 and o.category != cat]
        for j in anchors:
            distances = [footprint_distance(objects[i], objects[j]) for i in same]
            anchor = objects[j].category
            if _superlative(same, distances, False, lambda a, b: b - a >= DISTANCE_MARGIN) == index:
                out.append(Referring(index, f"the {cat} closest to the {anchor}.", ("category", "relation")))
            if _superlative(same, distances, True, lambda a, b: a - b >= DISTANCE_MARGIN) == index:
                out.append(Referring(index, f"the {cat} farthest from the {anchor}.", ("category", "relation")))
    return out


def describe(scene: SynthScene, index: int, rng: np.random.Generator) -> str | None:
    """A ScanRefer-style sentence that identifies object `index` uniquely, or None if impossible.

    The identifying phrase is followed by a true (non-identifying) detail, e.g.
    "this is the red chair. it is striped and stands next to the table."
    """
    options = referring_expressions(scene, index)
    if not options:
        return None
    choice = options[int(rng.integers(len(options)))]
    phrase = choice.text.rstrip(".")
    return f"this is {phrase}. {_detail(scene, index)}"


def _neighbour(scene: SynthScene, index: int) -> tuple[str, float] | None:
    target = scene.objects[index]
    best = None
    for j, other in enumerate(scene.objects):
        if j == index:
            continue
        distance = footprint_distance(target, other)
        if best is None or distance < best[1]:
            best = (other.category, distance)
    return best


def size_word(obj: SceneObject) -> str:
    """"small" / "large" relative to the category's nominal size range, "" in the middle third."""
    category = CATEGORIES[obj.category]
    low = category.width[0] * category.depth[0] * category.height[0]
    high = category.width[1] * category.depth[1] * category.height[1]
    fraction = (_volume(obj) - low) / max(high - low, 1e-9)
    return "small" if fraction < 1 / 3 else "large" if fraction > 2 / 3 else ""


def _detail(scene: SynthScene, index: int) -> str:
    obj = scene.objects[index]
    words = [w for w in (obj.colour, _texture_word(obj.texture)) if w]
    detail = f"it is {' and '.join(words)}"
    neighbour = _neighbour(scene, index)
    if obj.against_wall:
        detail += " and stands against the wall"
    elif neighbour is not None and neighbour[1] < 1.0:
        detail += f" and stands next to the {neighbour[0]}"
    return detail + "."


def captions(scene: SynthScene, index: int) -> list[str]:
    """Three reference captions of object `index` (Scan2Cap style: attributes + a spatial relation)."""
    obj = scene.objects[index]
    adjectives = " ".join(w for w in (size_word(obj), obj.colour, _texture_word(obj.texture)) if w)
    neighbour = _neighbour(scene, index)
    relation = ""
    if neighbour is not None:
        relation = f"the {neighbour[0]} is {'right next to it' if neighbour[1] < 0.5 else f'about {neighbour[1]:.1f} meters away'}"
    wall = "placed against the wall" if obj.against_wall else "standing in the room"
    out = [
        f"this is a {adjectives} {obj.category}. it is {wall}.",
        f"a {obj.colour} {obj.category} {wall}." + (f" {relation}." if relation else ""),
        f"the {obj.category} is {obj.colour}" + (f" with a {obj.texture} pattern" if obj.texture != "plain" else "") + (f". {relation}." if relation else "."),
    ]
    return out
