"""generate(): cached == uncached greedy tokens, one geometry-encoder call per call, beam expansion; with the package's
`gap_mllm.generation.generate`, a token budget past the model's context is lowered with a warning on both paths (full
prompt and scene reuse), counted in M-RoPE positions, and a prompt past the context, an unfittable minimum or a context
too short for the task's shortest whole answer is refused."""

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from gap_mllm import checks
from gap_mllm.checks import highest_prompt_position
from gap_mllm.generation import generate
from gap_mllm.modeling_gap_mllm import GEOMETRY_INPUT_NAMES
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views
from .test_scene_reuse import encode


def _count_encoder_calls(model):
    calls = []
    model.geometry_encoder.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_cached_and_uncached_greedy_decoding_agree(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((3,))
    common = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, output_logits=True, return_dict_in_generate=True)
    calls = _count_encoder_calls(model)
    cached = model.generate(**inputs, use_cache=True, **common)
    assert len(calls) == 1, "the geometry encoder must run once per generate() call (prefill)"
    uncached = model.generate(**inputs, use_cache=False, **common)
    # transformers' generate encodes the images once before the prefill (get_image_features), cache or not: every
    # uncached step re-reads the full prompt with those features
    assert len(calls) == 2
    assert cached.sequences.shape[1] == inputs["input_ids"].shape[1] + 12
    assert torch.equal(cached.sequences, uncached.sequences)
    # the logits too, so that a wrong M-RoPE position in cached steps cannot hide behind a repeated argmax
    for step, (a, b) in enumerate(zip(cached.logits, uncached.logits)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=f"step {step}")


def test_generation_matches_a_manual_greedy_loop(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((2,))
    generated = model.generate(**inputs, max_new_tokens=5, min_new_tokens=5, do_sample=False)
    ids = inputs["input_ids"]
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "mm_token_type_ids")}
    for _ in range(5):
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                           mm_token_type_ids=(ids == model.config.image_token_id).int(), **extra).logits
        ids = torch.cat([ids, logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(generated, ids)


def test_geometry_inputs_are_dropped_after_prefill(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((2,))
    later = model.prepare_inputs_for_generation(
        inputs["input_ids"], past_key_values=None, is_first_iteration=False, use_cache=True,
        **{k: v for k, v in inputs.items() if k != "input_ids"},
    )
    assert not any(name in later for name in GEOMETRY_INPUT_NAMES)


def test_expansion_repeats_whole_samples(build_model, make_inputs):
    """num_return_sequences / beam search expand per sample (transformers' generate expands the image features it
    encoded before the prefill, sample by sample): rows 2b and 2b+1 start as sample b's forward does."""
    model = build_model()
    batch = make_inputs((1, 3))
    with torch.no_grad():
        reference = model(**batch).logits[:, -1]
    out = model.generate(**batch, num_beams=2, num_return_sequences=2, do_sample=False, max_new_tokens=2, min_new_tokens=2,
                         output_logits=True, return_dict_in_generate=True)
    for row in range(4):
        torch.testing.assert_close(out.logits[0][row], reference[row // 2], atol=1e-5, rtol=1e-5)


def test_beam_search_runs_with_several_views(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs((2, 1))
    out = model.generate(**inputs, num_beams=2, num_return_sequences=2, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 4


# ------------------------------------------------------------------------------------------- the model's context


@pytest.fixture
def short_context(tiny_processor, monkeypatch):
    """A tiny model whose context ends at 40 positions, and a 2-view prompt: 41 tokens ending at M-RoPE
    position 34 (the visual tokens of a view share positions)."""
    model, _ = build_tiny_model(processor=tiny_processor, seed=2)
    model.config.text_config.max_position_embeddings = 40
    monkeypatch.setattr(checks, "_WARNED_BUDGETS", set())
    frames = make_views(2, seed=13)
    full = tiny_processor(images=frames, text="Where is the chair?", return_tensors="pt")
    assert full["input_ids"].shape[1] == 41 and checks.highest_prompt_position(
        model, full["input_ids"], full["attention_mask"], full["mm_token_type_ids"], full["image_grid_thw"]) == 34
    return model, frames, full


def test_a_budget_past_the_context_is_lowered_with_a_warning_in_both_generate_paths(tiny_processor, short_context, caplog):
    model, frames, full = short_context
    with caplog.at_level(logging.WARNING):
        out = generate(model, **full, max_new_tokens=100, do_sample=False)
    assert out.shape[1] == 41 + 5  # positions 35..39: the 5 that exist
    assert "max_new_tokens=100 would pass the model's context of 40 positions: the prompt ends at position 34, " \
           "so at most 5 new tokens are generated" in caplog.text
    prefix, suffix = tiny_processor.split_scene_prompt("Where is the chair?", num_views=2)
    scene = encode(model, tiny_processor, frames, prefix)
    question = tiny_processor(text=suffix, return_tensors="pt")
    from_scene = generate(model, scene=scene, **question, max_new_tokens=100, do_sample=False)
    assert torch.equal(from_scene[0, question["input_ids"].shape[1]:], out[0, 41:])  # same 5 tokens


def test_positions_not_token_counts_decide(short_context):
    model, _, full = short_context
    model.config.text_config.max_position_embeddings = 38  # fewer positions than the prompt's 41 tokens
    out = generate(model, **full, max_new_tokens=2, do_sample=False)
    assert out.shape[1] == 43


def test_a_prompt_past_the_context_or_an_unfittable_minimum_is_refused(tiny_processor, short_context):
    model, frames, full = short_context
    with pytest.raises(ValueError, match=r"at most 5 new tokens fit in the model's context of 40 positions, but min_new_tokens=6"):
        generate(model, **full, max_new_tokens=6, min_new_tokens=6)
    model.config.text_config.max_position_embeddings = 30
    with pytest.raises(ValueError, match=r"the prompt ends at position 34 \(41 tokens; visual tokens share positions\), "
                                         r"leaving no room in the model's context of 30 positions"):
        generate(model, **full, max_new_tokens=1)
    prefix, _ = tiny_processor.split_scene_prompt("Where is the chair?", num_views=2)
    model.config.text_config.max_position_embeddings = 20
    with pytest.raises(ValueError, match=r"the scene prefix ends at position 23 .* context of 20 positions"):
        encode(model, tiny_processor, frames, prefix)


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model()


def test_a_context_too_short_for_the_shortest_answer_is_refused_naming_both_numbers(tiny):
    model, processor = tiny
    frame = PIL.Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8))
    short = processor(images=[[frame]], task="grounding", query="x", return_tensors="pt")
    highest = highest_prompt_position(model, short["input_ids"], short["attention_mask"], short["mm_token_type_ids"],
                                      short["image_grid_thw"])
    limit = model.config.get_text_config().max_position_embeddings
    # a query that leaves 20 positions (one token an "x" for the tiny tokenizer): fewer than the shortest answer's
    inputs = processor(images=[[frame]], task="grounding", query="x" * (limit - 20 - highest), return_tensors="pt")
    shortest = len(processor.tokenizer('{"bbox_3d": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]}',
                                       add_special_tokens=False)["input_ids"])
    assert shortest > 20
    with pytest.raises(ValueError, match=rf"^the prompt ends at position {limit - 21}, so at most 20 new tokens fit in "
                                         rf"the model's context of {limit} positions, fewer than the {shortest} that "
                                         r"the shortest whole grounding answer needs; use fewer"):
        generate(model, **inputs, **processor.generation_kwargs("grounding", inputs))
