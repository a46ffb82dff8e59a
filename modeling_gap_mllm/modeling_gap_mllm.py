"""GAP-MLLM: Qwen3-VL + a frozen geometry encoder (VGGT) + multi-level gated fusion (arXiv 2603.16461).

Level 0 fuses `merger_0(g)` into the main visual tokens, level k into DeepStack level k-1; the fused features enter
Qwen3-VL through its `mm_encoder_outputs` hook. Sections: checkpoint checks (`report_missing_weights`,
`first_non_finite_tensor`), batch-wide positions (`mrope_position_ids`, `vision_rotary_position_ids`,
`use_batched_qwen3_vl`), input checks (`check_forward_inputs`), mergers and fusion modules (`GapMllmMultiLevelFusion`),
and the model (`GapMllmForConditionalGeneration`, `GapMllmOutput`, `GapMllmImageEmbeddings`).
"""

import warnings
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3VLForConditionalGeneration
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen2.modeling_qwen2 import Qwen2RMSNorm
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLModel,
    Qwen3VLTextModel,
    Qwen3VLVisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)
from transformers.utils import ModelOutput, logging
from transformers.utils.generic import is_flash_attention_requested
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from .configuration_gap_mllm import (
    GEOMETRY_ENCODERS,
    GEOMETRY_INPUT_NAMES,  # noqa: F401 - re-exported for callers that build model inputs
    IGNORE_INDEX,
    PREFILL_ONLY_INPUT_NAMES,
    GapMllmConfig,
    GapMllmFusionConfig,
    check_memory_for_parameters,
)
from .generation_gap_mllm import (
    GapMllmScene,
    answer_task_kwargs,
    check_token_id_dtype,
    compiled_decoding_kwargs,
    encode_scene,
    generate_from_scene,
    lent_static_cache,
    prepare_token_budget,
    static_cache_lending,
    token_id_range,
    vocabulary_error,
)
from .modeling_vggt import GapMllmGeometryEncoder  # noqa: F401 - the import registers the "vggt" geometry encoder


# ---- checkpoint checks
# (key prefix, human name), most specific first.
WEIGHT_GROUPS = (
    ("geometry_encoder.", "geometry encoder (VGGT aggregator)"),
    ("geometry_fusion.mergers.", "geometry mergers"),
    ("geometry_fusion.fusions.", "fusion modules (gates)"),
    ("vlm.model.visual.", "Qwen3-VL vision tower"),
    ("vlm.model.language_model.", "Qwen3-VL language model"),
    ("vlm.lm_head.", "LM head"),
)
GEOMETRY_GROUPS = frozenset(name for prefix, name in WEIGHT_GROUPS if prefix.startswith("geometry_"))


class MissingWeightsWarning(UserWarning):
    """A checkpoint lacked weights of a GAP-MLLM component; they were randomly initialised."""


def group_missing_keys(missing_keys) -> dict[str, list[str]]:
    """Sort state-dict keys into the named components of `WEIGHT_GROUPS` (others under "other")."""
    groups: dict[str, list[str]] = {}
    for key in sorted(missing_keys):
        name = next((name for prefix, name in WEIGHT_GROUPS if key.startswith(prefix)), "other")
        groups.setdefault(name, []).append(key)
    return groups


def report_missing_weights(missing_keys, source: str) -> dict[str, list[str]]:
    """Warn once, by group, about `missing_keys` of a checkpoint loaded from `source`; returns the groups."""
    groups = group_missing_keys(missing_keys)
    if groups:
        lines = [f"  - {name}: {len(keys)} tensors randomly initialised (e.g. {keys[0]})" for name, keys in groups.items()]
        message = (
            f"The checkpoint at {source!r} lacks the weights of these GAP-MLLM components:\n" + "\n".join(lines)
            + "\nThey are NOT pretrained. Load the matching weights (VGGT converter, a trained GAP-MLLM "
            "checkpoint) before using the model for anything but training from scratch."
        )
        logger.warning(message)
        warnings.warn(message, MissingWeightsWarning, stacklevel=3)
    return groups


def first_non_finite_tensor(state_dict) -> str | None:
    """Name of the first floating-point, non-meta tensor of `state_dict` holding a NaN or an infinity, or None."""
    names, sums = {}, {}
    for position, (name, tensor) in enumerate(state_dict.items()):
        if tensor.is_floating_point() and not tensor.is_meta:
            names.setdefault(tensor.device, []).append((position, name))
            sums.setdefault(tensor.device, []).append(tensor.sum(dtype=torch.float32))
    broken = []
    for device, device_sums in sums.items():
        flagged = (~torch.isfinite(torch.stack(device_sums))).nonzero().flatten().tolist()  # the one synchronisation
        broken.extend(names[device][index] for index in flagged
                      if not torch.isfinite(state_dict[names[device][index][1]]).all())
    return min(broken)[1] if broken else None


# ---- batch-wide M-RoPE and ViT positions
TEXT, IMAGE, VIDEO = 0, 1, 2


def _run_grid_rows(grid_thw: torch.LongTensor | None, device, split_frames: bool) -> torch.LongTensor:
    """`[N, 3]` grids with one row per vision run (each video frame is its own run)."""
    if grid_thw is None:
        return torch.zeros(0, 3, dtype=torch.long, device=device)
    grid_thw = grid_thw.to(device).long()
    if not split_frames:
        return grid_thw
    frames = torch.repeat_interleave(grid_thw, grid_thw[:, 0], dim=0)
    return torch.cat([torch.ones_like(frames[:, :1]), frames[:, 1:]], dim=1)


def _run_grids(types: torch.Tensor, run_id: torch.Tensor, image_grids: torch.Tensor, video_grids: torch.Tensor):
    """`(t, rows, cols, advance)` of the grid each vision token's run consumes, `[B, T]` each (0 elsewhere)."""
    grids = torch.cat([image_grids, video_grids, torch.zeros(1, 3, dtype=torch.long, device=types.device)])
    offset = torch.where(types == VIDEO, image_grids.shape[0], 0)
    index = torch.where(types == TEXT, grids.shape[0] - 1, (run_id + offset).clamp(0, grids.shape[0] - 1))
    grid = grids[index]
    return grid[..., 0], grid[..., 1], grid[..., 2], torch.maximum(grid[..., 1], grid[..., 2])


def mrope_position_ids(
    mm_token_type_ids: torch.Tensor,
    spatial_merge_size: int,
    image_grid_thw: torch.LongTensor | None = None,
    video_grid_thw: torch.LongTensor | None = None,
    attention_mask: torch.Tensor | None = None,
    dtype: torch.dtype = torch.long,
) -> tuple[torch.Tensor, torch.Tensor]:
    """M-RoPE positions of a batch, as Qwen3-VL's `get_rope_index` returns them.

    Args:
        mm_token_type_ids: `[B, T]` 0 text, 1 image, 2 video (the processor's output).
        spatial_merge_size: the vision config's merge size (2 for Qwen3-VL).
        image_grid_thw: `[N_images, 3]` patch grids in the order the images appear (batch-major).
        video_grid_thw: `[N_videos, 3]`; each video frame is its own run.
        attention_mask: `[B, T]`, 0 for padding (left or right); `None`: every token counts.
        dtype: dtype of the returned positions.

    Returns:
        `([3, B, T] positions (t, h, w), [B, 1] deltas)`: delta = the largest position + 1 − the sample's length.

    Raises:
        ValueError: the vision runs of the tokens and the grids disagree (count or length).
    """
    types = mm_token_type_ids.long()
    batch, length = types.shape
    device = types.device
    valid = torch.ones_like(types, dtype=torch.bool) if attention_mask is None else attention_mask.to(device).bool()
    types = torch.where(valid, types, TEXT)
    image_grids = _run_grid_rows(image_grid_thw, device, split_frames=False)
    video_grids = _run_grid_rows(video_grid_thw, device, split_frames=True)

    # A run starts at a vision token whose previous counted token is not of its type.
    index = torch.arange(length, device=device).expand(batch, -1)
    last_valid = torch.cummax(torch.where(valid, index, -1), dim=1).values
    previous_valid = torch.cat([torch.full_like(last_valid[:, :1], -1), last_valid[:, :-1]], dim=1)
    previous_type = torch.where(previous_valid >= 0, types.gather(1, previous_valid.clamp(min=0)), -1)
    vision = valid & (types != TEXT)
    run_start = vision & (previous_type != types)

    # Runs are numbered per modality in batch-major order, as Qwen3-VL's grid iterators consume them.
    run_number = {}
    for modality in (IMAGE, VIDEO):
        starts = (run_start & (types == modality)).flatten()
        run_number[modality] = (torch.cumsum(starts, 0) - 1).view(batch, length)
    start_at = torch.cummax(torch.where(run_start, index, 0), dim=1).values  # the start of each token's run
    run_id = torch.where(types == VIDEO, run_number[VIDEO], run_number[IMAGE]).gather(1, start_at)
    grid_t, rows, cols, advance = _run_grids(types, run_id, image_grids, video_grids)
    rows, cols, advance = rows // spatial_merge_size, cols // spatial_merge_size, advance // spatial_merge_size
    run_size = torch.where(types == IMAGE, grid_t, 1) * rows * cols

    # A run (or text token) starts after the counted text tokens and the advances of the runs before it.
    text = valid & (types == TEXT)
    text_before = torch.cumsum(text, 1) - text.long()
    advance_at_start = torch.where(run_start, advance, 0)
    advances_before = torch.cumsum(advance_at_start, 1) - advance_at_start
    run_start_position = (text_before + advances_before).gather(1, start_at)
    within_run = torch.cumsum(vision, 1) - torch.cumsum(vision, 1).gather(1, start_at)
    cols_safe = cols.clamp(min=1)
    base = torch.where(vision, run_start_position, text_before + advances_before)
    plane = (rows * cols).clamp(min=1)  # an image of t temporal patches is t planes of rows × cols tokens
    positions = torch.stack([
        base + torch.where(vision, within_run // plane, 0),
        base + torch.where(vision, within_run % plane // cols_safe, 0),
        base + torch.where(vision, within_run % cols_safe, 0),
    ])
    positions = torch.where(valid, positions, 0).to(dtype)
    _check_runs(types, run_start, run_id, vision, run_size, image_grids.shape[0], video_grids.shape[0])
    largest = torch.where(valid, positions.amax(0), torch.iinfo(positions.dtype).min).amax(1)
    deltas = (largest + 1 - valid.sum(1)).unsqueeze(1).long()
    return positions, deltas


def _check_runs(types, run_start, run_id, vision, run_size, num_images: int, num_videos: int) -> None:
    """ValueError unless every run has a grid and exactly its number of tokens (one host synchronisation)."""
    problems = []
    for modality, count, name in ((IMAGE, num_images, "image"), (VIDEO, num_videos, "video frame")):
        runs = (run_start & (types == modality)).sum()
        member = vision & (types == modality)
        sizes = torch.zeros(count + 1, dtype=torch.long, device=types.device)
        sizes.index_add_(0, torch.where(member, run_id, count).clamp(max=count).flatten(), member.long().flatten())
        expected = torch.zeros(count + 1, dtype=torch.long, device=types.device)
        expected.index_add_(0, torch.where(run_start & member, run_id, count).clamp(max=count).flatten(),
                            torch.where(run_start & member, run_size, 0).flatten())
        problems.append(torch.stack([runs - count, (sizes[:count] != expected[:count]).sum()]))
    found = torch.stack(problems).tolist()
    for (extra_runs, wrong_sizes), name in zip(found, ("image", "video frame")):
        if extra_runs or wrong_sizes:
            raise ValueError(
                f"mm_token_type_ids and the {name} grids disagree: {extra_runs:+d} {name} runs against the grids, "
                f"{wrong_sizes} run(s) whose token count is not the grid's (h × w / merge²). Build the inputs with "
                "the processor (it writes the vision tokens from the same grids)."
            )


def vision_rotary_position_ids(grid_thw: torch.LongTensor, spatial_merge_size: int, num_patches: int) -> torch.LongTensor:
    """The ViT's 2-D rotary positions `[num_patches, 2]` (row, column), as Qwen3-VL's `get_vision_position_ids`.

    Args:
        grid_thw: `[N, 3]` patch grids (t, h, w) of the images (or videos) in order; patches come image by image,
            frame by frame, within a frame in row-major `m × m` merge blocks.
        spatial_merge_size: `m`, the vision config's merge size.
        num_patches: `Σ t·h·w`, the number of rows of `pixel_values` (so nothing is read from the device).
    """
    grid = grid_thw.long()
    counts = grid.prod(-1)
    image = torch.repeat_interleave(torch.arange(grid.shape[0], device=grid.device), counts, output_size=num_patches)
    first_patch = (torch.cumsum(counts, 0) - counts)[image]
    heights, widths = grid[image, 1], grid[image, 2]
    in_frame = (torch.arange(num_patches, device=grid.device) - first_patch) % (heights * widths)
    block, in_block = in_frame // spatial_merge_size**2, in_frame % spatial_merge_size**2
    blocks_per_row = widths // spatial_merge_size
    rows = block // blocks_per_row * spatial_merge_size + in_block // spatial_merge_size
    cols = block % blocks_per_row * spatial_merge_size + in_block % spatial_merge_size
    return torch.stack([rows, cols], dim=-1)


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


# key -> (tensor, its host read), one tuple so threads never mix forwards: "lengths" (cu_seqlens), "visual"
_LAST_READ: dict = {}


def _read_once(key: str, tensor: torch.Tensor, read):
    """`read(tensor)`, unless the same tensor object was read last under `key`."""
    last = _LAST_READ.get(key)
    if last is None or last[0] is not tensor:
        last = (tensor, read(tensor))
        _LAST_READ[key] = last
    return last[1]


class GapMllmQwen3VLTextModel(Qwen3VLTextModel):
    """Qwen3-VL's text model adding DeepStack features at indices read once per forward."""

    def _deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds):
        """`hidden_states` `[B, T, D]` plus `visual_embeds` `[N, D]` at the N tokens of `visual_pos_masks` `[B, T]`."""
        index = _read_once("visual", visual_pos_masks, lambda mask: torch.nonzero(mask.flatten()).flatten())
        index = index.to(hidden_states.device)
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        added = flat.index_add(0, index, visual_embeds.to(hidden_states.device, hidden_states.dtype))
        return added.view_as(hidden_states)


def _image_lengths(cu_seqlens: torch.Tensor) -> list[int]:
    """Patches per image, `cu_seqlens` read on the host once per ViT forward rather than once per block."""
    return _read_once("lengths", cu_seqlens, lambda cu: (cu[1:] - cu[:-1]).tolist())


class GapMllmQwen3VLVisionAttention(Qwen3VLVisionAttention):
    """Qwen3-VL's ViT attention as one batched call when all images have the same patch count."""

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
    """Switch a built `Qwen3VLForConditionalGeneration` to the batch-wide subclasses, in place (they add no state, so
    the switch survives `deepcopy`, pickling and `torch.compile`)."""
    if type(vlm.model) is Qwen3VLModel:
        vlm.model.__class__ = GapMllmQwen3VLModel
    if type(vlm.model.language_model) is Qwen3VLTextModel:
        vlm.model.language_model.__class__ = GapMllmQwen3VLTextModel
        # recorded outputs are registered per class name at build: without this `output_hidden_states` gives None
        _CAN_RECORD_REGISTRY[vlm.model.language_model] = vlm.model.language_model._can_record_outputs
    for block in vlm.model.visual.blocks:
        if type(block.attn) is Qwen3VLVisionAttention:
            block.attn.__class__ = GapMllmQwen3VLVisionAttention


@dataclass(frozen=True)
class GapMllmImageEmbeddings:
    """What `GapMllmForConditionalGeneration.encode_images` returns.

    Attributes:
        embeddings: one `[tokens_i, (1 + num_deepstack) · hidden]` tensor per image, in input order
            (views in sample order, samples in batch order); `tokens_i = h_i · w_i / merge²`.
        image_grid_thw: `[N_images, 3]` rows `(1, h_i, w_i)`, the patch grid of each image (before the merge).
        views_per_sample: the number of images of each sample, in batch order.
        hidden_size: the width of one level (Qwen3-VL's `vision_config.out_hidden_size`).
        num_deepstack_levels: DeepStack levels after the main one (3 for Qwen3-VL-2B).
    """

    embeddings: tuple[torch.Tensor, ...]
    image_grid_thw: torch.LongTensor
    views_per_sample: tuple[int, ...]
    hidden_size: int
    num_deepstack_levels: int

    def __post_init__(self):
        if len(self.embeddings) != self.image_grid_thw.shape[0] or sum(self.views_per_sample) != len(self.embeddings):
            raise ValueError(
                f"{len(self.embeddings)} embeddings, {self.image_grid_thw.shape[0]} grid rows and views_per_sample="
                f"{list(self.views_per_sample)} do not describe the same images"
            )

    @property
    def width(self) -> int:
        """`(1 + num_deepstack_levels) · hidden_size`: 8192 for Qwen3-VL-2B."""
        return (1 + self.num_deepstack_levels) * self.hidden_size

    def per_sample(self) -> list[tuple[tuple[torch.Tensor, ...], torch.LongTensor]]:
        """`[(embeddings of the sample's images, its [V_b, 3] grid rows), …]`, one entry per sample."""
        samples, start = [], 0
        for count in self.views_per_sample:
            samples.append((self.embeddings[start : start + count], self.image_grid_thw[start : start + count]))
            start += count
        return samples


def concatenate_levels(main: tuple[torch.Tensor, ...], deepstack: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Per image, `[main ‖ deepstack_0 ‖ …]` along the feature axis.

    Args:
        main: one `[tokens_i, hidden]` tensor per image (Qwen's `pooler_output`, or GAP's fused level 0).
        deepstack: per DeepStack level, one `[tokens_i, hidden]` tensor per image.

    Returns:
        one `[tokens_i, (1 + len(deepstack)) · hidden]` tensor per image.
    """
    levels = [main, *deepstack]
    for level, tensors in enumerate(levels):
        if len(tensors) != len(main):
            raise ValueError(f"level {level} has {len(tensors)} images, the main level {len(main)}")
    return tuple(torch.cat([tensors[image] for tensors in levels], dim=-1) for image in range(len(main)))


def _cached_length(past_key_values) -> int | None:
    """Tokens already cached (0 without a cache); None for a filled static cache, whose count is not read back."""
    if past_key_values is None or not hasattr(past_key_values, "get_seq_length"):
        return 0
    layers = getattr(past_key_values, "layers", None)
    if layers and getattr(layers[0], "is_compileable", False):
        return None if getattr(layers[0], "is_initialized", False) else 0
    return int(past_key_values.get_seq_length())


def _check_shapes(batch: int, length: int, cached: int | None, attention_mask, labels, mm_token_type_ids) -> None:
    """ValueError naming the per-token input that does not fit `[batch, length]` (only the mask after a cache)."""
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
    """Check the inputs of one forward of `model` (a `GapMllmForConditionalGeneration`), with one host read.

    Token ids must lie in the vocabulary (`labels` besides -100); `labels`, `mm_token_type_ids` and a 2-D
    `attention_mask` must be `[B, T]` (the mask `[B, cached + T]` after a cache); the mask keeps a token in every row
    and masks no vision token. A step continuing a cache has only its shapes checked.

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


# ---- geometry mergers and fusion modules
class GapMllmGeometryMerger(nn.Module):
    """Norm → 2×2 spatial concat → Linear → GELU → Linear, with the official `GeometryFeatureMerger`'s key names.

    Args:
        input_size: channels of one geometry patch token (2 × VGGT width = 2048 for VGGT-1B).
        hidden_size: hidden width of the MLP (4096 officially).
        output_size: width of the Qwen visual tokens (`vision_config.out_hidden_size`).
        norm: `"rms"` (Qwen2 RMSNorm) or `"layer"` (LayerNorm with bias).
        norm_eps: eps of that norm (1e-6 officially).
        merge_size: spatial merge of Qwen3-VL (2).
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int, norm: str = "rms",
                 norm_eps: float = 1e-6, merge_size: int = 2):
        super().__init__()
        self.input_size = input_size
        self.merge_size = merge_size
        self.ln_q = Qwen2RMSNorm(input_size, eps=norm_eps) if norm == "rms" else nn.LayerNorm(input_size, eps=norm_eps)
        self.mlp = nn.Sequential(
            nn.Linear(input_size * merge_size**2, hidden_size),
            nn.GELU(),  # exact GELU, as the official merger
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`[S, h, w, input_size]` patch tokens of S views → `[S · (h // 2) · (w // 2), output_size]`, views in order,
        each row-major over its merged grid (Qwen's token order)."""
        views, height, width, channels = features.shape
        m = self.merge_size
        features = features[:, : height // m * m, : width // m * m]  # odd grids lose their last row/column
        features = features.reshape(views, height // m, m, width // m, m, channels).permute(0, 1, 3, 2, 4, 5)
        merged = self.ln_q(features).reshape(-1, channels * m * m)
        return self.mlp(merged)


class GatedFusion(nn.Module):
    """Official token- and channel-wise gate: `a = σ(W·[LN₁(v); LN₂(g)] + b)`, `out = a⊙LN₁(v) + (1−a)⊙LN₂(g)`.

    As the official code, no residual to the raw `v` and no zero-init: `a ≡ 1` gives `LN₁(v)`, not `v`."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        # Sequential(Linear, Sigmoid): keeps the official key name `gate_projection.0`.
        self.gate_projection = nn.Sequential(nn.Linear(2 * hidden_size, hidden_size), nn.Sigmoid())

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, grids=None):
        """visual, geometry: `[N, D]` → fused `[N, D]`, gate `[N, D]` in (0, 1)."""
        visual, geometry = self.norm1(visual), self.norm2(geometry)
        gate = self.gate_projection(torch.cat([visual, geometry], dim=-1))
        return gate * visual + (1 - gate) * geometry, gate


class AddFusion(nn.Module):
    """`out = v + g` (VG-LLM's choice); no parameters, so geometry = 0 leaves `v` unchanged."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()

    def forward(self, visual, geometry, grids=None):
        return visual + geometry, None


class ConcatFusion(nn.Module):
    """`out = Linear_{2D→D}([LN₁(v); LN₂(g)])`."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.projection = nn.Linear(2 * hidden_size, hidden_size)

    def forward(self, visual, geometry, grids=None):
        return self.projection(torch.cat([self.norm1(visual), self.norm2(geometry)], dim=-1)), None


class WeightedFusion(nn.Module):
    """`out = w₁/(w₁+w₂)·v + w₂/(w₁+w₂)·g` with two learnable scalars, both 0.5 at init."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.weight_2d = nn.Parameter(torch.tensor(0.5))
        self.weight_3d = nn.Parameter(torch.tensor(0.5))

    def forward(self, visual, geometry, grids=None):
        total = self.weight_2d + self.weight_3d
        return (self.weight_2d / total) * visual + (self.weight_3d / total) * geometry, None


def sincos_position_embedding_2d(height: int, width: int, dim: int, device, dtype) -> torch.Tensor:
    """MAE-style 2-D sine-cosine embedding `[height * width, dim]`, row-major: the first half of the
    channels encodes the row, the second half the column (temperature 10000)."""
    if dim % 4 != 0:
        raise ValueError(f"cross-attention fusion needs a hidden size divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float32, device=device) / (dim / 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=device),
                                torch.arange(width, dtype=torch.float32, device=device), indexing="ij")

    def encode(positions):
        angles = positions.flatten()[:, None] * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.cat([encode(rows), encode(cols)], dim=1).to(dtype)


class GapMllmFusionCrossAttention(nn.Module):
    """Multi-head cross-attention of visual tokens (queries) to one view's geometry tokens (keys, values), through
    the transformers attention interface (`attn_implementation` applies)."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.config = config
        self.num_heads = config.cross_attention_num_heads
        if hidden_size % self.num_heads != 0:
            raise ValueError(
                f"cross-attention fusion: hidden size {hidden_size} is not divisible by "
                f"geometry_fusion_config.cross_attention_num_heads={self.num_heads}"
            )
        self.head_dim = hidden_size // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False
        self.num_key_value_groups = 1
        self.attention_dropout = config.cross_attention_dropout
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """queries, keys, values: `[B, L, D]` → `[B, L, D]`."""
        batch, length, _ = queries.shape

        def heads(x):
            return x.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attn_fn = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, _ = attn_fn(
            self, heads(self.q_proj(queries)), heads(self.k_proj(keys)), heads(self.v_proj(values)), None,
            dropout=self.attention_dropout if self.training else 0.0, scaling=self.scaling, is_causal=False,
        )
        return self.o_proj(out.reshape(batch, length, -1))


class CrossAttentionFusionBlock(nn.Module):
    """LN on q, k, v; 2-D sin-cos positions added to q and k; cross-attention; residual;
    LN → MLP (GELU, dropout) → residual (the official `CrossAttentionBlock`)."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.norm1_query = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm1_key = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm1_value = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.norm2 = nn.LayerNorm(hidden_size, eps=config.norm_eps)
        self.cross_attention = GapMllmFusionCrossAttention(config, hidden_size)
        inner = hidden_size * config.cross_attention_mlp_ratio
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, inner), nn.GELU(), nn.Dropout(config.cross_attention_dropout),
            nn.Linear(inner, hidden_size), nn.Dropout(config.cross_attention_dropout),
        )

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """visual, geometry: `[B, height * width, D]` (B views of one merged grid) → `[B, height * width, D]`."""
        position = sincos_position_embedding_2d(height, width, visual.shape[-1], visual.device, visual.dtype)
        attended = self.cross_attention(
            self.norm1_query(visual) + position, self.norm1_key(geometry) + position, self.norm1_value(geometry)
        )
        hidden = visual + attended
        return hidden + self.mlp(self.norm2(hidden))


class CrossAttentionFusion(nn.Module):
    """Stack of `cross_attention_num_layers` blocks; each view attends only to its own geometry tokens."""

    def __init__(self, config: GapMllmFusionConfig, hidden_size: int):
        super().__init__()
        self.cross_attn_blocks = nn.ModuleList(
            [CrossAttentionFusionBlock(config, hidden_size) for _ in range(config.cross_attention_num_layers)]
        )

    def forward(self, visual: torch.Tensor, geometry: torch.Tensor, grids):
        """visual, geometry: `[N, D]`, the tokens of all views in order; grids: one merged (h, w) per view."""
        sizes = [h * w for h, w in grids]
        fused = list(torch.split(visual, sizes))
        geometry_views = torch.split(geometry, sizes)
        # Views with the same grid run as one batch.
        by_grid: dict[tuple[int, int], list[int]] = {}
        for index, grid in enumerate(grids):
            by_grid.setdefault(tuple(grid), []).append(index)
        for (height, width), indices in by_grid.items():
            hidden = torch.stack([fused[i] for i in indices])
            context = torch.stack([geometry_views[i] for i in indices])
            for block in self.cross_attn_blocks:
                hidden = block(hidden, context, height, width)
            for slot, i in enumerate(indices):
                fused[i] = hidden[slot]
        return torch.cat(fused), None


FUSION_CLASSES = {
    "gated": GatedFusion,
    "add": AddFusion,
    "concat": ConcatFusion,
    "weighted": WeightedFusion,
    "cross_attention": CrossAttentionFusion,
}


def build_fusion(config: GapMllmFusionConfig, hidden_size: int) -> nn.Module:
    """The fusion module of `config.method` for tokens of width `hidden_size`."""
    return FUSION_CLASSES[config.method](config, hidden_size)


class GapMllmMultiLevelFusion(nn.Module):
    """`mergers[l]` and `fusions[l]` for every level l (0 = main visual tokens, l ≥ 1 = DeepStack l-1)."""

    def __init__(self, config: GapMllmConfig):
        super().__init__()
        vision = config.vlm_config.vision_config
        fusion = config.geometry_fusion_config
        self.merge_size = vision.spatial_merge_size
        self.mergers = nn.ModuleList(
            [
                GapMllmGeometryMerger(
                    input_size=config.geometry_config.feature_size,
                    hidden_size=fusion.merger_hidden_size,
                    output_size=vision.out_hidden_size,
                    norm=fusion.merger_norm,
                    norm_eps=fusion.merger_norm_eps,
                    merge_size=self.merge_size,
                )
                for _ in range(config.num_fusion_levels)
            ]
        )
        self.fusions = nn.ModuleList(
            [build_fusion(fusion, vision.out_hidden_size) for _ in range(config.num_fusion_levels)]
        )

    def forward(
        self,
        visual_levels: list[tuple[torch.Tensor, ...]],
        geometry_levels: list[list[torch.Tensor]],
        merged_grids: list[tuple[int, int]],
        output_gates: bool = False,
    ) -> tuple[list[tuple[torch.Tensor, ...]], tuple[torch.Tensor, ...] | None]:
        """Fuse each level's merged geometry into its visual tokens.

        Args:
            visual_levels: per level, one `[n_i, D]` tensor per image (level 0 `pooler_output`, level l
                `deepstack_features[l-1]`).
            geometry_levels: per level, one `[S_b, h_b, w_b, C]` tensor per sample, in batch order.
            merged_grids: the merged (h/2, w/2) grid of each image; `n_i = h_i/2 · w_i/2`.
            output_gates: also return, per level, the gate averaged over channels `[N]` (`gated` only).

        Returns:
            `(fused, gates)`: the fused features shaped as `visual_levels`, and the gates (or None).
        """
        sizes = [h * w for h, w in merged_grids]
        fused_levels, gates = [], []
        for level, (visual, geometry) in enumerate(zip(visual_levels, geometry_levels)):
            merged = self._merge(level, geometry)
            visual = torch.cat(visual)
            fused, gate = self.fusions[level](visual, merged.to(visual.dtype), merged_grids)
            fused_levels.append(torch.split(fused, sizes))
            if output_gates and gate is not None:
                gates.append(gate.mean(dim=-1))
        return fused_levels, (tuple(gates) if output_gates and gates else None)

    def _merge(self, level: int, geometry: list[torch.Tensor]) -> torch.Tensor:
        """`[Σ merged tokens, D]`: the level's merger on every sample, one call when all share a patch grid."""
        if len({features.shape[1:] for features in geometry}) == 1:
            return self.mergers[level](torch.cat(geometry))
        return torch.cat([self.mergers[level](features) for features in geometry])


# ---- the model
logger = logging.get_logger(__name__)


@dataclass
class GapMllmOutput(ModelOutput):
    """Output of [`GapMllmForConditionalGeneration`].

    Args:
        loss: language-modelling loss `[]` when `labels` are given.
        logits: `[B, T, vocab]` (or the last `logits_to_keep` positions).
        past_key_values: the decoder cache.
        hidden_states, attentions: as in Qwen3-VL when requested.
        rope_deltas: M-RoPE deltas `[B, 1]` of the prompt.
        fusion_gates: with `output_gates=True` and the `gated` method, per level (main, then DeepStack) one
            `[N_visual]` tensor: the gate averaged over channels (1 = pure Qwen feature, 0 = pure geometry).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    rope_deltas: torch.LongTensor | None = None
    fusion_gates: tuple[torch.FloatTensor, ...] | None = None


class GapMllmPreTrainedModel(PreTrainedModel):
    config: GapMllmConfig
    base_model_prefix = "gap"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "GapMllmGeometryBlock"]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """`is_activation_checkpointing`, under the name peft reads, without transformers' FutureWarning."""
        return self.is_activation_checkpointing

    @torch.no_grad()
    def _init_weights(self, module):
        """Geometry-encoder modules by its `init_module_weights`, fusion weights at 0.5, the rest as transformers."""
        # an encoder's init may match Linear/LayerNorm by type: it gets only its own modules
        if module in getattr(self, "_geometry_encoder_modules", ()):
            self.geometry_encoder.init_module_weights(module)
            return
        if isinstance(module, WeightedFusion):
            init.constant_(module.weight_2d, 0.5)
            init.constant_(module.weight_3d, 0.5)
            return
        super()._init_weights(module)


class GapMllmForConditionalGeneration(GapMllmPreTrainedModel, GenerationMixin):
    """GAP-MLLM for image(s) + text → text generation.

    Modules: `vlm` (stock `Qwen3VLForConditionalGeneration`) and, when `config.use_geometry`, `geometry_encoder`
    (`GEOMETRY_ENCODERS[config.geometry_encoder_type]`, VGGT's aggregator by default) and `geometry_fusion`
    (`mergers[l]`, `fusions[l]`). Frozen by default: `vlm.model.visual` and `geometry_encoder`.

    Raises:
        ValueError: an unregistered `geometry_encoder_type`, or weights that cannot fit in the memory left.
    """

    accepts_loss_kwargs = False  # Qwen3-VL's choice: Trainer then scales the loss for accumulation.

    def __init__(self, config: GapMllmConfig):
        # refuse before allocating (nothing is allocated on the meta device of from_pretrained)
        check_memory_for_parameters(config)
        super().__init__(config)
        # plain nn.Module sub-models get no attention implementation from PreTrainedModel (else silently eager)
        for sub_config in (config.geometry_config, config.geometry_fusion_config):
            if sub_config._attn_implementation is None:
                sub_config._attn_implementation = config._attn_implementation
        self.vlm = Qwen3VLForConditionalGeneration(config.vlm_config)
        use_batched_qwen3_vl(self.vlm)  # position ids and ViT attention without per-image host loops
        if config.use_geometry:
            encoder_class = GEOMETRY_ENCODERS.get(config.geometry_encoder_type)
            if encoder_class is None:
                raise ValueError(
                    f"geometry_encoder_type={config.geometry_encoder_type!r} has no encoder class: register it with "
                    f"register_geometry_encoder (registered: {sorted(GEOMETRY_ENCODERS)})."
                )
            self.geometry_encoder = encoder_class(config.geometry_config)
            self.geometry_fusion = GapMllmMultiLevelFusion(config)
            self._geometry_encoder_modules = set(self.geometry_encoder.modules())
        self.post_init()
        self.apply_freezing_policy()
        # register_for_auto_class keeps one auto class per class; AutoModel must resolve as well.
        config.auto_map = {
            **(getattr(config, "auto_map", None) or {}),
            "AutoConfig": "configuration_gap_mllm.GapMllmConfig",
            "AutoModel": "modeling_gap_mllm.GapMllmForConditionalGeneration",
            "AutoModelForImageTextToText": "modeling_gap_mllm.GapMllmForConditionalGeneration",
        }

    # ---- parameters and freezing
    def apply_freezing_policy(self, freeze_vision_tower: bool = True, freeze_geometry_encoder: bool = True):
        """Freeze the Qwen ViT (with its mergers) and the geometry encoder, as the official recipe; the rest trains."""
        self.vlm.model.visual.requires_grad_(not freeze_vision_tower)
        if self.config.use_geometry:
            self.geometry_encoder.set_trainable(not freeze_geometry_encoder)

    def get_input_embeddings(self):
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.vlm.set_output_embeddings(new_embeddings)

    @property
    def uses_geometry(self) -> bool:
        return self.config.use_geometry

    # ---- geometry branch
    def _views_per_sample(self, input_ids, image_grid_thw, geometry_views_per_sample) -> list[int]:
        if geometry_views_per_sample is not None:
            counts = [int(c) for c in geometry_views_per_sample.tolist()]
        elif input_ids is not None:
            # one image = <|vision_start|> followed by <|image_pad|>
            vlm_config = self.config.vlm_config
            starts = (input_ids[:, :-1] == vlm_config.vision_start_token_id) & (
                input_ids[:, 1:] == vlm_config.image_token_id
            )
            counts = starts.sum(dim=1).tolist()
        else:
            raise ValueError("geometry_views_per_sample is required when input_ids are not given.")
        if sum(counts) != image_grid_thw.shape[0]:
            raise ValueError(
                f"geometry_views_per_sample={counts} adds up to {sum(counts)} views, but image_grid_thw has "
                f"{image_grid_thw.shape[0]} images."
            )
        return counts

    def get_geometry_features(
        self,
        geometry_pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        grids: list | None = None,
    ) -> list[list[torch.Tensor]]:
        """Run the geometry encoder once per group of same-shaped samples.

        Args:
            geometry_pixel_values: `[N_views, 3, H_max, W_max]` in [0, 1] (`GapMllmProcessor`); view i's valid
                region is the top-left `p·h_i × p·w_i` (p = `geometry_config.patch_size`).
            image_grid_thw: `[N_views, 3]` rows `(1, h_i, w_i)`.
            views_per_sample: views of each sample, in batch order.
            grids: `image_grid_thw` as host integers, when the caller has them (no device read).

        Returns:
            per fusion level (0 = main, then DeepStack), one `[S_b, h_b, w_b, feature_size]` tensor per sample.
        """
        patch = self.config.geometry_config.patch_size
        grids = image_grid_thw.tolist() if grids is None else [list(g) for g in grids]
        if any(t != 1 for t, _, _ in grids):
            raise ValueError("geometry fusion needs single-frame image grids (t = 1); videos bypass geometry.")
        needed_h = max(h for _, h, _ in grids) * patch
        needed_w = max(w for _, _, w in grids) * patch
        if geometry_pixel_values.shape[0] != len(grids) or tuple(geometry_pixel_values.shape[-2:]) != (needed_h, needed_w):
            raise ValueError(
                f"geometry_pixel_values has shape {tuple(geometry_pixel_values.shape)}, expected "
                f"[{len(grids)}, 3, {needed_h}, {needed_w}]: {patch} px per Qwen patch of image_grid_thw. "
                "Prepare the inputs with GapMllmProcessor."
            )
        samples, start = [], 0
        for index, count in enumerate(views_per_sample):
            sample_grids = {tuple(g[1:]) for g in grids[start : start + count]}
            if len(sample_grids) != 1:
                raise ValueError(f"sample {index}: all views must share one image size, got grids {sorted(sample_grids)}.")
            (h, w), = sample_grids
            samples.append((start, count, h, w))
            start += count
        level_layers = self.config.level_geometry_layers
        tapped = list(self.config.geometry_config.tapped_layers)
        features: list[list[torch.Tensor | None]] = [[None] * len(samples) for _ in level_layers]
        by_shape: dict[tuple[int, int, int], list[int]] = {}
        for index, (_, count, h, w) in enumerate(samples):
            by_shape.setdefault((count, h, w), []).append(index)
        encoder = self.geometry_encoder
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        dtype = next(encoder.parameters()).dtype
        with torch.set_grad_enabled(needs_grad):
            for (count, h, w), members in by_shape.items():
                images = torch.stack(
                    [geometry_pixel_values[samples[i][0] : samples[i][0] + count, :, : h * patch, : w * patch] for i in members]
                )
                output = encoder(images.to(dtype))
                for level, layer in enumerate(level_layers):
                    layer_features = output.layer_features[tapped.index(layer)]  # [B_g, S, h·w, 2C]
                    for slot, i in enumerate(members):
                        features[level][i] = layer_features[slot].reshape(count, h, w, -1)
        return features

    def fuse_geometry(self, image_outputs, geometry_features, image_grid_thw, output_gates: bool = False,
                      grids: list | None = None):
        """Replace `image_outputs.pooler_output` and `.deepstack_features` by the fused features, in place; returns
        the gates (see `GapMllmOutput.fusion_gates`). `grids`: `image_grid_thw` as host integers, if known."""
        merge = self.config.vlm_config.vision_config.spatial_merge_size
        grids = image_grid_thw.tolist() if grids is None else grids
        merged_grids = [(h // merge, w // merge) for _, h, w in grids]
        visual_levels = [image_outputs.pooler_output, *image_outputs.deepstack_features]
        if len(visual_levels) != len(geometry_features):
            raise ValueError(
                f"the vision tower returned {len(visual_levels)} feature levels but {len(geometry_features)} "
                "geometry levels were computed; check vision_config.deepstack_visual_indexes and tapped_layers."
            )
        for index, (visual, (h, w)) in enumerate(zip(image_outputs.pooler_output, merged_grids)):
            if visual.shape[0] != h * w:
                raise ValueError(f"image {index}: {visual.shape[0]} Qwen tokens but a {h}×{w} merged geometry grid.")
        fused, gates = self.geometry_fusion(visual_levels, geometry_features, merged_grids, output_gates=output_gates)
        image_outputs.pooler_output = fused[0]
        image_outputs.deepstack_features = fused[1:]
        return gates

    def get_fused_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        image_outputs=None,
        grids: list | None = None,
    ):
        """The image path: ViT features, geometry features and their fusion.

        Precomputed `image_outputs` (as `get_image_features` returns them) replace `pixel_values`, precomputed
        `geometry_features` replace `geometry_pixel_values` (one of the two is required: ValueError); `grids`:
        `image_grid_thw` as host integers `[(t, h, w), ...]`, if known.

        Returns:
            `(image_outputs, geometry_features, gates)`: Qwen's vision output with fused `pooler_output` and
            `deepstack_features` (for `mm_encoder_outputs={"image": ...}`), the geometry features used (per level,
            one `[S_b, h_b, w_b, 2C]` tensor per sample) and the gates (or None).
        """
        if image_outputs is None:
            image_outputs = self.vlm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        if geometry_features is None:
            if geometry_pixel_values is None:
                raise ValueError("pass geometry_pixel_values (GapMllmProcessor) or precomputed geometry_features.")
            geometry_features = self.get_geometry_features(geometry_pixel_values, image_grid_thw, views_per_sample, grids)
        else:
            dtype = next(self.geometry_fusion.parameters()).dtype
            geometry_features = [[features.to(dtype) for features in level] for level in geometry_features]
        gates = self.fuse_geometry(image_outputs, geometry_features, image_grid_thw, output_gates=output_gates,
                                   grids=grids)
        return image_outputs, geometry_features, gates

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_views_per_sample: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        **kwargs,
    ) -> GapMllmImageEmbeddings:
        """GAP-MLLM's whole image path as the precomputed image embeddings a stock Qwen3-VL takes (vLLM's
        `image_embeds`).

        Args:
            pixel_values: `[Σ h_i·w_i, 3·2·16·16]` ViT patches (`GapMllmProcessor`).
            image_grid_thw: `[N_images, 3]` rows `(1, h_i, w_i)`.
            geometry_pixel_values: `[N_images, 3, H_max, W_max]` in [0, 1], the VGGT input of every view
                (required with geometry unless `geometry_features` are given: ValueError).
            geometry_views_per_sample: `[B]` views per sample (or counted in `input_ids`).
            input_ids: `[B, L]`, only to count views when `geometry_views_per_sample` is absent.
            geometry_features: precomputed geometry-encoder output (as `get_geometry_features` returns).
            **kwargs: other processor outputs, ignored, so that `model.encode_images(**processor(...))` works.

        Returns:
            `GapMllmImageEmbeddings`: per image `[h_i·w_i/4, (1 + num_deepstack) · hidden]` (main ‖ DeepStack
            levels, 8192 wide for Qwen3-VL-2B); with `use_geometry=False` the levels are stock Qwen3-VL's.
        """
        views = self._views_per_sample(input_ids, image_grid_thw, geometry_views_per_sample)
        if self.uses_geometry:
            if geometry_pixel_values is None and geometry_features is None:
                # forward() would fall back to plain Qwen3-VL: an engine would answer without geometry, silently
                raise ValueError("encode_images needs geometry_pixel_values (GapMllmProcessor) or geometry_features: "
                                 "this model fuses geometry into its image tokens.")
            image_outputs, _, _ = self.get_fused_image_features(
                pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features
            )
        else:
            image_outputs = self.vlm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        vision = self.config.vlm_config.vision_config
        embeddings = concatenate_levels(tuple(image_outputs.pooler_output), list(image_outputs.deepstack_features))
        return GapMllmImageEmbeddings(
            embeddings=embeddings,
            image_grid_thw=image_grid_thw,
            views_per_sample=tuple(views),
            hidden_size=vision.out_hidden_size,
            num_deepstack_levels=len(vision.deepstack_visual_indexes),
        )

    # ---- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_views_per_sample: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> GapMllmOutput:
        """Qwen3-VL's forward with geometry fused into the image features.

        Args:
            input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids: as for Qwen3-VL
                (from `GapMllmProcessor`).
            geometry_pixel_values: `[N_views, 3, H_max, W_max]` in [0, 1], the VGGT input of every view.
            geometry_views_per_sample: `[B]` views per sample (inferred from `input_ids` when absent).
            geometry_features: precomputed geometry-encoder output instead of `geometry_pixel_values` (per
                fusion level, one `[S_b, h_b, w_b, 2C]` tensor per sample, as `get_geometry_features` returns).
            labels: `[B, T]` next-token targets (-100 = ignored) for the LM loss.
            output_gates: return the fusion gates per level (`gated` method).

        Raises:
            ValueError: naming the input (see `check_forward_inputs`), or `geometry_pixel_values` without
                `pixel_values`.
        """
        check_forward_inputs(self, input_ids, inputs_embeds, attention_mask, labels, mm_token_type_ids, past_key_values)
        mm_encoder_outputs, gates = None, None
        if self.uses_geometry and pixel_values is not None:
            if geometry_pixel_values is None and geometry_features is None:
                logger.warning_once(
                    "GAP-MLLM got pixel_values without geometry_pixel_values: running the plain Qwen3-VL "
                    "image path, without geometry fusion. Use GapMllmProcessor to prepare both."
                )
            else:
                views = self._views_per_sample(input_ids, image_grid_thw, geometry_views_per_sample)
                image_outputs, _, gates = self.get_fused_image_features(
                    pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features, output_gates
                )
                mm_encoder_outputs, pixel_values = {"image": image_outputs}, None
        elif geometry_pixel_values is not None and pixel_values is None and past_key_values is None:
            raise ValueError("geometry_pixel_values were given without pixel_values: pass both (GapMllmProcessor).")

        outputs = self.vlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return GapMllmOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=self.vlm.model.rope_deltas,
            fusion_gates=gates,
        )

    # ---- generation
    def encode_scene(self, input_ids=None, pixel_values=None, image_grid_thw=None, output_gates: bool = False,
                     **kwargs) -> GapMllmScene:
        """Encode one multi-view scene once (geometry encoder, vision tower, fusion, prefill of the prompt up
        to the last view) for `generate(scene=...)`.

        Args:
            input_ids, pixel_values, image_grid_thw, ...: the processor output for ONE sample, e.g.
                `processor(images=frames, text=prefix)` with `prefix` from `processor.split_scene_prompt`;
                tokens after the last view are ignored.
            output_gates: keep the fusion gates in `scene.fusion_gates`.
        """
        return encode_scene(self, input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                            output_gates=output_gates, **kwargs)

    compile_decoding = "off"  # generate's default compile_decoding; front ends set "auto"

    def generate(self, inputs=None, *args, scene: GapMllmScene | list[GapMllmScene] | None = None,
                 compile_decoding=None, answer_task=None, constrained: bool = False, **kwargs):
        """`GenerationMixin.generate`, plus scene reuse, compiled decoding and task answers.

        The installed package lowers a `max_new_tokens` past `text_config.max_position_embeddings` after the prompt's
        highest M-RoPE position to fit, with a warning (INFO for the task's own budget; `gap_mllm.checks`).

        Args:
            scene: a `GapMllmScene` from `encode_scene`, or one per row: pass only the question tokens (`input_ids`
                `[B, Lq]`, `attention_mask`); the result continues them (`[B, Lq + new]`).
            compile_decoding: "off" (False), "on" (True), "auto" (on for a CUDA model) or a `CompileConfig`: a static
                cache and each decode step compiled whole (CUDA graphs on a GPU), the same tokens. Default: the
                model's `compile_decoding` attribute ("off" unless a front end set it).
            answer_task: a task name, with `tokenizer=`: the task's decoding settings (greedy, its budget unless
                `max_new_tokens` is given, its stop rule).
            constrained: also constrain the answer to the task's grammar, built from this call's inputs.

        Raises:
            ValueError: (installed package) a token id outside the vocabulary, a prompt reaching the end of the
                context, a `min_new_tokens` that cannot fit, or a scene of another model or of changed weights.
            TypeError: positional generation options with `scene`.
        """
        if compile_decoding is None:
            compile_decoding = self.compile_decoding
        if answer_task is not None or constrained:
            kwargs = answer_task_kwargs(answer_task, constrained, kwargs.get("input_ids", inputs), kwargs)
        if scene is not None and args:
            raise TypeError("generate(scene=...) takes generation options as keyword arguments only.")
        with static_cache_lending(self):  # a static cache's buffers are this call's
            if scene is None:
                prepare_token_budget(self, kwargs.get("input_ids", inputs), kwargs)
                kwargs.update(compiled_decoding_kwargs(compile_decoding, self.device, kwargs))
                return super().generate(inputs, *args, **kwargs)
            input_ids = kwargs.pop("input_ids", inputs)
            return generate_from_scene(self, scene, input_ids, compile_decoding=compile_decoding, **kwargs)

    def _prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs):
        """The installed package's static cache is lent by the model's pool, at stable addresses so that compiled
        decoding replays its CUDA graphs (`lent_static_cache`); else transformers' own."""
        lent = None
        if cache_implementation == "static" and prefill_chunk_size is None:  # no chunked prefill nor offloading
            lent = lent_static_cache(self, max_cache_len)
        if lent is not None:
            return lent
        return super()._prepare_static_cache(cache_implementation, batch_size, max_cache_len, prefill_chunk_size,
                                             model_kwargs)

    def prepare_inputs_for_generation(self, *args, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # images and their M-RoPE inputs are for the prefill only: a decode step has the same inputs in every call
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in PREFILL_ONLY_INPUT_NAMES:
                inputs.pop(name, None)
            # a compiled step with a symbolic batch guards on a view's base: copy a mask that is a view (B × L)
            mask = inputs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask._base is not None:
                inputs["attention_mask"] = mask.clone()
        return inputs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Qwen3-VL needs 3-D M-RoPE positions; the generic 2-D ones would be silently wrong.
        return self.vlm._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Repeat per-image tensors sample by sample (they are concatenated over views, not batched)."""
        if expand_size == 1:
            return input_ids, model_kwargs
        grid = model_kwargs.get("image_grid_thw")
        if grid is not None and model_kwargs.get("pixel_values") is not None:
            views = self._views_per_sample(input_ids, grid, model_kwargs.get("geometry_views_per_sample"))
            patches_per_image = grid.prod(dim=-1).tolist()

            def per_sample_repeat(tensor, rows_per_image):
                if tensor is None:
                    return None
                chunks, start, image = [], 0, 0
                for count in views:
                    rows = sum(rows_per_image[image : image + count])
                    chunks.extend([tensor[start : start + rows]] * expand_size)
                    start, image = start + rows, image + count
                return torch.cat(chunks)
            model_kwargs["pixel_values"] = per_sample_repeat(model_kwargs["pixel_values"], patches_per_image)
            model_kwargs["geometry_pixel_values"] = per_sample_repeat(model_kwargs.get("geometry_pixel_values"), [1] * len(patches_per_image))
            model_kwargs["image_grid_thw"] = per_sample_repeat(grid, [1] * len(patches_per_image))
            model_kwargs["geometry_views_per_sample"] = torch.tensor(views, device=grid.device).repeat_interleave(expand_size)
            handled = {k: model_kwargs.pop(k) for k in ("pixel_values", "geometry_pixel_values", "image_grid_thw", "geometry_views_per_sample")}
        else:
            handled = {}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update({k: v for k, v in handled.items() if v is not None})
        return input_ids, model_kwargs

    # ---- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, require_geometry_weights: bool = False,
                        allow_non_finite_weights: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus a report of missing GAP components and a refusal of NaN weights.

        Args:
            require_geometry_weights: raise instead of warning when the geometry encoder, mergers or
                fusion modules are missing from the checkpoint.
            allow_non_finite_weights: load weights holding NaN or infinities (to inspect a diverged checkpoint);
                by default such a checkpoint is a ValueError naming the first tensor that holds one.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        broken = None if allow_non_finite_weights else first_non_finite_tensor(model.state_dict())
        if broken is not None:  # it would load and answer nothing (every box dropped), without a word
            raise ValueError(f"{pretrained_model_name_or_path}: the weights hold NaN or infinite values (first: "
                             f"{broken}); the checkpoint is damaged or was saved from a diverged run: load another one")
        # Loading materialises fresh parameters (all trainable): restore the default frozen parts.
        model.apply_freezing_policy()
        groups = report_missing_weights(info["missing_keys"], str(pretrained_model_name_or_path))
        model.missing_weight_groups = sorted(groups)
        if require_geometry_weights and GEOMETRY_GROUPS.intersection(groups):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} lacks GAP geometry weights: {sorted(GEOMETRY_GROUPS.intersection(groups))}"
            )
        return (model, info) if wants_info else model

    @classmethod
    def from_qwen3_vl(
        cls,
        qwen3_vl_name_or_path,
        geometry_config: dict | None = None,
        geometry_fusion_config: dict | None = None,
        vggt_weights=None,
        **from_pretrained_kwargs,
    ) -> "GapMllmForConditionalGeneration":
        """Build a GAP-MLLM from a stock Qwen3-VL checkpoint and, optionally, VGGT weights (loaded strictly by
        `load_vggt_weights`); the mergers and fusion are newly initialised (and reported).

        Args:
            qwen3_vl_name_or_path: a Qwen3-VL folder or Hub id (e.g. `Qwen/Qwen3-VL-2B-Instruct`).
            geometry_config, geometry_fusion_config: overrides of the GAP sub-configs (the geometry config
                must describe the VGGT architecture of `vggt_weights`; its defaults are VGGT-1B).
            vggt_weights: a VGGT state dict, a `model.pt` / `.safetensors` file, a folder holding one (also a
                `gap-mllm convert vggt` output) or a Hub id such as `facebook/VGGT-1B`; `None` leaves the encoder
                randomly initialised (reported). Head weights load only when the geometry config enables the heads;
                the conversion report is kept as `model.vggt_conversion_report`.
            from_pretrained_kwargs: passed to `Qwen3VLForConditionalGeneration.from_pretrained` (dtype, ...).

        Raises:
            ImportError: the gap-mllm package (which holds the converter) is not installed.
        """
        try:  # the converter is installed with the package, never copied into a model folder
            from gap_mllm.convert_vggt_to_hf import build_from_qwen3_vl
        except ImportError as error:
            raise ImportError("from_qwen3_vl builds a model with the gap-mllm package: pip install gap-mllm") from error
        model, loaded = build_from_qwen3_vl(cls, qwen3_vl_name_or_path, geometry_config, geometry_fusion_config,
                                            vggt_weights, **from_pretrained_kwargs)
        use_batched_qwen3_vl(model.vlm)  # the loaded modules are not the ones __init__ switched
        model.apply_freezing_policy()
        new_keys = [k for k in model.state_dict() if not k.startswith("vlm.") and k not in loaded]
        model.missing_weight_groups = sorted(report_missing_weights(new_keys, str(qwen3_vl_name_or_path)))
        return model


# save_pretrained then writes the auto_map entry and copies this code, however the module was imported
GapMllmForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")


__all__ = [
    "GapMllmForConditionalGeneration",
    "GapMllmImageEmbeddings",
    "GapMllmOutput",
    "GapMllmPreTrainedModel",
    "GapMllmScene",
    "check_forward_inputs",
    "concatenate_levels",
]
