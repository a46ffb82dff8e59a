"""Qwen3-VL with its per-image and per-token-run host loops replaced by batch-wide tensor operations.

Without flash-attn (the CPU, and GPUs where it is not installed), a training forward of the stock Qwen3-VL on 32
mini grounding samples of 8 views makes 26,705 aten calls and 1,029 `.item()` reads (bench/bench_batched_qwen3_vl.py):
`get_rope_index` walks each sample's token runs in Python, the ViT builds its rotary positions image by image,
and each ViT layer runs one attention call per image. On a GPU every call is a kernel launch and every read a
host-device synchronisation, so the mini model's step was bound by dispatch, not by arithmetic (mini/README.md,
"GPU throughput"). `use_batched_qwen3_vl` switches a built Qwen3-VL to the subclasses below:

- `GapMllmQwen3VLModel.get_rope_index`: `mrope_position_ids` (every caller: training forward, `generate`, scene
  reuse); identical positions.
- `GapMllmQwen3VLModel.get_image_features`: hands the ViT its rotary positions from
  `vision_rotary_position_ids` (transformers' precomputed `image_position_ids` input); identical positions.
- `GapMllmQwen3VLVisionAttention`: when every image of the call has the same number of patches (a batch of one
  frame size, the usual case), one attention call over `[images, heads, patches, dim]` instead of one per image;
  other cases and flash-attn keep the stock path. The image lengths are read on the host once per ViT forward.
- `GapMllmQwen3VLTextModel._deepstack_process`: the DeepStack features added at the visual tokens through their
  flat indices (`index_add`), found once per forward, instead of a boolean-mask read and write per DeepStack level
  (each a host-device synchronisation, and three more in the backward); the same additions, so the same numbers.

The subclasses add no parameters or buffers, so weights, configs and checkpoints are the stock model's.
"""

from __future__ import annotations

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLModel,
    Qwen3VLTextModel,
    Qwen3VLVisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)
from transformers.utils.generic import is_flash_attention_requested

from .mrope_positions import mrope_position_ids, vision_rotary_position_ids


class GapMllmQwen3VLModel(Qwen3VLModel):
    """`Qwen3VLModel` whose LLM and ViT position ids are computed batch-wide."""

    def get_rope_index(self, input_ids, mm_token_type_ids, image_grid_thw=None, video_grid_thw=None,
                       attention_mask=None, **kwargs):
        return mrope_position_ids(
            mm_token_type_ids.to(input_ids.device),
            self.config.vision_config.spatial_merge_size,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            attention_mask=attention_mask,
            dtype=input_ids.dtype,
        )

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        # `get_video_features` comes here too (with the video grids): the layout of the positions is the same.
        if image_grid_thw is not None and "position_ids" not in kwargs and "image_position_ids" not in kwargs:
            kwargs["image_position_ids"] = vision_rotary_position_ids(
                image_grid_thw, self.visual.spatial_merge_size, pixel_values.shape[0]
            )
        return super().get_image_features(pixel_values, image_grid_thw, **kwargs)


# the last forward's host reads, each `(tensor, what was read from it)` in one tuple (replaced whole, so a thread
# never pairs one forward's tensor with another's reading): "lengths" (ViT cu_seqlens), "visual" (visual_pos_masks)
_LAST_READ: dict = {}


def _read_once(key: str, tensor: torch.Tensor, read):
    """`read(tensor)`, unless the same tensor object was read last under `key` (every block / DeepStack level of
    one forward gets the same tensor)."""
    last = _LAST_READ.get(key)
    if last is None or last[0] is not tensor:
        last = (tensor, read(tensor))
        _LAST_READ[key] = last
    return last[1]


class GapMllmQwen3VLTextModel(Qwen3VLTextModel):
    """Qwen3-VL's text model with the DeepStack additions made through indices (see the module docstring)."""

    def _deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds):
        """`hidden_states` `[B, T, D]` plus `visual_embeds` `[N, D]` at the N visual tokens of `visual_pos_masks`
        `[B, T]` (row-major order, as the stock `hidden[mask] + embeds`): one index per forward (every DeepStack
        level gets the same mask tensor), read once on the host; `index_add` at distinct indices adds each row once."""
        # the one synchronisation of this forward's DeepStack levels
        index = _read_once("visual", visual_pos_masks, lambda mask: torch.nonzero(mask.flatten()).flatten())
        index = index.to(hidden_states.device)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        added = flat.index_add(0, index, visual_embeds.to(hidden_states.device, hidden_states.dtype))
        return added.view_as(hidden_states)


def _image_lengths(cu_seqlens: torch.Tensor) -> list[int]:
    """The patches of each image, `cu_seqlens` read on the host once per ViT forward, not once per block (every block
    of a forward gets the same tensor; on a GPU each read waits for the device). The stock path reads them too."""
    return _read_once("lengths", cu_seqlens, lambda cu: (cu[1:] - cu[:-1]).tolist())


class GapMllmQwen3VLVisionAttention(Qwen3VLVisionAttention):
    """Qwen3-VL's ViT attention with one call for all images of equal patch count (see the module docstring)."""

    def forward(self, hidden_states, cu_seqlens, position_embeddings=None, max_seqlen=None, **kwargs):
        if is_flash_attention_requested(self.config):  # flash-attn's varlen kernel is one call already
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        lengths = _image_lengths(cu_seqlens)
        if len(set(lengths)) != 1:
            return super().forward(hidden_states, cu_seqlens, position_embeddings, max_seqlen, **kwargs)
        images, patches = len(lengths), lengths[0]
        seq_length = hidden_states.shape[0]
        query, key, value = (
            self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        )
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb_vision(query, key, cos, sin)
        # [images · patches, heads, dim] → [images, heads, patches, dim]: each image attends only to itself
        query, key, value = (t.reshape(images, patches, self.num_heads, -1).transpose(1, 2) for t in (query, key, value))
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        output, _ = attention(
            self, query, key, value, attention_mask=None, scaling=self.scaling,
            dropout=0.0 if not self.training else self.attention_dropout, is_causal=False, **kwargs,
        )
        return self.proj(output.reshape(seq_length, -1).contiguous())  # output: [images, patches, heads, dim]


def use_batched_qwen3_vl(vlm) -> None:
    """Switch a built `Qwen3VLForConditionalGeneration` to the batch-wide subclasses, in place.

    Why a class switch: `Qwen3VLForConditionalGeneration` builds its modules in `__init__` (also inside
    `from_pretrained`) with no hook to choose their classes. The subclasses add no state, so switching the class
    of a built module changes only its methods (and survives `deepcopy`, pickling and `torch.compile`, unlike
    bound methods stored on instances).
    """
    if type(vlm.model) is Qwen3VLModel:
        vlm.model.__class__ = GapMllmQwen3VLModel
    if type(vlm.model.language_model) is Qwen3VLTextModel:
        vlm.model.language_model.__class__ = GapMllmQwen3VLTextModel
        # transformers finds which outputs a model records (hidden states, attentions) by its class name, registered
        # when the model was built: register the new name too, or `output_hidden_states=True` would return None
        _CAN_RECORD_REGISTRY[vlm.model.language_model] = vlm.model.language_model._can_record_outputs
    for block in vlm.model.visual.blocks:
        if type(block.attn) is Qwen3VLVisionAttention:
            block.attn.__class__ = GapMllmQwen3VLVisionAttention
