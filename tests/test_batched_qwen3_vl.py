"""The batch-wide Qwen3-VL paths (gap_mllm.speedups) equal the stock ones, and the model uses them.

Position ids (the LLM's M-RoPE, the ViT's rotary) must be identical; the batched ViT attention and the model's
logits are compared at float32 round-off.
"""

import copy
import pickle

import pytest
import torch
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLModel, Qwen3VLVisionAttention
from transformers.vision_utils import get_vision_position_ids

from gap_mllm.modeling_gap_mllm import GapMllmModel
from gap_mllm.speedups import (
    BatchedGapMllmModel,
    GapMllmQwen3VLModel,
    GapMllmQwen3VLVisionAttention,
    mrope_position_ids,
    vision_rotary_position_ids,
)

MERGE = 2


class _StockRopeIndex:
    """Just what `Qwen3VLModel.get_rope_index` reads from `self` (the spatial merge size, its helper)."""

    class config:  # noqa: N801 - mimics `self.config.vision_config.spatial_merge_size`
        class vision_config:  # noqa: N801
            spatial_merge_size = MERGE

    get_vision_position_ids = Qwen3VLModel.get_vision_position_ids

    def __call__(self, *args, **kwargs):
        return Qwen3VLModel.get_rope_index(self, *args, **kwargs)


stock_rope_index = _StockRopeIndex()


def _sample(generator, grids, kinds):
    """Token types of one sample: text pieces around vision runs (`kinds[i]` 1 image, 2 video) of `grids`."""
    types = [0] * int(torch.randint(1, 5, (1,), generator=generator))
    for (t, h, w), kind in zip(grids, kinds):
        frames = t if kind == 2 else 1  # a video's frames are separated by timestamp text
        per_run = (t if kind == 1 else 1) * h * w // MERGE**2
        for _ in range(frames):
            types += [0] * int(torch.randint(1, 4, (1,), generator=generator)) + [kind] * per_run + [0]
    return types + [0] * int(torch.randint(1, 6, (1,), generator=generator))


def _batch(seed: int, padding_side: str, with_video: bool):
    generator = torch.Generator().manual_seed(seed)
    rows, image_grids, video_grids = [], [], []
    for _ in range(4):
        grids, kinds = [], []
        for _ in range(int(torch.randint(0, 4, (1,), generator=generator))):
            h, w = (MERGE * int(torch.randint(1, 5, (1,), generator=generator)) for _ in range(2))
            kind = 2 if with_video and bool(torch.randint(0, 2, (1,), generator=generator)) else 1
            t = int(torch.randint(1, 4, (1,), generator=generator)) if kind == 2 else 1
            grids.append((t, h, w))
            kinds.append(kind)
            (video_grids if kind == 2 else image_grids).append((t, h, w))
        rows.append(_sample(generator, grids, kinds))
    length = max(map(len, rows))
    types = torch.zeros(len(rows), length, dtype=torch.int32)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        span = slice(length - len(row), length) if padding_side == "left" else slice(0, len(row))
        types[b, span] = torch.tensor(row, dtype=torch.int32)
        mask[b, span] = 1
    grid = lambda g: torch.tensor(g, dtype=torch.long).view(-1, 3) if g else None  # noqa: E731
    return types, mask, grid(image_grids), grid(video_grids)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("with_video", [False, True])
@pytest.mark.parametrize("seed", range(6))
def test_positions_and_deltas_equal_qwen3_vl(seed, padding_side, with_video):
    types, mask, image_grids, video_grids = _batch(seed, padding_side, with_video)
    input_ids = torch.zeros_like(types, dtype=torch.long)
    expected, expected_deltas = stock_rope_index(
        input_ids, types, image_grid_thw=image_grids,
        video_grid_thw=None if video_grids is None else video_grids.clone(), attention_mask=mask,
    )
    positions, deltas = mrope_position_ids(types, MERGE, image_grids, video_grids, attention_mask=mask)
    assert positions.dtype == expected.dtype and deltas.dtype == expected_deltas.dtype
    torch.testing.assert_close(positions, expected, rtol=0, atol=0)
    torch.testing.assert_close(deltas, expected_deltas, rtol=0, atol=0)


def test_without_attention_mask_and_image_of_several_temporal_patches():
    types = torch.tensor([[0, 0] + [1] * 8 + [0, 0, 0] + [1] * 4 + [0]])
    grids = torch.tensor([[2, 4, 4], [1, 2, 8]])
    expected, expected_deltas = stock_rope_index(torch.zeros_like(types), types, image_grid_thw=grids)
    positions, deltas = mrope_position_ids(types, MERGE, grids)
    torch.testing.assert_close(positions, expected, rtol=0, atol=0)
    torch.testing.assert_close(deltas, expected_deltas, rtol=0, atol=0)


@pytest.mark.parametrize(
    "grids, message",
    [
        ([[1, 4, 4], [1, 4, 4]], r"-1 image runs"),  # two grids, one run in the tokens
        ([[1, 4, 2]], r"1 run\(s\) whose token count"),  # 4 tokens, a grid of 2
    ],
)
def test_tokens_and_grids_that_disagree_are_refused(grids, message):
    types = torch.tensor([[0, 1, 1, 1, 1, 0]])
    with pytest.raises(ValueError, match=message):
        mrope_position_ids(types, MERGE, torch.tensor(grids))


def test_vision_rotary_positions_equal_transformers():
    grids = torch.tensor([[1, 4, 6], [2, 8, 4], [1, 2, 2], [3, 6, 10]])
    expected = get_vision_position_ids(grids, MERGE)
    positions = vision_rotary_position_ids(grids, MERGE, int(grids.prod(-1).sum()))
    assert positions.dtype == expected.dtype
    torch.testing.assert_close(positions, expected, rtol=0, atol=0)


def _stock(model):
    """Switch `model` back to its own and transformers' classes (what the batched ones are compared with)."""
    model.model.__class__ = GapMllmModel
    for block in model.model.visual.blocks:
        block.attn.__class__ = Qwen3VLVisionAttention
    return model


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("lengths", [(12, 12, 12), (12, 20, 12)])  # equal: one call; unequal: the stock path
def test_batched_vision_attention_equals_per_image_attention(build_model, attn_implementation, lengths):
    attention = build_model().model.visual.blocks[0].attn
    assert type(attention) is GapMllmQwen3VLVisionAttention
    attention.config._attn_implementation = attn_implementation
    dim, head_dim = attention.dim, attention.head_dim
    hidden = torch.randn(sum(lengths), dim)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    angles = torch.randn(sum(lengths), head_dim)
    rotary = (angles.cos(), angles.sin())
    batched = attention(hidden, cu_seqlens, rotary)
    attention.__class__ = Qwen3VLVisionAttention
    torch.testing.assert_close(batched, attention(hidden, cu_seqlens, rotary), rtol=1e-5, atol=1e-6)


def test_the_model_uses_the_batched_paths_and_keeps_its_logits(build_model, make_inputs):
    model = build_model().eval()
    inputs = make_inputs(view_counts=(2, 3), padding_side="left")
    with torch.no_grad():
        batched = model(**inputs).logits
        stock = _stock(build_model()).eval()(**inputs).logits
    torch.testing.assert_close(batched, stock, rtol=1e-5, atol=1e-5)


def test_the_model_routes_get_rope_index_through_it(build_model):
    tiny_model = build_model()
    inner = tiny_model.model
    assert type(inner) is BatchedGapMllmModel and isinstance(inner, Qwen3VLModel)
    types, mask, image_grids, _ = _batch(3, "left", with_video=False)
    ids = torch.zeros_like(types, dtype=torch.long)
    positions, deltas = inner.get_rope_index(ids, types, image_grid_thw=image_grids, attention_mask=mask)
    expected, expected_deltas = stock_rope_index(ids, types, image_grid_thw=image_grids, attention_mask=mask)
    torch.testing.assert_close(positions, expected, rtol=0, atol=0)
    torch.testing.assert_close(deltas, expected_deltas, rtol=0, atol=0)
    # the class switch survives what training frameworks do to a model
    assert type(copy.deepcopy(tiny_model).model) is BatchedGapMllmModel
    assert type(pickle.loads(pickle.dumps(inner))) is BatchedGapMllmModel
