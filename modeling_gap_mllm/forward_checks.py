"""What the model's `forward` checks before it runs, so that a bad input ends in a ValueError naming the input
instead of a bare IndexError of the embedding lookup, a RuntimeError of a broadcast deep in attention, or an
M-RoPE error blaming `mm_token_type_ids` for a mask that left out image tokens.

Rules (the token-id rule is `generate`'s, generation_checks.py):

- `input_ids`: a `[batch, length]` integer tensor of ids in `[0, vocabulary)`;
- `labels`: `[batch, length]` like the ids, each an id of the output vocabulary or `IGNORE_INDEX`;
- `mm_token_type_ids`: `[batch, length]` like the ids;
- a 2-D `attention_mask`: `[batch, length]`, or `[batch, cached + length]` when continuing a cache; before
  a cache is filled, every row keeps at least one token and no image or video token is masked (M-RoPE
  skips masked tokens, so the vision runs would no longer match the grids). 4-D masks are transformers'
  custom masks (e.g. block masks of packed rows) and pass through as they are.

Cost: the shapes are free; the values are read in one host synchronisation per forward (one stacked
reduction), and a forward continuing a filled cache (a decoding step of `generate`, whose ids come from the
model itself) reads none.
"""

from __future__ import annotations

import torch

from .generation_checks import check_token_id_dtype, token_id_range, vocabulary_error
from .model_inputs import IGNORE_INDEX


def _cached_length(past_key_values) -> int | None:
    """Tokens already in the cache (0 for no cache); None for a filled static cache, whose count lives on the device.

    A dynamic cache knows its length from its tensors' shapes (free). A static cache (compiled decoding,
    compiled_decoding.py) counts on the device: reading it would make the host wait for the device at every decode
    step, and inside the compiled step it would be a graph break; before its first update (the prefill) it holds no
    tensors (`is_initialized` False), so a filled one is a decode step. (A static cache emptied by `reset()` and given
    to a plain forward is taken as filled too: its prompt's values go unchecked, `generate` checks its own.)"""
    if past_key_values is None or not hasattr(past_key_values, "get_seq_length"):
        return 0
    layers = getattr(past_key_values, "layers", None)
    if layers and getattr(layers[0], "is_compileable", False):
        return None if getattr(layers[0], "is_initialized", False) else 0
    return int(past_key_values.get_seq_length())


def _check_shapes(batch: int, length: int, cached: int | None, attention_mask, labels, mm_token_type_ids) -> None:
    """ValueError naming the per-token input whose shape does not fit `[batch, length]` (see the module rules).
    Continuing a cache, only the mask is checked: generation may pass the prompt's token types along."""
    for name, tensor in (("labels", labels), ("mm_token_type_ids", mm_token_type_ids)):
        if tensor is not None and cached == 0 and tuple(tensor.shape) != (batch, length):
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, but the input tokens are [{batch}, {length}]: "
                             f"{name} needs one value per token.")
    if attention_mask is None or attention_mask.ndim == 4:
        return
    if cached is None:  # a filled static cache: its length is not read (see _cached_length), the batch is checked
        expected, width = f"[{batch}, cached + {length} new tokens]", attention_mask.shape[-1]
    else:
        expected = f"[{batch}, {length}]" if not cached else f"[{batch}, {cached} cached + {length} new tokens]"
        width = cached + length
    if attention_mask.ndim != 2 or attention_mask.shape[0] != batch or attention_mask.shape[1] != width:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {expected}: one value per "
                         "token (1 = attend, 0 = padding), as the processor returns it.")


def check_forward_inputs(model, input_ids=None, inputs_embeds=None, attention_mask=None, labels=None,
                         mm_token_type_ids=None, past_key_values=None) -> None:
    """Apply the module rules to the inputs of one forward of `model` (a `GapMllmForConditionalGeneration`).

    Raises:
        ValueError: naming the input (`input_ids`, `labels`, `attention_mask`, `mm_token_type_ids`) and what is
            wrong with it.
    """
    tokens = input_ids if input_ids is not None else inputs_embeds
    if tokens is None:
        return  # Qwen3-VL itself asks for one of them
    if input_ids is not None:
        check_token_id_dtype(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids has shape {tuple(input_ids.shape)}, expected [batch, length].")
    if labels is not None:
        check_token_id_dtype(labels, "labels")
    batch, length = tokens.shape[:2]
    cached = _cached_length(past_key_values)
    _check_shapes(batch, length, cached, attention_mask, labels, mm_token_type_ids)
    if cached is None or cached or batch * length == 0:
        return  # a decoding step: its ids are the model's own, and the prompt was checked at prefill

    reductions, readers = [], []
    if input_ids is not None:
        vocabulary = model.get_input_embeddings().num_embeddings
        reductions.append(token_id_range(input_ids))
        readers.append(lambda low, high: vocabulary_error(low, high, vocabulary, "input_ids"))
    if labels is not None:
        outputs = model.get_output_embeddings().out_features  # the logits' width, which the loss indexes
        targets = labels.masked_fill(labels == IGNORE_INDEX, 0)  # ignored positions are no ids
        reductions.append(token_id_range(targets))
        readers.append(lambda low, high: vocabulary_error(low, high, outputs, f"labels (besides {IGNORE_INDEX}, ignored)"))
    if attention_mask is not None and attention_mask.ndim == 2:
        kept = attention_mask != 0
        masked_vision = (~kept & (mm_token_type_ids != 0)).sum() if mm_token_type_ids is not None else kept.new_zeros((), dtype=torch.long)
        reductions.append(torch.stack([kept.sum(-1).min(), masked_vision]).to(torch.long))
        readers.append(lambda fewest, vision: _mask_error(attention_mask, mm_token_type_ids, fewest, vision))
    if not reductions:
        return
    values = torch.cat([r.to(device=reductions[0].device, dtype=torch.long) for r in reductions]).tolist()
    for index, read in enumerate(readers):
        error = read(*values[2 * index : 2 * index + 2])
        if error is not None:
            raise error


def _mask_error(attention_mask, mm_token_type_ids, fewest_kept: int, masked_vision: int) -> ValueError | None:
    """The error for a 2-D mask leaving a row empty or masking vision tokens, naming the first such row."""
    kept = attention_mask != 0
    if fewest_kept == 0:
        row = int((kept.sum(-1) == 0).nonzero()[0, 0])
        return ValueError(f"attention_mask row {row} is all zeros: every sample needs at least one token with mask 1.")
    if masked_vision:
        row = int((~kept & (mm_token_type_ids != 0)).any(-1).nonzero()[0, 0])
        return ValueError(
            f"attention_mask masks {masked_vision} image/video token(s) (mm_token_type_ids ≠ 0), the first in row {row}: "
            "the mask may leave out padding only, never vision tokens."
        )
    return None


__all__ = ["check_forward_inputs"]
