"""The speed paths the installed package adds around its own copy of the model folder's classes.

Batch-wide Qwen3-VL vision and M-RoPE paths, the engine embeddings serving uses, and the static-cache pool that keeps
compiled decoding's CUDA graphs at fixed addresses across calls. Each gives the same outputs as the stock path its
exactness test compares it with. The role files reach them through `configuration_gap_mllm.installed_package_module`;
a model folder loaded with `trust_remote_code` runs transformers' own paths. Never copied into a model folder.
"""

import threading
import weakref
from contextlib import contextmanager

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer

# ---- batched Qwen3-VL


# ---- engine embeddings


# ---- static-cache pool of compiled decoding
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

    def buffers(self, layer: "PooledStaticLayer", keys_like: torch.Tensor, values_like: torch.Tensor):
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


def pooled_static_cache(model, needed: int) -> StaticCache:
    """An empty `StaticCache` of `static_cache_length(model, needed)` positions for `model`'s decoder, its layers lent
    by the model's pool at their first update (a call must hold the pool: `static_cache_pool(model).lending()`, as
    `generate` does).

    Raises:
        ValueError: the decoder's static cache has a layer other than a full-attention `StaticLayer`.
    """
    max_cache_len = static_cache_length(model, needed)
    cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=max_cache_len)
    pool, token = static_cache_pool(model), object()
    for index, layer in enumerate(cache.layers):
        if type(layer) is not StaticLayer:  # a sliding-window or offloaded layer: not a layer Qwen3-VL's decoder has
            raise ValueError(f"compiled decoding: the static cache's layer {index} is a {type(layer).__name__}; the "
                             "cache pool lends only full-attention StaticLayer buffers.")
        cache.layers[index] = PooledStaticLayer(max_cache_len, pool, index, token)
    return cache
