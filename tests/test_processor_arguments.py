"""What GapMllmProcessor's calls accept besides images and text: an unknown keyword is a TypeError naming it (the known
ones work), a marker for a task that does not use one is refused, a token budget is a positive integer, and token ids
to decode are integers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from .conftest import make_views


def test_unknown_processor_keywords_are_errors_and_the_known_ones_still_work(tiny_processor):
    views = make_views(1)
    with pytest.raises(TypeError, match=r"unknown keyword argument\(s\) 'foo'"):
        tiny_processor(images=views, text="hi", foo=1)
    with pytest.raises(TypeError, match="'paddding'"):
        tiny_processor(images=views, task="detection", paddding=True)
    batch = tiny_processor(images=[views, views], text=["a", "a longer text"], padding_side="right", truncation=False,
                           return_tensors="pt")
    assert batch["attention_mask"][0, -1] == 0  # padded on the right, as asked
    short = tiny_processor(text="Describe the room.", truncation=True, max_length=5, return_tensors="pt")
    assert short["input_ids"].shape[1] == 5


def test_a_marker_for_a_task_that_does_not_use_one_is_refused(tiny_processor):
    with pytest.raises(ValueError, match=r"task 'detection' does not use a marker, but point_prompts gives \(0, 10, 10\)"):
        tiny_processor(images=make_views(2), task="detection", point_prompts=(0, 10, 10))
    tiny_processor(images=make_views(2), task="reconstruction", point_prompts=(0, 10, 10))  # the marker task


@pytest.mark.parametrize("budget", [-1, 0, 2.5, "8", True])
def test_non_positive_or_non_integer_budgets_are_refused(tiny_processor, budget):
    inputs = tiny_processor(images=make_views(1), task="detection", return_tensors="pt")
    with pytest.raises(ValueError, match=rf"max_new_tokens must be a positive integer.*got {budget!r}"):
        tiny_processor.generation_kwargs("detection", inputs, max_new_tokens=budget)
    assert tiny_processor.generation_kwargs("detection", inputs, max_new_tokens=np.int64(7))["max_new_tokens"] == 7


def test_token_ids_must_be_integers(tiny_processor):
    good = tiny_processor.tokenizer("chair", add_special_tokens=False)["input_ids"]
    assert tiny_processor.decode_generated(np.asarray([good], dtype=np.int32)) == ["chair"]
    for bad, found in ((torch.tensor([[float(good[0])]]), "torch.float32"), ([good[0], 3.7], "3.7 \\(float\\)"),
                       ([[good[0]], [np.float64(2.0)]], "2.0"), (np.asarray([1.5]), "float64")):
        with pytest.raises(TypeError, match=f"token ids must be integers.*{found}"):
            tiny_processor.decode_generated(bad)
    with pytest.raises(TypeError, match="input_ids: token ids must be integers"):
        tiny_processor.post_process([good], "captioning", input_ids=torch.zeros(1, 0))
