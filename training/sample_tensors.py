"""A training batch as per-sample tensors, and back: padded rows, or several samples packed into one row.

`split_batch` cuts a collated batch (`GapMllmDataCollator` → `AuxTargetCollator` → `BadSampleGuard`) into one
dict per sample, each holding only that sample's tokens (padding removed), views and targets:

    input_ids, labels, mm_token_type_ids   [L]                 the sample's tokens, no padding
    label_weights                          [L]                 its tokens' loss weights (data.task_loss_weights)
    image_grid_thw                         [V, 3]
    pixel_values                           [Σ_v h_v·w_v, D]    the ViT's patches of its views (live ViT)
    geometry_pixel_values                  [V, 3, 14h, 14w]    its VGGT input, cut to its own size (live VGGT)
    geometry_features                      per level [V, h, w, 2C]   the frozen VGGT's output (feature cache)
    vision_features                        `FrozenVisionFeatures` of its views (feature cache)
    aux_camera [V, 9], aux_depth (V tensors), aux_scale []      targets of the enabled auxiliary losses

`collate_samples` joins such dicts into a batch the training forward takes, in one of two layouts:

    padded   one row per sample, padded to the longest (on the tokenizer's padding side), with an
             `attention_mask`: exactly the collator's batch (`collate_samples(split_batch(b)) == b`).
    packed   samples placed into as few rows as possible (first-fit decreasing, a row at most `row_tokens`
             long: by default the longest sample, so no row costs more attention than the padded batch), no
             `attention_mask`, and `position_ids` `[4, R, T]`: row 0 the text position restarting at 0 in every
             sample (transformers reads the restarts as sample boundaries and keeps attention inside each
             sample: a block-diagonal causal mask with sdpa/eager, varlen kernels with flash-attn on one row),
             rows 1-3 each sample's own M-RoPE positions. What is left of a row after its samples is filled
             with padding that forms a block of its own (labels ignored). `packed_segments`: the lengths of those
             samples and padding blocks, row after row, as host integers (the attention's segments).

Packing reorders the samples of a batch (longest first); the loss is a sum over answer tokens, so the order does
not change it, and every per-view tensor moves with its sample. The first token of every sample is unsupervised
(the chat starts with `<|im_start|>system`), so the token that ends one sample is never trained to predict the
next sample's first token.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import accumulate

import torch

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX
from gap_mllm.processing_gap_mllm import VGGT_PATCH_SIZE
from gap_mllm.speedups import mrope_position_ids

TOKEN_KEYS = ("input_ids", "labels", "mm_token_type_ids", "label_weights")
VIEW_ROW_KEYS = ("image_grid_thw", "aux_camera")  # one row per view, concatenated over samples
# what the encoder towers receive of a sample: the ViT its patches, VGGT its pixels, both the views' grids
TOWER_INPUT_KEYS = ("image_grid_thw", "pixel_values", "geometry_pixel_values")


@dataclass
class FrozenVisionFeatures:
    """What the frozen part of the Qwen ViT outputs for some views (training/frozen_towers.py).

    merged: the whole ViT (mergers too) is frozen: per level (main, then DeepStack) `[N, D_out]`, N = the views'
        merged tokens (Σ h·w/4): the ViT's `pooler_output` and `deepstack_features`, concatenated over views.
    blocks: only the blocks are frozen (a merger trains): the hidden states the mergers read, `[K + 1, P, D_vit]`
        (the K DeepStack taps, then the last block), P = the views' patches (Σ h·w).
    """

    kind: str  # "merged" or "blocks"
    levels: list[torch.Tensor] | torch.Tensor

    @staticmethod
    def concatenate(parts: list[FrozenVisionFeatures]) -> FrozenVisionFeatures:
        kinds = {part.kind for part in parts}
        if len(kinds) != 1:
            raise ValueError(f"cannot join cached ViT features of different kinds {sorted(kinds)}")
        kind = kinds.pop()
        if kind == "merged":
            return FrozenVisionFeatures(kind, [torch.cat(level) for level in zip(*(part.levels for part in parts))])
        return FrozenVisionFeatures(kind, torch.cat([part.levels for part in parts], dim=1))


def _views_per_sample(batch: dict) -> list[int]:
    return [int(count) for count in batch["geometry_views_per_sample"].tolist()]


def split_batch(batch: dict) -> list[dict]:
    """One dict per sample of a collated batch (see the module docstring); padding tokens are dropped."""
    views = _views_per_sample(batch)
    mask = batch["attention_mask"].bool()
    grids = batch["image_grid_thw"]
    patches_per_view = grids.prod(-1).tolist()
    samples, view_start, patch_start = [], 0, 0
    for index, count in enumerate(views):
        sample: dict = {key: batch[key][index][mask[index]] for key in TOKEN_KEYS if key in batch}
        view_slice = slice(view_start, view_start + count)
        sample_grids = grids[view_slice]
        sample["image_grid_thw"] = sample_grids
        if "pixel_values" in batch:
            patches = sum(patches_per_view[view_slice])
            sample["pixel_values"] = batch["pixel_values"][patch_start : patch_start + patches]
            patch_start += patches
        if "geometry_pixel_values" in batch:
            _, height, width = sample_grids[0].tolist()  # the views of a sample share one size
            sample["geometry_pixel_values"] = batch["geometry_pixel_values"][
                view_slice, :, : height * VGGT_PATCH_SIZE, : width * VGGT_PATCH_SIZE
            ]
        if "aux_camera" in batch:
            sample["aux_camera"] = batch["aux_camera"][view_slice]
        if "aux_depth" in batch:
            sample["aux_depth"] = list(batch["aux_depth"][view_slice])
        if "aux_scale" in batch:
            sample["aux_scale"] = batch["aux_scale"][index]
        samples.append(sample)
        view_start += count
    return samples


def _pad_stack(rows: list[torch.Tensor], length: int, value, left: bool) -> torch.Tensor:
    out = rows[0].new_full((len(rows), length), value)
    for index, row in enumerate(rows):
        if left:
            out[index, length - row.shape[0] :] = row
        else:
            out[index, : row.shape[0]] = row
    return out


def _pad_geometry_pixels(views: list[torch.Tensor]) -> torch.Tensor:
    """`[V, 3, H_max, W_max]`, each view top-left aligned in zeros (as the processor pads them)."""
    height = max(view.shape[-2] for view in views)
    width = max(view.shape[-1] for view in views)
    out = views[0].new_zeros((len(views), views[0].shape[0], height, width))
    for index, view in enumerate(views):
        out[index, :, : view.shape[-2], : view.shape[-1]] = view
    return out


def _join_views(samples: list[dict], batch: dict) -> None:
    """The per-view and per-sample tensors of `samples`, joined in sample order into `batch`."""
    batch["image_grid_thw"] = torch.cat([s["image_grid_thw"] for s in samples])
    batch["geometry_views_per_sample"] = torch.tensor([s["image_grid_thw"].shape[0] for s in samples], dtype=torch.long)
    if "pixel_values" in samples[0]:
        batch["pixel_values"] = torch.cat([s["pixel_values"] for s in samples])
    if "geometry_pixel_values" in samples[0]:
        batch["geometry_pixel_values"] = _pad_geometry_pixels([view for s in samples for view in s["geometry_pixel_values"]])
    if "geometry_features" in samples[0]:
        levels = len(samples[0]["geometry_features"])
        batch["geometry_features"] = [[s["geometry_features"][level] for s in samples] for level in range(levels)]
    if "vision_features" in samples[0]:
        batch["vision_features"] = FrozenVisionFeatures.concatenate([s["vision_features"] for s in samples])
    if "aux_camera" in samples[0]:
        batch["aux_camera"] = torch.cat([s["aux_camera"] for s in samples])
    if "aux_depth" in samples[0]:
        batch["aux_depth"] = [depth for s in samples for depth in s["aux_depth"]]
    if "aux_scale" in samples[0]:
        batch["aux_scale"] = torch.stack([s["aux_scale"] for s in samples])


def tower_inputs(samples: list[dict]) -> dict:
    """The towers' inputs (`TOWER_INPUT_KEYS`) of `samples` joined as a collated batch holds them, with
    `geometry_views_per_sample`: what `get_geometry_features` and the ViT take, and nothing else."""
    batch: dict = {}
    _join_views([{key: sample[key] for key in TOWER_INPUT_KEYS if key in sample} for sample in samples], batch)
    return batch


def collate_samples(samples: list[dict], pad_token_id: int, padding_side: str = "left", packing: bool = False,
                    spatial_merge_size: int = 2, row_tokens: int | None = None) -> dict:
    """A training batch from per-sample dicts (module docstring): padded rows, or packed rows when `packing`.

    Args:
        samples: dicts as `split_batch` (or the feature cache) makes them.
        pad_token_id: the tokenizer's pad id (padding tokens; never supervised).
        padding_side: "left" or "right" (the tokenizer's), for the padded layout.
        packing: pack the samples into rows (returns `position_ids` and no `attention_mask`).
        spatial_merge_size: the ViT's merge size, for the M-RoPE positions of packed rows.
        row_tokens: packed rows hold at most this many tokens; None: the longest sample (one sample longer than
            `row_tokens` gets a row of its own).
    """
    if not samples:
        raise ValueError("collate_samples got no samples")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}; choose left or right")
    if packing:
        return _packed(samples, pad_token_id, spatial_merge_size, row_tokens)
    lengths = [s["input_ids"].shape[0] for s in samples]
    length, left = max(lengths), padding_side == "left"
    batch = {"input_ids": _pad_stack([s["input_ids"] for s in samples], length, pad_token_id, left),
             "attention_mask": _pad_stack([torch.ones(n, dtype=torch.long) for n in lengths], length, 0, left)}
    if "mm_token_type_ids" in samples[0]:
        batch["mm_token_type_ids"] = _pad_stack([s["mm_token_type_ids"] for s in samples], length, 0, left)
    if "labels" in samples[0]:
        batch["labels"] = _pad_stack([s["labels"] for s in samples], length, IGNORE_INDEX, left)
    if "label_weights" in samples[0]:  # padding is never supervised: weight 0
        batch["label_weights"] = _pad_stack([s["label_weights"] for s in samples], length, 0.0, left)
    _join_views(samples, batch)
    return batch


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length ≤ `capacity` (longest first, each into the first
    bin with room); an item longer than `capacity` gets a bin of its own."""
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for slot, free in enumerate(room):
            if lengths[index] <= free:
                bins[slot].append(index)
                room[slot] -= lengths[index]
                break
        else:
            bins.append([index])
            room.append(capacity - lengths[index])
    return bins


def _packed(samples: list[dict], pad_token_id: int, spatial_merge_size: int, row_tokens: int | None) -> dict:
    lengths = [s["input_ids"].shape[0] for s in samples]
    rows = first_fit_decreasing(lengths, row_tokens or max(lengths))
    order = [index for row in rows for index in row]
    ordered = [samples[index] for index in order]
    # Each sample's M-RoPE positions, computed alone (positions restart at 0 in every sample), in one batched call.
    types = _pad_stack([s["mm_token_type_ids"] for s in ordered], max(lengths), 0, left=False)
    valid = _pad_stack([torch.ones(len(s["input_ids"]), dtype=torch.long) for s in ordered], max(lengths), 0, left=False)
    grids = torch.cat([s["image_grid_thw"] for s in ordered])
    rope, _ = mrope_position_ids(types, spatial_merge_size, image_grid_thw=grids, attention_mask=valid)

    # Where every token goes, as whole-batch index tensors: sample k sits in row `row_of[k]` from column `offset[k]`.
    sizes = torch.tensor([lengths[index] for index in order])
    row_of = torch.tensor([row_index for row_index, row in enumerate(rows) for _ in row])
    before = torch.cumsum(sizes, 0) - sizes  # tokens of the samples before k (all rows)
    row_first = torch.tensor([0, *accumulate(len(row) for row in rows)][:-1])  # index of each row's first sample
    offset = before - before[row_first][row_of]
    token_sample = torch.repeat_interleave(torch.arange(len(order)), sizes)
    token_position = torch.arange(int(sizes.sum())) - before[token_sample]  # 0..L-1 within its sample
    token_row, token_column = row_of[token_sample], offset[token_sample] + token_position
    fill = torch.zeros(len(rows), dtype=torch.long).index_add_(0, row_of, sizes)  # tokens of each row
    width = int(fill.max())

    # what is left of a row after its samples is padding: a block of its own (positions restart at 0), never supervised
    columns = torch.arange(width)
    padding_positions = (columns - fill[:, None]).clamp(min=0)
    batch = {"input_ids": torch.full((len(rows), width), pad_token_id, dtype=ordered[0]["input_ids"].dtype),
             "mm_token_type_ids": torch.zeros((len(rows), width), dtype=ordered[0]["mm_token_type_ids"].dtype),
             "position_ids": padding_positions.expand(4, -1, -1).clone()}
    batch["input_ids"][token_row, token_column] = torch.cat([s["input_ids"] for s in ordered])
    batch["mm_token_type_ids"][token_row, token_column] = torch.cat([s["mm_token_type_ids"] for s in ordered])
    if "labels" in ordered[0]:
        batch["labels"] = torch.full((len(rows), width), IGNORE_INDEX, dtype=ordered[0]["labels"].dtype)
        batch["labels"][token_row, token_column] = torch.cat([s["labels"] for s in ordered])
    if "label_weights" in ordered[0]:  # moves with its sample's labels; the padding blocks weigh 0
        batch["label_weights"] = torch.zeros((len(rows), width), dtype=ordered[0]["label_weights"].dtype)
        batch["label_weights"][token_row, token_column] = torch.cat([s["label_weights"] for s in ordered])
    batch["position_ids"][0, token_row, token_column] = token_position
    batch["position_ids"][1:, token_row, token_column] = rope[:, valid.bool()]
    batch["packed_segments"] = packed_segments([[lengths[index] for index in row] for row in rows], width)
    _join_views(ordered, batch)
    return batch


def packed_segments(rows: list[list[int]], width: int) -> tuple[int, ...]:
    """The lengths of the attention segments of packed rows of `width` tokens, row after row: each sample, then the
    row's padding block (if any). Host integers: the attention reads its sample boundaries from them
    (training/packed_attention.py) instead of finding them in the positions on the device (a synchronisation)."""
    segments = []
    for row in rows:
        segments.extend(row)
        if sum(row) < width:
            segments.append(width - sum(row))
    return tuple(segments)


def padding_share(batch: dict, sample_tokens: int) -> float:
    """Share of a batch's token slots (padded or packed) that hold padding: 1 − sample tokens / slots."""
    return 1.0 - sample_tokens / batch["input_ids"].numel()
