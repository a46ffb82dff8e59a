"""Training step time with the geometry-feature cache vs recomputing the frozen encoder, side by side.

    .venv/bin/python bench/bench_feature_cache.py [--size small] [--steps 8] [--batch 2] [--image 120x160]

One train step = forward + backward + AdamW step of GeometryAlignedModel on a collated batch of
SynthRooms reconstruction samples (4 views, marker painted). Batches are collated before timing for
both arms (the cached arm's float16 loads are timed separately), and the two arms alternate step by
step so that machine load hits both equally. Reports medians, the encoder-alone time on the same
batch, and the ratio. Target: cached step ≈ recompute step − encoder time (the cache removes the
encoder's share entirely).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.config import AuxLossConfig, DataConfig
from gap_mllm.training.data import load_split
from gap_mllm.training.feature_cache import CachedGeometryCollator, GeometryFeatureCache
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=["tiny", "small"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--image", default="120x160", help="frame size HxW of the synthetic scenes")
    options = parser.parse_args()
    height, width = (int(v) for v in options.image.split("x"))

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = SynthConfig(seed=0, image_size=(height, width), num_frames=8, min_objects=4, max_objects=6,
                             grounding_frames=4, caption_frames=4, qa_frames=4, recon_samples_per_scene=8,
                             detection_clips_per_scene=1, captions_per_scene=1)
        write_dataset(tmp / "data", SynthRooms(config), {"train": 1})
        dataset = load_split(DataConfig(data_root=str(tmp / "data"), cache_dir=str(tmp / "hf")), "train", AuxLossConfig())
        model, processor = build_tiny_model(size=options.size)
        model.train()
        wrapped = GeometryAlignedModel(model)
        optimizer = torch.optim.AdamW([p for p in wrapped.parameters() if p.requires_grad], lr=1e-5)
        collator = GapMllmDataCollator(processor)
        cache = GeometryFeatureCache(tmp / "cache", model)
        build_seconds = timed(lambda: cache.build(model, dataset, collator, batch_size=options.batch))
        cached_collator = CachedGeometryCollator(collator, cache)

        groups = [[dataset[(i * options.batch + j) % len(dataset)] for j in range(options.batch)] for i in range(options.steps + 1)]
        plain = [collator(g) for g in groups]
        load_times, cached = [], []
        for group in groups:
            start = time.perf_counter()
            cached.append(cached_collator(group))
            load_times.append(time.perf_counter() - start)

        def step(batch):
            optimizer.zero_grad(set_to_none=True)
            wrapped(**batch).loss.backward()
            optimizer.step()

        def encoder_only(batch):
            with torch.no_grad():
                model.get_geometry_features(batch["geometry_pixel_values"], batch["image_grid_thw"], batch["geometry_views_per_sample"].tolist())

        step(plain[0]), step(cached[0]), encoder_only(plain[0])  # warm-up
        recompute, from_cache, encoder = [], [], []
        for plain_batch, cached_batch in zip(plain[1:], cached[1:]):
            recompute.append(timed(lambda: step(plain_batch)))
            from_cache.append(timed(lambda: step(cached_batch)))
            encoder.append(timed(lambda: encoder_only(plain_batch)))

    r, c, e = (statistics.median(v) for v in (recompute, from_cache, encoder))
    grid = plain[0]["image_grid_thw"][0].tolist()
    print(f"model={options.size} batch={options.batch} views/sample=4 frames={height}x{width} Qwen grid={grid[1]}x{grid[2]} "
          f"steps={options.steps} threads={torch.get_num_threads()}")
    print(f"cache build: {build_seconds:.2f} s for {len(dataset)} samples; float16 load per batch {statistics.median(load_times) * 1e3:.1f} ms")
    print(f"{'train step, recomputing the encoder':40s} {r * 1e3:8.1f} ms")
    print(f"{'train step, cached features':40s} {c * 1e3:8.1f} ms")
    print(f"{'encoder alone (no grad)':40s} {e * 1e3:8.1f} ms  ({e / r:.0%} of the recompute step)")
    print(f"speed-up recompute/cached: {r / c:.2f}x; saved {(r - c) * 1e3:.1f} ms per step = {(r - c) / e:.0%} of the encoder time")


if __name__ == "__main__":
    main()
