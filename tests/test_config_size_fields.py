"""Every size field of the geometry config that allocates weights is priced by the parameter estimate
(modeling_gap_mllm/checks.py), so an absurd one is refused before allocation (`gap_mllm.loading.build_model`'s memory
check), naming the field; sizes that are not positive integers are refused by the config
(modeling_gap_mllm/configuration_gap_mllm.py), a model past the sanity bound by the parameter count and one past the
memory left by `build_model`, while the real and 8B sizes are accepted and the estimate is a close lower bound of the
parameter count."""

from __future__ import annotations

import re

import pytest
import torch

from gap_mllm import GapMllmConfig, GapMllmForConditionalGeneration, checks
from gap_mllm.cli.real_size import QWEN3_VL_2B_TEXT, QWEN3_VL_2B_TOKENS, QWEN3_VL_2B_VISION, real_size_config
from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig
from gap_mllm.loading import build_model
from gap_mllm.tiny.tiny_config import build_gap_config

TINY_DPT = {"dpt_layers": [0, 1, 2, 3]}  # the tiny encoder has 4 layers


@pytest.fixture
def one_gib_left(monkeypatch):
    """1 GiB of memory left, whatever the machine: nothing priced above it is ever allocated here."""
    monkeypatch.setattr(checks, "available_memory", lambda device: 2**30)


@pytest.mark.parametrize("override, gib, parameters, part", [
    ({"num_register_tokens": 10**9}, "238.4", "6.4e+10", "geometry_config.num_register_tokens=1000000000, hidden_size=32"),
    ({"patch_embed_num_register_tokens": 10**9}, "119.2", "3.2e+10",
     "geometry_config.patch_embed_num_register_tokens=1000000000, hidden_size=32"),
    ({"use_camera_head": True, "camera_head_trunk_depth": 10**5}, "18.3", "4.92e+09",
     "geometry_config.camera_head_trunk_depth=100000, hidden_size=32, mlp_ratio=4.0"),
    ({"use_depth_head": True, **TINY_DPT, "dpt_features": 2 * 10**4}, "202.4", "5.43e+10",
     "geometry_config.dpt_features=20000, dpt_out_channels=[256, 512, 1024, 1024], hidden_size=32"),
    ({"use_point_head": True, **TINY_DPT, "dpt_out_channels": [10**5, 4, 4, 4]}, "597.0", "1.6e+11",
     "geometry_config.dpt_features=256, dpt_out_channels=[100000, 4, 4, 4], hidden_size=32"),
], ids=["registers", "dinov2-registers", "camera-trunk", "dpt-features", "dpt-channels"])
def test_sizes_the_estimate_used_to_miss_are_refused_before_allocation(tiny_processor, one_gib_left, override, gib,
                                                                       parameters, part):
    config = build_gap_config(tiny_processor.tokenizer, geometry_config=override)
    expected = "^" + re.escape(
        f"the weights of this configuration need at least {gib} GiB ({parameters} parameters in torch.float32), but only "
        f"1.0 GiB are available on cpu; the largest part, {parameters} parameters, comes from {part}. Use a smaller "
        "configuration")
    with pytest.raises(ValueError, match=expected):
        build_model(config)
    with pytest.raises(ValueError, match=expected):  # the encoder's config priced alone too
        checks.check_memory_for_parameters(config.geometry_config)


def test_vggt_sized_heads_past_the_bound_are_refused_by_the_parameter_count_naming_the_field():
    with pytest.raises(ValueError, match=r"^this configuration has at least 5.03e\+12 parameters, above the sanity bound "
                                         r"of 1e\+12; the largest part, 5.03e\+12 parameters, comes from "
                                         r"geometry_config.camera_head_trunk_depth=100000, hidden_size=1024, mlp_ratio=4.0: "
                                         r"check these sizes\.$"):
        checks.check_parameter_count(GapMllmGeometryConfig(use_camera_head=True, camera_head_trunk_depth=10**5))
    with pytest.raises(ValueError, match=r"comes from geometry_config.num_register_tokens=1000000000000, hidden_size=1024"):
        checks.check_parameter_count(GapMllmGeometryConfig(num_register_tokens=10**12))


@pytest.mark.parametrize("override, message", [
    ({"use_camera_head": True, "camera_head_trunk_depth": "4"}, "geometry_config.camera_head_trunk_depth must be an integer >= 1, got '4'"),
    ({"use_camera_head": True, "camera_head_num_iterations": 2.5}, "geometry_config.camera_head_num_iterations must be an integer >= 1, got 2.5"),
    ({"use_camera_head": True, "camera_head_num_attention_heads": 0}, "geometry_config.camera_head_num_attention_heads must be an integer >= 1, got 0"),
    ({"use_depth_head": True, **TINY_DPT, "dpt_features": None}, "geometry_config.dpt_features must be an integer >= 1, got None"),
    ({"use_depth_head": True, **TINY_DPT, "dpt_frames_chunk_size": 0}, "geometry_config.dpt_frames_chunk_size must be an integer >= 1, got 0"),
    ({"mlp_ratio": float("inf")}, "geometry_config.mlp_ratio must be a positive finite number, got inf"),
    ({"frames_chunk_size": 0}, "geometry_config.frames_chunk_size must be an integer >= 1, got 0"),
    ({"frames_chunk_size": 2.0}, "geometry_config.frames_chunk_size must be an integer >= 1, got 2.0"),
])
def test_head_sizes_of_the_wrong_type_are_named(tiny_processor, override, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        build_gap_config(tiny_processor.tokenizer, geometry_config=override)


def test_the_estimate_with_every_head_is_a_close_lower_bound(tiny_processor):
    heads = {"use_camera_head": True, "use_depth_head": True, "use_point_head": True}
    real = real_size_config().to_dict()
    real["geometry_config"].update(heads)
    for config in (GapMllmConfig(**real), build_gap_config(tiny_processor.tokenizer, geometry_config={**heads, **TINY_DPT})):
        with torch.device("meta"):
            model = GapMllmForConditionalGeneration(config)
        for priced, built in ((config, model), (config.geometry_config, model.geometry_encoder)):
            actual = sum(p.numel() for p in built.parameters())
            estimate = checks.estimate_num_parameters(priced)
            assert 0.99 * actual <= estimate <= actual, (type(built).__name__, estimate, actual)


# ---------------------------------------------------------------------------------- the sizes of the whole model


@pytest.mark.parametrize("override, message", [
    ({"geometry_config": {"hidden_size": 0}}, "geometry_config.hidden_size must be an integer >= 1, got 0"),
    ({"geometry_config": {"hidden_size": -32}}, "geometry_config.hidden_size must be an integer >= 1, got -32"),
    ({"geometry_config": {"num_attention_heads": 2.0}}, "geometry_config.num_attention_heads must be an integer >= 1, got 2.0"),
    ({"geometry_config": {"num_register_tokens": -1}}, "geometry_config.num_register_tokens must be an integer >= 0"),
    ({"geometry_fusion_config": {"cross_attention_num_heads": 0}}, "geometry_fusion_config.cross_attention_num_heads must be"),
    ({"text_config": {"hidden_size": 0}}, "text_config.hidden_size must be an integer >= 1, got 0"),
    ({"text_config": {"num_hidden_layers": -1}}, "text_config.num_hidden_layers must be an integer >= 1, got -1"),
    ({"text_config": {"num_key_value_heads": 3}}, "num_attention_heads \\(4\\) must be a multiple of num_key_value_heads \\(3\\)"),
    ({"vision_config": {"depth": 0}}, "vision_config.depth must be an integer >= 1, got 0"),
])
def test_absurd_sizes_are_refused_by_the_config(tiny_processor, override, message):
    with pytest.raises(ValueError, match=message):
        _tiny_config(tiny_processor, override)


@pytest.mark.parametrize("override, total, largest, fields", [
    ({"text_config": {"hidden_size": 10**9}}, "3.02e+12", "2.3e+12",
     "text_config.num_hidden_layers=4, hidden_size=1000000000, intermediate_size=128"),
    ({"text_config": {"num_hidden_layers": 10**8}}, "3.69e+12", "3.69e+12",
     "text_config.num_hidden_layers=100000000, hidden_size=64, intermediate_size=128"),
    ({"geometry_config": {"hidden_size": 10**9}}, "1.2e+20", "9.6e+19",
     "geometry_config.num_hidden_layers=4, hidden_size=1000000000, mlp_ratio=4.0"),
])
def test_sizes_past_the_sanity_bound_are_refused_by_the_parameter_count(tiny_processor, override, total, largest, fields):
    config = _tiny_config(tiny_processor, override)  # valid sizes: the config takes them
    with pytest.raises(ValueError) as refused:
        checks.check_parameter_count(config)
    assert str(refused.value) == (f"this configuration has at least {total} parameters, above the sanity bound of "
                                  f"1e+12; the largest part, {largest} parameters, comes from {fields}: check these sizes.")


def _tiny_config(tiny_processor, override: dict) -> GapMllmConfig:
    """The tiny config with `override`'s sizes (`text_config`, `vision_config` and the `build_gap_config` arguments)."""
    override = dict(override)
    text, vision = override.pop("text_config", None), override.pop("vision_config", None)
    if text or vision:
        base = build_gap_config(tiny_processor.tokenizer).to_dict()
        base["text_config"].update(text or {})
        base["vision_config"].update(vision or {})
        return GapMllmConfig(**base)
    return build_gap_config(tiny_processor.tokenizer, **override)


def test_a_model_that_cannot_fit_is_refused_before_allocating(tiny_processor, monkeypatch):
    monkeypatch.setattr(checks, "available_memory", lambda device: 2**30)  # 1 GiB left, whatever the machine
    config = build_gap_config(tiny_processor.tokenizer, geometry_config={"num_hidden_layers": 10**6})  # ~2.5e10 weights
    with pytest.raises(ValueError, match=r"need at least 91.6 GiB \(2.46e\+10 parameters in torch.float32\), but only "
                                         r"1.0 GiB are available on cpu"):
        build_model(config)
    with torch.device("meta"):  # from_pretrained builds here: nothing is allocated, nothing refused
        build_model(real_size_config())


def test_real_and_8b_sizes_are_accepted_and_the_estimate_is_a_close_lower_bound(tiny_processor):
    from transformers import Qwen3VLConfig

    eight_b = GapMllmConfig(vlm_config=Qwen3VLConfig(  # Qwen3-VL-8B's published sizes
        text_config={**QWEN3_VL_2B_TEXT, "hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36,
                     "num_attention_heads": 32, "num_key_value_heads": 8},
        vision_config={**QWEN3_VL_2B_VISION, "depth": 27, "hidden_size": 1152, "intermediate_size": 4304,
                       "out_hidden_size": 4096, "deepstack_visual_indexes": [8, 16, 24]},
        tie_word_embeddings=False, **QWEN3_VL_2B_TOKENS))
    tiny = build_gap_config(tiny_processor.tokenizer)
    for config in (real_size_config(), eight_b, tiny):
        with torch.device("meta"):
            actual = sum(p.numel() for p in GapMllmForConditionalGeneration(config).parameters())
        estimate = checks.estimate_num_parameters(config)
        assert 0.98 * actual <= estimate <= actual, (estimate, actual)
    assert round(checks.estimate_num_parameters(real_size_config()) / 1e9, 2) == 3.24
    assert round(checks.estimate_num_parameters(eight_b) / 1e9, 1) == 10.0  # 8.8 B VLM + VGGT-1B + fusion
    assert checks.estimate_num_parameters(eight_b) * 50 < checks.MAX_PARAMETERS  # far from the bound
