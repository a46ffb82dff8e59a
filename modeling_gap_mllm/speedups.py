"""The package's speed paths around the model folder's classes, each an explicit call.

Batch-wide Qwen3-VL vision and M-RoPE paths, the engine embeddings serving uses, and the static-cache pool that keeps
compiled decoding's CUDA graphs at fixed addresses across calls. Each gives the same outputs as the stock path its
exactness test compares it with. `gap_mllm.loading` applies the batch-wide paths to the models the package loads and
builds (`use_batched_qwen3_vl`), `gap_mllm.generation` lends the static caches; a plain `from_pretrained` and a model
folder loaded with `trust_remote_code` run transformers' own paths. Never copied into a model folder.
"""

import threading
import weakref
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from transformers import StaticCache
from transformers.cache_utils import StaticLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.qwen3_vl.modeling_qwen3_vl import (
    Qwen3VLModel,
    Qwen3VLTextModel,
    Qwen3VLVisionAttention,
    apply_rotary_pos_emb_vision,
    eager_attention_forward,
)
from transformers.utils.generic import is_flash_attention_requested
from transformers.utils.output_capturing import _CAN_RECORD_REGISTRY

from .modeling_gap_mllm import GapMllmModel

# ---- batched Qwen3-VL
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


class BatchedPositions:
    """Qwen3-VL's `get_rope_index` and the ViT position ids of its image features computed batch-wide
    (mixed into `Qwen3VLModel` and `GapMllmModel` below)."""

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

    def _with_vision_positions(self, pixel_values, image_grid_thw, kwargs: dict) -> dict:
        """`kwargs` of an image-features call with the ViT position ids computed batch-wide."""
        if image_grid_thw is not None and "position_ids" not in kwargs and "image_position_ids" not in kwargs:
            kwargs = {**kwargs, "image_position_ids": vision_rotary_position_ids(
                image_grid_thw, self.visual.spatial_merge_size, pixel_values.shape[0])}
        return kwargs


class GapMllmQwen3VLModel(BatchedPositions, Qwen3VLModel):
    """`Qwen3VLModel` whose LLM and ViT position ids are computed batch-wide."""

    def get_image_features(self, pixel_values, image_grid_thw=None, **kwargs):
        # `get_video_features` comes here too (with the video grids): the layout of the positions is the same.
        return super().get_image_features(pixel_values, image_grid_thw,
                                          **self._with_vision_positions(pixel_values, image_grid_thw, kwargs))


class BatchedGapMllmModel(BatchedPositions, GapMllmModel):
    """`GapMllmModel` whose LLM and ViT position ids are computed batch-wide."""

    def get_vision_features(self, pixel_values, image_grid_thw=None, **kwargs):
        return super().get_vision_features(pixel_values, image_grid_thw,
                                           **self._with_vision_positions(pixel_values, image_grid_thw, kwargs))


BATCHED_MODEL_CLASSES = {Qwen3VLModel: GapMllmQwen3VLModel, GapMllmModel: BatchedGapMllmModel}


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


def use_batched_qwen3_vl(model) -> None:
    """Switch a built `Qwen3VLForConditionalGeneration` (a `GapMllmForConditionalGeneration` too) to the batch-wide
    subclasses, in place (they add no state, so the switch survives `deepcopy`, pickling and `torch.compile`)."""
    batched = BATCHED_MODEL_CLASSES.get(type(model.model))
    if batched is not None:
        model.model.__class__ = batched
    if type(model.model.language_model) is Qwen3VLTextModel:
        model.model.language_model.__class__ = GapMllmQwen3VLTextModel
        # recorded outputs are registered per class name at build: without this `output_hidden_states` gives None
        _CAN_RECORD_REGISTRY[model.model.language_model] = model.model.language_model._can_record_outputs
    for block in model.model.visual.blocks:
        if type(block.attn) is Qwen3VLVisionAttention:
            block.attn.__class__ = GapMllmQwen3VLVisionAttention


# ---- engine embeddings
@dataclass(frozen=True)
class GapMllmImageEmbeddings:
    """What `encode_images` returns.

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


def encode_images(
    model,
    pixel_values: torch.Tensor,
    image_grid_thw: torch.LongTensor,
    geometry_pixel_values: torch.Tensor | None = None,
    geometry_views_per_sample: torch.LongTensor | None = None,
    input_ids: torch.LongTensor | None = None,
    geometry_features: list[list[torch.Tensor]] | None = None,
    **kwargs,
) -> GapMllmImageEmbeddings:
    """The whole image path of `model` (a `GapMllmForConditionalGeneration`) as the precomputed image embeddings a
    stock Qwen3-VL takes (vLLM's `image_embeds`).

    Args:
        model: the GAP-MLLM model whose geometry encoder, vision tower, mergers and fusion run.
        pixel_values: `[Σ h_i·w_i, 3·2·16·16]` ViT patches (`GapMllmProcessor`).
        image_grid_thw: `[N_images, 3]` rows `(1, h_i, w_i)`.
        geometry_pixel_values: `[N_images, 3, H_max, W_max]` in [0, 1], the VGGT input of every view
            (required with geometry unless `geometry_features` are given: ValueError).
        geometry_views_per_sample: `[B]` views per sample (or counted in `input_ids`).
        input_ids: `[B, L]`, only to count views when `geometry_views_per_sample` is absent.
        geometry_features: precomputed geometry-encoder output (as `model.get_geometry_features` returns).
        **kwargs: other processor outputs, ignored, so that `encode_images(model, **processor(...))` works.

    Returns:
        `GapMllmImageEmbeddings`: per image `[h_i·w_i/4, (1 + num_deepstack) · hidden]` (main ‖ DeepStack
        levels, 8192 wide for Qwen3-VL-2B); with `use_geometry=False` the levels are stock Qwen3-VL's.
    """
    views = model.model._views_per_sample(input_ids, image_grid_thw, geometry_views_per_sample)
    if model.uses_geometry:
        if geometry_pixel_values is None and geometry_features is None:
            # forward() would fall back to plain Qwen3-VL: an engine would answer without geometry, silently
            raise ValueError("encode_images needs geometry_pixel_values (GapMllmProcessor) or geometry_features: "
                             "this model fuses geometry into its image tokens.")
        image_outputs, _, _ = model.get_fused_image_features(
            pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features
        )
    else:
        image_outputs = model.model.get_vision_features(pixel_values, image_grid_thw)
    vision = model.config.vision_config
    embeddings = concatenate_levels(tuple(image_outputs.pooler_output), list(image_outputs.deepstack_features))
    return GapMllmImageEmbeddings(
        embeddings=embeddings,
        image_grid_thw=image_grid_thw,
        views_per_sample=tuple(views),
        hidden_size=vision.out_hidden_size,
        num_deepstack_levels=len(vision.deepstack_visual_indexes),
    )


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
