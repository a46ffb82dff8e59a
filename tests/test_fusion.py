"""Mergers and fusion variants in isolation: exact formulas, identity cases, token order, sizes."""

import pytest
import torch
from torch import nn

from gap_mllm import GapMllmConfig
from gap_mllm.configuration_gap_mllm import FUSION_METHODS, GapMllmFusionConfig
from gap_mllm.modeling_gap_mllm import GapMllmGeometryMerger, GapMllmMultiLevelFusion, build_fusion

D = 16


def test_merger_groups_2x2_windows_row_major():
    torch.manual_seed(0)
    merger = GapMllmGeometryMerger(input_size=6, hidden_size=20, output_size=D, norm="rms")
    features = torch.randn(2, 4, 6, 6)  # 2 views on a 4×6 patch grid
    out = merger(features)
    assert out.shape == (2 * 2 * 3, D)
    expected = []
    for view in range(2):
        for i in range(2):
            for j in range(3):
                window = [features[view, 2 * i, 2 * j], features[view, 2 * i, 2 * j + 1],
                          features[view, 2 * i + 1, 2 * j], features[view, 2 * i + 1, 2 * j + 1]]
                expected.append(merger.mlp(torch.cat([merger.ln_q(x) for x in window])))
    torch.testing.assert_close(out, torch.stack(expected), atol=1e-6, rtol=1e-6)


def test_merger_drops_odd_row_and_column():
    merger = GapMllmGeometryMerger(input_size=4, hidden_size=8, output_size=D)
    features = torch.randn(1, 5, 7, 4)
    torch.testing.assert_close(merger(features), merger(features[:, :4, :6]))


def test_merger_norm_choice_and_official_key_names():
    rms = GapMllmGeometryMerger(input_size=4, hidden_size=8, output_size=D, norm="rms")
    layer = GapMllmGeometryMerger(input_size=4, hidden_size=8, output_size=D, norm="layer")
    assert set(rms.state_dict()) == {"ln_q.weight", "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}
    assert set(layer.state_dict()) == set(rms.state_dict()) | {"ln_q.bias"}


def test_parameter_count_at_real_size_matches_official():
    """docs/method.md §1.7: 4 levels of merger + gate at D = 2048 = 201,400,320 (RMS) / 201,408,512 (LN)."""
    for norm, expected in (("rms", 201_400_320), ("layer", 201_408_512)):
        config = GapMllmConfig(geometry_fusion_config={"merger_norm": norm})
        config.vision_config.out_hidden_size = 2048
        with torch.device("meta"):
            fusion = GapMllmMultiLevelFusion(config)
        assert sum(p.numel() for p in fusion.parameters()) == expected


def _fusion(method, **overrides):
    torch.manual_seed(0)
    config = GapMllmFusionConfig(method=method, cross_attention_num_heads=4, **overrides)
    config._attn_implementation = "sdpa"  # standalone module: no PreTrainedModel sets it
    return build_fusion(config, D).eval()


def test_gated_formula_and_identity_cases():
    fusion = _fusion("gated")
    v, g = torch.randn(10, D) * 3 + 1, torch.randn(10, D)
    out, gate = fusion(v, g)
    v_hat, g_hat = fusion.norm1(v), fusion.norm2(g)
    expected_gate = torch.sigmoid(fusion.gate_projection[0](torch.cat([v_hat, g_hat], -1)))
    torch.testing.assert_close(gate, expected_gate)
    torch.testing.assert_close(out, expected_gate * v_hat + (1 - expected_gate) * g_hat)
    with torch.no_grad():
        fusion.gate_projection[0].weight.zero_()
        fusion.gate_projection[0].bias.fill_(100.0)  # a ≡ 1 → LN1(v), not v (no residual)
    out, gate = fusion(v, g)
    assert torch.equal(gate, torch.ones_like(gate))
    assert torch.equal(out, fusion.norm1(v))
    assert not torch.allclose(out, v)
    with torch.no_grad():
        fusion.gate_projection[0].bias.fill_(-100.0)  # a ≡ 0 → LN2(g)
    out, _ = fusion(v, g)
    torch.testing.assert_close(out, fusion.norm2(g), atol=1e-30, rtol=0)


def test_add_with_zero_geometry_is_identity():
    v = torch.randn(7, D)
    out, gate = _fusion("add")(v, torch.zeros(7, D))
    assert gate is None and torch.equal(out, v)


def test_weighted_starts_as_the_mean_and_concat_projects():
    v, g = torch.randn(5, D), torch.randn(5, D)
    out, _ = _fusion("weighted")(v, g)
    torch.testing.assert_close(out, 0.5 * v + 0.5 * g)
    concat = _fusion("concat")
    out, _ = concat(v, g)
    torch.testing.assert_close(out, concat.projection(torch.cat([concat.norm1(v), concat.norm2(g)], -1)))


def test_cross_attention_views_only_see_their_own_geometry():
    fusion = _fusion("cross_attention")
    grids = [(2, 3), (2, 3), (1, 2)]
    v, g = torch.randn(14, D), torch.randn(14, D)
    out, gate = fusion(v, g, grids)
    assert gate is None and out.shape == (14, D)
    g_changed = g.clone()
    g_changed[6:12] = torch.randn(6, D)  # geometry of view 1 only (a shift would vanish in the LayerNorm)
    out_changed, _ = fusion(v, g_changed, grids)
    torch.testing.assert_close(out_changed[:6], out[:6], atol=0, rtol=0)
    torch.testing.assert_close(out_changed[12:], out[12:], atol=0, rtol=0)
    assert not torch.allclose(out_changed[6:12], out[6:12])


def test_cross_attention_eager_and_sdpa_agree():
    fusion = _fusion("cross_attention", cross_attention_num_layers=2)
    v, g = torch.randn(12, D), torch.randn(12, D)
    fusion.cross_attn_blocks[0].cross_attention.config._attn_implementation = "eager"
    eager, _ = fusion(v, g, [(3, 4)])
    fusion.cross_attn_blocks[0].cross_attention.config._attn_implementation = "sdpa"
    sdpa, _ = fusion(v, g, [(3, 4)])
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", FUSION_METHODS)
def test_every_variant_has_the_uniform_interface_and_backpropagates(method):
    fusion = _fusion(method).train()
    v = torch.randn(6, D, requires_grad=True)
    g = torch.randn(6, D, requires_grad=True)
    out, gate = fusion(v, g, [(2, 3)])
    assert out.shape == (6, D)
    assert (gate is not None) == (method == "gated")
    out.square().sum().backward()
    assert v.grad.abs().sum() > 0 and g.grad.abs().sum() > 0
    for name, parameter in fusion.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("grids", [((4, 6), (4, 6), (4, 6)), ((4, 6), (6, 4), (4, 6))])
def test_multi_level_fusion_merges_samples_of_one_grid_in_one_call_with_the_same_result(grids):
    """One merger call for samples of equal patch grids (else one per sample); either way the per-sample result."""
    torch.manual_seed(0)
    config = GapMllmConfig(geometry_fusion_config={"merger_hidden_size": 16})
    config.geometry_config.hidden_size = 8
    config.vision_config.out_hidden_size = D
    fusion = GapMllmMultiLevelFusion(config).eval()
    geometry = [torch.randn(views, h, w, 16) for views, (h, w) in zip((2, 3, 1), grids)]
    calls = []
    fusion.mergers[0].register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    per_sample = torch.cat([fusion.mergers[0](features) for features in geometry])
    calls.clear()
    torch.testing.assert_close(fusion._merge(0, geometry), per_sample, rtol=1e-6, atol=1e-6)
    assert calls == ([6] if len(set(grids)) == 1 else [2, 3, 1])
