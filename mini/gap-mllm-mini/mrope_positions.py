"""Qwen3-VL's position ids (the LLM's M-RoPE, the ViT's 2-D rotary) computed with whole-batch tensor operations.

Qwen3-VL's `get_rope_index` walks every sample's token-type runs in Python: a `.tolist()` per sample, an
`.item()` per grid value and a few small tensors per run. On a GPU each of those is a host-device round trip
(a forward of 32 mini grounding samples made 774 synchronisations and 7,611 of its 20,357 operations there,
mini/README.md "GPU throughput"), so a training step waited on the host. `mrope_position_ids` computes the same
positions with about fifty batch-wide operations and one synchronisation (the consistency check);
`vision_rotary_position_ids` does the same for the ViT's per-image loop. `batched_qwen3_vl.py` routes Qwen3-VL's
callers to both.

Rules, identical to transformers' `Qwen3VLModel.get_rope_index` (tests/test_mrope_positions.py compares them
exactly): tokens left out by `attention_mask` get position 0 and are skipped; a text token advances the three
rows by one; a run of vision tokens (one image, or one frame of a video) of merged grid `t × h × w` starting
at `p` gets `t = p + plane`, `h = p + row`, `w = p + column`, and advances `p` by `max(H, W) // spatial_merge_size`.
"""

from __future__ import annotations

import torch

TEXT, IMAGE, VIDEO = 0, 1, 2


def _run_grid_rows(grid_thw: torch.LongTensor | None, device, split_frames: bool) -> torch.LongTensor:
    """`[N, 3]` grids with one row per vision run: a video split into its frames (as Qwen3-VL does, since
    timestamps separate them), an image as it is."""
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
        dtype: dtype of the returned positions (`get_rope_index` uses `input_ids.dtype`).

    Returns:
        `([3, B, T] positions (t, h, w), [B, 1] deltas)`: delta = the largest position + 1 − the sample's
        length, what generation adds to text positions after the prompt.

    Raises:
        ValueError: the vision runs of the tokens and the grids disagree (count or length); Qwen3-VL's own
            code would fail or mis-assign positions there.
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

    # Position where each run (or text token) starts: counted text tokens before it + the advances of the
    # runs before it.
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
    """One host synchronisation: every run has a grid and exactly the grid's number of tokens."""
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
    """The ViT's 2-D rotary positions `[num_patches, 2]` (row, column), as transformers' `get_vision_position_ids`
    returns them for Qwen3-VL, without its loop over images.

    Patches come image by image, frame by frame, and within a frame in `m × m` merge blocks (row-major blocks,
    row-major inside a block), `m = spatial_merge_size`.

    Args:
        grid_thw: `[N, 3]` patch grids (t, h, w) of the images (or videos) in order.
        num_patches: `Σ t·h·w`, the number of rows of `pixel_values` (given so that nothing is read back from
            the device).
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
