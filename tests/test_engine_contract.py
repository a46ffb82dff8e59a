"""The engine contract: GAP-MLLM = a STOCK Qwen3-VL fed `encode_images(model, ...)` the way vLLM feeds `image_embeds`.

vLLM's Qwen3-VL (0.33.0, `Qwen3VLForConditionalGeneration._compute_deepstack_embeds`) takes one
`[tokens_i, (1 + L) · hidden]` tensor per image, concatenates the images, `torch.split`s the columns into the main
level (`hidden`) and the DeepStack levels (`L · hidden`, viewed as `[tokens, L, hidden]`), scatters the main level
into the `<|image_pad|>` embeddings and adds DeepStack level k after decoder layer k. These tests do exactly that on a
stock `transformers.Qwen3VLForConditionalGeneration` holding the GAP model's LLM (and ViT) weights, through its public
hooks, and compare with `GapMllmForConditionalGeneration` on the same processor inputs (CPU, float32).
"""

import pytest
import torch
from transformers import Qwen3VLForConditionalGeneration
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from gap_mllm.speedups import encode_images

# fp32 on the CPU: the two paths run the same operations on the same numbers, in a different grouping
# (per-image vs concatenated tensors), so they agree to float32 round-off.
LOGITS_ATOL = 1e-5


def stock_qwen3_vl_from(model) -> Qwen3VLForConditionalGeneration:
    """A fresh stock Qwen3-VL (not the batched subclass GAP uses) holding the weights of `model`'s Qwen3-VL part,
    strictly."""
    stock = Qwen3VLForConditionalGeneration(model.config.to_qwen3_vl_config())
    stock.load_state_dict(model.qwen3_vl_state_dict(), strict=True)
    assert type(stock.model).__name__ == "Qwen3VLModel"  # stock class, not GapMllmQwen3VLModel
    stock.generation_config = model.generation_config
    return stock.eval()


def split_like_vllm(encoded) -> tuple[torch.Tensor, torch.Tensor]:
    """`(main [Σ tokens, hidden], deepstack [L, Σ tokens, hidden])` from the wide per-image tensors, as vLLM splits."""
    wide = torch.cat(encoded.embeddings, dim=0)
    hidden, levels = encoded.hidden_size, encoded.num_deepstack_levels
    assert wide.shape[-1] == (1 + levels) * hidden
    main, multiscale = torch.split(wide, [hidden, levels * hidden], dim=-1)
    deepstack = multiscale.reshape(wide.shape[0], levels, hidden).permute(1, 0, 2)
    return main, deepstack


def as_encoder_outputs(main, deepstack, image_grid_thw, merge: int) -> dict:
    """The stock `mm_encoder_outputs={"image": ...}` hook: per-image tuples of each level."""
    sizes = (image_grid_thw.prod(-1) // merge**2).tolist()
    return {"image": BaseModelOutputWithDeepstackFeatures(
        pooler_output=torch.split(main, sizes), deepstack_features=[torch.split(level, sizes) for level in deepstack])}


def language_model_logits(stock, inputs, main, deepstack):
    """Engine-style forward at the language-model level: scatter the main level into the image-pad embeddings,
    M-RoPE positions from `image_grid_thw`, DeepStack levels added after decoder layers 0..L-1."""
    input_ids = inputs["input_ids"]
    image_mask = input_ids == stock.config.image_token_id
    embeds = stock.get_input_embeddings()(input_ids)
    embeds = embeds.masked_scatter(image_mask[..., None].expand_as(embeds), main.to(embeds.dtype))
    position_ids, _ = stock.model.get_rope_index(input_ids, inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                                                  attention_mask=inputs["attention_mask"])
    hidden = stock.model.language_model(inputs_embeds=embeds, attention_mask=inputs["attention_mask"], position_ids=position_ids,
                                        visual_pos_masks=image_mask, deepstack_visual_embeds=list(deepstack)).last_hidden_state
    return stock.lm_head(hidden)


@pytest.mark.parametrize("use_geometry", [True, False], ids=["gap", "no_geometry"])
@pytest.mark.parametrize("view_counts", [(1,), (2,), (4,), (2, 3)], ids=["1view", "2views", "4views", "batch_2_3views"])
def test_stock_qwen3_vl_with_encoded_images_gives_gap_logits(build_model, make_inputs, view_counts, use_geometry):
    model = build_model(use_geometry=use_geometry, seed=3)
    stock = stock_qwen3_vl_from(model)
    inputs = make_inputs(view_counts=view_counts, seed=5)
    merge = model.config.vision_config.spatial_merge_size
    with torch.no_grad():
        expected = model(**inputs).logits
        encoded = encode_images(model, **inputs)
        assert encoded.views_per_sample == view_counts
        assert [e.shape for e in encoded.embeddings] == [
            (int(t * h * w) // merge**2, encoded.width) for t, h, w in inputs["image_grid_thw"].tolist()]
        main, deepstack = split_like_vllm(encoded)
        text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
        via_hook = stock(**text_inputs, mm_encoder_outputs=as_encoder_outputs(main, deepstack, inputs["image_grid_thw"], merge)).logits
        via_layers = language_model_logits(stock, inputs, main, deepstack)
    valid = inputs["attention_mask"].bool()  # left padding of the batch: positions that are no token are not compared
    for name, logits in (("mm_encoder_outputs", via_hook), ("language model + deepstack", via_layers)):
        difference = (logits - expected).abs()[valid].max().item()
        assert difference <= LOGITS_ATOL, f"{name}: max |Δlogit| = {difference:.3g}"
    assert expected[valid].abs().max() > 1e-2  # the comparison is on real numbers, not zeros
    with torch.no_grad():  # and it can fail: without the DeepStack levels the stock model's logits move
        without_deepstack = language_model_logits(stock, inputs, main, torch.zeros_like(deepstack))
    assert (without_deepstack - expected).abs()[valid].max() > 100 * LOGITS_ATOL


def test_encoded_images_carry_the_fusion(build_model, make_inputs):
    """The embeddings of a geometry model differ from the plain ViT output (the fused levels are what is sent)."""
    model = build_model(seed=3)
    inputs = make_inputs(view_counts=(2,), seed=5)
    with torch.no_grad():
        fused = encode_images(model, **inputs)
        plain = model.model.get_vision_features(inputs["pixel_values"], inputs["image_grid_thw"])
    hidden = fused.hidden_size
    for level, plain_level in enumerate([plain.pooler_output, *plain.deepstack_features]):
        columns = slice(level * hidden, (level + 1) * hidden)
        assert not torch.allclose(fused.embeddings[0][:, columns], plain_level[0], atol=1e-4), f"level {level} is not fused"


def test_encode_images_refuses_to_drop_geometry(build_model, make_inputs):
    model = build_model(seed=3)
    inputs = make_inputs(view_counts=(2,))
    inputs.pop("geometry_pixel_values")
    with pytest.raises(ValueError, match="geometry_pixel_values"):
        encode_images(model, **inputs)


@pytest.fixture(scope="module")
def mini():
    """The embedded GAP-MLLM-Mini (trained: its greedy answers depend on the image tokens, unlike a random tiny model's)."""
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
    from gap_mllm.cli.scenes import synthetic_scene
    from gap_mllm.mini import default_model_path

    path = default_model_path()
    scene = synthetic_scene(seed=0)
    return (GapMllmForConditionalGeneration.from_pretrained(path).eval(), GapMllmProcessor.from_pretrained(path),
            scene.views, scene.example_inputs["grounding"]["query"])


@pytest.mark.parametrize("view_counts", [(1,), (2,), (4,), (4, 2)], ids=["1view", "2views", "4views", "batch_4_2views"])
def test_stock_qwen3_vl_greedy_tokens_equal_gap(mini, view_counts):
    model, processor, frames, query = mini
    stock = stock_qwen3_vl_from(model)
    inputs = processor(images=[frames[:n] for n in view_counts], task="grounding_stage2", query=[query] * len(view_counts),
                       return_tensors="pt")
    merge = model.config.vision_config.spatial_merge_size
    new_tokens = 16
    options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)  # every row compared on 16 tokens
    text_inputs = {k: inputs[k] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "image_grid_thw")}
    with torch.no_grad():
        expected = model.generate(**inputs, **options, output_scores=True, return_dict_in_generate=True)
        main, deepstack = split_like_vllm(encode_images(model, **inputs))
        got = stock.generate(**text_inputs, mm_encoder_outputs=as_encoder_outputs(main, deepstack, inputs["image_grid_thw"], merge),
                             **options)
        without_deepstack = stock.generate(
            **text_inputs, mm_encoder_outputs=as_encoder_outputs(main, torch.zeros_like(deepstack), inputs["image_grid_thw"], merge),
            **options, output_scores=True, return_dict_in_generate=True)
    prompt_length = inputs["input_ids"].shape[1]
    assert expected.sequences.shape[1] == prompt_length + new_tokens
    assert torch.equal(got, expected.sequences), (
        f"stock {got[:, prompt_length:].tolist()} vs GAP {expected.sequences[:, prompt_length:].tolist()}")
    # the comparison can fail: without the DeepStack levels the same stock model scores the first answer token
    # differently (its greedy token may still agree: the Mini's answers are short and formulaic)
    scored = expected.scores[0].isfinite()  # min_new_tokens masks the end-of-text tokens with -inf on both
    first_step_change = (without_deepstack.scores[0] - expected.scores[0])[scored].abs().max().item()
    assert first_step_change > 1e-3, first_step_change
