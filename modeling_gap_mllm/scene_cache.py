"""Scene reuse: encode a multi-view scene once, answer many questions from its cached prefix.

A GAP-MLLM prompt is `system turn, user turn start, view_0 … view_{V-1}, question, <|im_end|>, assistant
header`. Everything up to and including the last view's `<|vision_end|>` (the *scene prefix*) is the same
for every question about one scene, and it is where nearly all the work is: the geometry encoder, the
vision tower, the fusion and the prefill of thousands of visual tokens. `encode_scene` runs that once
and keeps the prefix's KV cache; `generate_from_scene` answers questions from a fresh copy of it:

    prefix, questions = processor.split_scene_prompt(["Where is the chair?", "How many lamps?"], num_views=4)
    scene = model.encode_scene(**processor(images=frames, text=prefix, return_tensors="pt"))
    question_inputs = processor(text=questions, return_tensors="pt")
    out = model.generate(scene=scene, **question_inputs, max_new_tokens=64, do_sample=False)
    answers = processor.decode_generated(out, input_ids=question_inputs["input_ids"])

Exactness: the question tokens see the same keys/values, positions and masks as in one full `generate`
call, so greedy answers are the same token for token (logits agree to float rounding: the prefix is
prefilled in one matmul instead of as part of a longer one). Several questions are batched against one
scene by putting each row's padding *between* the prefix and its question (masked, and skipped by the
position ids), so every row sees exactly the unpadded layout of its own full call.

Several scenes in one call: `scene=[scene_a, scene_a, scene_b]` gives each question row its own scene (one per
row), so questions about different scenes decode as one batch (an evaluation's stage 2: each query's own frames).
Rows of shorter prefixes are padded on the left (masked, skipped by the position ids, their cache slots zeros), the
layout a batched full call gives them, and each row keeps its scene's M-RoPE offset.

Copy-on-use: a `GapMllmScene` holds plain tensors and is never written to; each `generate` builds its own
`DynamicCache` from them (expanded to the question batch), so one scene serves any number of calls.

Ownership: a scene records the identity of the model that encoded it (model_identity.py: the model object,
a digest of its configuration, of its parameters and buffers (storage, in-place versions and a probe of their
values, so that a fused optimizer step or a write through `.data` is seen) and of its PEFT adapter state), and
`generate(scene=...)` refuses a scene of another model, or of this model after its weights, buffers or active
adapters changed, with a ValueError saying which; a cache of other head sizes is named by its shapes. What the
identity cannot see (e.g. a replaced `forward`) is listed in model_identity.py: re-encode after such changes. The context rules of a full
`generate` apply too (generation_checks.py): a prefix + question past the context is refused, a budget that
would pass it is lowered with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationMixin, StaticCache

from .compiled_decoding import compiled_decoding_kwargs
from .generation_checks import check_prompt_fits, check_token_ids, fit_budget_to_context, new_token_budget
from .model_identity import ModelIdentity, identity_mismatch, model_identity
from .static_cache_pool import pooled_static_cache, static_cache_length

# Inputs a scene already holds: giving them again to generate(scene=...) would be ambiguous.
SCENE_OWNED_INPUTS = (
    "pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "geometry_pixel_values",
    "geometry_views_per_sample", "geometry_features", "past_key_values", "inputs_embeds", "position_ids",
)  # fmt: skip


@dataclass(frozen=True)
class GapMllmScene:
    """The encoded scene prefix of one multi-view sample (see the module docstring).

    Attributes:
        prefix_ids: `[1, P]` token ids of the prefix (system turn … last `<|vision_end|>`).
        key_values: per decoder layer, `(key, value)` each `[1, H_kv, P, head_dim]`.
        rope_deltas: `[1, 1]` M-RoPE offset of the text after the views (Qwen3-VL `get_rope_index`).
        image_grid_thw: `[V, 3]` patch grid of every view.
        fusion_gates: per fusion level, the `[N_visual]` gate shares (when encoded with `output_gates=True`
            and the gated method), else None.
        model_identity: the model that encoded it (`model_identity.ModelIdentity`); `generate(scene=...)`
            accepts the scene only from that model with the same configuration and weights.
    """

    prefix_ids: torch.LongTensor
    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    rope_deltas: torch.LongTensor
    image_grid_thw: torch.LongTensor
    fusion_gates: tuple[torch.Tensor, ...] | None = None
    model_identity: ModelIdentity | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.prefix_ids.shape[1])

    @property
    def num_views(self) -> int:
        return int(self.image_grid_thw.shape[0])

    @property
    def device(self) -> torch.device:
        return self.prefix_ids.device

    @property
    def nbytes(self) -> int:
        """Bytes held by the cached keys and values (what a store of scenes has to budget for)."""
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.key_values)

    def cache_for(self, batch_size: int, text_config,
                  static_cache: StaticCache | None = None) -> DynamicCache | StaticCache:
        """A cache holding the prefix for `batch_size` rows; the scene's tensors are only read. A new `DynamicCache`,
        or `static_cache` (empty) with the prefix copied in (compiled decoding)."""
        rows = [(k.expand(batch_size, -1, -1, -1), v.expand(batch_size, -1, -1, -1)) for k, v in self.key_values]
        return _cache_holding(rows, text_config, static_cache)


def _cache_holding(layers, text_config, static_cache: StaticCache | None) -> DynamicCache | StaticCache:
    """A `DynamicCache` of `layers` (per decoder layer, `(keys, values)` `[B, H_kv, P, head_dim]`), or the empty
    `static_cache` with them copied in (compiled decoding)."""
    if static_cache is None:
        return DynamicCache(layers, config=text_config)
    for layer, (keys, values) in enumerate(layers):
        static_cache.update(keys, values, layer)
    return static_cache


def rows_cache(scenes: list[GapMllmScene], text_config,
               static_cache: StaticCache | None = None) -> DynamicCache | StaticCache:
    """A cache holding, in row `r`, the prefix of `scenes[r]`, right-aligned to the longest prefix (`P`): keys and
    values `[B, H_kv, P, head_dim]`, zeros left of a shorter prefix (masked by the caller). One scene for every row is
    `GapMllmScene.cache_for` (its tensors expanded, not copied). With `static_cache`, that (empty) cache filled."""
    if all(scene is scenes[0] for scene in scenes):
        return scenes[0].cache_for(len(scenes), text_config, static_cache)
    width = max(scene.num_tokens for scene in scenes)
    layers = []
    for layer in range(len(scenes[0].key_values)):
        keys, values = scenes[0].key_values[layer]
        stacked_keys = keys.new_zeros(len(scenes), keys.shape[1], width, keys.shape[3])
        stacked_values = values.new_zeros(len(scenes), values.shape[1], width, values.shape[3])
        for row, scene in enumerate(scenes):
            stacked_keys[row, :, width - scene.num_tokens :] = scene.key_values[layer][0][0]
            stacked_values[row, :, width - scene.num_tokens :] = scene.key_values[layer][1][0]
        layers.append((stacked_keys, stacked_values))
    return _cache_holding(layers, text_config, static_cache)


def scene_prefix_length(input_ids: torch.LongTensor, vision_end_token_id: int) -> int:
    """Tokens up to and including the last `<|vision_end|>` of a `[1, L]` prompt (0 when it has no view)."""
    positions = (input_ids[0] == vision_end_token_id).nonzero()
    return 0 if positions.numel() == 0 else int(positions[-1]) + 1


def prefix_position_ids(vlm_model, prefix_ids, mm_token_type_ids, image_grid_thw):
    """`([4, 1, P] position ids, [1, 1] rope deltas)` of a prefix, in the layout `generate` builds for a full
    prompt (Qwen3-VL: row 0 the text positions, rows 1-3 the M-RoPE (t, h, w) positions)."""
    vision, deltas = vlm_model.get_rope_index(prefix_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw)
    text = torch.arange(prefix_ids.shape[1], device=prefix_ids.device).view(1, 1, -1)
    return torch.cat([text, vision]), deltas


@torch.no_grad()
def encode_scene(
    model,
    input_ids: torch.LongTensor,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.LongTensor,
    attention_mask: torch.Tensor | None = None,
    mm_token_type_ids: torch.IntTensor | None = None,
    output_gates: bool = False,
    **image_inputs,
) -> GapMllmScene:
    """Run the geometry encoder, the vision tower, the fusion and the prefill of the scene prefix once.

    Args:
        model: a `GapMllmForConditionalGeneration`.
        input_ids: `[1, L]` a prompt holding every view of ONE sample (processor output); tokens after
            the last `<|vision_end|>` (a question) are ignored, so the full prompt of any question works.
        pixel_values, image_grid_thw, mm_token_type_ids: as from `GapMllmProcessor`.
        attention_mask: `[1, L]`, all ones (one sample has no padding).
        output_gates: keep the fusion gates in the scene (`fusion_gates`).
        **image_inputs: `geometry_pixel_values`, `geometry_views_per_sample` or precomputed `geometry_features`.

    Returns:
        a `GapMllmScene`.
    """
    if input_ids is None or input_ids.ndim != 2 or input_ids.shape[0] != 1:
        shape = None if input_ids is None else tuple(input_ids.shape)
        raise ValueError(
            f"encode_scene takes the prompt of ONE scene (input_ids [1, L]), got input_ids of shape {shape}; "
            "encode each scene separately and batch the questions against it."
        )
    if pixel_values is None or image_grid_thw is None:
        raise ValueError("encode_scene needs the views: pass pixel_values and image_grid_thw (GapMllmProcessor).")
    if attention_mask is not None and not bool(attention_mask.all()):
        raise ValueError("encode_scene got a padded prompt (attention_mask has zeros); pass one unpadded sample.")
    check_token_ids(input_ids, model.get_input_embeddings().num_embeddings)
    vlm_config = model.config.vlm_config
    length = scene_prefix_length(input_ids, vlm_config.vision_end_token_id)
    if length == 0:
        raise ValueError("encode_scene: the prompt has no <|vision_end|> token, so no view to encode.")
    prefix_ids = input_ids[:, :length]
    if mm_token_type_ids is None:
        mm_token_type_ids = (prefix_ids == vlm_config.image_token_id).int()
    mm_token_type_ids = mm_token_type_ids[:, :length]
    position_ids, rope_deltas = prefix_position_ids(model.vlm.model, prefix_ids, mm_token_type_ids, image_grid_thw)
    check_prompt_fits(model, int(position_ids[1:].max()), length, what="the scene prefix")
    identity = model_identity(model)  # before the forward: what the cache is computed with
    text_config = model.config.get_text_config()
    outputs = model(
        input_ids=prefix_ids,
        position_ids=position_ids,
        pixel_values=pixel_values,
        image_grid_thw=image_grid_thw,
        mm_token_type_ids=mm_token_type_ids,
        past_key_values=DynamicCache(config=text_config),
        use_cache=True,
        logits_to_keep=1,  # the prefix's logits are never used: skip the vocabulary projection
        output_gates=output_gates,
        **image_inputs,
    )
    key_values = tuple((layer.keys, layer.values) for layer in outputs.past_key_values.layers)
    return GapMllmScene(
        prefix_ids=prefix_ids,
        key_values=key_values,
        rope_deltas=rope_deltas,
        image_grid_thw=image_grid_thw,
        fusion_gates=outputs.fusion_gates,
        model_identity=identity,
    )


def check_scene_for_model(model, scene) -> None:
    """ValueError unless `scene` is a `GapMllmScene` that `model`, as it is now, encoded: its cache has this
    model's layer count, key/value heads, head size, dtype and device type, and its recorded identity is
    this model's (same object, configuration and weights; model_identity.py)."""
    if type(scene).__name__ != "GapMllmScene" or not hasattr(scene, "key_values"):  # the package's or a remote-code copy's class
        raise ValueError(
            f"scene must be a GapMllmScene from model.encode_scene(...), got {type(scene).__name__} {scene!r:.60}"
        )
    text_config = model.config.get_text_config()
    layers = len(model.vlm.model.language_model.layers)
    heads = text_config.num_key_value_heads
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    key = scene.key_values[0][0] if scene.key_values else None
    found = "no layers" if key is None else f"{len(scene.key_values)} layers of keys {list(key.shape)} {key.dtype} on {key.device}"
    if (key is None or len(scene.key_values) != layers or key.ndim != 4 or (key.shape[1], key.shape[3]) != (heads, head_dim)
            or key.dtype != model.dtype or key.device.type != model.device.type):
        raise ValueError(
            f"this scene was encoded by a different model or placement ({found}); this model needs {layers} layers of "
            f"keys [1, {heads}, P, {head_dim}] (key/value heads, head size) in {model.dtype} on {model.device}: "
            "encode the scene with this model."
        )
    if scene.model_identity is None:
        raise ValueError("this scene records no model identity (it was not made by model.encode_scene); encode it "
                         "with this model.")
    mismatch = identity_mismatch(scene.model_identity, model)
    if mismatch is not None:
        raise ValueError(f"this scene cannot be used with this model: {mismatch}. Encode the scene again with "
                         "model.encode_scene(...).")


def _check_generation_options(model, kwargs: dict) -> None:
    given = [name for name in SCENE_OWNED_INPUTS if kwargs.get(name) is not None]
    if given:
        raise ValueError(
            f"generate(scene=...) got {', '.join(given)}: the scene already holds the views and their cache; pass "
            "only the question tokens (input_ids, attention_mask), e.g. processor(text=questions)."
        )
    config = kwargs.get("generation_config") or model.generation_config
    for name, allowed in (("num_beams", 1), ("num_return_sequences", 1)):
        value = kwargs.get(name, getattr(config, name, allowed))
        if value not in (None, allowed):
            raise ValueError(
                f"generate(scene=...) supports {name}={allowed} only (got {value}): batch the questions instead, "
                "or run a full generate call without a scene."
            )
    if kwargs.get("use_cache", getattr(config, "use_cache", True)) is False:
        raise ValueError("generate(scene=...) needs use_cache=True: the scene IS a cache.")


def _row_scenes(scene, batch_size: int) -> list:
    """The scene of each of `batch_size` question rows: `scene` for all, or the list given (one per row)."""
    if not isinstance(scene, (list, tuple)):
        return [scene] * batch_size
    if len(scene) != batch_size:
        raise ValueError(f"generate(scene=[...]) got {len(scene)} scenes for {batch_size} question rows: give one "
                         "scene per row of input_ids (or one scene for all).")
    devices = {str(s.device) for s in scene if hasattr(s, "device")}
    if len(devices) > 1:
        raise ValueError(f"generate(scene=[...]) got scenes on {', '.join(sorted(devices))}: one call decodes on one "
                         "device.")
    return list(scene)


def _row_prefixes(scenes: list, pad_token_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`([B, P] ids, [B, P] mask)` of the rows' scene prefixes, each right-aligned to the longest (`P`), padded on
    the left with `pad_token_id` (mask 0), as a batched full call pads its prompts."""
    if all(s is scenes[0] for s in scenes):
        prefix = scenes[0].prefix_ids.expand(len(scenes), -1)
        return prefix, torch.ones_like(prefix)
    width = max(s.num_tokens for s in scenes)
    ids = scenes[0].prefix_ids.new_full((len(scenes), width), pad_token_id)
    mask = torch.zeros_like(ids)
    for row, s in enumerate(scenes):
        ids[row, width - s.num_tokens :] = s.prefix_ids[0]
        mask[row, width - s.num_tokens :] = 1
    return ids, mask


def _right_align(input_ids, attention_mask, pad_token_id: int):
    """Move each row's padding to its left end (next to the prefix): `[B, Lq]` ids and mask."""
    aligned_ids = torch.full_like(input_ids, pad_token_id)
    aligned_mask = torch.zeros_like(attention_mask)
    width = input_ids.shape[1]
    for row in range(input_ids.shape[0]):
        tokens = input_ids[row][attention_mask[row].bool()]
        if tokens.numel() == 0:
            raise ValueError(f"question {row} is empty (its attention_mask is all zeros).")
        aligned_ids[row, width - tokens.numel() :] = tokens
        aligned_mask[row, width - tokens.numel() :] = 1
    return aligned_ids, aligned_mask


def _static_cache_length(model, kwargs: dict, input_length: int) -> int:
    """Positions of the static cache for a scene call of `input_length` prompt tokens: prompt + token budget, as
    `static_cache_pool.static_cache_length` sizes every static cache of the model (shared with full calls)."""
    budget = new_token_budget(model, kwargs, input_length)
    if budget is None:
        raise ValueError("compile_decoding with a scene needs a token budget (max_new_tokens) to size its static cache.")
    return static_cache_length(model, input_length + budget)


def generate_from_scene(model, scene: GapMllmScene | list[GapMllmScene], input_ids, attention_mask=None,
                        mm_token_type_ids=None, compile_decoding=False, **kwargs):
    """`generate` for question tokens continuing a scene prefix (see the module docstring).

    Args:
        model: the `GapMllmForConditionalGeneration` that encoded `scene`.
        scene: from `encode_scene`; or a list of `B` of them, the scene of each question row.
        input_ids: `[B, Lq]` question tokens (e.g. `processor(text=questions)["input_ids"]`, the suffixes
            of `processor.split_scene_prompt`), padded on either side; `B` questions about this one scene (or
            row `r` about `scene[r]`).
        attention_mask: `[B, Lq]` (1 = token, 0 = padding); default all ones.
        mm_token_type_ids: accepted (processor output) and checked to be text-only.
        compile_decoding: as for `generate` (compiled_decoding.py): the prefix goes into a static cache instead.
        **kwargs: generation options as for `generate` (greedy or sampling; one beam, one sequence per row).

    Returns:
        as `generate`, but continuing the ids given: `[B, Lq + new]` = `input_ids` followed by the new
        tokens (with `return_dict_in_generate=True`, `.sequences` is that tensor), so
        `processor.decode_generated(out, input_ids=input_ids)` gives the answers.
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.shape[1] == 0:
        found = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"generate(scene=...) needs the question tokens as input_ids [B, Lq] with Lq >= 1, got {found}.")
    scenes = _row_scenes(scene, input_ids.shape[0])
    for distinct in {id(s): s for s in scenes}.values():
        check_scene_for_model(model, distinct)
    _check_generation_options(model, kwargs)
    compile_options = compiled_decoding_kwargs(compile_decoding, scenes[0].device, kwargs, scene=True)
    check_token_ids(input_ids, model.get_input_embeddings().num_embeddings)
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape):
        found = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
        raise ValueError(
            f"generate(scene=...): attention_mask has shape {found} but input_ids has {tuple(input_ids.shape)}; "
            "give one mask entry per question token (processor(text=questions) returns both)."
        )
    vlm_config = model.config.vlm_config
    vision_ids = (vlm_config.image_token_id, vlm_config.vision_start_token_id, vlm_config.vision_end_token_id)
    if any(bool((input_ids == token).any()) for token in vision_ids) or (
        mm_token_type_ids is not None and bool(mm_token_type_ids.any())
    ):
        raise ValueError(
            "generate(scene=...) got image tokens in input_ids: pass only the question suffix "
            "(processor.split_scene_prompt), not the full prompt; the scene holds the views."
        )
    device = scenes[0].device
    input_ids = input_ids.to(device)
    attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
    pad_token_id = model.generation_config.pad_token_id
    if pad_token_id is None:
        pad_token_id = model.generation_config.eos_token_id
    if isinstance(pad_token_id, (list, tuple)):
        pad_token_id = pad_token_id[0]
    pad_token_id = 0 if pad_token_id is None else int(pad_token_id)
    aligned_ids, aligned_mask = _right_align(input_ids, attention_mask, pad_token_id)

    prefix, prefix_mask = _row_prefixes(scenes, pad_token_id)
    full_ids = torch.cat([prefix, aligned_ids], dim=1)
    full_mask = torch.cat([prefix_mask, aligned_mask], dim=1)
    # The layout generate builds for a full prompt: text positions count real tokens only (so the middle
    # padding is skipped), M-RoPE positions of text after the views are text positions + the scene's delta.
    text_positions = (full_mask.long().cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    deltas = torch.cat([s.rope_deltas for s in scenes]).to(device)  # [B, 1]: each row its scene's
    position_ids = torch.cat([text_positions[None], (text_positions + deltas)[None].expand(3, -1, -1)])
    fit_budget_to_context(model, kwargs, int(position_ids[1:].max()), full_ids.shape[1], what="the scene prefix + question")
    # what a full prefill leaves behind, for a caller that continues from the returned cache (a tensor of its own,
    # as a full call's: the compiled decode step guards on its strides, and an expanded view made it recompile)
    model.vlm.model.rope_deltas = deltas
    # compiled decoding: an empty static cache from the model's pool (its buffers at the addresses of the call before)
    static_cache = (pooled_static_cache(model, _static_cache_length(model, kwargs, full_ids.shape[1]))
                    if compile_options else None)

    outputs = GenerationMixin.generate(
        model,
        input_ids=full_ids,
        attention_mask=full_mask,
        position_ids=position_ids,
        past_key_values=rows_cache(scenes, model.config.get_text_config(), static_cache),
        **kwargs,
        **compile_options,
    )
    sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
    continued = torch.cat([input_ids, sequences[:, full_ids.shape[1] :]], dim=1)
    if isinstance(outputs, torch.Tensor):
        return continued
    outputs.sequences = continued
    return outputs


__all__ = ["GapMllmScene", "check_scene_for_model", "encode_scene", "generate_from_scene", "scene_prefix_length"]
