"""`--official-compat` spatial-QA scoring reads an answer as lmms-eval 0.7.3's vsibench task does: the answer
stripped, the first word for a choice, the first number anywhere (digits or English words) for a number. Checked
against lmms-eval's own functions, on chosen texts and on generated ones; direction subtypes aggregate as
VSI-Bench aggregates them."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lmms_eval.tasks.vsibench import utils as vsibench

from gap_mllm.processing.tasks.spatial_qa import NUMBER_WORDS, extract_number, score_answer

TEXTS = ["3", " 3", "3.", "3.50 meters", "-2.5", "1e3", "about 4 m", "three", "Three boxes.", "twenty-one",
         "three hundred and twenty-one", "two thousand and five", "one apple, room 2", "room 2, one apple", "none",
         "", "  ", "B", "B. chair", "no idea", "hundred", "thousand and one"]


@pytest.mark.parametrize("text", TEXTS)
def test_extract_number_is_lmms_evals(text):
    assert extract_number(text) == vsibench.extract_number(text)


WORDS = st.sampled_from([*NUMBER_WORDS, "and", "about", "m", "meters", "B.", "-", ".", ",", " ", "\n", "3", "-4.25", "07"])


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, max_size=8).map(" ".join))
def test_extract_number_is_lmms_evals_on_generated_texts(text):
    assert extract_number(text) == vsibench.extract_number(text)


def _lmms_score(answer: str, truth: str, question_type: str) -> float:
    """lmms-eval's score of one generated answer: its task strips it (api/task.py), then vsibench_process_results."""
    doc = {"question_type": question_type, "ground_truth": truth}
    key = "accuracy" if question_type in vsibench.MCA_QUESTION_TYPES else "MRA:.5:.95:.05"
    return float(vsibench.vsibench_process_results(doc, [answer.strip()])["vsibench_overall"][key])


@pytest.mark.parametrize(("answer", "truth", "question_type", "expected"), [
    (" B", "B", "object_rel_distance", 1.0),            # stripped before the first word is read
    ("b.", "B", "route_planning", 1.0),
    ("B is right", "B", "object_rel_direction_hard", 1.0),
    ("C", "B", "object_rel_direction_easy", 0.0),
    ("about 4 m", "8", "object_counting", 0.1),         # |4 - 8| / 8 = 0.5 passes the 0.50 level only
    ("three", "3", "object_counting", 1.0),
    ("3.5 meters", "3.2", "object_abs_distance", 0.9),  # relative error 0.094: every level but 0.95
    ("none", "2.4", "room_size_estimation", 0.0),
])
def test_official_compat_scores_an_answer_as_lmms_eval(answer, truth, question_type, expected):
    assert score_answer(answer, truth, question_type, official_compat=True) == pytest.approx(expected)
    assert _lmms_score(answer, truth, question_type) == pytest.approx(expected)


def test_official_compat_extracts_the_answer_exactly_as_vsi_bench():
    from gap_mllm.processing.tasks.spatial_qa import score_answer

    assert score_answer(" B", "B", "object_rel_distance") == 1.0  # default: tolerant
    # lmms-eval strips a generated answer before VSI-Bench's split(" ")[0] reads it (tested above)
    assert score_answer(" B", "B", "object_rel_distance", official_compat=True) == 1.0
    assert score_answer("\nB. chair", "B", "object_rel_distance", official_compat=True) == 1.0  # only " " splits
    assert score_answer("b.", "B", "route_planning", official_compat=True) == 1.0  # case-insensitive, dots
    assert score_answer("B", "B ", "route_planning") == 1.0
    assert score_answer("B", "B ", "route_planning", official_compat=True) == 0.0  # the target is not stripped
    assert score_answer(" 3", "3", "object_counting", official_compat=True) == 1.0
    assert score_answer("three", "3", "object_counting", official_compat=True) == 1.0  # lmms-eval 0.7.3's extract_number
    assert score_answer("three", "3", "object_counting") == 0.0  # default: the first word as a number
    assert score_answer("4 m", "8", "object_counting", official_compat=True) == pytest.approx(0.1)  # |4-8|/8 <= 1-0.5 only
    assert score_answer("3", "0", "object_counting") == 0.0
    with pytest.raises(ValueError, match="VSI-Bench divides by it"):
        score_answer("3", "0", "object_counting", official_compat=True)


def test_official_compat_aggregates_direction_subtypes_as_vsi_bench():
    from gap_mllm.processing.tasks.spatial_qa import aggregate_spatial_scores

    types = ["object_rel_direction_medium", "object_rel_direction_hard", "route_planning"]
    default = aggregate_spatial_scores([1.0, 0.0, 0.5], types)
    official = aggregate_spatial_scores([1.0, 0.0, 0.5], types, official_compat=True)
    assert default["per_type"] == {"object_rel_direction": 0.5, "route_planning": 0.5} and default["overall"] == 0.5
    # without "easy" VSI-Bench keeps the subtypes as two types
    assert official["per_type"] == {"object_rel_direction_hard": 0.0, "object_rel_direction_medium": 1.0, "route_planning": 0.5}
    assert official["overall"] == 0.5
    with pytest.raises(ValueError, match="object_rel_direction_easy but no object_rel_direction_hard"):
        aggregate_spatial_scores([1.0, 0.0], ["object_rel_direction_easy", "object_rel_direction_medium"], official_compat=True)
