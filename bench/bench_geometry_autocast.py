"""Numeric difference of the geometry encoder under bf16 autocast (the official precision) vs fp32 (not a test).

    python bench/bench_geometry_autocast.py [--frames 4] [--height 112] [--width 140] [--device cpu]

Small config (hidden 128, 8 block pairs, tapped 1/3/5/7, DINOv2 depth 4) with random weights of a
trained-network scale (tests/test_geometry_encoder.py's `randomise`), fp32 weights; per tapped layer the
max abs error, the largest |fp32 feature|, the relative Frobenius error and the cosine similarity of the
autocast output against the exact fp32 output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for the weight randomiser
from gap_mllm import GapMllmGeometryConfig  # noqa: E402
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder  # noqa: E402
from tests.test_geometry_encoder import randomise  # noqa: E402

SMALL = dict(image_size=112, hidden_size=128, num_hidden_layers=8, num_attention_heads=4,
             patch_embed_num_hidden_layers=4, tapped_layers=[1, 3, 5, 7], attn_implementation="sdpa")


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--width", type=int, default=140)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    encoder = randomise(GapMllmGeometryEncoder(GapMllmGeometryConfig(**SMALL, autocast_dtype=None)), 0).eval()
    encoder.to(args.device)
    images = torch.rand(1, args.frames, 3, args.height, args.width, generator=torch.Generator().manual_seed(1)).to(args.device)
    exact = encoder(images).layer_features
    encoder.config.autocast_dtype = "bfloat16"
    autocast = encoder(images).layer_features
    print(f"bf16 autocast vs fp32, {args.frames} frames of {args.height}x{args.width}, {args.device}")
    print(f"{'layer':>5} {'max abs err':>12} {'max |fp32|':>11} {'rel (max)':>10} {'rel (Frob.)':>12} {'cosine':>9}")
    for layer, a, b in zip(SMALL["tapped_layers"], exact, autocast, strict=True):
        error = (a - b).abs().max().item()
        scale = a.abs().max().item()
        cosine = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        print(f"{layer:>5} {error:>12.3e} {scale:>11.3e} {error / scale:>10.3e} {((a - b).norm() / a.norm()).item():>12.3e} "
              f"{cosine:>9.6f}")


if __name__ == "__main__":
    main()
