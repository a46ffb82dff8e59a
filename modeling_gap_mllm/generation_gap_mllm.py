"""Generation support for GAP-MLLM: the checks `generate` runs and the machinery it decodes with.

- Answer tasks and prompt checks: `answer_task_kwargs`, `check_token_ids`, `fit_budget_to_context` (a prompt past
  `text_config.max_position_embeddings` is refused; a `max_new_tokens` past it is lowered to the positions left).
- Model identity: `ModelIdentity`, `model_identity`, `identity_mismatch` (which model state encoded a cached scene).
- Compiled decoding: `StaticCachePool`, `pooled_static_cache`, `release_static_cache`, `compiled_decoding_kwargs`.
- Scene reuse: `GapMllmScene`, `encode_scene`, `generate_from_scene` (encode the views once, answer many questions).
"""
from __future__ import annotations

import hashlib
import threading
import uuid
import weakref
from array import array
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import CompileConfig, DynamicCache, GenerationMixin, StaticCache
from transformers.cache_utils import StaticLayer
from transformers.utils import logging

from .tasks_gap_mllm import (
    COMPILE_DECODING_CHOICES,
    ENGINE_REQUIREMENT,
    DefaultBudget,
    resolve_task,
)


# ---- answer tasks and prompt checks
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


logger = logging.get_logger(__name__)


def check_token_id_dtype(input_ids: torch.Tensor, name: str = "input_ids") -> None:
    """ValueError naming `name` when `input_ids` do not hold integers (the embedding lookup needs them)."""
    if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got a {input_ids.dtype} tensor")


def token_id_range(input_ids: torch.Tensor) -> torch.Tensor:
    """`[2]` tensor `(lowest id, highest id)` of a non-empty integer tensor, left on its device (no host sync)."""
    return torch.stack(torch.aminmax(input_ids.reshape(-1)))


def vocabulary_error(low: int, high: int, vocabulary_size: int, name: str = "input_ids") -> ValueError | None:
    """The error for token ids spanning `[low, high]`, or None when they all lie in `[0, vocabulary_size)`."""
    if low >= 0 and high < vocabulary_size:
        return None
    bad = low if low < 0 else high
    return ValueError(
        f"{name} holds token id {bad}, outside the model's vocabulary of {vocabulary_size} ids (0 … "
        f"{vocabulary_size - 1}); were these ids made with another tokenizer?"
    )


def check_token_ids(input_ids: torch.Tensor, vocabulary_size: int, name: str = "input_ids") -> None:
    """ValueError naming `name` unless `input_ids` are integers in `[0, vocabulary_size)`; one host synchronisation."""
    check_token_id_dtype(input_ids, name)
    if input_ids.numel() == 0:
        return
    low, high = token_id_range(input_ids).tolist()
    error = vocabulary_error(low, high, vocabulary_size, name)
    if error is not None:
        raise error


def new_token_budget(model, kwargs: dict, input_length: int) -> int | None:
    """New tokens a generate call with `kwargs` may produce after `input_length` tokens: `max_new_tokens` (the call's,
    then the generation config's), else `max_length - input_length`; None when neither is set."""
    config = kwargs.get("generation_config") or model.generation_config
    budget = kwargs.get("max_new_tokens", getattr(config, "max_new_tokens", None))
    if budget is not None:
        return int(budget)
    max_length = kwargs.get("max_length", getattr(config, "max_length", None))
    return None if max_length is None else int(max_length) - input_length


_WARNED_BUDGETS: set[tuple[int, int, bool]] = set()  # (budget, context, chosen by the caller) already logged


def context_limit(config) -> int | None:
    """The decoder's rotary positions (`text_config.max_position_embeddings` of `config`), or None."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def positions_after(limit: int, highest_prompt_position: int) -> int:
    """New tokens that still get a trained position (0 … `limit` − 1) after a prompt ending at M-RoPE position
    `highest_prompt_position` (the k-th new token sits at `highest_prompt_position + k`)."""
    return limit - 1 - highest_prompt_position


def _context_limit(model) -> int | None:
    return context_limit(model.config)


def check_prompt_fits(model, highest_prompt_position: int, input_length: int, what: str = "the prompt") -> int | None:
    """The number of new tokens that still get a trained position after `what` (ending at M-RoPE position
    `highest_prompt_position`, `input_length` tokens), or ValueError naming the numbers when none does;
    None when the model states no context."""
    limit = _context_limit(model)
    if limit is None:
        return None
    room = positions_after(limit, highest_prompt_position)
    if room < 1:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position} ({input_length} tokens; visual tokens share "
            f"positions), leaving no room in the model's context of {limit} positions "
            "(text_config.max_position_embeddings); use fewer or smaller views or a shorter text."
        )
    return room


def budget_chosen_by_caller(kwargs: dict) -> bool:
    """Whether a generate call's budget is the caller's own: a `max_new_tokens` that is not a task's default
    (`DefaultBudget`), or a `max_length` without one; not a budget from the generation config."""
    if "max_new_tokens" in kwargs:
        return not isinstance(kwargs["max_new_tokens"], DefaultBudget)
    return "max_length" in kwargs


def shortest_answer(kwargs: dict) -> tuple[str, int] | None:
    """`(task name, tokens)` of the shortest whole answer of a generate call's task, as its stopping criteria carry it
    (`TaskSpec.stopping_criteria`); None for a call without them."""
    for criterion in kwargs.get("stopping_criteria") or ():
        if getattr(criterion, "shortest_answer", None) is not None:
            return criterion.shortest_answer_tokens()
    return None


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


def fit_budget_to_context(model, kwargs: dict, highest_prompt_position: int, input_length: int,
                          what: str = "the prompt") -> None:
    """Fit a generate call's `kwargs` to the model's context in place, then pass the budget to its grammars.

    A `max_new_tokens` past the context is lowered to the positions left after `what` (ending at M-RoPE position
    `highest_prompt_position`, `input_length` tokens): a warning when the caller chose it (`budget_chosen_by_caller`),
    else an INFO line. ValueError, naming the numbers, when no position is left, `min_new_tokens` cannot fit, or fewer
    new tokens fit than the task's shortest whole answer (`shortest_answer`)."""
    _fit_to_context(model, kwargs, highest_prompt_position, input_length, what)
    budget_to_grammars(model, kwargs, input_length)


def _fit_to_context(model, kwargs: dict, highest_prompt_position: int, input_length: int, what: str) -> None:
    room = check_prompt_fits(model, highest_prompt_position, input_length, what)
    if room is None:
        return
    limit = _context_limit(model)
    shortest = shortest_answer(kwargs)
    if shortest is not None and room < shortest[1]:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, fewer than the {shortest[1]} that the shortest whole {shortest[0]} answer "
            "needs; use fewer or smaller views or a shorter text."
        )
    config = kwargs.get("generation_config") or model.generation_config
    minimum = kwargs.get("min_new_tokens", getattr(config, "min_new_tokens", None))
    if minimum is not None and minimum > room:
        raise ValueError(
            f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens fit in the model's "
            f"context of {limit} positions, but min_new_tokens={minimum} demands more; lower it or shorten the prompt."
        )
    budget = new_token_budget(model, kwargs, input_length)
    if budget is not None and budget > room:
        chosen = budget_chosen_by_caller(kwargs)
        if (budget, limit, chosen) not in _WARNED_BUDGETS:
            _WARNED_BUDGETS.add((budget, limit, chosen))
            fits = (f"{what} ends at position {highest_prompt_position}, so at most {room} new tokens are generated "
                    "(answers longer than that stop at the context's end)")
            if chosen:
                logger.warning(f"max_new_tokens={budget} would pass the model's context of {limit} positions: {fits}. "
                               "Lower max_new_tokens to silence this.")
            else:
                logger.info(f"the task's token budget of {budget} is lowered to the model's context of {limit} positions: "
                            f"{fits}.")
        kwargs["max_new_tokens"] = room
        kwargs.pop("max_length", None)


def highest_prompt_position(model, input_ids, attention_mask=None, mm_token_type_ids=None, image_grid_thw=None) -> int:
    """The highest M-RoPE position of a `[B, L]` prompt batch as `generate` lays it out (visual tokens on their
    compressed grid positions when the views are given, else one position per real token)."""
    if mm_token_type_ids is not None and image_grid_thw is not None:
        positions, _ = model.vlm.model.get_rope_index(
            input_ids, mm_token_type_ids=mm_token_type_ids, image_grid_thw=image_grid_thw, attention_mask=attention_mask
        )
        if attention_mask is not None:
            positions = positions.masked_fill(attention_mask[None].to(positions.device) == 0, 0)
        return int(positions.max())
    if attention_mask is not None:
        return int(attention_mask.long().sum(dim=-1).max()) - 1
    return input_ids.shape[-1] - 1


# ---- model identity
_INSTANCE_ATTRIBUTE = "_gap_mllm_identity_token"


@dataclass(frozen=True)
class ModelIdentity:
    """What `model_identity` returns; equal identities mean the same model object, configuration and weights."""
    instance: str
    config: str
    weights: str
    adapters: str = ""


def _instance_token(model) -> str:
    """A token unique to this model object, stored with its `id` so that a copy makes its own."""
    stored = model.__dict__.get(_INSTANCE_ATTRIBUTE)
    if stored is None or stored[0] != id(model):
        stored = (id(model), uuid.uuid4().hex)
        model.__dict__[_INSTANCE_ATTRIBUTE] = stored
    return stored[1]


def _config_digest(model) -> str:
    return hashlib.blake2b(model.config.to_json_string(use_diff=False).encode(), digest_size=16).hexdigest()


_PROBED_ELEMENTS = 16  # a tensor's elements at this many evenly strided positions (16 to 31 of them)
# PEFT adapter-layer state (BaseTunerLayer, ModulesToSaveWrapper): active, disabled, merged adapters and scales
_ADAPTER_ATTRIBUTES = ("_disable_adapters", "_active_adapter", "merged_adapters", "scaling")


def _state_tensors(model):
    """Every parameter and buffer of `model`, in one walk over its modules (a shared tensor once per module)."""
    for module in model.modules():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                yield tensor


def _local(tensor):
    """The tensor whose values this process holds: a sharded DTensor's local shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _counter(tensor) -> int:
    try:
        return tensor._version  # in-place write counter (private, but stable across torch releases)
    except RuntimeError:  # inference-mode tensors keep no counter
        return -1


def _address(tensor) -> int:
    try:
        return tensor.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage
        return -1


@torch.no_grad()
def _weights_digest(model) -> str:
    """Digest of every parameter and buffer: address, in-place version, shape, dtype, float32 sum and 16 to 31 strided
    elements (fused optimizers and `.data` writes change values without bumping the version)."""
    metadata = array("q")
    sums: dict[torch.device, list] = {}
    elements: dict[tuple[str, str], list] = {}  # (device, dtype) -> probed elements, copied to the host together
    for tensor in _state_tensors(model):
        tensor = _local(tensor)
        metadata.extend((_address(tensor), _counter(tensor), hash(tensor.shape), hash(tensor.dtype)))
        if tensor.is_meta or tensor.numel() == 0:  # no values to read here
            continue
        flat = (torch.view_as_real(tensor) if tensor.is_complex() else tensor).reshape(-1)  # a view, in practice
        try:
            total = flat.sum(dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):  # a dtype without a sum kernel (e.g. float8)
            continue  # its metadata still counts
        sums.setdefault(flat.device, []).append(total)
        elements.setdefault((str(flat.device), str(flat.dtype)), []).append(flat[:: max(1, flat.numel() // _PROBED_ELEMENTS)])
    digest = hashlib.blake2b(metadata.tobytes(), digest_size=16)
    for device in sorted(sums, key=str):
        digest.update(torch.stack(sums[device]).cpu().numpy().tobytes())
    for key in sorted(elements):  # float64 on the host: exact for every dtype here (numpy has no bfloat16)
        digest.update(torch.cat(elements[key]).cpu().double().numpy().tobytes())
    return digest.hexdigest()


def _adapters_digest(model) -> str:
    """Digest of the PEFT adapter state of every module that has one ("" when there is none)."""
    states = []
    for name, module in model.named_modules():
        if hasattr(module, "_active_adapter"):  # an instance or a class attribute (PEFT sets class defaults)
            states.append(f"{name}|" + "|".join(repr(getattr(module, key, None)) for key in _ADAPTER_ATTRIBUTES))
    if not states:
        return ""
    return hashlib.blake2b("\n".join(states).encode(), digest_size=16).hexdigest()


def model_identity(model) -> ModelIdentity:
    """The `ModelIdentity` of `model` now; costs one read of the weights. Blind to state outside parameters, buffers,
    configuration and PEFT adapter attributes (a replaced `forward`, hooks, train/eval mode) and to writes that keep
    each tensor's float32 sum and probed elements."""
    return ModelIdentity(instance=_instance_token(model), config=_config_digest(model), weights=_weights_digest(model),
                         adapters=_adapters_digest(model))


def identity_mismatch(recorded: ModelIdentity, model) -> str | None:
    """What differs between `recorded` and `model` now, as a sentence, or None when they are the same."""
    current = model_identity(model)
    if recorded.instance != current.instance:
        return "it was encoded by another model object"
    if recorded.config != current.config:
        return "this model's configuration changed after it was encoded"
    if recorded.weights != current.weights:
        return ("this model's weights changed after it was encoded (a training step, load_state_dict, a dtype or "
                "device move)")
    if recorded.adapters != current.adapters:
        return ("this model's adapters changed after it was encoded (PEFT set_adapter, disable_adapter, merge or "
                "scale)")
    return None


# ---- static cache pool and compiled decoding
STATIC_LENGTH_STEP = 256  # static caches are sized in steps of this many positions: few lengths, few recordings


class StaticCachePool:
    """Static-cache buffers shared by every compiled `generate` call of one model, so that its CUDA graphs replay at
    fixed addresses: per decoder layer, keys `[rows, H_kv, L, head_dim]`, values `[rows, H_kv, L, v_head_dim]` and a
    0-d long fill counter. A cache lent from it is valid until the model's next compiled call; a call that finds the
    pool held by another thread gets buffers of its own."""

    def __init__(self):
        self._lock = threading.Lock()
        self._holder: int | None = None  # thread id of the call holding the pool
        self._layers: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = {}
        self._lent: list[weakref.ref] = []  # the layers of the cache that holds the buffers now
        self._lending_cache: object | None = None
        self.allocations = 0  # times the buffers were (re)allocated: what tests and the bench count
        self.private_allocations = 0  # caches of calls that found the pool held by another thread

    def __deepcopy__(self, memo):  # a copied cache's layers keep their own tensors and refer to the same pool
        return self

    def __reduce__(self):  # pickled: an empty pool (a lock cannot be pickled, buffers are not worth it)
        return (StaticCachePool, ())

    @contextmanager
    def lending(self):
        """Hold the pool for one `generate` call (of this thread); a call that finds it held lends nothing."""
        if self._holder == threading.get_ident() or not self._lock.acquire(blocking=False):
            yield
            return
        self._holder = threading.get_ident()
        try:
            yield
        finally:
            self._holder = None
            self._lock.release()

    def buffers(self, layer: PooledStaticLayer, keys_like: torch.Tensor, values_like: torch.Tensor):
        """`(keys, values, fill counter)` for `layer` of a cache with `keys_like.shape[0]` rows, zeroed: the first rows
        of the pool's buffers when this thread holds the pool, else tensors of the call's own."""
        rows, heads, _, k_dim = keys_like.shape
        length, v_dim = layer.max_cache_len, values_like.shape[-1]
        if self._holder != threading.get_ident():
            self.private_allocations += layer.layer_index == 0
            return _new_buffers(rows, heads, length, k_dim, v_dim, keys_like, values_like)
        if layer.cache_token is not self._lending_cache:  # a new cache takes the buffers back from the one before
            self._reclaim()
            self._lending_cache = layer.cache_token
        held = self._layers.get(layer.layer_index)
        if held is None or not _fits(held, rows, heads, length, k_dim, v_dim, keys_like, values_like):
            capacity = max(rows, 0 if held is None else held[0].shape[0])  # rows never shrink
            held = self._layers[layer.layer_index] = None  # the old buffers freed before the new ones are allocated
            held = self._layers[layer.layer_index] = _new_buffers(capacity, heads, length, k_dim, v_dim, keys_like,
                                                                  values_like)
            self.allocations += layer.layer_index == 0
        keys, values, filled = _first_rows(held[0], rows), _first_rows(held[1], rows), held[2]
        keys.zero_()
        values.zero_()
        filled.zero_()
        self._lent.append(weakref.ref(layer))
        return keys, values, filled

    def _reclaim(self) -> None:
        for ref in self._lent:
            layer = ref()
            if layer is not None:
                layer.reclaim()
        self._lent = []

    def release(self) -> None:
        """Free the buffers (the caches lent from them are reclaimed)."""
        self._reclaim()
        self._lending_cache = None
        self._layers = {}


def _first_rows(buffer: torch.Tensor, rows: int) -> torch.Tensor:
    """The first `rows` rows of `buffer`, sharing its storage but not a view (compiled steps guard on a view's base)."""
    return buffer.new_empty(0).set_(buffer.untyped_storage(), 0, (rows, *buffer.shape[1:]))


def _new_buffers(rows: int, heads: int, length: int, k_dim: int, v_dim: int, keys_like: torch.Tensor,
                 values_like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zeroed keys `[rows, heads, length, k_dim]`, values `[rows, heads, length, v_dim]` and a fill counter."""
    return (torch.zeros((rows, heads, length, k_dim), dtype=keys_like.dtype, device=keys_like.device),
            torch.zeros((rows, heads, length, v_dim), dtype=values_like.dtype, device=values_like.device),
            torch.zeros((), dtype=torch.long, device=keys_like.device))


def _fits(held, rows: int, heads: int, length: int, k_dim: int, v_dim: int, keys_like, values_like) -> bool:
    keys, values, _ = held
    return (keys.shape[0] >= rows and keys.shape[1:] == (heads, length, k_dim) and values.shape[-1] == v_dim
            and keys.dtype == keys_like.dtype and values.dtype == values_like.dtype and keys.device == keys_like.device)


class PooledStaticLayer(StaticLayer):
    """A `StaticLayer` whose keys, values and fill counter are lent by a `StaticCachePool` at its first update."""

    def __init__(self, max_cache_len: int, pool: StaticCachePool, layer_index: int, cache_token: object):
        super().__init__(max_cache_len=max_cache_len)
        self.pool, self.layer_index, self.cache_token = pool, layer_index, cache_token
        self.reclaimed = False

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self._check_not_reclaimed()
        self.dtype, self.device = key_states.dtype, key_states.device
        self.batch_size, self.num_heads = key_states.shape[:2]
        self.k_head_dim, self.v_head_dim = key_states.shape[-1], value_states.shape[-1]
        self.keys, self.values, self.cumulative_length = self.pool.buffers(self, key_states, value_states)
        # as StaticLayer does: the compiled step reads these at fixed addresses
        for tensor in (self.keys, self.values, self.cumulative_length):
            torch._dynamo.mark_static_address(tensor)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self._check_not_reclaimed()
        return super().update(key_states, value_states, *args, **kwargs)

    def get_seq_length(self):
        self._check_not_reclaimed()
        return super().get_seq_length()

    def reclaim(self) -> None:
        """The pool took the buffers back for a later call: drop them, and refuse any further use."""
        self.reclaimed = True
        self.keys = self.values = None
        self.cumulative_length = torch.zeros((), dtype=torch.long)

    def _check_not_reclaimed(self) -> None:
        if self.reclaimed:
            raise RuntimeError(
                "This static cache came from a compiled generate call (compile_decoding) and its buffers now serve a "
                "later compiled call of the same model: copy a returned cache before the next "
                "call to keep it, or generate with compile_decoding='off'."
            )


_POOLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model → its StaticCachePool


def static_cache_pool(model) -> StaticCachePool:
    """The `StaticCachePool` of `model`, made at first use; kept beside the model so copies and pickles carry none."""
    pool = _POOLS.get(model)
    if pool is None:
        pool = _POOLS[model] = StaticCachePool()
    return pool


def release_static_cache(model) -> None:
    """Free the static-cache buffers compiled decoding keeps for `model` (they are allocated again when needed)."""
    pool = _POOLS.get(model)
    if pool is not None:
        pool.release()


def static_cache_length(model, needed: int) -> int:
    """Static-cache positions for a call needing `needed` (prompt + token budget): rounded up to `STATIC_LENGTH_STEP`,
    never below the model's `_previous_max_cache_length`, which it then records (lengths only grow)."""
    rounded = -(-needed // STATIC_LENGTH_STEP) * STATIC_LENGTH_STEP
    length = max(rounded, getattr(model, "_previous_max_cache_length", -1))
    model._previous_max_cache_length = length
    return length


def pooled_static_cache(model, max_cache_len: int) -> StaticCache:
    """An empty `StaticCache` of `max_cache_len` positions for `model`'s decoder, its layers lent by the model's pool
    at their first update (a call must hold the pool: `static_cache_pool(model).lending()`, as `generate` does)."""
    text_config = model.config.get_text_config(decoder=True)
    cache = StaticCache(config=text_config, max_cache_len=max_cache_len)
    pool, token = static_cache_pool(model), object()
    for index, layer in enumerate(cache.layers):
        if type(layer) is not StaticLayer:  # a sliding-window or offloaded layer: not a layer Qwen3-VL's decoder has
            raise ValueError(f"compiled decoding: the static cache's layer {index} is a {type(layer).__name__}; the "
                             "cache pool lends only full-attention StaticLayer buffers.")
        cache.layers[index] = PooledStaticLayer(max_cache_len, pool, index, token)
    return cache


# The whole decode step in one CUDA graph; `dynamic=None`: later batch sizes and cache lengths share one symbolic graph
# (a graph per size would reach dynamo's limit of 8 in an evaluation).
DECODE_COMPILE_CONFIG = dict(fullgraph=True, dynamic=None, mode="reduce-overhead")


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
    """The `generate` options that compile the decode step (`cache_implementation="static"`, `compile_config`), or {}
    when `compile_decoding` leaves it off. `kwargs` are the call's other options, checked to allow it.

    Raises:
        ValueError: an option that rules out compiled decoding (a cache of the caller's, another cache implementation).
    """
    config = decode_compile_config(compile_decoding, device)
    if config is None:
        return {}
    if kwargs.get("past_key_values") is not None and not scene:
        raise ValueError("compile_decoding needs generate's own static cache, but past_key_values were given: pass no "
                         "cache, or compile_decoding='off'.")
    implementation = kwargs.get("cache_implementation")
    if implementation not in (None, "static"):
        raise ValueError(f"compile_decoding needs cache_implementation='static', got {implementation!r}: drop the "
                         "option, or compile_decoding='off'.")
    if kwargs.get("use_cache") is False:
        raise ValueError("compile_decoding needs use_cache=True (the decode step continues a static cache).")
    return {"compile_config": config} if scene else {"cache_implementation": "static", "compile_config": config}


# ---- scene reuse
# Inputs a scene already holds: giving them again to generate(scene=...) would be ambiguous.
SCENE_OWNED_INPUTS = (
    "pixel_values", "pixel_values_videos", "image_grid_thw", "video_grid_thw", "geometry_pixel_values",
    "geometry_views_per_sample", "geometry_features", "past_key_values", "inputs_embeds", "position_ids",
)  # fmt: skip


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
        model_identity: the `ModelIdentity` of the model that encoded it; `generate(scene=...)` accepts the scene
            only from that model with the same configuration, weights and adapters.
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
    """ValueError unless `scene` is a `GapMllmScene` that `model`, as it is now, encoded: this model's layer count,
    key/value heads, head size, dtype, device type and `model_identity`."""
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
        if tokens.numel() == 0:
            raise ValueError(f"question {row} is empty (its attention_mask is all zeros).")
        aligned_ids[row, width - tokens.numel() :] = tokens
        aligned_mask[row, width - tokens.numel() :] = 1
    return aligned_ids, aligned_mask


def _static_cache_length(model, kwargs: dict, input_length: int) -> int:
    """`static_cache_length` for a scene call: `input_length` prompt tokens + the token budget."""
    budget = new_token_budget(model, kwargs, input_length)
    if budget is None:
        raise ValueError("compile_decoding with a scene needs a token budget (max_new_tokens) to size its static cache.")
    return static_cache_length(model, input_length + budget)


def generate_from_scene(model, scene: GapMllmScene | list[GapMllmScene], input_ids, attention_mask=None,
                        mm_token_type_ids=None, compile_decoding=False, **kwargs):
    """`generate` for question tokens continuing the cached prefix of `scene`; greedy answers equal a full call's.

    Args:
        model: the `GapMllmForConditionalGeneration` that encoded `scene`.
        scene: from `encode_scene`; or a list of `B` of them, the scene of each question row.
        input_ids: `[B, Lq]` question tokens (e.g. `processor(text=questions)["input_ids"]`, the suffixes
            of `processor.split_scene_prompt`), padded on either side; `B` questions about this one scene (or
            row `r` about `scene[r]`).
        attention_mask: `[B, Lq]` (1 = token, 0 = padding); default all ones.
        mm_token_type_ids: accepted (processor output) and checked to be text-only.
        compile_decoding: as for `generate` (`decode_compile_config`); the prefix is copied into a pooled static cache.
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
    # as a full prefill leaves it, for callers continuing the returned cache (own tensor: a view recompiles the step)
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


__all__ = [
    "COMPILE_DECODING_CHOICES",
    "DECODE_COMPILE_CONFIG",
    "ENGINE_REQUIREMENT",
    "GapMllmScene",
    "ModelIdentity",
    "PooledStaticLayer",
    "STATIC_LENGTH_STEP",
    "StaticCachePool",
    "budget_chosen_by_caller",
    "budget_to_grammars",
    "check_compile_decoding",
    "check_prompt_fits",
    "check_scene_for_model",
    "check_token_id_dtype",
    "check_token_ids",
    "compiled_decoding_kwargs",
    "context_limit",
    "decode_compile_config",
    "encode_scene",
    "fit_budget_to_context",
    "generate_from_scene",
    "highest_prompt_position",
    "identity_mismatch",
    "model_identity",
    "new_token_budget",
    "pooled_static_cache",
    "positions_after",
    "release_static_cache",
    "scene_prefix_length",
    "shortest_answer",
    "static_cache_length",
    "static_cache_pool",
    "token_id_range",
    "vocabulary_error",
]
