"""Packed batches: samples of a batch in as few rows as fit, attention kept inside each sample, and the loss and
gradients of the padded batch (float32). Plus the mix they are packed from keeps the marker of the marker task."""

from __future__ import annotations

from contextlib import nullcontext
from itertools import accumulate

import pytest
import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX
from gap_mllm.training import packed_attention as packed_attention_module
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import (
    ONE_ROW,
    TRAINING_PADDING_SIDE,
    PackingCollator,
    load_split,
    packing_row_tokens,
    sample_collator,
)
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.packed_attention import (
    PACKED_SDPA,
    cu_seq,
    packed_attention,
    packed_sdpa_attention,
    sample_spans,
    spans_from_segments,
)
from gap_mllm.training.sample_tensors import collate_samples, first_fit_decreasing, padding_share, split_batch

from .test_train_fixtures import tiny, train_data_root  # noqa: F401

MIXED_TASKS = ["reconstruction", "detection", "captioning", "grounding_stage1", "grounding_stage2"]


@pytest.fixture(scope="module")
def mixed(train_data_root, tmp_path_factory):
    settings = recipe_from_dict({"data": {"data_root": str(train_data_root), "tasks": MIXED_TASKS,
                                          "cache_dir": str(tmp_path_factory.mktemp("hf"))},
                                 "aux": {"camera_weight": 1.0, "depth_weight": 1.0, "scale_weight": 1.0}})
    return settings, load_split(settings.data, "train", settings.aux)


def mixed_batch(processor, settings, dataset, count=7):
    indices = [round(i * (len(dataset) - 1) / (count - 1)) for i in range(count)]
    batch = sample_collator(processor, settings.data, settings.aux)([dataset[i] for i in indices])
    batch.pop("num_skipped_samples")
    return batch


def test_the_marker_task_keeps_its_marker_in_a_mix_of_tasks(mixed):
    settings, dataset = mixed
    markers = [row["pixel_coords"] for row in dataset]
    ids = dataset["id"]
    marker_rows = [coords for coords, name in zip(markers, ids) if "_recons_" in name]
    assert marker_rows and all(coords is not None and len(coords) == 3 for coords in marker_rows)
    assert all(coords is None for coords, name in zip(markers, ids) if "_recons_" not in name)


def test_split_then_collate_gives_the_collators_batch_back(mixed):
    settings, dataset = mixed
    _, processor = tiny()
    batch = mixed_batch(processor, settings, dataset)
    again = collate_samples(split_batch(batch), processor.tokenizer.pad_token_id, TRAINING_PADDING_SIDE)
    assert set(again) == set(batch)
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(again[key], value), key
        else:
            assert len(again[key]) == len(value) and all(torch.equal(a, b) for a, b in zip(again[key], value)), key


@pytest.mark.parametrize("attention, row_tokens, checkpointed",
                         [("sdpa", None, False), ("sdpa", ONE_ROW, False), ("eager", None, False), ("sdpa", None, True)],
                         ids=["sdpa-rows-of-the-longest", "sdpa-one-row", "eager-block-mask", "sdpa-checkpointed"])
def test_packed_loss_and_gradients_equal_the_padded_ones(mixed, attention, row_tokens, checkpointed, monkeypatch):
    """Checkpointed: every layer recomputes its forward in the backward, under the per-sample attention its forward
    ran with (training/packed_attention.py `recompute_as_forward`): twice the packed calls, the same gradients."""
    settings, dataset = mixed
    model, processor = tiny()
    model.set_attn_implementation(attention)
    wrapped = GeometryAlignedModel(model, settings.aux, packed_rows=True)
    if checkpointed:
        wrapped.activation_checkpointing_enable()  # as the Trainer calls it for training.activation_checkpointing
    batch = mixed_batch(processor, settings, dataset)
    packed = collate_samples(split_batch(batch), processor.tokenizer.pad_token_id, packing=True, row_tokens=row_tokens)
    assert packed["input_ids"].shape[0] < batch["input_ids"].shape[0]  # fewer rows
    if row_tokens is None:
        assert packed["input_ids"].shape[1] <= batch["input_ids"].shape[1]  # none longer than the padded batch
    else:
        assert packed["input_ids"].shape[0] == 1
    calls = []  # sdpa models attend per sample (training/packed_attention.py), eager ones through the block mask
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, PACKED_SDPA,
                        lambda *args, **kwargs: calls.append(1) or packed_sdpa_attention(*args, **kwargs))

    def signal(inputs):
        wrapped.zero_grad()
        out = wrapped(**inputs)
        total = out.lm_loss_sum + sum(out.aux_losses.values())
        total.backward()
        grads = {n: p.grad.clone() for n, p in wrapped.named_parameters() if p.grad is not None}
        return out.lm_loss_sum.detach(), out.lm_num_tokens, {k: v.detach() for k, v in out.aux_losses.items()}, grads

    loss, tokens, aux, grads = signal(batch)
    packed_loss, packed_tokens, packed_aux, packed_grads = signal(packed)
    assert int(packed_tokens) == int(tokens) > 0
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == (layers * (2 if checkpointed else 1) if attention == "sdpa" else 0)
    assert model.model.language_model.config._attn_implementation == attention  # switched back after the forward
    torch.testing.assert_close(packed_loss, loss, rtol=1e-6, atol=0)
    assert set(aux) == {"camera", "depth", "scale"}
    for name in aux:
        torch.testing.assert_close(packed_aux[name], aux[name], rtol=1e-5, atol=1e-6)
    assert set(packed_grads) == set(grads)
    for name, grad in grads.items():
        assert (packed_grads[name] - grad).abs().max() <= 1e-5 * grad.abs().max().clamp(min=1e-12), name


@pytest.mark.parametrize("per_sample", [False, True], ids=["block-mask", "per-sample-sdpa"])
def test_attention_does_not_cross_samples_in_a_packed_row(mixed, per_sample):
    """Changing one sample's tokens leaves the other samples' logits of its row as they were."""
    settings, dataset = mixed
    model, processor = tiny()
    model.eval()
    wrapped = GeometryAlignedModel(model)
    samples = split_batch(mixed_batch(processor, settings, dataset))
    packed = collate_samples(samples, processor.tokenizer.pad_token_id, packing=True, row_tokens=10**6)  # one row
    assert packed["input_ids"].shape[0] == 1
    restarts = torch.nonzero(packed["position_ids"][0, 0] == 0).flatten().tolist()
    first, second = restarts[0], restarts[1]
    changed = {key: (value.clone() if isinstance(value, torch.Tensor) else value) for key, value in packed.items()}
    text = (changed["mm_token_type_ids"][0] == 0) & (torch.arange(changed["input_ids"].shape[1]) < second)
    text[: first + 3] = False  # keep its chat header
    changed["input_ids"][0, text] = (changed["input_ids"][0, text] + 1) % 50 + 10  # another text in sample one

    def hidden(inputs):
        with torch.no_grad():
            inputs = {k: v for k, v in inputs.items() if k != "labels"}
            return model.model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                                   mm_encoder_outputs={"image": model.get_fused_image_features(
                                       inputs["pixel_values"], inputs["image_grid_thw"],
                                       inputs["geometry_views_per_sample"].tolist(), inputs["geometry_pixel_values"])[0]},
                                   use_cache=False).last_hidden_state[0]

    del wrapped
    with packed_attention(model.model.language_model) if per_sample else nullcontext():
        before, after = hidden(packed), hidden(changed)
    assert not torch.allclose(before[first:second], after[first:second])  # the change is seen where it was made
    torch.testing.assert_close(after[second:], before[second:], rtol=0, atol=0)  # and nowhere else


def test_rows_are_filled_longest_first_and_the_positions_restart_in_every_sample(mixed):
    settings, dataset = mixed
    _, processor = tiny()
    batch = mixed_batch(processor, settings, dataset)
    samples = split_batch(batch)
    lengths = [s["input_ids"].shape[0] for s in samples]
    packed = collate_samples(samples, processor.tokenizer.pad_token_id, packing=True)
    assert packed["input_ids"].shape[1] == max(lengths)
    # every row: its samples' text positions 0..L-1 one after the other, then a padding block counting from 0
    segments, pad = [], processor.tokenizer.pad_token_id
    for positions, ids in zip(packed["position_ids"][0], packed["input_ids"]):
        starts = torch.nonzero(positions == 0).flatten().tolist() + [positions.shape[0]]
        for begin, end in zip(starts, starts[1:]):
            assert torch.equal(positions[begin:end], torch.arange(end - begin))
            if not (ids[begin:end] == pad).all():
                segments.append(end - begin)
    assert sorted(segments) == sorted(lengths)
    rows, width = packed["input_ids"].shape  # the host segments are those of the positions, padding blocks included
    assert spans_from_segments(packed["packed_segments"], rows, width) == sample_spans(packed["position_ids"][0])
    assert (packed["labels"] != IGNORE_INDEX).sum() == (batch["labels"] != IGNORE_INDEX).sum()
    assert padding_share(packed, sum(lengths)) < padding_share(batch, sum(lengths))
    assert first_fit_decreasing([5, 3, 4, 2, 6], 6) == [[4], [0], [2, 3], [1]]
    assert first_fit_decreasing([9, 2], 6) == [[0], [1]]  # an item over the capacity gets its own bin


def test_packing_collator_and_flash_attention_rows(mixed):
    settings, dataset = mixed
    model, processor = tiny()
    collator = PackingCollator(sample_collator(processor, settings.data, settings.aux), processor.tokenizer.pad_token_id, 2)
    batch = collator([dataset[0], dataset[len(dataset) - 1]])
    assert "attention_mask" not in batch and batch["position_ids"].shape[0] == 4 and int(batch["num_skipped_samples"]) == 0
    model.config._attn_implementation = "eager"  # a block mask costs T² a row: rows as long as the longest sample
    assert packing_row_tokens(settings.data, model) is None
    for attention in ("sdpa", "flash_attention_2"):  # attention per sample (Σ L²): the whole batch in one row
        model.config._attn_implementation = attention
        assert packing_row_tokens(settings.data, model) == ONE_ROW
    settings.data.packing_row_tokens = 300  # the recipe's cap wins
    assert packing_row_tokens(settings.data, model) == 300
    settings.data.packing_row_tokens = None


def test_sample_spans_follow_the_position_restarts_and_the_packed_function_refuses_other_inputs():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0, 1, 2]])
    assert sample_spans(positions) == [[(0, 3), (3, 5), (5, 9)], [(0, 6), (6, 9)]]
    assert spans_from_segments((3, 2, 4, 6, 3), 2, 9) == sample_spans(positions)  # the collator's host segments
    with pytest.raises(ValueError, match="packed_segments cover 17 tokens, the rows 2 x 9"):
        spans_from_segments((3, 2, 4, 6, 2), 2, 9)
    query = torch.zeros(1, 2, 4, 8)
    module = torch.nn.Module()
    with pytest.raises(ValueError, match="packed training rows only"):
        packed_sdpa_attention(module, query, query, query, attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool),
                              position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="packed training rows only"):
        packed_sdpa_attention(module, query, query, query, attention_mask=None, position_ids=None)


def test_a_padded_and_packed_layout_together_is_refused(mixed):
    settings, dataset = mixed
    model, processor = tiny()
    batch = mixed_batch(processor, settings, dataset, count=2)
    batch["position_ids"] = torch.zeros(4, *batch["input_ids"].shape, dtype=torch.long)
    with pytest.raises(ValueError, match="not both"):
        GeometryAlignedModel(model)(**batch)


def varlen_stand_in(calls):
    """torch's `varlen_attn` as documented (causal attention within each `cu_seq` segment of the flat `[T, H, D]`
    tokens, GQA by head groups), in float32 on the CPU: its flash kernel needs CUDA and half precision."""

    def varlen(query, key, value, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
        calls.append({"cu": cu_q.tolist(), "max": max_q, "window": window_size, "tokens": query.shape[0]})
        assert torch.equal(cu_q, cu_k) and window_size == (-1, 0) and cu_q.dtype == torch.int32
        groups = query.shape[1] // key.shape[1]
        out = torch.empty_like(query)
        for start, end in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
            q, k, v = (t[start:end].transpose(0, 1) for t in (query, key, value))
            k, v = k.repeat_interleave(groups, 0), v.repeat_interleave(groups, 0)
            out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(0, 1)
        return out

    return varlen


def test_packed_rows_take_one_varlen_call_per_layer_and_keep_each_samples_logits(mixed, monkeypatch):
    """Where the device has a variable-length kernel (CUDA, bf16: `uses_varlen`), `PACKED_SDPA` makes ONE call per
    layer over every segment, with the segment starts the collator counted (no read of the positions); each sample's
    hidden states in the packed row equal the sample's alone. The kernel is stood in for here (no GPU)."""
    settings, dataset = mixed
    model, processor = tiny()
    model.eval()
    samples = split_batch(mixed_batch(processor, settings, dataset, count=4))
    packed = collate_samples(samples, processor.tokenizer.pad_token_id, packing=True, row_tokens=ONE_ROW)
    segments = packed["packed_segments"]
    assert sum(segments) == packed["input_ids"].numel() and len(segments) == len(samples)  # no padding in one row
    assert not packed_attention_module.uses_varlen(torch.zeros(1, dtype=torch.bfloat16), 0.0)  # not on the CPU
    calls = []
    monkeypatch.setattr(packed_attention_module, "varlen_kernel",
                        lambda: (varlen_stand_in(calls), {"window_size": (-1, 0)}, True, True))
    monkeypatch.setattr(packed_attention_module, "uses_varlen", lambda query, dropout, scaling: True)

    def hidden(batch, **extra):
        features = model.get_fused_image_features(batch["pixel_values"], batch["image_grid_thw"],
                                                  batch["geometry_views_per_sample"].tolist(),
                                                  batch["geometry_pixel_values"])[0]
        with torch.no_grad():
            return model.model(input_ids=batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                   image_grid_thw=batch["image_grid_thw"],
                                   mm_encoder_outputs={"image": features}, use_cache=False, **extra).last_hidden_state

    with packed_attention(model.model.language_model) as switched, torch.no_grad():
        assert switched
        row = hidden(packed, position_ids=packed["position_ids"], packed_segments=segments,
                     packed_cu_seq=cu_seq(segments, "cpu"))[0]
    layers = model.config.text_config.num_hidden_layers
    assert len(calls) == layers and all(call["cu"] == [0, *accumulate(segments)] for call in calls)
    assert calls[0]["max"] == max(segments) and calls[0]["tokens"] == packed["input_ids"].numel()
    lengths = sorted((s["input_ids"].shape[0] for s in samples), reverse=True)  # the packed order: longest first
    order = sorted(range(len(samples)), key=lambda i: (-samples[i]["input_ids"].shape[0], i))
    start = 0
    for index, length in zip(order, lengths):
        alone = collate_samples([samples[index]], processor.tokenizer.pad_token_id)
        own = hidden(alone, attention_mask=alone["attention_mask"])[0]
        torch.testing.assert_close(row[start : start + length], own, rtol=1e-4, atol=1e-5)
        start += length


def test_the_varlen_kernel_is_chosen_only_where_it_computes_the_same(monkeypatch):
    """CUDA, half precision, no dropout, and a scale the installed torch can take (2.10's kernel has no `scale`: the
    default 1/√D only); otherwise the per-segment sdpa path."""
    import types as pytypes

    def query(cuda=True, dtype=torch.bfloat16):
        return pytypes.SimpleNamespace(is_cuda=cuda, dtype=dtype, shape=(1, 4, 9, 64))

    for takes_scale in (True, False):
        monkeypatch.setattr(packed_attention_module, "varlen_kernel", lambda: (None, {}, False, takes_scale))
        assert packed_attention_module.uses_varlen(query(), 0.0, 64 ** -0.5)
        assert packed_attention_module.uses_varlen(query(), 0.0, None)
        assert packed_attention_module.uses_varlen(query(), 0.0, 0.1) is takes_scale
        assert not packed_attention_module.uses_varlen(query(cuda=False), 0.0)
        assert not packed_attention_module.uses_varlen(query(dtype=torch.float32), 0.0)
        assert not packed_attention_module.uses_varlen(query(), 0.1)
    monkeypatch.setattr(packed_attention_module, "varlen_kernel", lambda: None)  # a torch without it
    assert not packed_attention_module.uses_varlen(query(), 0.0)


def test_checkpointed_layers_of_a_run_without_packed_rows_still_compile():
    """The recompute context is given only to a run of packed rows: torch.compile refuses any checkpoint context but
    its own (an AssertionError while tracing), so compiled layers under activation checkpointing (the real-size
    recipes' CUDA default) keep the plain checkpoint. aot_eager on the CPU traces as inductor does on CUDA."""
    from gap_mllm.training.kernels import compile_decoder_layers

    model, _ = tiny()
    wrapped = GeometryAlignedModel(model)
    wrapped.activation_checkpointing_enable()
    compile_decoder_layers(model, backend="aot_eager")
    ids = torch.randint(5, 50, (2, 24))
    model.model.language_model(input_ids=ids, use_cache=False).last_hidden_state.sum().backward()
    layer = model.model.language_model.layers[0]
    assert "context_fn" not in layer._gradient_checkpointing_func.keywords
    assert all(p.grad is not None for p in layer.parameters())
    packed, _ = tiny()
    GeometryAlignedModel(packed, packed_rows=True).activation_checkpointing_enable()
    assert "context_fn" in packed.model.language_model.layers[0]._gradient_checkpointing_func.keywords
    # kwargs that leave use_reentrant out get transformers' default, the non-reentrant checkpoint, and the context
    GeometryAlignedModel(packed, packed_rows=True).activation_checkpointing_enable({"preserve_rng_state": True})
    keywords = packed.model.language_model.layers[0]._gradient_checkpointing_func.keywords
    assert keywords["use_reentrant"] is False and "context_fn" in keywords and keywords["preserve_rng_state"] is True

