"""Compiled decoding's static cache pool (speedups.py) on the CPU: across an evaluation's mix of full and scene
calls each cache length decodes at one address (the buffers allocated again only when the length grows or a call has
more rows than any before), with the greedy tokens of uncompiled decoding; a cache a call returned refuses use once a
later call took its buffers; a call from another thread while the pool is held gets buffers of its own."""

from __future__ import annotations

import copy
import pickle
import threading

import pytest
import torch
from transformers import CompileConfig
from transformers.cache_utils import StaticLayer

from gap_mllm.generation import DECODE_COMPILE_CONFIG, generate
from gap_mllm.speedups import (
    STATIC_LENGTH_STEP,
    PooledStaticLayer,
    StaticCachePool,
    release_static_cache,
    static_cache_length,
    static_cache_pool,
)

from .test_compiled_decoding import _compiled, _inputs, _mix_tokens, lively_model  # noqa: F401 (a fixture)


@pytest.fixture
def lent(monkeypatch):
    """Every lending of the first layer's buffers: `(cache length, rows, address of the keys)`."""
    seen = []
    lazy_initialization = PooledStaticLayer.lazy_initialization

    def recording(layer, key_states, value_states):
        lazy_initialization(layer, key_states, value_states)
        if layer.layer_index == 0:
            seen.append((layer.max_cache_len, layer.keys.shape[0], layer.keys.data_ptr()))

    monkeypatch.setattr(PooledStaticLayer, "lazy_initialization", recording)
    return seen


def test_an_evaluations_calls_decode_at_one_address_per_cache_length(lively_model, tiny_processor, lent):
    today = _mix_tokens(lively_model, tiny_processor, "off")
    assert not lent  # uncompiled decoding keeps a dynamic cache
    release_static_cache(lively_model)
    pool = static_cache_pool(lively_model)
    allocations = pool.allocations
    torch._dynamo.reset()
    shipped = CompileConfig(**{**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None})  # many shapes: symbolic
    compiled = _mix_tokens(lively_model, tiny_processor, shipped)
    assert all(torch.equal(a, b) for a, b in zip(compiled, today, strict=True))

    assert len(lent) == 15  # one static cache per call of the mix, full and scene calls alike
    lengths = [length for length, _, _ in lent]
    assert lengths == sorted(lengths) and all(length % STATIC_LENGTH_STEP == 0 for length in lengths)
    # the buffers are allocated again only where the length grew or a call had more rows than any before, and
    # between two such calls every call finds the same addresses
    allocated, widest, previous = [], 0, None
    for length, rows, _ in lent:
        allocated.append(length != previous or rows > widest)
        widest, previous = max(widest, rows), length
    assert pool.allocations - allocations == sum(allocated) < len(lent)
    assert all(lent[i][2] == lent[i - 1][2] for i in range(1, len(lent)) if not allocated[i])
    torch._dynamo.reset()


def test_the_cache_length_rounds_up_and_never_shrinks(lively_model):
    if hasattr(lively_model, "_previous_max_cache_length"):
        del lively_model._previous_max_cache_length
    assert static_cache_length(lively_model, 1) == STATIC_LENGTH_STEP
    assert static_cache_length(lively_model, STATIC_LENGTH_STEP + 1) == 2 * STATIC_LENGTH_STEP
    assert static_cache_length(lively_model, 3) == 2 * STATIC_LENGTH_STEP  # what transformers' own rule keeps too
    assert lively_model._previous_max_cache_length == 2 * STATIC_LENGTH_STEP


def test_a_returned_cache_refuses_use_once_a_later_call_took_its_buffers(lively_model, tiny_processor):
    inputs = _inputs(tiny_processor, 2)
    options = dict(max_new_tokens=3, do_sample=False, compile_decoding=_compiled("eager"))
    torch._dynamo.reset()
    first = generate(lively_model, **inputs, return_dict_in_generate=True, **options)
    kept = first.past_key_values
    assert int(kept.get_seq_length()) == inputs["input_ids"].shape[1] + 2  # usable until the next compiled call
    copied = copy.deepcopy(kept)  # what the error below advises, to keep a cache
    keys = kept.layers[0].keys.clone()
    generate(lively_model, **inputs, **options)
    assert torch.equal(copied.layers[0].keys, keys)
    assert int(copied.get_seq_length()) == first.sequences.shape[1] - 1  # the prompt and the tokens but the last
    assert isinstance(pickle.loads(pickle.dumps(copied)).layers[0].pool, StaticCachePool)  # pickled without a lock
    with pytest.raises(RuntimeError, match=r"^This static cache came from a compiled generate call"):
        kept.get_seq_length()
    with pytest.raises(RuntimeError, match=r"buffers now serve a later compiled call"):
        kept.update(torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1), 0)
    release_static_cache(lively_model)
    assert not static_cache_pool(lively_model)._layers
    torch._dynamo.reset()


def test_a_call_from_another_thread_while_the_pool_is_held_gets_its_own_buffers(lively_model, tiny_processor):
    inputs = _inputs(tiny_processor, 2)
    options = dict(max_new_tokens=4, min_new_tokens=4, do_sample=False)
    today = generate(lively_model, **inputs, **options)
    pool = static_cache_pool(lively_model)
    holding, done = threading.Event(), threading.Event()

    def hold():
        with pool.lending():
            holding.set()
            done.wait(timeout=600)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(timeout=60)
        allocations, private = pool.allocations, pool.private_allocations
        torch._dynamo.reset()
        compiled = generate(lively_model, **inputs, compile_decoding=_compiled("eager"), **options)
    finally:
        done.set()
        holder.join()
    assert torch.equal(compiled, today)
    assert (pool.allocations, pool.private_allocations) == (allocations, private + 1)
    torch._dynamo.reset()


def test_a_pooled_layer_has_every_attribute_of_a_static_layer(lively_model, tiny_processor, lent):
    """transformers reads a static layer's attributes (mask sizes, dtype, device, ...): a lent layer sets all that
    `StaticLayer.lazy_initialization` sets, its tensors marked as static addresses as transformers marks them."""
    torch._dynamo.reset()
    out = generate(lively_model, **_inputs(tiny_processor, 1), max_new_tokens=2, do_sample=False,
                   return_dict_in_generate=True, compile_decoding=_compiled("eager"))
    pooled = out.past_key_values.layers[0]
    plain = StaticLayer(max_cache_len=pooled.max_cache_len)
    plain.lazy_initialization(pooled.keys[:, :, :1], pooled.values[:, :, :1])
    assert set(vars(plain)) <= set(vars(pooled))
    for name, value in vars(plain).items():
        if isinstance(value, torch.Tensor):
            assert (getattr(pooled, name).shape, getattr(pooled, name).dtype) == (value.shape, value.dtype), name
            assert getattr(pooled, name)._dynamo_static_input_type == value._dynamo_static_input_type, name
        else:
            assert getattr(pooled, name) == value, name
    torch._dynamo.reset()
