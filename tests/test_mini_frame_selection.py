"""mini/frame_selection.py: grounding stage-1 samples in both layouts (same words, same views, same answer), exact
frame scores, the prior, and the command training a tiny model, resuming, and scoring the saved model alike."""

from __future__ import annotations

import json

import pytest

import numpy as np

from gap_mllm.mini.frame_selection import (
    compare,
    frame_distributions,
    frame_prior,
    frame_samples,
    main,
    prior_frame,
    score_frames,
    score_rows,
    text_first_prompt,
)
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1, extract_query
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


def test_text_first_moves_the_views_between_the_description_and_the_output_instruction():
    prompt = text_first_prompt(3, "the red chair")
    assert prompt == ("Localize the first clear frame in the video showing the object described in the text.\n"
                      "Text: the red chair\n"
                      "Frame-0: <image>Frame-1: <image>Frame-2: <image>\n"
                      'Output a JSON dictionary with the frame index in "frame".\n')
    official = GROUNDING_STAGE1.annotation_prompt(3, query="the red chair")
    assert sorted(prompt.replace("\n", "")) == sorted(official.replace("\n", ""))  # the same characters, reordered


def test_both_layouts_carry_the_records_views_answer_and_description(train_data_root):
    records = load_annotation_file(find_annotation_file(train_data_root, GROUNDING_STAGE1, "train"))
    official = frame_samples(train_data_root, "train", "views_first")
    moved = frame_samples(train_data_root, "train", "text_first")
    assert len(official) == len(moved) == len(records) > 0
    for record, a, b in zip(records, official, moved):
        assert a["prompt"] == record["conversations"][0]["value"]  # the official layout is the record verbatim
        assert a["answer"] == b["answer"] == record["conversations"][1]["value"]
        assert a["frame"] == b["frame"] == json.loads(record["conversations"][1]["value"])["frame"]
        assert a["images"] == b["images"] and len(a["images"]) == len(record["images"])
        assert b["prompt"] == text_first_prompt(len(a["images"]), extract_query(a["prompt"]))
        assert b["prompt"].index("Text:") < b["prompt"].index("<image>") < b["prompt"].index("Output a JSON")
        assert b["prompt"].count("<image>") == a["prompt"].count("<image>") == len(a["images"])
    with pytest.raises(ValueError, match="unknown order 'sideways'"):
        frame_samples(train_data_root, "train", "sideways")


def test_frame_scores_and_prior_are_exact():
    scores = score_frames([0, 2, None, 2], [0, 1, 3, 2])
    assert scores["frame_accuracy"] == 0.5 and scores["n"] == 4 and scores["unparsable"] == 1
    assert scores["answered"] == {"0": 1, "2": 2, "unparsable": 1}
    assert scores["interval"][0] < 0.5 < scores["interval"][1]
    assert prior_frame([{"frame": f} for f in (3, 1, 3, 1, 5)]) == 1  # a tie goes to the lower frame
    with pytest.raises(ValueError, match="as many answers as truths"):
        score_frames([0], [0, 1])


def _rows(answered, p_true, frames=(1, 2)):
    return [{"id": f"r{i}", "frame": f, "answered": a, "p_true": p, "answer": "{}"}
            for i, (f, a, p) in enumerate(zip(frames, answered, p_true))]


def test_digit_scores_and_paired_differences_are_exact():
    scores = score_rows(_rows([1, 0], [0.25, 0.7]), prior=[0.5, 0.25, 0.25])
    assert scores["frame_accuracy"] == 0.5 and scores["answered"] == {"0": 1, "1": 1}
    assert scores["digit"]["log_likelihood"] == pytest.approx((np.log(0.25) + np.log(0.7)) / 2)
    assert scores["digit"]["prior_log_likelihood"] == pytest.approx(np.log(0.25))
    assert scores["digit"]["mean_true_probability"] == pytest.approx(0.475)
    assert frame_prior([{"frame": f} for f in (0, 0, 2, 1)], 4) == [0.5, 0.25, 0.25, 0.0]
    paired = compare(_rows([1, 2], [0.5, 0.5]), _rows([1, 0], [0.25, 0.5]))
    assert paired["num_samples"] == 2 and paired["frame_accuracy"]["difference"] == pytest.approx(0.5)
    assert paired["log_likelihood"]["difference"] == pytest.approx(np.log(2) / 2)
    with pytest.raises(ValueError, match="same records"):
        compare(_rows([1, 2], [0.5, 0.5]), _rows([1], [0.5]))


def test_frame_distributions_are_normalised_over_the_views_digits(train_data_root):
    model, processor = build_tiny_model(seed=0)
    samples = frame_samples(train_data_root, "val", "text_first")[:3]
    probabilities = frame_distributions(model, processor, samples, batch_size=2)
    assert probabilities.shape == (3, len(samples[0]["images"]))
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5) and (probabilities > 0).all()
    alone = frame_distributions(model, processor, samples[1:2], batch_size=1)  # padding in a batch changes nothing
    assert np.allclose(alone[0], probabilities[1], atol=1e-4)


def test_the_command_trains_resumes_and_scores_the_saved_model_alike(train_data_root, tmp_path):
    model, processor = build_tiny_model(seed=0)
    model.save_pretrained(tmp_path / "start")
    processor.save_pretrained(tmp_path / "start")
    common = ["--data", str(train_data_root), "--eval-samples", "2", "--order", "text_first"]
    run = ["--model", str(tmp_path / "start"), "--out", str(tmp_path / "run"), "--batch-size", "2", "--eval-every", "1", *common]
    report = main([*run, "--steps", "1"])
    assert report["order"] == "text_first" and [e["step"] for e in report["evaluations"]] == [1]
    assert report["prior"]["n"] == 2 and report["prior"]["answered"] == {str(report["prior_frame"]): 2}
    more = main([*run, "--steps", "2"])  # resumes at step 2 from the saved state
    assert [e["step"] for e in more["evaluations"]] == [2]
    logged = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert logged == [1, 2]
    scored = main(["--model", str(tmp_path / "run" / "model"), "--evaluate-only", "--answers", str(tmp_path / "a.jsonl"), *common])
    assert scored["model"]["val"]["examples"] == more["evaluations"][0]["val"]["examples"]
    assert scored["model"]["val"]["frame_accuracy"] == more["evaluations"][0]["val"]["frame_accuracy"]
    assert scored["model"]["val"]["digit"]["log_likelihood"] == pytest.approx(more["evaluations"][0]["val"]["digit"]["log_likelihood"], abs=1e-4)
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(0 < row["p_true"] < 1 for row in rows)
    itself = main(["--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")])
    assert itself["frame_accuracy"]["difference"] == 0 and itself["log_likelihood"]["difference"] == 0
