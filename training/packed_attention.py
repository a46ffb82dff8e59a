"""Attention inside each sample of a packed row, without a mask: one causal sdpa call per sample.

A packed row (training/sample_tensors.py) holds several samples one after another; its text positions restart at 0
where each sample starts. Given such positions and no mask, transformers' "sdpa" builds a block-diagonal causal mask
`[R, 1, T, T]`, and torch's CPU kernel then computes every score of the row (T² per row, masked or not) and cannot use
its causal fast path. A row as long as the whole batch (no padding at all) then costs more attention than the padded
batch saved (measured: bench/README.md, "Stage 2 on two cores").

This module registers an attention function, `PACKED_SDPA`, that finds the samples of each row as transformers does
(`find_packed_sequence_indices`: a new sample wherever the position does not grow by one) and runs
`scaled_dot_product_attention(is_causal=True)` on each sample alone: the attention of a row costs Σ L_i², the numbers
are those of the padded batch (each sample's causal attention over its own tokens), and no mask is built (the
function is not a mask interface, so `create_causal_mask` returns None). It is what flash-attn's variable-length
kernel does on CUDA.

`packed_attention(model, rows)` switches the language model to it for one forward of packed rows (the training forward
of `GeometryAlignedModel`); generation and padded batches keep the model's own implementation. Only "sdpa" is switched:
"eager" keeps its block mask (attention weights as eager computes them), flash-attn keeps transformers' variable-length
path. That path finds the samples from the positions of ONE packed row only (`_is_packed_sequence` needs batch size 1);
with more rows and no mask it runs flash-attn's plain causal kernel over each whole row, so the samples of a row would
attend to each other. A flash model is therefore refused packed batches of more than one row (`FLASH_ONE_ROW`; the
collator puts the whole batch in one row unless `data.packing_row_tokens` caps it: training/data.py).
"""

from __future__ import annotations

from contextlib import contextmanager

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
    position does not grow by one (transformers' rule for packed rows)."""
    steps = torch.diff(position_ids, dim=-1) != 1
    spans = []
    for row in steps:
        starts = [0] + (torch.nonzero(row).flatten() + 1).tolist()
        ends = starts[1:] + [position_ids.shape[-1]]
        spans.append(list(zip(starts, ends)))
    return spans


def packed_sdpa_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask,
                          dropout: float = 0.0, scaling: float | None = None, position_ids: torch.Tensor | None = None,
                          **kwargs):
    """Causal attention within each sample of packed rows.

    Args:
        query `[R, H, T, D]`, key / value `[R, H_kv, T, D]`: the rows' projections (no cache: T queries, T keys).
        attention_mask: must be None (packed rows carry their boundaries in `position_ids`).
        position_ids: `[R, T]` text positions, restarting where each sample starts.

    Returns:
        `(attn_output [R, T, H, D], None)`, as transformers' attention functions return it.
    """
    if attention_mask is not None or position_ids is None or query.shape[2] != key.shape[2]:
        raise ValueError(f"{PACKED_SDPA} attends within packed training rows only: no attention mask, text position_ids "
                         "restarting per sample, no key/value cache (training/packed_attention.py)")
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    dropout = dropout if module.training else 0.0
    rows = []
    for row, spans in enumerate(sample_spans(position_ids.expand(query.shape[0], -1))):
        parts = [F.scaled_dot_product_attention(query[row : row + 1, :, start:end], key[row : row + 1, :, start:end],
                                                value[row : row + 1, :, start:end], dropout_p=dropout, is_causal=True,
                                                scale=scaling)
                 for start, end in spans]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)


@contextmanager
def packed_attention(language_model, rows: int = 1):
    """Within the block, `language_model` (Qwen3-VL's text model) attends with `PACKED_SDPA` when its implementation
    is sdpa; other implementations are left as they are, and flash-attn takes `rows` = 1 packed row only (module
    docstring)."""
    config = language_model.config
    previous = config._attn_implementation
    if is_flash(previous) and rows != 1:
        raise ValueError(f"{rows} packed rows with attn_implementation={previous!r}: {FLASH_ONE_ROW}")
    if previous != "sdpa":
        yield
        return
    config._attn_implementation = PACKED_SDPA
    try:
        yield
    finally:
        config._attn_implementation = previous
