"""SDPA with no fully masked query row: the padding rows of a left-padded batch attend everywhere instead of nowhere.

With left padding, the query at a padding position may attend only to earlier keys, which are all padding: its row
of the boolean mask `[R, 1, Q, K]` is all False, and its softmax is 0/0. torch's eager SDPA kernels return 0 for such
a row (torch ≥ 2.5, `_safe_softmax`), and transformers relies on that (masking_utils.sdpa_mask no longer unmasks
these rows). A kernel or a compiled graph that does not return 0 writes NaN there: the loss cannot see it (no label
sits at a padding position), but the weight gradients are sums over every position, so one NaN row makes them NaN and
the optimizer step writes NaN weights — the failure of bucketed left-padded rows on an H100 (bisect_compile_nan.py).

Letting such a row attend to every key makes its softmax an ordinary one and changes nothing else, exactly:

- no real query reads a padding key (the padding mask still hides those keys from every real row);
- a padding position's output only ever reaches padding positions of later layers, and no loss reads them, so the
  gradient arriving at a padding row is exactly 0 and its attention weights add 0 to every weight's gradient.

(transformers did the same before torch fixed its kernels: `AttentionMaskConverter._unmask_unattended`.)

`unmask_unattended_rows` is the mask rule; `safe_sdpa_attention_forward` is transformers' SDPA attention with it,
registered under `SAFE_SDPA` by `register_safe_sdpa`: the bisection's test of the mechanism (finite where left
padding was not). Training itself pads on the right (training/data.py), which leaves no such row at all.
"""

from __future__ import annotations

import torch

SAFE_SDPA = "gap_sdpa_unmasked_rows"


def unmask_unattended_rows(mask: torch.Tensor) -> torch.Tensor:
    """`mask` `[R, 1 or H, Q, K]` with every fully masked query row opened to all keys.

    Boolean masks (True: attend) get the row set to True; additive float masks (0: attend, a large negative value:
    masked) get the row set to 0 where every entry is the dtype's minimum or -inf.
    """
    if mask.dtype == torch.bool:
        return mask | ~mask.any(dim=-1, keepdim=True)
    masked = mask <= torch.finfo(mask.dtype).min
    return mask.masked_fill(masked.all(dim=-1, keepdim=True), 0.0)


def safe_sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs):
    """transformers' `sdpa_attention_forward` with `unmask_unattended_rows` applied to the mask (None stays None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None:
        attention_mask = unmask_unattended_rows(attention_mask)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register_safe_sdpa() -> str:
    """Register `SAFE_SDPA` with transformers' attention and mask interfaces (SDPA's mask); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SAFE_SDPA, safe_sdpa_attention_forward)
    AttentionMaskInterface.register(SAFE_SDPA, sdpa_mask)
    return SAFE_SDPA
