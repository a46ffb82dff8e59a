"""Behaviour of the VGGT geometry encoder (aggregator, DINOv2 patch embedding, 2-D RoPE, weight init), and the encoder
as a transformers model of its own (its folder loads alone through `AutoModel`, with or without the package).

Tiny configs, random weights with realistic magnitudes (special tokens ~N(0, 1) so that the two
copies of each pair differ clearly), fp32 on CPU.
"""

import json
import textwrap
from functools import partial

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoModel
from transformers.modeling_layers import GradientCheckpointingLayer

from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig
from gap_mllm.modeling_vggt import (
    GapMllmGeometryBlock,
    GapMllmGeometryEncoder,
    GapMllmGeometryRotaryEmbedding2D,
    GeometryEncoderOutput,
    apply_rotary_2d,
    build_token_positions,
    init_geometry_weights,
)
from gap_mllm.tiny.tiny_model import build_tiny_model

from .test_remote_code import run_without_gap_mllm

HIDDEN = 32
PATCH = 14


def make_config(**overrides) -> GapMllmGeometryConfig:
    values = dict(
        image_size=56,  # 4×4 native grid
        patch_size=PATCH,
        hidden_size=HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_register_tokens=2,
        patch_embed_num_hidden_layers=2,
        patch_embed_num_register_tokens=2,
        tapped_layers=[1, 3],
        attn_implementation="sdpa",
    )
    values.update(overrides)
    return GapMllmGeometryConfig(**values)


@torch.no_grad()
def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights of a trained-network scale, every parameter different from its init value."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if name.endswith("gamma"):
            param.copy_(0.5 + 0.5 * noise.abs())
        elif "norm" in name and name.endswith("weight"):
            param.copy_(1 + 0.1 * noise)
        elif param.ndim > 1 and not name.endswith(("token", "tokens", "pos_embed")):
            param.copy_(noise / param[0].numel() ** 0.5)
        else:  # biases, special tokens, position embedding
            param.copy_(noise * (0.1 if name.endswith("bias") else 1.0))
    return module


def make_encoder(seed: int = 0, **overrides) -> GapMllmGeometryEncoder:
    return randomise(GapMllmGeometryEncoder(make_config(**overrides)), seed).eval()


def images(batch: int, frames: int, height: int = 56, width: int = 84, seed: int = 1) -> torch.Tensor:
    return torch.rand(batch, frames, 3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- structure


@pytest.mark.parametrize("batch,frames,height,width", [(1, 1, 56, 56), (2, 3, 56, 84), (1, 4, 70, 28), (3, 2, 28, 42)])
def test_output_structure_and_shapes(batch, frames, height, width):
    encoder = make_encoder()
    with torch.no_grad():
        out = encoder(images(batch, frames, height, width))
    assert isinstance(out, GeometryEncoderOutput)
    grid = (height // PATCH, width // PATCH)
    assert out.patch_grid == grid
    assert len(out.layer_features) == 2
    for feature in out.layer_features:
        assert feature.shape == (batch, frames, grid[0] * grid[1], 2 * HIDDEN)
        assert feature.dtype == torch.float32
        assert torch.isfinite(feature).all()
    # different layers carry different features
    assert not torch.allclose(out.layer_features[0], out.layer_features[1])


def test_state_dict_keys_are_vggt_aggregator_keys():
    encoder = GapMllmGeometryEncoder(make_config())
    keys = set(encoder.state_dict())
    dino_block = ["norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
    expected = {"aggregator.camera_token", "aggregator.register_token"}
    expected |= {f"aggregator.patch_embed.{n}" for n in ("cls_token", "pos_embed", "register_tokens", "mask_token")}
    expected |= {f"aggregator.patch_embed.{n}.{p}" for n in ("patch_embed.proj", "norm") for p in ("weight", "bias")}
    for i in range(2):
        expected |= {f"aggregator.patch_embed.blocks.{i}.{n}.{p}" for n in dino_block for p in ("weight", "bias")}
        expected |= {f"aggregator.patch_embed.blocks.{i}.ls{j}.gamma" for j in (1, 2)}
    for kind in ("frame_blocks", "global_blocks"):
        for i in range(4):
            leaves = dino_block + ["attn.q_norm", "attn.k_norm"]
            expected |= {f"aggregator.{kind}.{i}.{n}.{p}" for n in leaves for p in ("weight", "bias")}
            expected |= {f"aggregator.{kind}.{i}.ls{j}.gamma" for j in (1, 2)}
    assert keys == expected
    state = encoder.state_dict()
    assert state["aggregator.camera_token"].shape == (1, 2, 1, HIDDEN)
    assert state["aggregator.register_token"].shape == (1, 2, 2, HIDDEN)
    assert state["aggregator.patch_embed.pos_embed"].shape == (1, 1 + 16, HIDDEN)
    assert state["aggregator.frame_blocks.0.attn.q_norm.weight"].shape == (HIDDEN // 2,)
    assert not encoder.aggregator.patch_embed.mask_token.requires_grad


def test_layer_norm_eps_and_layer_scale_follow_vggt():
    aggregator = GapMllmGeometryEncoder(make_config()).aggregator
    dino_block, frame_block = aggregator.patch_embed.blocks[0], aggregator.frame_blocks[0]
    assert dino_block.norm1.eps == dino_block.norm2.eps == aggregator.patch_embed.norm.eps == 1e-6
    assert frame_block.norm1.eps == frame_block.norm2.eps == frame_block.attn.q_norm.eps == 1e-5
    assert isinstance(dino_block.attn.q_norm, nn.Identity)
    assert torch.equal(dino_block.ls1.gamma, torch.ones(HIDDEN))
    assert torch.equal(frame_block.ls2.gamma, torch.full((HIDDEN,), 0.01))


# ---------------------------------------------------------------- forward semantics


def hand_run(aggregator, pixels: torch.Tensor) -> list[torch.Tensor]:
    """All layers [B, S, T, 2C] by calling the sub-modules one by one (no shortcuts)."""
    batch, frames, _, height, width = pixels.shape
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    patches = aggregator.patch_embed(((pixels - mean) / std).flatten(0, 1))
    camera = torch.cat([aggregator.camera_token[:, :1]] + [aggregator.camera_token[:, 1:]] * (frames - 1), dim=1)
    register = torch.cat([aggregator.register_token[:, :1]] + [aggregator.register_token[:, 1:]] * (frames - 1), dim=1)
    special = torch.cat([camera, register], dim=2).expand(batch, -1, -1, -1).flatten(0, 1)
    tokens = torch.cat([special, patches], dim=1)
    count, channels = tokens.shape[1:]
    positions = build_token_positions(height // PATCH, width // PATCH, 3)
    frame_rope = aggregator.rotary_emb(positions)
    global_rope = aggregator.rotary_emb(positions.repeat(frames, 1))
    outputs = []
    for frame_block, global_block in zip(aggregator.frame_blocks, aggregator.global_blocks):
        frame_out = frame_block(tokens.reshape(batch * frames, count, channels), frame_rope)
        global_out = global_block(frame_out.reshape(batch, frames * count, channels), global_rope)
        tokens = global_out
        per_token = (batch, frames, count, channels)
        outputs.append(torch.cat([frame_out.reshape(per_token), global_out.reshape(per_token)], -1))
    return outputs


def test_tapped_outputs_equal_hand_run_through_the_blocks():
    encoder = make_encoder()
    pixels = images(2, 3)
    with torch.no_grad():
        expected = hand_run(encoder.aggregator, pixels)
        all_layers = encoder.aggregator(pixels, output_layers=[3, 0, 2, 1])
        out = encoder(pixels)
    for got, layer in zip(all_layers, [3, 0, 2, 1]):
        torch.testing.assert_close(got, expected[layer], atol=1e-6, rtol=0)
    for got, layer in zip(out.layer_features, [1, 3]):
        torch.testing.assert_close(got, expected[layer][:, :, 3:], atol=1e-6, rtol=0)


def test_later_blocks_are_neither_run_nor_influential():
    deep = make_encoder(tapped_layers=[0, 1])
    calls = []
    for block in (deep.aggregator.frame_blocks[2], deep.aggregator.global_blocks[3]):
        block.register_forward_hook(lambda *args: calls.append(1))
    shallow = GapMllmGeometryEncoder(make_config(num_hidden_layers=2, tapped_layers=[0, 1])).eval()
    missing, unexpected = shallow.load_state_dict(deep.state_dict(), strict=False)
    assert not missing and all(".2." in k or ".3." in k for k in unexpected)
    pixels = images(1, 3)
    with torch.no_grad():
        a, b = deep(pixels).layer_features, shallow(pixels).layer_features
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        # scrambling the later blocks changes nothing
        randomise(deep.aggregator.frame_blocks[3], seed=7)
        torch.testing.assert_close(deep(pixels).layer_features, a, atol=0, rtol=0)
    assert calls == []


def test_eager_and_sdpa_agree():
    sdpa = make_encoder(attn_implementation="sdpa")
    eager = GapMllmGeometryEncoder(make_config(attn_implementation="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    pixels = images(2, 3)
    with torch.no_grad():
        for a, b in zip(sdpa(pixels).layer_features, eager(pixels).layer_features):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_swapping_two_non_reference_frames_permutes_the_outputs():
    encoder = make_encoder()
    pixels = images(2, 4)
    order = [0, 3, 2, 1]
    with torch.no_grad():
        base = encoder(pixels).layer_features
        swapped = encoder(pixels[:, order]).layer_features
    for a, b in zip(base, swapped):
        torch.testing.assert_close(b, a[:, order], atol=1e-5, rtol=0)


def test_swapping_the_reference_frame_is_not_a_permutation():
    encoder = make_encoder()
    pixels = images(2, 4)
    order = [2, 1, 0, 3]
    with torch.no_grad():
        base = encoder(pixels).layer_features
        swapped = encoder(pixels[:, order]).layer_features
    # frame 0 gets copy 0 of the camera/register tokens: making frame 2 the reference changes its features
    assert (swapped[-1] - base[-1][:, order]).abs().max() > 1e-2


def test_frame_attention_stays_within_its_frame():
    encoder = make_encoder()
    pixels = images(1, 3)
    changed = pixels.clone()
    changed[:, 2] = torch.rand_like(changed[:, 2])
    with torch.no_grad():
        a = encoder.aggregator(pixels, output_layers=[0])[0]
        b = encoder.aggregator(changed, output_layers=[0])[0]
    # frame-block half of layer 0: frames 0 and 1 untouched, frame 2 changed
    torch.testing.assert_close(b[:, :2, :, :HIDDEN], a[:, :2, :, :HIDDEN], atol=1e-6, rtol=0)
    assert (b[:, 2, :, :HIDDEN] - a[:, 2, :, :HIDDEN]).abs().max() > 1e-2
    # global-block half: every frame sees frame 2
    assert (b[:, 1, :, HIDDEN:] - a[:, 1, :, HIDDEN:]).abs().max() > 1e-3


def test_batch_samples_are_independent():
    encoder = make_encoder()
    pixels = images(2, 3)
    with torch.no_grad():
        batched = encoder(pixels).layer_features
        single = encoder(pixels[1:]).layer_features
    for a, b in zip(batched, single):
        torch.testing.assert_close(a[1:], b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- frames in chunks


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])  # 2 and 3 leave a shorter last chunk of 5 frames; 5 is all at once
def test_frames_chunk_size_leaves_the_features_bit_identical(chunk):
    encoder = make_encoder()
    pixels = images(2, 5)
    with torch.no_grad():
        whole = encoder(pixels).layer_features
        encoder.config.frames_chunk_size = chunk  # the aggregator reads the config it was built with
        chunked = encoder(pixels).layer_features
    assert len(whole) == 2
    for a, b in zip(whole, chunked):
        assert torch.equal(a, b)


def test_frames_chunk_size_bounds_the_frame_local_work_and_not_the_global_attention():
    encoder = make_encoder(frames_chunk_size=2)
    aggregator, tokens = encoder.aggregator, 1 + 2 + 4 * 6  # camera, 2 registers, a 4×6 patch grid
    seen = {"patch_embed": [], "frame_block": [], "global_attention": [], "global_mlp": []}
    hooked = {"patch_embed": aggregator.patch_embed, "frame_block": aggregator.frame_blocks[0],
              "global_mlp": aggregator.global_blocks[0].mlp}
    for name, module in hooked.items():
        module.register_forward_pre_hook(lambda module, args, name=name: seen[name].append(tuple(args[0].shape)))
    attention = aggregator.global_blocks[0].attn
    attention.attend = lambda query, key, value, attend=attention.attend: (
        seen["global_attention"].append(tuple(query.shape)) or attend(query, key, value))
    with torch.no_grad():
        encoder(images(3, 5))  # 3 samples of 5 frames: 2 frames of each sample at a time, the last chunk 1
    assert [shape[0] for shape in seen["patch_embed"]] == [6, 6, 3]
    assert seen["frame_block"] == [(6, tokens, HIDDEN), (6, tokens, HIDDEN), (3, tokens, HIDDEN)]
    assert seen["global_attention"] == [(3, 2, 5 * tokens, HIDDEN // 2)]  # every frame of a sample at once
    assert seen["global_mlp"] == [(3, 2 * tokens, HIDDEN), (3, 2 * tokens, HIDDEN), (3, tokens, HIDDEN)]


def test_frames_chunk_size_leaves_the_gradients_unchanged():
    def gradients(encoder):
        encoder.zero_grad()
        sum(f.square().mean() for f in encoder(images(2, 3)).layer_features).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    encoder = make_encoder().train()
    whole = gradients(encoder)
    encoder.config.frames_chunk_size = 2
    chunked = gradients(encoder)
    assert whole.keys() == chunked.keys() and len(whole) > 0
    for name in whole:  # a weight's gradient sums over frames: chunk by chunk, the fp32 sums round in another order
        torch.testing.assert_close(chunked[name], whole[name], atol=1e-6, rtol=1e-5)


def test_frames_chunk_size_leaves_the_model_logits_bit_identical(build_model, make_inputs):
    model = build_model()
    inputs = make_inputs(view_counts=(3, 3))
    assert model.config.geometry_config.frames_chunk_size is None  # the default: all frames at once
    with torch.no_grad():
        whole = model(**inputs).logits
        model.config.geometry_config.frames_chunk_size = 2
        chunked = model(**inputs).logits
    assert model.model.geometry_encoder.config.frames_chunk_size == 2
    assert torch.equal(whole, chunked)


def test_reference_frame_last_equals_reversed_first():
    first = make_encoder(reference_frame="first")
    last = GapMllmGeometryEncoder(make_config(reference_frame="last")).eval()
    last.load_state_dict(first.state_dict())
    pixels = images(2, 3)
    with torch.no_grad():
        got = last(pixels)
        reversed_run = first(pixels.flip(1))
    for a, b in zip(got.layer_features, reversed_run.layer_features):
        torch.testing.assert_close(a, b.flip(1), atol=0, rtol=0)
    # and it really differs from the plain order
    with torch.no_grad():
        plain = first(pixels)
    assert (got.layer_features[-1] - plain.layer_features[-1]).abs().max() > 1e-2


@pytest.mark.parametrize(
    "shape",
    [(3, 3, 56, 56), (1, 2, 4, 56, 56), (1, 2, 3, 50, 56), (1, 2, 3, 56, 60), (1, 2, 3, 0, 56)],
)
def test_bad_image_shape_raises_naming_the_shape(shape):
    encoder = GapMllmGeometryEncoder(make_config())
    with pytest.raises(ValueError, match=str(shape).replace("(", r"\(").replace(")", r"\)")):
        encoder(torch.rand(shape))


def test_gradient_checkpointing_gives_the_same_gradients():
    def loss_and_grads(encoder):
        encoder.zero_grad()
        out = encoder(images(1, 2))
        sum(f.square().mean() for f in out.layer_features).backward()
        return {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}

    encoder = make_encoder().train()
    plain = loss_and_grads(encoder)
    layers = [m for m in encoder.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2 + 4 + 4
    recomputed = []
    for layer in layers:
        layer.gradient_checkpointing = True
        layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
        # hooks of the layer itself sit outside the checkpoint; its attention runs inside it
        layer.attn.register_forward_hook(lambda *args: recomputed.append(1))
    checkpointed = loss_and_grads(encoder)
    assert len(recomputed) == 2 * len(layers)  # each forward replayed once during backward
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_bf16_weights_accept_fp32_images():
    encoder = make_encoder()
    pixels = images(1, 2)
    with torch.no_grad():
        reference = encoder(pixels).layer_features
        low = encoder.to(torch.bfloat16)(pixels).layer_features
    for a, b in zip(reference, low):
        assert b.dtype == torch.bfloat16
        assert (b.float() - a).abs().max() < 0.1 * a.abs().max()


# ---------------------------------------------------------------- DINOv2 position embedding


def test_pos_embed_is_untouched_at_the_native_square_grid():
    patch_embed = make_encoder().aggregator.patch_embed
    tokens = torch.zeros(2, 1 + 16, HIDDEN)
    assert patch_embed.interpolate_pos_encoding(tokens, 56, 56) is patch_embed.pos_embed


def test_pos_embed_interpolation_keeps_rows_as_rows():
    patch_embed = make_encoder().aggregator.patch_embed
    with torch.no_grad():
        rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
        patch_embed.pos_embed.zero_()
        patch_embed.pos_embed[0, 1:, 0] = rows.flatten()  # channel 0 encodes the row
        patch_embed.pos_embed[0, 1:, 1] = cols.flatten()  # channel 1 encodes the column
        patch_embed.pos_embed[0, 0, 2] = 5.0
        # a 2×8 grid has as many patches as the native 4×4: only the square-image shortcut is skipped
        table = patch_embed.interpolate_pos_encoding(torch.zeros(1, 1 + 16, HIDDEN), 2 * PATCH, 8 * PATCH)
    assert table.shape == (1, 1 + 16, HIDDEN)
    assert table[0, 0, 2] == 5.0  # cls entry copied
    grid = table[0, 1:].reshape(2, 8, HIDDEN)
    # the row code is constant along each output row and increases downwards; likewise for columns
    torch.testing.assert_close(grid[:, :, 0], grid[:, :1, 0].expand(2, 8), atol=1e-5, rtol=0)
    assert grid[1, 0, 0] > grid[0, 0, 0] + 1
    torch.testing.assert_close(grid[:, :, 1], grid[:1, :, 1].expand(2, 8), atol=1e-5, rtol=0)
    assert (grid[0, 1:, 1] > grid[0, :-1, 1]).all()


# ---------------------------------------------------------------- 2-D RoPE


def test_token_positions_put_special_tokens_at_origin_and_patches_at_plus_one():
    positions = build_token_positions(2, 3, num_special_tokens=2)
    expected = [[0, 0], [0, 0], [1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]
    assert positions.tolist() == expected


def test_rope_matches_the_closed_form_and_is_relative():
    head_dim, frequency = 8, 100.0
    rope = GapMllmGeometryRotaryEmbedding2D(head_dim, frequency)
    positions = torch.tensor([[0, 0], [3, 5], [4, 7]])
    cos, sin = rope(positions)
    states = torch.randn(1, 1, 3, head_dim, generator=torch.Generator().manual_seed(0))
    rotated = apply_rotary_2d(states, cos, sin)
    torch.testing.assert_close(rotated[..., 0, :], states[..., 0, :])  # position (0, 0): identity
    # closed form for token 1: in each half of 4 channels, channel j pairs with j + 2 at angle pos / f^(2j/4)
    x = states[0, 0, 1]
    expected = torch.empty(head_dim)
    for half, pos in ((0, 3.0), (1, 5.0)):
        for j in range(2):
            theta = torch.tensor(pos / frequency ** (2 * j / 4))
            a, b = x[4 * half + j], x[4 * half + j + 2]
            expected[4 * half + j] = a * theta.cos() - b * theta.sin()
            expected[4 * half + j + 2] = b * theta.cos() + a * theta.sin()
    torch.testing.assert_close(rotated[0, 0, 1], expected, atol=1e-6, rtol=0)
    # q·k depends only on the position difference
    q, k = torch.randn(2, 1, 1, 1, head_dim, generator=torch.Generator().manual_seed(1))
    def score(pq, pk):
        cq, sq = rope(torch.tensor([pq])); ck, sk = rope(torch.tensor([pk]))
        return (apply_rotary_2d(q, cq, sq) * apply_rotary_2d(k, ck, sk)).sum()
    torch.testing.assert_close(score([3, 5], [1, 2]), score([12, 9], [10, 6]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- weight init


def _apply_init(encoder: GapMllmGeometryEncoder, config: GapMllmGeometryConfig) -> dict:
    handled = {}
    for name, module in encoder.named_modules():
        handled[name] = init_geometry_weights(module, config)
    return handled


@pytest.mark.parametrize("garbage", [1e38, float("nan"), "meta"])
def test_init_geometry_weights_leaves_no_garbage(garbage):
    config = make_config(initializer_range=0.02)
    if garbage == "meta":
        with torch.device("meta"):
            encoder = GapMllmGeometryEncoder(config)
        encoder.to_empty(device="cpu")
        with torch.no_grad():  # make "uninitialised" deterministic and obviously bad
            for tensor in list(encoder.parameters()) + list(encoder.buffers()):
                tensor.fill_(-3e38)
    else:
        encoder = GapMllmGeometryEncoder(config)
        with torch.no_grad():
            for tensor in list(encoder.parameters()) + list(encoder.buffers()):
                tensor.fill_(garbage)
    handled = _apply_init(encoder, config)

    # every module that owns parameters directly was handled
    for name, module in encoder.named_modules():
        if list(module.parameters(recurse=False)):
            assert handled[name], name
    assert not handled[""] and not handled["aggregator.frame_blocks"]

    for name, tensor in list(encoder.named_parameters()) + list(encoder.named_buffers()):
        assert torch.isfinite(tensor).all(), name
        assert tensor.abs().max() <= 5.0, name

    aggregator = encoder.aggregator
    dino = aggregator.patch_embed
    for token in (aggregator.camera_token, aggregator.register_token, dino.cls_token, dino.register_tokens):
        assert 0 < token.abs().max() < 1e-4
    assert torch.equal(dino.mask_token, torch.zeros_like(dino.mask_token))
    assert 0.01 < dino.pos_embed.std() < 0.03 and dino.pos_embed.abs().max() <= 2.0
    assert torch.equal(dino.blocks[0].ls1.gamma, torch.ones(HIDDEN))
    assert torch.equal(aggregator.global_blocks[3].ls2.gamma, torch.full((HIDDEN,), 0.01))
    qkv = aggregator.frame_blocks[0].attn.qkv
    assert 0.015 < qkv.weight.std() < 0.025 and torch.equal(qkv.bias, torch.zeros_like(qkv.bias))
    assert torch.equal(aggregator.frame_blocks[0].attn.q_norm.weight, torch.ones(HIDDEN // 2))
    torch.testing.assert_close(aggregator.image_mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    torch.testing.assert_close(aggregator.image_std.flatten(), torch.tensor([0.229, 0.224, 0.225]))
    with torch.no_grad():
        assert all(torch.isfinite(f).all() for f in encoder.eval()(images(1, 2)).layer_features)


def test_init_geometry_weights_respects_loaded_tensors():
    config = make_config()
    encoder = make_encoder()
    loaded = encoder.aggregator.camera_token
    loaded._is_hf_initialized = True  # what transformers marks on tensors read from a checkpoint
    before = loaded.detach().clone()
    _apply_init(encoder, config)
    assert torch.equal(encoder.aggregator.camera_token, before)
    assert encoder.aggregator.register_token.abs().max() < 1e-4  # not loaded: re-initialised


def test_block_class_serves_both_roles():
    config = make_config()
    dino = GapMllmGeometryBlock(config, use_qk_norm=False, layer_norm_eps=1e-6, layer_scale_init=1.0)
    alternating = GapMllmGeometryBlock(config, use_qk_norm=True, layer_norm_eps=1e-5, layer_scale_init=None)
    assert "attn.q_norm.weight" not in dict(dino.named_parameters())
    assert isinstance(alternating.ls1, nn.Identity)  # a falsy LayerScale init means no LayerScale
    hidden = torch.randn(2, 5, HIDDEN)
    with torch.no_grad():
        # with every residual branch zeroed the block is the identity
        for block in (dino, alternating):
            block.attn.proj.weight.zero_(); block.attn.proj.bias.zero_()
            block.mlp.fc2.weight.zero_(); block.mlp.fc2.bias.zero_()
            torch.testing.assert_close(block(hidden), hidden)


# ---------------------------------------------------------------- a transformers model of its own

ENCODER_ALONE_PROCESS = textwrap.dedent(
    """
    import torch
    from transformers import AutoModel

    folder, payload_path = sys.argv[1], sys.argv[2]
    payload = torch.load(payload_path)
    encoder = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(encoder).__name__ == "GapMllmGeometryEncoder", type(encoder)
    assert "transformers_modules" in type(encoder).__module__, type(encoder).__module__
    with torch.no_grad():
        features = encoder(payload["images"]).layer_features
    assert all(torch.equal(got, expected) for got, expected in zip(features, payload["features"], strict=True))
    print("ENCODER-ALONE-OK")
    """
)


def features_of(encoder, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
    with torch.no_grad():
        return encoder.eval()(pixels).layer_features


def test_the_encoder_alone_loads_through_auto_model_with_and_without_the_package(tmp_path):
    import gap_mllm

    assert gap_mllm.GapMllmGeometryEncoder is GapMllmGeometryEncoder  # the first use registers the Auto classes
    encoder, folder = make_encoder(), tmp_path / "encoder"
    encoder.save_pretrained(folder)
    assert sorted(path.name for path in folder.iterdir()) == [
        "config.json", "configuration_gap_mllm.py", "model.safetensors", "modeling_vggt.py"]
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "gap_mllm_geometry" and saved["architectures"] == ["GapMllmGeometryEncoder"]
    assert saved["auto_map"] == {"AutoConfig": "configuration_gap_mllm.GapMllmGeometryConfig",
                                 "AutoModel": "modeling_vggt.GapMllmGeometryEncoder"}
    pixels = images(2, 3)
    expected = features_of(encoder, pixels)
    loaded = AutoModel.from_pretrained(folder)
    assert type(loaded) is GapMllmGeometryEncoder
    assert all(torch.equal(got, want) for got, want in zip(features_of(loaded, pixels), expected, strict=True))

    torch.save({"images": pixels, "features": expected}, tmp_path / "payload.pt")
    result = run_without_gap_mllm(tmp_path, ENCODER_ALONE_PROCESS, folder, tmp_path / "payload.pt", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ENCODER-ALONE-OK" in result.stdout


def test_the_encoder_of_a_saved_gap_mllm_loads_alone(tmp_path, tiny_checkpoint):
    from gap_mllm import GapMllmForConditionalGeneration

    model = GapMllmForConditionalGeneration.from_pretrained(tiny_checkpoint)
    model.model.geometry_encoder.save_pretrained(tmp_path / "encoder")
    encoder = AutoModel.from_pretrained(tmp_path / "encoder")
    assert type(encoder) is GapMllmGeometryEncoder
    held = model.model.geometry_encoder.state_dict()
    assert encoder.state_dict().keys() == held.keys()
    assert all(torch.equal(tensor, held[name]) for name, tensor in encoder.state_dict().items())
    pixels = images(2, 3)
    assert all(torch.equal(got, want) for got, want in
               zip(features_of(encoder, pixels), features_of(model.model.geometry_encoder, pixels), strict=True))


def test_a_seeded_gap_mllm_initialises_its_encoder_in_module_order(tiny_processor):
    """The encoder's own `post_init` leaves its weight init to the model that holds it: seed 0 draws the weights it
    drew when the encoder was a plain module (pinned: the first weights of a frame block's qkv and of a gate)."""
    model, _ = build_tiny_model(processor=tiny_processor, seed=0)
    qkv = model.model.geometry_encoder.aggregator.frame_blocks[0].attn.qkv.weight
    gate = model.model.geometry_fusion.fusions[0].gate_projection[0].weight
    assert torch.equal(qkv.flatten()[:3], torch.tensor([-0.015714919194579124, -0.014613356441259384,
                                                        -0.024019846692681313]))
    assert torch.equal(gate.flatten()[:3], torch.tensor([0.010898877866566181, -0.00980544276535511,
                                                         -0.005745998118072748]))
    assert "init_weights" not in vars(GapMllmGeometryEncoder)  # its own post_init initialises a model built alone
