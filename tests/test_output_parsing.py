"""Answer serialisers (exact official texts) and the never-eval parsers (valid, malformed, adversarial)."""

import builtins
import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gap_mllm.tasks_gap_mllm import (
    MAX_TEXT_CHARS,
    Box3D,
    DetectionResult,
    FrameSelectionResult,
    GroundingResult,
    PointmapResult,
    parse_detection,
    parse_frame_selection,
    parse_grounding,
    parse_literal,
    parse_pointmap,
    serialize_detection,
    serialize_frame_selection,
    serialize_grounding,
    serialize_pointmap,
    strip_code_fences,
)

COUCH = Box3D("couch", (0.44, 0.08, 2.26), (0.98, 1.88, 0.83), (0.81, 1.17, 2.96))
PILLOW = Box3D("pillow", (0.83, -0.0012, 2.08), (0.32, 0.46, 0.33), (0.79, 1.17, 2.96))
OFFICIAL_DETECTION_TEXT = (
    "```json\n[\n"
    '\t{"label": "couch", "bbox_3d": [0.44, 0.08, 2.26, 0.98, 1.88, 0.83, 0.81, 1.17, 2.96]},\n'
    '\t{"label": "pillow", "bbox_3d": [0.83, -0.0, 2.08, 0.32, 0.46, 0.33, 0.79, 1.17, 2.96]}\n'
    "]```"
)
ALL_PARSERS = (parse_detection, parse_grounding, parse_frame_selection, parse_pointmap)


# ------------------------------------------------------------------------------------ Box3D


def test_box_list_round_trip_and_validation():
    values = [0.1, -0.2, 3.0, 1.0, 2.0, 0.5, 0.3, -1.2, 3.1]
    box = Box3D.from_list(values, label="chair")
    assert box.to_list() == values and box.label == "chair"
    assert box.center == (0.1, -0.2, 3.0) and box.size == (1.0, 2.0, 0.5) and box.angles == (0.3, -1.2, 3.1)
    with pytest.raises(ValueError, match="9 numbers"):
        Box3D.from_list(values[:8])
    with pytest.raises(ValueError, match="finite"):
        Box3D.from_list(values[:8] + [float("nan")])
    with pytest.raises(TypeError):
        Box3D(label=3, center=(0, 0, 0), size=(1, 1, 1))


# ------------------------------------------------------------------------------- serialisers


def test_detection_serialiser_writes_the_official_text():
    assert serialize_detection([COUCH, PILLOW]) == OFFICIAL_DETECTION_TEXT
    assert serialize_detection([]) == "```json\n[\n]```"
    with pytest.raises(ValueError, match="label"):
        serialize_detection([Box3D(None, (0, 0, 0), (1, 1, 1))])


def test_other_serialisers_write_exact_texts():
    assert serialize_grounding(COUCH) == '{"bbox_3d": [0.44, 0.08, 2.26, 0.98, 1.88, 0.83, 0.81, 1.17, 2.96]}'
    assert serialize_frame_selection(7) == '{"frame": 7}'
    assert serialize_pointmap((1.234, -0.001, 2.0), "chair") == '{"pointmap": [1.23, -0.0, 2.0], "label": "chair"}'
    assert serialize_pointmap((1, 2, 3)) == '{"pointmap": [1.0, 2.0, 3.0]}'
    with pytest.raises(ValueError):
        serialize_frame_selection(1.5)
    with pytest.raises(ValueError):
        serialize_pointmap((1.0, float("inf"), 0.0))


def test_official_text_parses_back():
    result = parse_detection(OFFICIAL_DETECTION_TEXT)
    assert result.reason is None and result.skipped == 0
    assert result.boxes == [COUCH.rounded(), PILLOW.rounded()]
    assert math.copysign(1.0, result.boxes[1].center[1]) == -1.0  # -0.0 survives


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)
sizes = st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False)  # a negative size is refused
labels = st.text(min_size=1, max_size=12)
boxes = st.builds(
    Box3D,
    label=labels,
    center=st.tuples(finite, finite, finite),
    size=st.tuples(sizes, sizes, sizes),
    angles=st.tuples(finite, finite, finite),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(boxes, max_size=6))
def test_detection_round_trip(box_list):
    result = parse_detection(serialize_detection(box_list))
    assert result.reason is None and result.skipped == 0
    assert result.boxes == [b.rounded() for b in box_list]


@settings(max_examples=60, deadline=None)
@given(boxes)
def test_grounding_round_trip(box):
    result = parse_grounding(serialize_grounding(box))
    assert result.reason is None
    assert result.box == Box3D.from_list(box.rounded().to_list())  # no label in grounding answers


@settings(max_examples=60, deadline=None)
@given(st.tuples(finite, finite, finite), st.one_of(st.none(), labels), st.integers(0, 10_000))
def test_pointmap_and_frame_round_trip(point, label, frame):
    result = parse_pointmap(serialize_pointmap(point, label))
    assert result.reason is None and result.label == label
    assert result.point == tuple(round(v, 2) for v in point)
    assert parse_frame_selection(serialize_frame_selection(frame)).frame == frame


# ------------------------------------------------------------------------------ valid variants

ENTRY = {"label": "chair", "bbox_3d": [1, 2, 3, 4, 5, 6, 0.1, 0.2, 0.3]}
CHAIR = Box3D.from_list(ENTRY["bbox_3d"], label="chair")


@pytest.mark.parametrize(
    "text",
    [
        json.dumps([ENTRY], indent=2),  # normal multi-line JSON list
        "```json\n" + json.dumps([ENTRY, ENTRY]) + "\n```",
        "```\n[{'label': 'chair', 'bbox_3d': [1, 2, 3, 4, 5, 6, 0.1, 0.2, 0.3],},]\n```",  # Python quotes, trailing commas
        'Here are the boxes: [{"label": "chair", "bbox_3d": [1, 2, 3, 4, 5, 6, 0.1, 0.2, 0.3]}]',
        json.dumps(ENTRY),  # a single dict
        json.dumps(ENTRY) + ", " + json.dumps(ENTRY),  # reads as a tuple of dicts
        '[{"label": "chair", "box_3d": [1, 2, 3, 4, 5, 6, 0.1, 0.2, 0.3]}]',  # the prompt's key name
    ],
)
def test_detection_accepts_common_variants(text):
    result = parse_detection(text)
    assert result.skipped == 0
    assert result.boxes and all(b == CHAIR for b in result.boxes)


def test_detection_skips_and_counts_bad_entries():
    text = (
        "```json\n[\n"
        '\t{"label": "a", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8]},\n'  # 8 numbers
        '\t{"label": "b", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, NaN]},\n'  # non-finite
        '\t{"label": "c", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, "9"]},\n'  # a string
        '\t{"label": "d", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, true]},\n'  # a bool is not a number
        '\t{"label": "e", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 1e999]},\n'  # overflows to inf
        '\t{"label": "ok", "bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 9]}\n'
        "]```"
    )
    result = parse_detection(text)
    assert [b.label for b in result.boxes] == ["ok"]
    assert result.skipped == 5
    assert "skipped 5 malformed entries" in result.reason and "8 value(s) instead of 9" in result.reason


def test_detection_recovers_complete_lines_of_a_truncated_answer():
    truncated = OFFICIAL_DETECTION_TEXT[: OFFICIAL_DETECTION_TEXT.index("0.46")]
    result = parse_detection(truncated)
    assert result.boxes == [COUCH.rounded()]
    assert result.skipped == 1 and "line by line" in result.reason


def test_detection_empty_and_garbage():
    assert parse_detection("[]") == DetectionResult([], None, 0)
    for text in ["", "   ", "no boxes here", "42", '"just a string"', "null", "{'frame': 3}"]:
        result = parse_detection(text)
        assert result.boxes == [] and result.reason, text


def test_grounding_variants():
    box = Box3D.from_list([1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert parse_grounding('{"bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 9]}').box == box
    assert parse_grounding('Answer: {"bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 9],} thanks').box == box
    bare = parse_grounding("[1, 2, 3, 4, 5, 6, 7, 8, 9]")
    assert bare.box == box and "bare list" in bare.reason
    listed = parse_grounding('[{"x": 1}, {"bbox_3d": [1, 2, 3, 4, 5, 6, 7, 8, 9]}]')
    assert listed.box == box and "took entry 1" in listed.reason
    for text, message in [
        ('{"bbox_3d": [1, 2, 3]}', "3 value(s) instead of 9"),
        ('{"box": [1, 2, 3, 4, 5, 6, 7, 8, 9]}', 'no "bbox_3d"'),
        ("{'bbox_3d': [1, 2, 3, 4, 5, 6, 7, 8, inf]}", "not a JSON or Python literal"),
        ("7", "not a dict"),
    ]:
        result = parse_grounding(text)
        assert result.box is None and message in result.reason, text


@pytest.mark.parametrize(
    "text, num_frames, frame, reason_part",
    [
        ('{"frame": 5}', None, 5, None),
        ('{"frame": 40}', 32, 31, "frame 40 clamped to 31"),
        ('{"frame": -2}', 32, 0, "frame -2 clamped to 0"),
        ('```json\n{"frame": 3.0}\n```', 8, 3, None),
        ("{'frame': '4'}", None, 4, None),
        ('[{"frame": 2}]', None, 2, "one-element list"),
        ('{"frame": true}', None, None, "not an integer"),
        ('{"frame": 2.5}', None, None, "not an integer"),
        ('{"frames": 2}', None, None, 'no "frame" key'),
        ("frame 3", None, None, "not a JSON or Python literal"),
    ],
)
def test_frame_selection(text, num_frames, frame, reason_part):
    result = parse_frame_selection(text, num_frames)
    assert result.frame == frame
    if reason_part is None:
        assert result.reason is None
    else:
        assert reason_part in result.reason


def test_pointmap_variants():
    assert parse_pointmap('{"pointmap": [1, 2, 3], "category": "sofa"}').label == "sofa"
    assert parse_pointmap("```json\n{'pointmap': [1, 2, 3], 'label': None}\n```").label is None
    lined = parse_pointmap('The point is\n{"pointmap": [0.5, -0.25, 2], "label": "bed"},\nbye')
    assert lined.point == (0.5, -0.25, 2.0) and lined.label == "bed"
    for text, message in [
        ('{"pointmap": [1, 2]}', "2 value(s) instead of 3"),
        ('{"pointmap": [[1, 2, 3]]}', "1 value(s) instead of 3"),
        ('{"pointmap": [1, "2", 3]}', "non-numeric"),
        ('{"label": "bed"}', 'no "pointmap" key'),
        ("[1, 2, 3]", "not a dict"),
    ]:
        result = parse_pointmap(text)
        assert result.point is None and message in result.reason, text


def test_strip_code_fences():
    assert strip_code_fences('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fences("text ```python\n[1]``` more") == "[1]"
    assert strip_code_fences("```json\n[1, 2") == "[1, 2"  # unclosed fence
    assert strip_code_fences("  plain  ") == "plain"


# ---------------------------------------------------------------------------------- adversarial


def test_parsers_never_execute_code():
    sentinel = "_gap_mllm_parser_executed"
    payloads = [
        f"__import__('builtins').setattr(__import__('builtins'), '{sentinel}', 1)",
        f"[__import__('builtins').setattr(__import__('builtins'), '{sentinel}', 1)]",
        f"{{'bbox_3d': [setattr(__import__('builtins'), '{sentinel}', 1)] * 9}}",
        f"```json\n{{\"frame\": (lambda: setattr(__import__('builtins'), '{sentinel}', 1))()}}\n```",
    ]
    for text in payloads:
        for parser in ALL_PARSERS:
            parser(text)
    assert not hasattr(builtins, sentinel)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" * 50_000 + "}" * 50_000,
        "don't " + "[" * 40_000 + "]" * 40_000,  # an apostrophe must not hide deep brackets
        "x\" ['\"', " + "[" * 40_000,
        '{"frame": ' + "9" * 50_000 + "}",  # beyond int() digit limits
        "'\"" * 40_000,
        "\x00\x01{\x00}",
        "a" * (MAX_TEXT_CHARS + 1),
        '{"label": "a", "bbox_3d": [1, 2, 3]}\n' * 2500,
    ],
)
def test_pathological_inputs_are_rejected_without_raising(text):
    for parser in ALL_PARSERS:
        result = parser(text)
        assert isinstance(getattr(result, "reason", None), str) and result.reason
    # nothing is accepted from them (the last one is 2500 lines of 3-number boxes: all skipped, and counted)
    assert parse_detection(text).boxes == [] and parse_grounding(text).box is None and parse_pointmap(text).point is None


def test_nesting_guard_reason():
    value, reason = parse_literal("[" * 40 + "]" * 40)
    assert value is None and "nested deeper" in reason
    assert parse_literal("[" * 5 + "]" * 5) == ([[[[[]]]]], None)


def assert_documented_result(text: str) -> dict:
    """Every parser's documented contract on `text`: the typed result class, finite values, "no answer
    always comes with a reason", and the same result when parsed again. Returns the results by name."""
    detection = parse_detection(text)
    assert isinstance(detection, DetectionResult) and isinstance(detection.boxes, list)
    assert all(isinstance(b, Box3D) and all(math.isfinite(v) for v in b.to_list()) for b in detection.boxes)
    assert all(b.label is None or isinstance(b.label, str) for b in detection.boxes)
    assert isinstance(detection.skipped, int) and detection.skipped >= 0
    assert detection.reason is None or isinstance(detection.reason, str)
    assert detection.skipped == 0 or detection.reason is not None  # dropped entries are reported
    if not detection.boxes and detection.reason is None:  # no boxes and no complaint: an empty list
        assert parse_literal(text, allow_block=False)[0] in ([], ())

    grounding = parse_grounding(text)
    assert isinstance(grounding, GroundingResult)
    assert grounding.box is None or (isinstance(grounding.box, Box3D) and all(math.isfinite(v) for v in grounding.box.to_list()))
    assert grounding.box is not None or isinstance(grounding.reason, str)

    frame = parse_frame_selection(text)
    assert isinstance(frame, FrameSelectionResult)
    assert frame.frame is None or (isinstance(frame.frame, int) and not isinstance(frame.frame, bool))
    assert frame.frame is not None or isinstance(frame.reason, str)
    clamped = parse_frame_selection(text, num_frames=8)
    assert clamped.frame is None or 0 <= clamped.frame < 8
    assert (clamped.frame is None) == (frame.frame is None)

    point = parse_pointmap(text)
    assert isinstance(point, PointmapResult)
    assert point.point is None or (len(point.point) == 3 and all(isinstance(v, float) and math.isfinite(v) for v in point.point))
    assert point.label is None or isinstance(point.label, str)
    assert point.point is not None or isinstance(point.reason, str)

    results = {"detection": detection, "grounding": grounding, "frame": frame, "pointmap": point}
    again = {"detection": parse_detection(text), "grounding": parse_grounding(text),
             "frame": parse_frame_selection(text), "pointmap": parse_pointmap(text)}
    assert again == results  # deterministic
    return results


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_arbitrary_text_gives_the_documented_result_types(text):
    assert_documented_result(text)


JSONISH = st.text(
    alphabet=list("[]{}(),:\"'\\ \n\t-.0123456789eEtrueflsanNIbox_3dlabelpointmapframe`json"), max_size=200
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(JSONISH, st.one_of(st.none(), st.integers(1, 40)))
def test_jsonish_noise_never_raises(text, num_frames):
    detection = parse_detection(text)
    assert all(isinstance(b, Box3D) for b in detection.boxes) and detection.skipped >= 0
    assert detection.reason is not None or detection.skipped == 0
    grounding = parse_grounding(text)
    assert grounding.box is not None or grounding.reason  # no box always comes with a reason
    frame = parse_frame_selection(text, num_frames)
    if frame.frame is not None and num_frames is not None:
        assert 0 <= frame.frame < num_frames
    point = parse_pointmap(text)
    assert point.point is None or all(math.isfinite(v) for v in point.point)
    assert point.point is not None or point.reason


@settings(max_examples=100, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | finite | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(st.sampled_from(["bbox_3d", "label", "frame", "pointmap", "x"]), c, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_random_json_values_are_read_as_documented(value):
    text = json.dumps(value)
    results = assert_documented_result(text)

    def numbers(values, count):
        """The floats of `values` if it is `count` finite non-bool numbers, else None."""
        if not isinstance(values, list) or len(values) != count:
            return None
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in values):
            return None
        return [float(v) for v in values]

    if isinstance(value, dict):
        box = numbers(value.get("bbox_3d"), 9)
        if box is not None and isinstance(value.get("label", ""), str):
            assert results["grounding"].box.to_list() == box  # a valid dict answer is read exactly
            assert [b.to_list() for b in results["detection"].boxes] == [box]
        if "frame" in value and isinstance(value["frame"], int) and not isinstance(value["frame"], bool):
            assert results["frame"].frame == value["frame"]
        point = numbers(value.get("pointmap"), 3)
        if point is not None:
            assert list(results["pointmap"].point) == point
    if value is None:
        assert all(getattr(r, "reason", None) for r in results.values())  # null is no answer


def test_backticks_inside_a_label_do_not_end_the_fence():
    """Found by hypothesis: a label "```" must not close the official fence early and drop a box."""
    boxes = [Box3D.from_list([0.5, 0.0, 2.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0], label=label) for label in ("chair", "```", "a`b")]
    result = parse_detection(serialize_detection(boxes))
    assert result.reason is None and result.skipped == 0
    assert [box.label for box in result.boxes] == ["chair", "```", "a`b"]


BOX_ANSWER = '{"bbox_3d": [0.1, 0.2, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]}'


@pytest.mark.parametrize("openings", [1, 2, 3])
def test_repeated_fence_openings_parse(openings):
    """An answer that opens its ```json fence several times is the literal after the last opening, not
    "empty answer" (the Mini answered grounding on 3 frames so)."""
    fenced = "```json\n" * openings + BOX_ANSWER + "\n```"
    assert parse_grounding(fenced) == parse_grounding(BOX_ANSWER) and parse_grounding(fenced).reason is None
    rows = "```json\n" * openings + '[\n\t{"label": "bed", "bbox_3d": [0.1, 0.2, 1.0, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0]}\n]```'
    detection = parse_detection(rows)
    assert [box.label for box in detection.boxes] == ["bed"] and detection.reason is None
    assert strip_code_fences("```json\n```\n```json\n[1]\n```") == "[1]"


@pytest.mark.parametrize("text", ["```json\n```", "```json\n```json\n", "7", '{"bbox_3d": [1, 2', "frame three"])
def test_a_parse_failure_quotes_the_raw_answer(text):
    """A failure on a non-empty answer quotes it (never "empty answer"); only whitespace is empty."""
    for parse in (parse_grounding, parse_frame_selection, parse_pointmap, parse_detection):
        reason = parse(text).reason
        assert reason != "empty answer" and repr(text) in reason, (parse.__name__, reason)
    assert parse_grounding(" \n ").reason == "empty answer"
    long = "x" * 500
    assert parse_grounding(long).reason.endswith("... (380 more characters)")


def test_a_numeric_pointmap_label_is_no_label_and_says_so():
    result = parse_pointmap('{"pointmap": [0.5, -0.25, 3.0], "label": 5}')
    assert (result.point, result.label, result.reason) == ((0.5, -0.25, 3.0), None, '"label" is a int (5), not a text label')
    assert parse_pointmap('{"pointmap": [0.5, -0.25, 3.0], "label": "wall"}').reason is None


def test_a_negative_size_parses_to_no_box_with_the_reason():
    assert parse_grounding('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}').box is None
    assert parse_grounding('{"bbox_3d": [0, 0, 1, -1, -1, -1, 0, 0, 0]}').reason == "bbox_3d has a negative size [-1.0, -1.0, -1.0]"
    assert parse_grounding("[0, 0, 1, 1, -1, 1, 0, 0, 0]").reason == "bbox_3d has a negative size [1.0, -1.0, 1.0]"
    result = parse_detection('[{"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, -1, 0, 0, 0]}, {"label": "bed", "bbox_3d": [0, 0, 1, 1, 1, 1, 0, 0, 0]}]')
    assert [b.size for b in result.boxes] == [(1.0, 1.0, 1.0)] and result.skipped == 1 and "negative size" in result.reason
    assert parse_grounding('{"bbox_3d": [0, 0, 1, 0, -0.0, 1, 0, 0, 0]}').box is not None  # zero (and -0.0) is a size


def test_a_trailing_comma_after_an_answer_is_named_as_such():
    from gap_mllm.tasks_gap_mllm import TRAILING_COMMA, parse_detection, parse_frame_selection, parse_grounding, parse_pointmap

    box = '{"bbox_3d": [0.1, 0.2, 1.5, 0.4, 0.5, 0.6, 0.0, 0.0, 0.0]}'
    grounded = parse_grounding(box + ",")
    assert grounded.box.to_list() == parse_grounding(box).box.to_list() and grounded.reason == TRAILING_COMMA
    assert parse_frame_selection('{"frame": 2},', num_frames=4).frame == 2
    assert parse_frame_selection('{"frame": 2},', num_frames=4).reason == TRAILING_COMMA
    assert parse_pointmap('{"pointmap": [1.0, 2.0, 3.0], "label": "wall"},').reason == TRAILING_COMMA
    listed = parse_detection(f'[{box[:-1]}, "label": "chair"}}],')  # the whole list, then a comma: every box kept
    assert len(listed.boxes) == 1 and listed.boxes[0].label == "chair" and listed.reason == TRAILING_COMMA
    # a dict ending with a comma is a line of detection's official one-dict-per-line list: nothing stray
    assert parse_detection(f'{box[:-1]}, "label": "chair"}},').reason is None
    assert "list of" in parse_grounding(f"[{box}, {box}]").reason  # a real list is still named a list
