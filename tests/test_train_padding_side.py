"""Training batches hold no fully masked attention row (training/data.py TRAINING_PADDING_SIDE).

On an H100, left-padded rows padded to a length bucket gave non-finite weight gradients from the first step, with or
without compiled layers, while right-padded and packed rows stayed finite (bench/bisect_compile_nan.py, bench/README.md,
the H100 run of 2026-11-26): a left padding query sees only padding keys, a fully masked row that an SDPA backward
kernel turned into NaN. The CPU's kernels return 0 there, so the CPU cannot show the NaN; what it can show exactly is
the rule (every path that builds a training batch pads on the right, so every query row sees at least one key) and that
the rule changes nothing a loss can see (left and right padding train to the same loss and gradients).
"""

from __future__ import annotations

import pytest
import torch

from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import TRAINING_PADDING_SIDE, build_collator, load_split
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.sample_tensors import collate_samples, split_batch

from .test_train_fixtures import tiny, train_data_root  # noqa: F401

TASKS = ["reconstruction", "detection", "captioning", "grounding_stage1", "grounding_stage2"]


@pytest.fixture(scope="module")
def dataset_and_settings(train_data_root, tmp_path_factory):
    def settings(**data):
        return recipe_from_dict({"data": {"data_root": str(train_data_root), "tasks": TASKS,
                                          "cache_dir": str(tmp_path_factory.mktemp("hf")), **data}})

    return settings, load_split(settings().data, "train", settings().aux)


def fully_masked_query_rows(attention_mask: torch.Tensor) -> int:
    """Query positions `[R, T]` whose causal window (keys 0..t) holds no real token."""
    seen = attention_mask.long().cumsum(dim=-1)
    return int((seen == 0).sum())


@pytest.mark.parametrize("data", [{}, {"length_buckets": [512]}], ids=["padded", "bucketed"])
def test_every_training_collator_pads_on_the_right(dataset_and_settings, data):
    settings_for, dataset = dataset_and_settings
    settings = settings_for(**data)
    model, processor = tiny()
    assert processor.tokenizer.padding_side == "left"  # the generation side: what training must not take
    collator = build_collator(processor, settings.data, settings.aux, model=model)
    examples = [dataset[i] for i in (0, len(dataset) // 2, len(dataset) - 1)]
    batch = collator(examples)
    mask = batch["attention_mask"]
    lengths = mask.sum(dim=-1)
    assert lengths.min() < mask.shape[1]  # some row is padded, so the test can see a side
    assert TRAINING_PADDING_SIDE == "right"
    assert bool(mask[:, 0].all()) and fully_masked_query_rows(mask) == 0
    for row, length in enumerate(lengths.tolist()):
        assert mask[row, :length].all() and not mask[row, length:].any()


def test_left_and_right_padding_train_to_the_same_loss_and_gradients(dataset_and_settings):
    settings_for, dataset = dataset_and_settings
    settings = settings_for()
    model, processor = tiny()
    wrapped = GeometryAlignedModel(model)
    samples = split_batch(build_collator(processor, settings.data, settings.aux, model=model)(
        [dataset[i] for i in (0, len(dataset) // 2, len(dataset) - 1)]))
    pad = processor.tokenizer.pad_token_id
    results = {}
    for side in ("left", "right"):
        batch = collate_samples(samples, pad, side)
        if side == "left":
            assert fully_masked_query_rows(batch["attention_mask"]) > 0  # what the right side removes
        wrapped.zero_grad()
        out = wrapped(**batch)
        out.lm_loss_sum.backward()
        results[side] = (out.lm_loss_sum.detach(),
                         {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None})
    (left_loss, left_grads), (right_loss, right_grads) = results["left"], results["right"]
    torch.testing.assert_close(right_loss, left_loss, rtol=1e-5, atol=0)
    assert set(right_grads) == set(left_grads)
    for name, grad in left_grads.items():
        assert (right_grads[name] - grad).abs().max() <= 1e-4 * grad.abs().max().clamp(min=1e-12), name
