"""Sequence-length buckets (training/length_buckets.py): a bucketed batch trains to the loss and gradients of the
unbucketed one (the padding is masked), and 30 steps of random lengths compile each regionally compiled decoder layer
at most once per bucket (+1), where the same batches unbucketed have more lengths than that."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX
from gap_mllm.training.config import recipe_from_dict, training_arguments
from gap_mllm.training.data import build_collator, load_split, sample_collator
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.host_metadata import add_host_metadata
from gap_mllm.training.kernels import compile_decoder_layers, uncompile_decoder_layers
from gap_mllm.training.length_buckets import BucketCollator, bucket_length, pad_to_bucket
from gap_mllm.training.sample_tensors import collate_samples, split_batch

from .test_train_fixtures import tiny, train_data_root  # noqa: F401

TASKS = ["reconstruction", "detection", "captioning", "grounding_stage1", "grounding_stage2"]


@pytest.fixture(scope="module")
def mixed(train_data_root, tmp_path_factory):
    settings = recipe_from_dict({"data": {"data_root": str(train_data_root), "tasks": TASKS,
                                          "cache_dir": str(tmp_path_factory.mktemp("hf"))}})
    return settings, load_split(settings.data, "train", settings.aux)


def collate(processor, settings, examples):
    batch = sample_collator(processor, settings.data, settings.aux)(examples)
    batch.pop("num_skipped_samples")
    return dict(batch)


def loss_and_grads(wrapped, batch):
    wrapped.zero_grad()
    out = wrapped(**batch)
    out.lm_loss_sum.backward()
    return out.lm_loss_sum.detach(), {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}


def test_bucket_lengths_and_the_recipe_setting():
    assert [bucket_length(n, [64, 128]) for n in (1, 64, 65, 128, 129, 300)] == [64, 64, 128, 128, 256, 384]
    settings = recipe_from_dict({"data": {"length_buckets": [256, 128, 256]}, "training": {"output_dir": "out"}})
    assert settings.data.length_buckets == [128, 256]  # sorted, once each
    assert not training_arguments(settings).dataloader_drop_last  # every sample trains: dropping is the recipe's call
    for bad in ([], [0, 64], [64.5]):
        with pytest.raises(ValueError, match=r"^data.length_buckets"):
            recipe_from_dict({"data": {"length_buckets": bad}})


@pytest.mark.parametrize("layout", ["padded-left", "padded-right", "packed"])
def test_a_bucketed_batch_trains_like_the_unbucketed_one(mixed, layout):
    settings, dataset = mixed
    model, processor = tiny()
    wrapped = GeometryAlignedModel(model)
    pad = processor.tokenizer.pad_token_id
    side = "right" if layout == "padded-right" else "left"
    samples = split_batch(collate(processor, settings, [dataset[i] for i in (0, len(dataset) // 2, len(dataset) - 1)]))
    batch = collate_samples(samples, pad, side, packing=layout == "packed")
    length = batch["input_ids"].shape[1]
    bucketed = pad_to_bucket(batch, [length + 37], pad, side)
    assert bucketed["input_ids"].shape[1] == length + 37
    grown = bucketed["input_ids"][:, :37] if side == "left" and layout != "packed" else bucketed["input_ids"][:, -37:]
    assert (grown == pad).all()
    assert (bucketed["labels"] != IGNORE_INDEX).sum() == (batch["labels"] != IGNORE_INDEX).sum()
    if layout == "packed":
        assert sum(bucketed["packed_segments"]) == bucketed["input_ids"].numel()
        assert bucketed["packed_segments"][-1] == 37 and torch.equal(bucketed["position_ids"][:, 0, -37:],
                                                                     torch.arange(37).expand(4, -1))
    loss, grads = loss_and_grads(wrapped, batch)
    bucket_loss, bucket_grads = loss_and_grads(wrapped, add_host_metadata(dict(bucketed)))  # the trainer's batch
    torch.testing.assert_close(bucket_loss, loss, rtol=1e-6, atol=0)
    assert set(bucket_grads) == set(grads)
    for name, grad in grads.items():
        assert (bucket_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max().clamp(min=1e-12), name


def test_the_collator_chain_pads_to_the_buckets(mixed):
    settings, dataset = mixed
    model, processor = tiny()
    settings.data.length_buckets = [512, 1024]
    try:
        collator = build_collator(processor, settings.data, settings.aux, model=model)
    finally:
        settings.data.length_buckets = None
    assert isinstance(collator.collator, BucketCollator)
    batch = collator([dataset[0], dataset[len(dataset) - 1]])
    assert batch["input_ids"].shape[1] in (512, 1024) and isinstance(batch["num_skipped_samples"], int)
    assert batch["views_per_sample"] == tuple(batch["geometry_views_per_sample"].tolist())


def test_thirty_steps_of_random_lengths_compile_once_per_bucket():
    """Regional compile at static shapes (as `kernels.compile_layers` with buckets): Dynamo compiles the decoder
    layer once per sequence shape, without a graph break, so the buckets bound the compilations of 30 training steps
    of random lengths (the language model on random embeddings: the layers are what is compiled); the same batches
    unbucketed have more lengths than buckets + 1 (each would be a compilation)."""
    model, _ = tiny()
    language_model = model.model.language_model
    hidden = language_model.config.hidden_size
    optimizer = torch.optim.AdamW(language_model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    buckets = [24, 48, 96]
    counter = CompileCounter()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compile_decoder_layers(model, dynamic=False, backend=counter)
    unbucketed = set()
    try:
        for _ in range(30):
            lengths = torch.randint(4, 97, (2,), generator=generator).tolist()
            unbucketed.add(max(lengths))
            width = bucket_length(max(lengths), buckets)
            mask = torch.stack([torch.arange(width) >= width - n for n in lengths]).long()  # left padding
            # trained embeddings (the LLM's, with the trained mergers' visual tokens) require grad, as here: a layer
            # input that does not is another graph (Dynamo guards on it)
            embeds = (torch.randn(2, width, hidden, generator=generator) * mask[..., None]).requires_grad_()
            out = language_model(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
            (out.pow(2).mean(-1) * mask).sum().backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        uncompile_decoder_layers(model)
        torch._dynamo.reset()
    assert len(unbucketed) > len(buckets) + 1  # without buckets, static shapes would compile more often
    assert 1 <= counter.frame_count <= len(buckets) + 1, counter.frame_count
    assert not torch._dynamo.utils.counters["graph_break"]  # each layer one whole graph
