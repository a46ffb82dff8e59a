"""The package's generation call: transformers' `generate` plus task answers, compiled decoding and scene reuse.

`generate(model, ...)` is `model.generate(...)` (transformers' own, with standard arguments) after the package's
checks (token ids, the prompt inside the context, the token budget fitted to it: `gap_mllm.checks`), with:

- Task answers: `answer_task=` / `constrained=` add the task's `stopping_criteria` and `logits_processor`
  (`answer_task_kwargs`; what `processor.generation_kwargs(...)` returns), the grammars told the call's budget.
- Compiled decoding: `compile_decoding=` sets `compile_config` with a static cache lent by the model's pool
  (`gap_mllm.speedups.StaticCachePool`: the same addresses on every call, so CUDA graphs replay), passed as
  `past_key_values`.
- Scene reuse: `encode_scene` prefills the views once (`GapMllmScene`); `generate(model, scene=...)` answers many
  questions about it, batched, through a prefilled `past_key_values` (`generate_from_scene`).

A model folder loaded with `trust_remote_code` has none of this: its `generate` is transformers' own (the model doc
shows constrained answers and prefix-cache reuse with standard arguments). Never copied into a model folder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import CompileConfig, DynamicCache, StaticCache

from . import checks, speedups
from .checks import new_token_budget, scene_prefix_length  # noqa: F401 - part of this module's API
from .tasks_gap_mllm import COMPILE_DECODING_CHOICES, resolve_task


# ---- task answers and their token budget
def answer_task_kwargs(answer_task, constrained: bool, input_ids, kwargs: dict) -> dict:
    """`kwargs` (the rest of a `generate` call) with `answer_task`'s decoding settings for the prompt `input_ids`
    `[B, L]`; stopping criteria and logits processors the call gave run before the task's own.

    Raises:
        ValueError: `constrained` without a task, no `tokenizer` in `kwargs`, or an unknown task name (naming it).
    """
    if answer_task is None:
        raise ValueError("generate(constrained=True) needs answer_task=NAME: the task whose answer grammar the answer "
                         "keeps (e.g. answer_task='grounding_stage2')")
    tokenizer = kwargs.get("tokenizer")
    if tokenizer is None:
        raise ValueError(f"generate(answer_task={answer_task!r}) needs tokenizer=... (the processor's tokenizer; a "
                         "pipeline's is pipe.tokenizer): the task's stop rule and grammar read the generated text")
    if not hasattr(input_ids, "shape") or len(input_ids.shape) != 2:
        raise ValueError(f"generate(answer_task={answer_task!r}) needs the prompt's input_ids [B, L]")
    views = kwargs.get("geometry_views_per_sample")
    num_views = [int(n) for n in views] if views is not None else None
    settings = resolve_task(answer_task).generation_kwargs(tokenizer, int(input_ids.shape[-1]), kwargs.pop("max_new_tokens", None),
                                                           constrained, num_views)
    for key in ("stopping_criteria", "logits_processor"):
        given = kwargs.pop(key, None)
        if given and key in settings:
            settings[key] = type(settings[key])([*given, *settings[key]])
        elif given:
            settings[key] = given
    return {**kwargs, **settings}


def budget_to_grammars(model, kwargs: dict, input_length: int | None) -> None:
    """Call `fit_budget(budget)` on each logits processor in `kwargs` that has it (a grammar closing its list at the
    budget), with the budget the call uses (`new_token_budget`). With `input_length` None, `max_length` is not read."""
    processors = [processor for processor in kwargs.get("logits_processor") or () if hasattr(processor, "fit_budget")]
    if not processors:
        return
    if input_length is None:
        config = kwargs.get("generation_config") or model.generation_config
        budget = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    else:
        budget = new_token_budget(model, kwargs, input_length)
    if budget is not None:
        for processor in processors:
            processor.fit_budget(int(budget))


def prepare_token_budget(model, input_ids, kwargs: dict) -> None:
    """Tell the task grammars of a `generate` call (`kwargs`, in place) its token budget, after the prompt `input_ids`
    `[B, L]`, after refusing ids outside the vocabulary and prompts past the context, and lowering a `max_new_tokens`
    past it (`gap_mllm.checks.check_generate_inputs`)."""
    prompt = isinstance(input_ids, torch.Tensor) and input_ids.ndim == 2 and kwargs.get("past_key_values") is None
    if prompt:
        checks.check_generate_inputs(model, input_ids, kwargs)
    budget_to_grammars(model, kwargs, input_ids.shape[1] if prompt else None)


# ---- compiled decoding
# The whole decode step in one CUDA graph; `dynamic=None`: later batch sizes and cache lengths share one symbolic graph
# (a graph per size would reach dynamo's limit of 8 in an evaluation).
DECODE_COMPILE_CONFIG = {"fullgraph": True, "dynamic": None, "mode": "reduce-overhead"}


def decode_compile_config(compile_decoding, device):
    """The transformers `CompileConfig` of the decode step on `device` (a `torch.device` or its name), or None.

    `compile_decoding`: "off" / False / None (uncompiled), "on" / True (compiled on any device), "auto" ("on" on CUDA,
    else "off") or a `CompileConfig` (as given, on any device); ValueError naming the option for any other value.
    """
    if isinstance(compile_decoding, CompileConfig):
        config = CompileConfig(**compile_decoding.to_dict())
        config._compile_all_devices = True  # a config given on purpose compiles on the CPU too (tests)
        return config
    choice = "off" if compile_decoding is None else check_compile_decoding(compile_decoding)
    if choice == "off" or (choice == "auto" and torch.device(device).type != "cuda"):
        return None
    config = CompileConfig(**DECODE_COMPILE_CONFIG)
    config._compile_all_devices = torch.device(device).type != "cuda"  # "on" asked for on purpose
    return config


def check_compile_decoding(value) -> str:
    """`value` as one of `COMPILE_DECODING_CHOICES` (True → "on", False → "off"), or ValueError naming the option."""
    choice = {True: "on", False: "off"}.get(value, value) if isinstance(value, (bool, str)) else value
    if choice not in COMPILE_DECODING_CHOICES:
        raise ValueError(f"compile_decoding={value!r}: expected one of {COMPILE_DECODING_CHOICES}, True, False or a "
                         "transformers CompileConfig.")
    return choice


def compiled_decoding_kwargs(compile_decoding, device, kwargs: dict, scene: bool = False) -> dict:
    """The `generate` options that compile the decode step (`cache_implementation="static"`, `compile_config`; a scene
    call brings its own static cache), or {} when `compile_decoding` leaves it off. `kwargs` are the call's other
    options, checked to allow it (`gap_mllm.checks.check_compiled_decoding_options`)."""
    config = decode_compile_config(compile_decoding, device)
    if config is None:
        return {}
    checks.check_compiled_decoding_options(kwargs, scene)
    return {"compile_config": config}


# ---- scene reuse
@dataclass(frozen=True)
class GapMllmScene:
    """The encoded scene prefix of one multi-view sample, from `encode_scene`; never written, so reusable by any call.

    Attributes:
        prefix_ids: `[1, P]` token ids of the prefix (system turn … last `<|vision_end|>`).
        key_values: per decoder layer, `(key, value)` each `[1, H_kv, P, head_dim]`.
        rope_deltas: `[1, 1]` M-RoPE offset of the text after the views (Qwen3-VL `get_rope_index`).
        image_grid_thw: `[V, 3]` patch grid of every view.
        fusion_gates: per fusion level, the `[N_visual]` gate shares (when encoded with `output_gates=True`
            and the gated method), else None.
        model_identity: the `gap_mllm.checks.ModelIdentity` of the model that encoded it (`generate(model,
            scene=...)` accepts the scene only from that model, unchanged).
    """
    prefix_ids: torch.LongTensor
    key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    rope_deltas: torch.LongTensor
    image_grid_thw: torch.LongTensor
    fusion_gates: tuple[torch.Tensor, ...] | None = None
    model_identity: object | None = None

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
    """A `DynamicCache` of `layers` (`(keys, values)`, `[B, H_kv, P, head_dim]`), or `static_cache` filled with them."""
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


def prefix_position_ids(qwen3_vl_model, prefix_ids, mm_token_type_ids, image_grid_thw):
    """`([4, 1, P] position ids, [1, 1] rope deltas)` of a prefix, in the layout `generate` builds for a full
    prompt (Qwen3-VL: row 0 the text positions, rows 1-3 the M-RoPE (t, h, w) positions)."""
    vision, deltas = qwen3_vl_model.get_rope_index(prefix_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw)
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
    checks.check_scene_prompt(model, input_ids, pixel_values, image_grid_thw, attention_mask)
    config = model.config
    length = scene_prefix_length(input_ids, config.vision_end_token_id)
    prefix_ids = input_ids[:, :length]
    if mm_token_type_ids is None:
        mm_token_type_ids = (prefix_ids == config.image_token_id).int()
    mm_token_type_ids = mm_token_type_ids[:, :length]
    position_ids, rope_deltas = prefix_position_ids(model.model, prefix_ids, mm_token_type_ids, image_grid_thw)
    checks.check_prompt_fits(model, int(position_ids[1:].max()), length, what="the scene prefix")
    identity = checks.model_identity(model)  # before the forward: what the cache is computed with
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


def _row_prefixes(scenes: list, pad_token_id: int) -> tuple[torch.LongTensor, torch.LongTensor]:
    """`([B, P] ids, [B, P] mask)` of the rows' prefixes, left-padded with `pad_token_id` to the longest (`P`)."""
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
        aligned_ids[row, width - tokens.numel() :] = tokens
        aligned_mask[row, width - tokens.numel() :] = 1
    return aligned_ids, aligned_mask


def lent_static_cache(model, kwargs: dict, input_length: int) -> StaticCache:
    """An empty static cache for a compiled call of `input_length` prompt tokens + the token budget, lent by the
    model's pool at the addresses of the call before (`gap_mllm.speedups.pooled_static_cache`)."""
    budget = new_token_budget(model, kwargs, input_length)
    if budget is None:
        raise ValueError("compile_decoding needs a token budget (max_new_tokens) to size its static cache.")
    return speedups.pooled_static_cache(model, input_length + budget)


def generate_from_scene(model, scene: GapMllmScene | list[GapMllmScene], input_ids, attention_mask=None,
                        mm_token_type_ids=None, compile_decoding=False, **kwargs):
    """`generate` for question tokens continuing the cached prefix of `scene`; greedy answers equal a full call's.

    Args:
        model: the `GapMllmForConditionalGeneration` that encoded `scene` (`generate(model, scene=...)` calls this).
        scene: from `encode_scene`; or a list of `B` of them, the scene of each question row.
        input_ids: `[B, Lq]` question tokens (e.g. `processor(text=questions)["input_ids"]`, the suffixes
            of `processor.split_scene_prompt`), padded on either side; `B` questions about this one scene (or
            row `r` about `scene[r]`).
        attention_mask: `[B, Lq]` (1 = token, 0 = padding); default all ones.
        mm_token_type_ids: accepted (processor output); checked to be text-only.
        compile_decoding: as for `generate` (`decode_compile_config`); the prefix is copied into a static cache.
        **kwargs: generation options as for `generate` (greedy or sampling; one beam, one sequence per row).

    Returns:
        as `generate`, but continuing the ids given: `[B, Lq + new]` = `input_ids` followed by the new
        tokens (with `return_dict_in_generate=True`, `.sequences` is that tensor), so
        `processor.decode_generated(out, input_ids=input_ids)` gives the answers.
    """
    checks.check_scene_call(model, scene, input_ids, attention_mask, mm_token_type_ids, kwargs)
    scenes = list(scene) if isinstance(scene, (list, tuple)) else [scene] * input_ids.shape[0]
    compile_options = compiled_decoding_kwargs(compile_decoding, scenes[0].device, kwargs, scene=True)
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
    checks.fit_budget_to_context(model, kwargs, int(position_ids[1:].max()), full_ids.shape[1],
                                 what="the scene prefix + question")
    budget_to_grammars(model, kwargs, full_ids.shape[1])
    # as a full prefill leaves it, for callers continuing the returned cache (own tensor: a view recompiles the step)
    model.model.rope_deltas = deltas
    static_cache = lent_static_cache(model, kwargs, full_ids.shape[1]) if compile_options else None

    outputs = model.generate(
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


def generate(model, inputs=None, *args, scene: GapMllmScene | list[GapMllmScene] | None = None,
             compile_decoding="off", answer_task=None, constrained: bool = False, **kwargs):
    """`model.generate` (transformers' own) after the package's checks, plus scene reuse, compiled decoding and task
    answers. A `max_new_tokens` past `text_config.max_position_embeddings` after the prompt's highest M-RoPE position
    is lowered to fit, with a warning (INFO for the task's own budget).

    Args:
        model: a `GapMllmForConditionalGeneration`.
        inputs, *args, **kwargs: as for `model.generate` (the processor's output, generation options).
        scene: a `GapMllmScene` from `encode_scene`, or one per row: pass only the question tokens (`input_ids`
            `[B, Lq]`, `attention_mask`); the result continues them (`[B, Lq + new]`; `generate_from_scene`).
        compile_decoding: "off" (False), "on" (True), "auto" (on for a CUDA model) or a `CompileConfig`: a static
            cache and each decode step compiled whole (CUDA graphs on a GPU), the same tokens.
        answer_task: a task name, with `tokenizer=`: the task's decoding settings (greedy, its budget unless
            `max_new_tokens` is given, its stop rule).
        constrained: also constrain the answer to the task's grammar, built from this call's inputs.

    Returns:
        as `model.generate`.

    Raises:
        ValueError: a token id outside the vocabulary, a prompt reaching the end of the context, a `min_new_tokens`
            that cannot fit, a scene of another model or of changed weights, or options that rule out compiled
            decoding.
        TypeError: positional generation options with `scene`.
    """
    if answer_task is not None or constrained:
        kwargs = answer_task_kwargs(answer_task, constrained, kwargs.get("input_ids", inputs), kwargs)
    if scene is not None and args:
        raise TypeError("generate(model, scene=...) takes generation options as keyword arguments only.")
    with speedups.static_cache_pool(model).lending():  # a static cache's buffers are this call's
        if scene is not None:
            input_ids = kwargs.pop("input_ids", inputs)
            return generate_from_scene(model, scene, input_ids, compile_decoding=compile_decoding, **kwargs)
        input_ids = kwargs.get("input_ids", inputs)
        prepare_token_budget(model, input_ids, kwargs)
        compile_options = compiled_decoding_kwargs(compile_decoding, model.device, kwargs)
        if compile_options:
            prompt = input_ids if input_ids is not None else kwargs["inputs_embeds"]
            kwargs["past_key_values"] = lent_static_cache(model, kwargs, prompt.shape[1])
        return model.generate(inputs, *args, **kwargs, **compile_options)


__all__ = [
    "DECODE_COMPILE_CONFIG",
    "GapMllmScene",
    "answer_task_kwargs",
    "budget_to_grammars",
    "check_compile_decoding",
    "compiled_decoding_kwargs",
    "decode_compile_config",
    "encode_scene",
    "generate",
    "generate_from_scene",
    "lent_static_cache",
    "new_token_budget",
    "prepare_token_budget",
    "rows_cache",
    "scene_prefix_length",
]
