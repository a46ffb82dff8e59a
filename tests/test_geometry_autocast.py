"""Precision of the geometry encoder: bf16 autocast as the official code runs VGGT, fp32 exact on the CPU.

Tolerance of the bf16-autocast path vs fp32, per tapped layer, at a small config with random weights of
a trained-network scale: relative Frobenius error ≤ 2e-2 and max abs error ≤ 2e-2 · max |fp32 feature|
(measured: 5.3e-3 to 6.5e-3 relative at 4 frames of 112×140, hidden 128, 8 block pairs; bf16 keeps
8 mantissa bits, 2^-8 ≈ 3.9e-3 per rounding).
"""

import pytest
import torch

from gap_mllm import GapMllmGeometryConfig
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder, autocast_dtype_for

from .test_geometry_encoder import randomise

RELATIVE_TOLERANCE = 2e-2


def small_encoder(**overrides) -> GapMllmGeometryEncoder:
    config = GapMllmGeometryConfig(image_size=56, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                   patch_embed_num_hidden_layers=2, tapped_layers=[0, 1, 2, 3],
                                   attn_implementation="sdpa", **overrides)
    return randomise(GapMllmGeometryEncoder(config), seed=0).eval()


def frames() -> torch.Tensor:
    return torch.rand(1, 3, 3, 56, 84, generator=torch.Generator().manual_seed(1))


def test_auto_means_bf16_on_cuda_and_no_autocast_elsewhere():
    auto = GapMllmGeometryConfig()
    assert auto.autocast_dtype == "auto"
    assert autocast_dtype_for(auto, torch.device("cuda", 0)) == torch.bfloat16
    assert autocast_dtype_for(auto, torch.device("cpu")) is None
    assert autocast_dtype_for(GapMllmGeometryConfig(autocast_dtype=None), torch.device("cuda")) is None
    assert autocast_dtype_for(GapMllmGeometryConfig(autocast_dtype="float16"), torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="autocast_dtype"):
        GapMllmGeometryConfig(autocast_dtype="fp8")


@torch.no_grad()
def test_cpu_stays_exact_fp32_and_bf16_autocast_is_close():
    encoder = small_encoder()
    images = frames()
    auto = encoder(images).layer_features  # "auto" on the CPU: no autocast
    encoder.config.autocast_dtype = None
    exact = encoder(images).layer_features
    encoder.config.autocast_dtype = "bfloat16"  # the official precision, forced on the CPU
    autocast = encoder(images).layer_features
    for layer, (a, e, b) in enumerate(zip(auto, exact, autocast, strict=True)):
        assert torch.equal(a, e), f"layer {layer}: 'auto' on the CPU must be exactly fp32"
        assert b.dtype == torch.float32  # back in the weights' dtype
        relative = ((b - e).norm() / e.norm()).item()
        assert 1e-4 < relative <= RELATIVE_TOLERANCE, f"layer {layer}: relative error {relative:.2e}"
        assert (b - e).abs().max() <= RELATIVE_TOLERANCE * e.abs().max()


@torch.no_grad()
def test_bf16_weights_under_autocast_return_bf16_features():
    encoder = small_encoder(autocast_dtype="bfloat16").to(torch.bfloat16)
    features = encoder(frames()).layer_features
    assert all(f.dtype == torch.bfloat16 and torch.isfinite(f).all() for f in features)
