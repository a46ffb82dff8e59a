"""Referring expressions identify one object; captions and spatial answers match the ground truth."""

from __future__ import annotations

import re

import numpy as np
import pytest

from gap_mllm.processing.annotation_files import extract_query
from gap_mllm.processing.synth.spatial_qa import QUESTION_TYPES, direction_quadrant

from .test_data_fixtures import tiny_generator, tiny_scene  # noqa: F401

SUPERLATIVES = {
    "largest": ("volume", max), "larger": ("volume", max), "smallest": ("volume", min), "smaller": ("volume", min),
    "tallest": ("height", max), "taller": ("height", max), "shortest": ("height", min), "shorter": ("height", min),
}  # fmt: skip


def sampled_distance(a, b, step=0.01) -> float:
    """Closest floor-plan distance between two footprints by dense boundary sampling (independent of
    the generator's exact polygon code; error <= step)."""

    def boundary(obj):
        corners = obj.footprint()
        points = [corners[i] + t * (corners[(i + 1) % 4] - corners[i]) for i in range(4) for t in np.linspace(0, 1, 200)]
        return np.array(points)

    pa, pb = boundary(a), boundary(b)
    return float(np.min(np.linalg.norm(pa[:, None] - pb[None], axis=-1)))


def matching_objects(scene, phrase: str) -> list[int]:
    """Objects satisfying a referring phrase, evaluated from scratch on the ground truth."""
    objects = scene.objects
    words = phrase.split()
    relation = re.match(r"the (\w+) (closest to|farthest from) the (\w+)$", phrase)
    if relation:
        category, kind, anchor = relation.groups()
        anchors = [o for o in objects if o.category == anchor]
        assert len(anchors) == 1, "anchors must be unique in the scene"
        group = [i for i, o in enumerate(objects) if o.category == category]
        distances = [sampled_distance(objects[i], anchors[0]) for i in group]
        best = np.argmin(distances) if kind == "closest to" else np.argmax(distances)
        return [group[best]]
    category = words[-1]
    group = [i for i, o in enumerate(objects) if o.category == category]
    if len(words) == 2:
        return group
    modifier = words[1]
    if modifier in SUPERLATIVES:
        key, pick = SUPERLATIVES[modifier]
        values = [float(np.prod(objects[i].size)) if key == "volume" else float(objects[i].size[2]) for i in group]
        return [group[values.index(pick(values))]]
    return [i for i in group if modifier in (objects[i].colour, objects[i].texture)]


def test_every_grounding_description_picks_out_its_object():
    generator = tiny_generator()
    from gap_mllm.processing.synth.writer import generate_samples

    checked = 0
    for index in range(3):
        scene, records = generate_samples(generator, index)
        for record in records["grounding_stage1"]:
            description = extract_query(record["conversations"][0]["value"])
            phrase = re.match(r"this is (.+?)\. it is", description).group(1)
            assert matching_objects(scene, phrase) == [record["object_id"]], phrase
            # The trailing detail is true: the target's colour is named.
            assert scene.objects[record["object_id"]].colour in description
            checked += 1
    assert checked >= 10


def test_captions_name_the_category_and_colour(tiny_scene):
    scene, records = tiny_scene
    assert records["captioning"]
    for record in records["captioning"]:
        obj = scene.objects[record["object_id"]]
        assert len(record["annotations"]) == 3 and record["conversations"][1]["value"] == record["annotations"][0]
        for caption in record["annotations"]:
            assert obj.category in caption and obj.colour in caption
        assert record["iou"] == 1.0


def test_spatial_answers_are_exact(tiny_scene):
    scene, records = tiny_scene
    by_type = {r["question_type"]: r for r in records["spatial_qa"]}
    assert set(by_type) <= set(QUESTION_TYPES) and {"room_size_estimation", "object_counting"} <= set(by_type)
    assert float(by_type["room_size_estimation"]["ground_truth"]) == pytest.approx(scene.room.width * scene.room.depth, abs=0.005)
    counting = by_type["object_counting"]
    category = re.search(r"How many (\w+)\(s\)", counting["conversations"][0]["value"]).group(1)
    assert int(counting["ground_truth"]) == sum(o.category == category for o in scene.objects)
    by_category = {o.category: o for o in scene.objects}
    if "object_size_estimation" in by_type:
        name = re.search(r"of the (\w+), measured", by_type["object_size_estimation"]["conversations"][0]["value"]).group(1)
        assert float(by_type["object_size_estimation"]["ground_truth"]) == pytest.approx(by_category[name].size.max() * 100, abs=0.5)
    if "object_abs_distance" in by_type:
        a, b = re.search(r"between the (\w+) and the (\w+) \(in meters\)", by_type["object_abs_distance"]["conversations"][0]["value"]).groups()
        assert float(by_type["object_abs_distance"]["ground_truth"]) == pytest.approx(sampled_distance(by_category[a], by_category[b]), abs=0.02)
    for record in records["spatial_qa"]:
        prompt = record["conversations"][0]["value"]
        assert prompt.count("<image>") == len(record["images"])
        if record["options"]:
            assert record["ground_truth"] in "ABCD" and f"{record['ground_truth']}. " in prompt


def test_appearance_order_follows_first_sightings():
    from gap_mllm.processing.synth.writer import generate_samples

    generator = tiny_generator()
    found = 0
    for index in range(4):
        scene, records = generate_samples(generator, index)
        for record in records["spatial_qa"]:
            if record["question_type"] != "obj_appearance_order":
                continue
            frames = [scene.frame_names.index(p.split("/")[1][:5]) for p in record["images"]]
            seen = scene.visible_pixels()[frames] >= generator.config.min_visible_pixels
            chosen = dict(zip("ABCD", (o.split(". ", 1)[1] for o in record["options"])))[record["ground_truth"]].split(", ")
            first = [int(np.argmax(seen[:, [o.category for o in scene.objects].index(c)])) for c in chosen]
            assert first == sorted(first) and len(set(first)) == 4
            found += 1
    assert found >= 1


@pytest.mark.parametrize(
    "target, expected",
    [((1, 1), "front-left"), ((-1, 1), "front-right"), ((1, -1), "back-left"), ((-1, -1), "back-right")],
)
def test_direction_quadrants(target, expected):
    # Standing at the origin facing +x (room z up): +y is to the left.
    quadrant, margin = direction_quadrant((0, 0), (1, 0), (target[1], target[0]))
    assert quadrant == expected and margin == pytest.approx(np.pi / 4)
