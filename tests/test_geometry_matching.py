"""Stage 0's cross-view matching (training/cross_view_matching.py): exact correspondence targets, attention
logits that are the block's own, and terms that train."""

from __future__ import annotations

import pytest
import torch

import gap_mllm.modeling_vggt as geometry_layers
from gap_mllm.processing.collator import collate_clips
from gap_mllm.training.cross_view_matching import GlobalAttentionTap, patch_correspondences
from gap_mllm.training.geometry_data import GeometryClips

from .test_mini_stages import tiny_with_heads
from .test_train_fixtures import train_data_root  # noqa: F401

PATCH = 14
HEIGHT, WIDTH = 2 * PATCH, 4 * PATCH  # a 2 x 4 patch grid
FOCAL, DEPTH = 100.0, 2.0


def plane_clip(shift_px: float):
    """Two views of a fronto-parallel plane at DEPTH; view 1's camera sits so that every point it sees lies
    `shift_px` pixels further right in view 0 (a pure translation along x)."""
    k = torch.tensor([[FOCAL, 0, (WIDTH - 1) / 2], [0, FOCAL, (HEIGHT - 1) / 2], [0, 0, 1]]).expand(2, 3, 3)
    depth = torch.full((2, HEIGHT, WIDTH), DEPTH)
    rows, cols = torch.meshgrid(torch.arange(HEIGHT).float(), torch.arange(WIDTH).float(), indexing="ij")
    local = torch.stack([(cols - k[0, 0, 2]) * DEPTH / FOCAL, (rows - k[0, 1, 2]) * DEPTH / FOCAL, depth[0]], dim=-1)
    to_first = torch.tensor([shift_px * DEPTH / FOCAL, 0.0, 0.0])
    points = torch.stack([local, local + to_first])
    return depth, points, k.clone()


def test_a_point_seen_by_both_views_lands_in_the_frame0_patch_that_shows_it():
    depth, points, k = plane_clip(shift_px=PATCH)  # one patch to the right
    index, offset = patch_correspondences(depth, points, k, PATCH)
    assert index.shape == (1, 8) and offset.shape == (1, 8, 2)
    # patch (r, c) of view 1 is patch (r, c + 1) of view 0; the last column leaves the image
    assert index[0].tolist() == [1, 2, 3, -1, 5, 6, 7, -1]
    matched = index[0] >= 0
    assert torch.allclose(offset[0, matched], torch.tensor([PATCH / WIDTH, 0.0]).expand(int(matched.sum()), 2))
    assert torch.equal(offset[0, ~matched], torch.zeros(2, 2))


def test_an_occluded_or_depthless_point_has_no_match():
    depth, points, k = plane_clip(shift_px=PATCH)
    depth[0, :PATCH, 2 * PATCH:3 * PATCH] = 1.0  # something in front of the plane in frame 0's patch (0, 2)
    depth[1, PATCH + PATCH // 2, PATCH // 2] = 0.0  # no depth at the centre of view 1's patch (1, 0)
    index, _ = patch_correspondences(depth, points, k, PATCH)
    assert index[0].tolist() == [1, -1, 3, -1, -1, 6, 7, -1]


def test_the_clips_carry_matching_targets_and_mix_windows_on_request(train_data_root):
    processor = tiny_with_heads()[1]
    fixed = GeometryClips(train_data_root, "train", processor, num_clips=6, seed=3)
    mixed = GeometryClips(train_data_root, "train", processor, num_clips=6, seed=3, window_fraction=1.0, min_window_fraction=0.1)
    clip = fixed[0]
    patches = (clip["images"].shape[-2] // PATCH) * (clip["images"].shape[-1] // PATCH)
    assert clip["match_index"].shape == (3, patches) and clip["match_offset"].shape == (3, patches, 2)
    assert ((clip["match_index"] >= -1) & (clip["match_index"] < patches)).all() and (clip["match_index"] >= 0).any()
    spans = [int(stems[-1]) - int(stems[0]) for stems in (mixed.clip(i)[1] for i in range(6))]
    assert len(set(spans)) > 1  # the share of the walk varies clip to clip
    assert [fixed.clip(i) for i in range(6)] == [GeometryClips(train_data_root, "train", processor, num_clips=6, seed=3).clip(i) for i in range(6)]
    with pytest.raises(ValueError, match="min_window_fraction=0.6 is above window_fraction=0.5"):
        GeometryClips(train_data_root, "train", processor, min_window_fraction=0.6)


def test_the_tapped_logits_are_the_blocks_own_attention(train_data_root, monkeypatch):
    """Softmax of the tap's logits over frame 0's patches = the block's attention weights on those keys,
    renormalised (the eager path records them)."""
    model, processor = tiny_with_heads()
    encoder = model.geometry_encoder.eval()
    aggregator = encoder.aggregator
    layer = 1
    tap = GlobalAttentionTap(aggregator, layer, heads=2)
    recorded = {}
    original = geometry_layers.eager_attention_forward

    def recording(module, query, key, value, *args, **kwargs):
        output, weights = original(module, query, key, value, *args, **kwargs)
        if module is tap.attention:
            recorded["weights"] = weights
        return output, weights

    monkeypatch.setattr(geometry_layers, "eager_attention_forward", recording)
    monkeypatch.setattr(aggregator.config, "_attn_implementation", "eager")
    clips = GeometryClips(train_data_root, "train", processor, num_clips=2, seed=1)
    images = collate_clips([clips[0], clips[1]])["images"]
    with torch.no_grad():
        aggregator(images, [layer])
        logits = tap.frame0_logits(images.shape[1])  # [B, 2, S-1, P, P]
    weights = recorded["weights"]  # [B, H, S·T, S·T]
    frames, special = images.shape[1], aggregator.num_special_tokens
    tokens = weights.shape[-1] // frames
    per_frame = weights[:, :2].reshape(2, 2, frames, tokens, frames, tokens)
    to_frame0 = per_frame[:, :, 1:, special:, 0, special:]  # [B, 2, S-1, P, P]
    expected = to_frame0 / to_frame0.sum(-1, keepdim=True)
    assert torch.allclose(logits.softmax(-1), expected, atol=1e-5)
    tap.remove()


def test_the_match_and_flow_terms_train(train_data_root):
    """A few steps on fixed clips lower both terms; they are logged as parts; a layer that does not exist is
    named."""
    from gap_mllm.training.encoder_stage_run import GeometryStageModel, freeze_all_but_geometry

    torch.manual_seed(0)
    model, processor = tiny_with_heads()
    clips = GeometryClips(train_data_root, "train", processor, num_clips=4, seed=7, window_fraction=0.3)
    batch = collate_clips([clips[i] for i in range(len(clips))])
    freeze_all_but_geometry(model)
    wrapper = GeometryStageModel(model, camera_weight=0.0, depth_weight=0.0, match_weight=1.0, match_layer=1,
                                 match_heads=1, flow_weight=1.0, flow_layer=2)
    assert wrapper.stage_heads() is wrapper.flow_readout  # checkpointed beside the model, not in it
    optimizer = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=3e-3)
    history = []
    for _ in range(20):
        optimizer.zero_grad()
        out = wrapper(**batch)
        out.loss.backward()
        optimizer.step()
        history.append((float(out.parts["match"].detach()), float(out.parts["flow"].detach())))
    (match0, flow0), (match1, flow1) = history[0], history[-1]
    assert match1 < 0.8 * match0, f"match loss {match0:.3f} -> {match1:.3f}"
    assert flow1 < 0.8 * flow0, f"flow loss {flow0:.3f} -> {flow1:.3f}"
    with pytest.raises(ValueError, match="match_layer=9 does not exist"):
        GeometryStageModel(tiny_with_heads()[0], match_weight=1.0, match_layer=9)
    with pytest.raises(ValueError, match="match_index"):
        wrapper(**{key: value for key, value in batch.items() if not key.startswith("match_")})


def test_the_tap_names_the_frame_chunks_it_cannot_see():
    model, _ = tiny_with_heads()
    aggregator = model.geometry_encoder.eval().aggregator
    tap = GlobalAttentionTap(aggregator, 1, heads=2)
    aggregator.config.frames_chunk_size = 1  # the global block's attention module is then not called whole
    patch = aggregator.patch_size
    with torch.no_grad():
        aggregator(torch.rand(1, 3, 3, 2 * patch, 3 * patch), [1])
    with pytest.raises(RuntimeError, match="^the matched global block ran in frame chunks, which the tap cannot see"):
        tap.frame0_logits(3)
    tap.remove()
