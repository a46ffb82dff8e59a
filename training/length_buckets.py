"""Sequence-length buckets: every training batch padded to one of a few lengths, so that compiled code, CUDA graphs
and cuDNN attention plans made for one batch are reused by the next instead of being rebuilt at each new length.

`data.length_buckets: [512, 768, 1024]` pads each batch's rows to the smallest bucket that holds its longest row (a
row longer than the last bucket: the next multiple of the last bucket). With a fixed batch size, the decoder layers see
at most `len(buckets)` shapes (+ one per multiple of the last bucket that a batch reaches, + the last, smaller batch of
an epoch unless `training.dataloader_drop_last` drops it: training/config.py), and a compiled layer compiles once per
shape (tests/test_train_buckets.py counts the compilations).

The padding is masked, so nothing is learnt from it and the loss is that of the unpadded batch:

    padded rows   (an `attention_mask`) the rows grow on the tokenizer's padding side: pad id, mask 0, label
                  IGNORE_INDEX, token type text; M-RoPE positions follow the mask as for any padding.
    packed rows   (`position_ids` `[4, R, T]`, no mask) the rows grow at their end by a padding block of its own
                  (positions restarting at 0, never supervised), as the packed layout already ends its rows
                  (training/sample_tensors.py); its segment lengths (`packed_segments`) gain that block.
"""

from __future__ import annotations

import torch

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX

# what each token tensor of a batch is padded with (the attention mask: 0, nothing attends to it)
PAD_VALUES = {"attention_mask": 0, "labels": IGNORE_INDEX, "mm_token_type_ids": 0, "label_weights": 0.0}


def check_buckets(buckets) -> list[int]:
    """`data.length_buckets` as a sorted list of distinct positive lengths; ValueError naming the option otherwise."""
    if not buckets or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in buckets):
        raise ValueError(f"data.length_buckets={buckets!r}: give a list of positive token counts, e.g. [512, 1024]")
    return sorted(set(buckets))


def bucket_length(length: int, buckets: list[int]) -> int:
    """The smallest bucket ≥ `length`; past the last bucket, the next multiple of it."""
    for bucket in buckets:
        if length <= bucket:
            return bucket
    return -(-length // buckets[-1]) * buckets[-1]


def pad_to_bucket(batch: dict, buckets: list[int], pad_token_id: int, padding_side: str = "left") -> dict:
    """`batch` (a padded or a packed training batch, module docstring) with its rows padded to their bucket.

    Args:
        batch: `input_ids` `[R, T]` and the other token tensors of the same shape; `attention_mask` (padded rows)
            or `position_ids` `[4, R, T]` (packed rows).
        buckets: sorted lengths (`check_buckets`).
        pad_token_id, padding_side: the tokenizer's (padded rows; packed rows always grow at their end).
    """
    length = batch["input_ids"].shape[-1]
    extra = bucket_length(length, buckets) - length
    if extra == 0:
        return batch
    packed = "attention_mask" not in batch
    left = padding_side == "left" and not packed
    out = dict(batch)
    for key in ("input_ids", "attention_mask", "labels", "mm_token_type_ids", "label_weights"):
        if key in batch:
            value = pad_token_id if key == "input_ids" else PAD_VALUES[key]
            pad = batch[key].new_full((batch[key].shape[0], extra), value)
            out[key] = torch.cat([pad, batch[key]] if left else [batch[key], pad], dim=-1)
    if packed:
        rows = batch["position_ids"].shape[1]
        block = torch.arange(extra, dtype=batch["position_ids"].dtype).expand(4, rows, extra)
        out["position_ids"] = torch.cat([batch["position_ids"], block], dim=-1)
        if "packed_segments" in batch:
            out["packed_segments"] = grow_segments(batch["packed_segments"], length, extra)
    return out


def grow_segments(segments: tuple[int, ...], row_length: int, extra: int) -> tuple[int, ...]:
    """Segment lengths of packed rows (flattened row after row) after each row of `row_length` tokens gains a
    padding block of `extra` tokens at its end."""
    grown, filled = [], 0
    for size in segments:
        grown.append(size)
        filled += size
        if filled == row_length:  # the end of a row
            grown.append(extra)
            filled = 0
    return tuple(grown)


class BucketCollator:
    """Wrap a training collator: its batches padded to `buckets` (`pad_to_bucket`)."""

    def __init__(self, collator, buckets: list[int], pad_token_id: int, padding_side: str = "left"):
        self.collator = collator
        self.buckets = check_buckets(buckets)
        self.pad_token_id, self.padding_side = pad_token_id, padding_side

    def __call__(self, examples: list[dict]):
        return pad_to_bucket(self.collator(examples), self.buckets, self.pad_token_id, self.padding_side)

    def __getattr__(self, name):  # the wrapped chain's attributes (the feature cache: `cache.skipped_names`)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)
