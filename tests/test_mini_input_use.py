"""mini/input_use.py: the frame / prompt swap changes only what it names, and its losses are the model's own
loss (tiny model on tiny SynthRooms, seconds)."""

from __future__ import annotations

import pytest
import torch

from gap_mllm.mini.input_use import digit_token_ids, input_use, load_rows, scene_of, swap_partner, swapped
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_train_fixtures import train_data_root  # noqa: F401


@pytest.fixture(scope="module")
def marker_rows(train_data_root, tmp_path_factory):  # noqa: F811
    return load_rows(train_data_root, "reconstruction", "train", 16, cache_dir=str(tmp_path_factory.mktemp("hf")))


def test_partners_come_from_another_scene_with_as_many_views(marker_rows):
    assert len({scene_of(row) for row in marker_rows}) == 2
    for index, row in enumerate(marker_rows):
        partner = swap_partner(marker_rows, index)
        assert scene_of(partner) != scene_of(row) and len(partner["images"]) == len(row["images"])
    frames = swapped(marker_rows, "other_frames")
    for row, new in zip(marker_rows, frames):
        # only the frames change: the answer, the prompt and the marker's pixel stay the sample's own
        assert new["answer"] == row["answer"] and new["prompt"] == row["prompt"] and new["pixel_coords"] == row["pixel_coords"]
        assert new["images"] is not row["images"]
    for index, new in enumerate(swapped(marker_rows, "other_frames_and_marker")):
        partner = swap_partner(marker_rows, index)
        assert new["images"] is partner["images"] and new["pixel_coords"] == partner["pixel_coords"]
        assert new["answer"] == marker_rows[index]["answer"]
    with pytest.raises(ValueError, match="no sample of another scene"):
        swap_partner([row for row in marker_rows if scene_of(row) == scene_of(marker_rows[0])], 0)


def test_losses_are_the_model_loss_and_swaps_change_only_what_they_name(marker_rows):
    model, processor = build_tiny_model(seed=0)
    model.eval()
    report = input_use(model, processor, marker_rows, batch_size=len(marker_rows))
    # one batch: the mean answer-token loss is the model's own (mean over labelled tokens) loss
    batch = GapMllmDataCollator(processor, train=True, marker=True)(marker_rows)
    with torch.no_grad():
        assert report["own"]["answer_loss"] == pytest.approx(model(**batch).loss.item(), rel=1e-5)
    assert report["own"]["num_answer_tokens"] == int((batch["labels"][:, 1:] != -100).sum())
    assert 0 < report["own"]["num_digit_tokens"] < report["own"]["num_answer_tokens"]
    # every marker sample has the same prompt: swapping it changes nothing, to the last bit
    assert report["other_prompt"]["answer_loss"] == report["own"]["answer_loss"] and report["other_prompt_gain"] == 0.0
    # another scene's frames reach the (random) model and change its loss
    assert report["other_frames"]["num_answer_tokens"] == report["own"]["num_answer_tokens"]
    assert abs(report["other_frames_gain"]) > 1e-4
    assert report["other_frames_and_marker"]["answer_loss"] != report["other_frames"]["answer_loss"]  # the marker moved


def test_digit_tokens_are_the_digits(marker_rows):
    _, processor = build_tiny_model(seed=0)
    tokens = processor.tokenizer.convert_ids_to_tokens(digit_token_ids(processor.tokenizer).tolist())
    assert tokens and all(token.lstrip("Ġ").isdigit() for token in tokens)
    assert {"0", "9"} <= {token.lstrip("Ġ") for token in tokens}
