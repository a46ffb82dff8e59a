"""Attention inside each sample of a packed row, without a mask: one variable-length call per layer on CUDA, one
causal sdpa call per sample elsewhere.

A packed row (training/sample_tensors.py) holds several samples one after another; its text positions restart at 0
where each sample starts. Given such positions and no mask, transformers' "sdpa" builds a block-diagonal causal mask
`[R, 1, T, T]`, and torch's CPU kernel then computes every score of the row (T² per row, masked or not) and cannot use
its causal fast path. A row as long as the whole batch (no padding at all) then costs more attention than the padded
batch saved (measured: bench/README.md, "Stage 2 on two cores").

This module registers an attention function, `PACKED_SDPA`, that attends within each segment (a sample, or a row's
padding block) of the rows and builds no mask (it is not a mask interface, so `create_causal_mask` returns None):

    varlen   on CUDA in bf16 / fp16 where torch has `torch.nn.attention.varlen.varlen_attn` (torch ≥ 2.10): ONE causal
             variable-length flash-attention call per layer over all rows (`cu_seq` from the segment lengths);
    per sample   elsewhere (the CPU, float32): `scaled_dot_product_attention(is_causal=True)` on each segment alone.

Both give each sample's own causal attention over its own tokens, the numbers of the padded batch (tests compare them
with each sample alone). The segments come from `packed_segments`, host integers the collator computed
(`collate_samples`), passed down by `GeometryAlignedModel` with the segment starts on the device (`packed_cu_seq`);
without them (a caller that gives positions only) they are found from the positions as transformers does
(`find_packed_sequence_indices`: a new sample wherever the position does not grow by one), which reads the
positions on the host (a synchronisation per layer).

`packed_attention(model, rows)` switches the language model to it for one forward of packed rows (the training forward
of `GeometryAlignedModel`); generation and padded batches keep the model's own implementation. A layer under
activation checkpointing recomputes its forward inside the backward, after the switch has ended: torch's non-reentrant
checkpoint takes `recompute_as_forward(model)` as its `context_fn`, which runs the recompute under the implementation
the forward ran with (`GeometryAlignedModel.activation_checkpointing_enable` passes it to a run of packed rows). A
reentrant checkpoint has no such hook, and torch.compile refuses any checkpoint context but its own, so packed rows
with a reentrant checkpoint, or with checkpointing and compiled layers, are refused (training/config.py; the compiled
layers' CUDA default is off for such a run: training/kernels.py). Only "sdpa" is switched:
"eager" keeps its block mask (attention weights as eager computes them), flash-attn keeps transformers' variable-length
path. That path finds the samples from the positions of ONE packed row only (`_is_packed_sequence` needs batch size 1);
with more rows and no mask it runs flash-attn's plain causal kernel over each whole row, so the samples of a row would
attend to each other. A flash model is therefore refused packed batches of more than one row (`FLASH_ONE_ROW`; the
collator puts the whole batch in one row unless `data.packing_row_tokens` caps it: training/data.py).
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager, nullcontext
from itertools import accumulate

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv

PACKED_SDPA = "gap_packed_sdpa"
FLASH_ONE_ROW = ("flash-attn keeps packed samples apart only within one packed row (transformers' variable-length path "
                 "reads the sample starts from the positions of a single row; with several rows each row would attend "
                 "across its samples): leave data.packing_row_tokens unset, so that the whole batch is one row")


def is_flash(attention: str | None) -> bool:
    """Whether an attention implementation is one of flash-attn's (transformers' `flash_attention_<n>` names)."""
    return bool(attention) and attention.startswith("flash_attention")


def sample_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """Per row of `position_ids` `[R, T]`, the `(start, end)` of each sample: a sample starts at 0 and wherever the
    position does not grow by one (transformers' rule for packed rows). Reads the positions on the host."""
    steps = torch.diff(position_ids, dim=-1) != 1
    spans = []
    for row in steps:
        starts = [0] + (torch.nonzero(row).flatten() + 1).tolist()
        ends = starts[1:] + [position_ids.shape[-1]]
        spans.append(list(zip(starts, ends)))
    return spans


def spans_from_segments(segments: tuple[int, ...], rows: int, width: int) -> list[list[tuple[int, int]]]:
    """`sample_spans`' layout from the host segment lengths of `rows` packed rows of `width` tokens."""
    if sum(segments) != rows * width:
        raise ValueError(f"packed_segments cover {sum(segments)} tokens, the rows {rows} x {width}")
    spans, row, start = [[] for _ in range(rows)], 0, 0
    for size in segments:
        spans[row].append((start, start + size))
        start += size
        if start == width:
            row, start = row + 1, 0
    return spans


def cu_seq(segments: tuple[int, ...], device) -> torch.Tensor:
    """`[N + 1]` int32 segment starts (then the total), as variable-length kernels take them."""
    return torch.tensor([0, *accumulate(segments)], dtype=torch.int32).to(device, non_blocking=True)


def _find_varlen_kernel():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    parameters = inspect.signature(varlen_attn).parameters
    causal = {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}
    return varlen_attn, causal, "enable_gqa" in parameters, "scale" in parameters


_VARLEN = _find_varlen_kernel()  # found once, at import: a compiled layer reads a constant


def varlen_kernel():
    """`(varlen_attn, its causality argument, whether it takes enable_gqa, whether it takes scale)`, or None where this
    torch has none: torch 2.10 writes causality `is_causal=True` and takes no `scale`; later ones
    `window_size=(-1, 0)` and `scale`, 2.12 on `enable_gqa` too (docs/transformers-notes.md §8)."""
    return _VARLEN


def uses_varlen(query: torch.Tensor, dropout: float, scaling: float | None = None) -> bool:
    """Whether `PACKED_SDPA` runs the variable-length kernel for `query` `[R, H, T, D]`: a CUDA tensor in bf16 / fp16,
    no dropout, and a torch that has the kernel (flash attention computes in half precision only) and takes
    `scaling` (one without a `scale` argument takes only the default 1/√D)."""
    kernel = varlen_kernel()
    if kernel is None or not query.is_cuda or query.dtype not in (torch.bfloat16, torch.float16) or dropout != 0.0:
        return False
    return kernel[3] or scaling is None or scaling == query.shape[-1] ** -0.5


def varlen_attention(query, key, value, cu: torch.Tensor, longest: int, scaling: float | None) -> torch.Tensor:
    """One variable-length causal call over the segments of all rows: `[R, T, H, D]` from query `[R, H, T, D]`,
    key / value `[R, H_kv, T, D]` (`cu` `[N + 1]` int32 on their device, `longest` the longest segment)."""
    kernel, causal, gqa, takes_scale = varlen_kernel()
    rows, heads, length, dim = query.shape
    if not gqa:
        groups = heads // key.shape[1]
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    flat = [tensor.transpose(1, 2).reshape(rows * length, tensor.shape[1], dim) for tensor in (query, key, value)]
    extra = {"enable_gqa": True} if gqa and key.shape[1] != heads else {}
    if takes_scale:
        extra["scale"] = scaling
    out = kernel(*flat, cu, cu, longest, longest, **causal, **extra)
    return out.reshape(rows, length, heads, dim)


def packed_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                          dropout: float = 0.0, scaling: float | None = None, position_ids: torch.Tensor | None = None,
                          packed_segments: tuple[int, ...] | None = None, packed_cu_seq: torch.Tensor | None = None,
                          **kwargs):
    """Causal attention within each sample of packed rows.

    Args:
        query `[R, H, T, D]`, key / value `[R, H_kv, T, D]`: the rows' projections (no cache: T queries, T keys).
        attention_mask: must be None (packed rows carry their boundaries in `position_ids`).
        position_ids: `[R, T]` text positions, restarting where each sample starts.
        packed_segments: the segment lengths, row after row (host integers; module docstring); None: read from
            `position_ids`.
        packed_cu_seq: `cu_seq(packed_segments)` on the device, built once per forward (else here, per layer).

    Returns:
        `(attn_output [R, T, H, D], None)`, as transformers' attention functions return it.
    """
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        raise ValueError(f"{PACKED_SDPA} attends within packed training rows only: no attention mask, text position_ids "
                         "restarting per sample, no key/value cache (training/packed_attention.py)")
    dropout = dropout if module.training else 0.0
    rows, width = query.shape[0], query.shape[2]
    if packed_segments is not None and uses_varlen(query, dropout, scaling):
        cu = packed_cu_seq if packed_cu_seq is not None else cu_seq(packed_segments, query.device)
        # the longest segment sizes the kernel's grid; inside a compiled layer the row width (an upper bound, fixed by
        # the length buckets) instead, so that the graph does not depend on each batch's segments
        longest = width if torch.compiler.is_compiling() else max(packed_segments)
        return varlen_attention(query, key, value, cu, longest, scaling), None
    spans = (spans_from_segments(packed_segments, rows, width) if packed_segments is not None
             else sample_spans(position_ids.expand(rows, -1)))
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = []
    for row, row_spans in enumerate(spans):
        parts = [F.scaled_dot_product_attention(query[row : row + 1, :, start:end], key[row : row + 1, :, start:end],
                                                value[row : row + 1, :, start:end], dropout_p=dropout, is_causal=True,
                                                scale=scaling)
                 for start, end in row_spans]
        out.append(torch.cat(parts, dim=2))
    return torch.cat(out).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


@contextmanager
def packed_attention(language_model, rows: int = 1):
    """Within the block, `language_model` (Qwen3-VL's text model) attends with `PACKED_SDPA` when its implementation
    is sdpa; other implementations are left as they are, and flash-attn takes `rows` = 1 packed row only (module
    docstring). Yields whether it switched (whether `PACKED_SDPA`'s `packed_segments` arguments apply)."""
    config = language_model.config
    previous = config._attn_implementation
    if is_flash(previous) and rows != 1:
        raise ValueError(f"{rows} packed rows with attn_implementation={previous!r}: {FLASH_ONE_ROW}")
    if previous != "sdpa":
        yield False
        return
    config._attn_implementation = PACKED_SDPA
    try:
        yield True
    finally:
        config._attn_implementation = previous


@contextmanager
def _attention_implementation(config, implementation: str):
    previous = config._attn_implementation
    config._attn_implementation = implementation
    try:
        yield
    finally:
        config._attn_implementation = previous


def recompute_as_forward(language_model):
    """A `context_fn` for torch's non-reentrant `checkpoint`: called as each checkpointed layer runs its forward, it
    notes `language_model`'s attention implementation then (`PACKED_SDPA` inside `packed_attention`), and returns
    (no context for the forward, a context that restores that implementation for the layer's recompute in the
    backward), so a packed row attends per sample in both."""
    config = language_model.config

    def context_fn():
        return nullcontext(), _attention_implementation(config, config._attn_implementation)

    return context_fn

