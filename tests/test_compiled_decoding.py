"""Compiled decoding (`gap_mllm.generation.generate(model, compile_decoding=...)`) on the CPU: the tiny model's decode
step compiles whole (fullgraph=True, one graph, no break) and gives today's greedy tokens in float32, batch 1 and 8,
with and without a scene; a decode step makes no host synchronisation, and generate makes the one per token that
transformers' loop needs (host_syncs.py)."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import CompileConfig, StaticCache, StoppingCriteriaList

from gap_mllm.generation import (
    DECODE_COMPILE_CONFIG,
    compiled_decoding_kwargs,
    decode_compile_config,
    encode_scene,
    generate,
    lent_static_cache,
)
from gap_mllm.host_syncs import HostSyncCounter
from gap_mllm.speedups import PooledStaticLayer, static_cache_pool
from gap_mllm.tasks_gap_mllm import AnswerEndCriteria

from .conftest import make_views

TEXTS = ["Describe the room.", "Where is the red chair?", "How many lamps?", "What is left of the bed?"]


@pytest.fixture
def lively_model(build_model):
    """The tiny model with larger language-model weights: random tiny weights repeat one token, which would let a
    wrong step hide behind a constant argmax."""
    model = build_model().eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.model.language_model.parameters():
            if parameter.ndim == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.15)
    return model


def _inputs(processor, batch: int):
    images = [make_views(1 + row % 2, 64, 96, seed=row) for row in range(batch)]
    return processor(images=images, text=[TEXTS[row % 4] for row in range(batch)], return_tensors="pt", padding=True)


def _compiled(backend: str) -> CompileConfig:
    return CompileConfig(fullgraph=True, dynamic=False, backend=backend, mode=None)


@pytest.mark.parametrize("batch, backend", [(1, "aot_eager"), (8, "eager")])
def test_the_decode_step_compiles_whole_and_keeps_the_greedy_tokens(lively_model, tiny_processor, batch, backend):
    inputs = _inputs(tiny_processor, batch)
    options = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False)
    today = generate(lively_model, **inputs, **options)
    assert len(set(today[:, -6:].flatten().tolist())) > 3  # the tokens vary: equality below means something
    torch._dynamo.reset()
    counters.clear()
    compiled = generate(lively_model, **inputs, compile_decoding=_compiled(backend), **options)
    assert torch.equal(compiled, today)
    # one graph for all decode steps (fullgraph=True would have raised at a break), nothing recompiled per token
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_scene_questions_decode_compiled(lively_model, tiny_processor):
    processor, model = tiny_processor, lively_model
    prefix, questions = processor.split_scene_prompt(TEXTS[1:], num_views=2)
    scene = encode_scene(model, **processor(images=[make_views(2, 64, 96, seed=3)], text=prefix, return_tensors="pt"))
    question_inputs = processor(text=questions, return_tensors="pt", padding=True)
    options = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    today = generate(model, scene=scene, **question_inputs, **options)
    torch._dynamo.reset()
    counters.clear()
    compiled = generate(model, scene=scene, compile_decoding=_compiled("eager"), **question_inputs, **options)
    assert torch.equal(compiled, today)
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


# An evaluation's decode calls: full calls and scene calls ("scene", questions about one scene), batches of 1 to 8,
# and budgets that grow the cache (a full call's length is its prompt + budget, a scene call's rounded up to 256):
# the scene call of 250 new tokens (a 30-token scene, its question, 250) needs the next length, 512; a longer one
# would only decode more steps (600 took four fifths of the uncompiled mix's time).
EVALUATION_MIX = [("full", 3, 4), ("scene", 2, 4), ("full", 1, 4), ("scene", 5, 4), ("full", 8, 24), ("scene", 1, 4),
                  ("full", 4, 4), ("scene", 6, 250), ("full", 7, 4), ("scene", 3, 4), ("full", 2, 4), ("scene", 5, 4),
                  ("full", 1, 4), ("scene", 8, 4), ("full", 4, 4)]


def _mix_tokens(model, processor, compile_decoding) -> list[torch.Tensor]:
    """The greedy tokens of every call of `EVALUATION_MIX` (one scene encoded for the scene calls), from the model's
    first call on (the static cache's length an earlier run left on the model is forgotten)."""
    if hasattr(model, "_previous_max_cache_length"):
        del model._previous_max_cache_length
    prefix, _ = processor.split_scene_prompt(TEXTS[1:], num_views=2)
    scene = encode_scene(model, **processor(images=[make_views(2, 64, 96, seed=3)], text=prefix, return_tensors="pt"))
    tokens = []
    for kind, batch, budget in EVALUATION_MIX:
        options = dict(max_new_tokens=budget, min_new_tokens=budget, do_sample=False, compile_decoding=compile_decoding)
        if kind == "full":
            tokens.append(generate(model, **_inputs(processor, batch), **options))
            continue
        questions = [processor.split_scene_prompt([TEXTS[row % 4]], num_views=2)[1][0] for row in range(batch)]
        inputs = processor(text=questions, return_tensors="pt", padding=True)
        tokens.append(generate(model, scene=scene, **inputs, **options))
    return tokens


def test_an_evaluations_mix_of_shapes_compiles_a_few_graphs_not_one_per_shape(lively_model, tiny_processor):
    """The shipped setting (`DECODE_COMPILE_CONFIG`, here with the eager backend) serves an evaluation's mix of batch
    sizes, cache lengths and full / scene calls with at most 5 graphs, each call's tokens those of uncompiled decoding.
    With one graph per shape (`dynamic=False`, the setting before) the same mix stops at dynamo's limit of 8 graphs:
    under `fullgraph=True` an error, which a grounding evaluation of 8 small scenes reached."""
    today = _mix_tokens(lively_model, tiny_processor, "off")
    assert len({tuple(t[0, -4:].tolist()) for t in today}) > 3  # the tokens vary: equality below means something
    shipped = CompileConfig(**{**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None})
    torch._dynamo.reset()
    counters.clear()
    compiled = _mix_tokens(lively_model, tiny_processor, shipped)
    assert all(torch.equal(a, b) for a, b in zip(compiled, today, strict=True))
    assert 3 <= counters["stats"]["unique_graphs"] <= 5 and not counters["graph_break"]

    per_shape = CompileConfig(**{**DECODE_COMPILE_CONFIG, "dynamic": False, "backend": "eager", "mode": None})
    torch._dynamo.reset()
    with pytest.raises(torch._dynamo.exc.FailOnRecompileLimitHit):
        _mix_tokens(lively_model, tiny_processor, per_shape)
    torch._dynamo.reset()


def test_a_decode_step_makes_no_host_synchronisation(lively_model, tiny_processor):
    model = lively_model
    inputs = _inputs(tiny_processor, 2)

    def per_token(**options) -> dict:
        def syncs(new_tokens: int) -> HostSyncCounter:
            budget = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            # the compiled step's code, run eagerly so it can be counted: the static cache generate lends a compiled call
            with HostSyncCounter(where=True) as counter, static_cache_pool(model).lending():
                cache = lent_static_cache(model, budget, inputs["input_ids"].shape[1])
                model.generate(**inputs, **budget, past_key_values=cache, **options)
            return counter

        four, eight = syncs(4), syncs(8)
        def short(place: str) -> str:  # "generation/utils.py" of ".../transformers/generation/utils.py:395"
            return "/".join(place.replace("\\", "/").rsplit(":", 1)[0].split("/")[-2:])

        return {(name, short(place)): (count - four.places.get((name, place), 0)) / 4
                for (name, place), count in eight.places.items() if count != four.places.get((name, place), 0)}

    # Budget: 1 per token, transformers' StopCheck (`unfinished_sequences.max() == 0`: whether to go on), which
    # generate needs to stop at EOS. Nothing in the model's decode forward.
    assert per_token() == {("aten._local_scalar_dense", "generation/utils.py"): 1.0}
    # with a task's answer-end rule (what predict, evaluate and the Space use): + its read of the new tokens
    criteria = StoppingCriteriaList([AnswerEndCriteria(tiny_processor.tokenizer, inputs["input_ids"].shape[1], "dict")])
    assert per_token(stopping_criteria=criteria) == {("aten._local_scalar_dense", "generation/utils.py"): 1.0,
                                                     ("Tensor.tolist", "utils/generic.py"): 1.0}


def test_the_option_is_checked_by_name(build_model):
    cpu = torch.device("cpu")
    assert decode_compile_config("auto", cpu) is None and decode_compile_config(False, cpu) is None
    assert decode_compile_config("auto", torch.device("cuda")).mode == "reduce-overhead"
    # "on": the compiled step, decoding in the static cache `generate` lends from the model's pool
    assert list(compiled_decoding_kwargs("on", cpu, {})) == ["compile_config"]
    model = build_model()
    with static_cache_pool(model).lending():
        lent = lent_static_cache(model, {"max_new_tokens": 4}, 10)
    assert isinstance(lent, StaticCache) and {(type(layer), layer.max_cache_len) for layer in lent.layers} == {
        (PooledStaticLayer, 256)}
    with pytest.raises(ValueError, match=r"^compile_decoding='fast': expected one of \('auto', 'on', 'off'\)"):
        decode_compile_config("fast", cpu)
    with pytest.raises(ValueError, match=r"^compile_decoding needs cache_implementation='static', got 'dynamic'"):
        compiled_decoding_kwargs(True, cpu, {"cache_implementation": "dynamic"})
    with pytest.raises(ValueError, match=r"^compile_decoding needs generate's own static cache"):
        compiled_decoding_kwargs(True, cpu, {"past_key_values": object()})


def test_the_counter_sees_each_kind_of_read():
    values = torch.arange(4)
    with HostSyncCounter() as counter:
        values.sum().item()
        values.tolist()
        bool(values.any())
        values.nonzero()
        values.cpu()
        values.to("cpu")
        values.to(values.device)  # a device taken from a tensor: the GPU's own on a GPU, not a copy to the host
        values[values > 1]  # boolean indexing: nonzero underneath
        values[values > 1] = 0
    assert counter.counts == {"aten._local_scalar_dense": 2, "Tensor.tolist": 1, "aten.nonzero": 1, "Tensor.cpu": 1,
                              "Tensor.to(cpu)": 1, "aten.index(bool mask)": 1, "aten.index_put_(bool mask)": 1}


def test_the_front_ends_option_and_the_generators_setting(lively_model, tiny_processor, tmp_path):
    """evaluate compiles on CUDA by default, predict does not (`--compile-decoding` switches either); the evaluation's
    generator keeps its setting and passes it to each `generate` call."""
    import argparse

    from gap_mllm.cli.main import argument_adder
    from gap_mllm.evaluation.generation import BatchGenerator, Request
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    def parse(command, *argv):
        parser = argparse.ArgumentParser()
        argument_adder(command)(parser)
        return parser.parse_args(argv).compile_decoding

    assert parse("evaluate", "--task", "grounding", "--data", "d", "--model", "m", "--out", "o") == "auto"
    example = ("--task", "detection", "--example", "synthetic room A")
    assert (parse("predict", *example), parse("predict", *example, "--compile-decoding", "on")) == ("off", "on")
    generator = BatchGenerator(save_tiny_checkpoint(tmp_path / "tiny"), compile_decoding="on")
    assert generator.compile_decoding == "on"
    with pytest.raises(ValueError, match=r"^compile_decoding='yes'"):
        BatchGenerator.__init__(generator, tmp_path / "tiny", compile_decoding="yes")

    generator = BatchGenerator.from_model(lively_model, tiny_processor)
    assert generator.compile_decoding == "off"
    generator.compile_decoding = _compiled("eager")
    torch._dynamo.reset()
    counters.clear()
    generator.generate([Request(images=make_views(1, 64, 96), prompt="<image>" + TEXTS[0], max_new_tokens=3)])
    assert counters["stats"]["unique_graphs"] == 1  # the generator's setting compiled the decode step
