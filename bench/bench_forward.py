"""Forward latency of GAP-MLLM vs stock Qwen3-VL, side by side in one run, as ratios (not a test).

For each size (tiny, small) and the same Qwen3-VL weights:
  qwen      stock `Qwen3VLForConditionalGeneration` forward (no geometry)
  fusion    GAP-MLLM forward with the geometry-encoder output precomputed: mergers + fusion overhead
  gap       GAP-MLLM full forward (geometry encoder included)
Timings are interleaved (qwen, fusion, gap, qwen, ...) so drift hits every arm alike; the median of
`--repeats` runs is reported. Usage: `python bench/bench_forward.py [--repeats 30] [--views 4]`.
"""

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.tiny.tiny_tokenizer import build_tiny_processor

# size -> (view height, width, processor max pixels)
SETTINGS = {"tiny": (128, 160, 128 * 160), "small": (256, 320, 256 * 320)}


def _views(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def _time(fn):
    start = time.perf_counter()
    with torch.no_grad():
        fn()
    return time.perf_counter() - start


def bench_size(size: str, views: int, repeats: int) -> dict:
    height, width, max_pixels = SETTINGS[size]
    processor = build_tiny_processor(max_pixels=max_pixels)
    model, _ = build_tiny_model(processor=processor, size=size)
    inputs = processor(images=[_views(views, height, width)], text=["Detect the objects."], return_tensors="pt")
    stock_inputs = {k: v for k, v in inputs.items() if not k.startswith("geometry_")}

    with torch.no_grad():
        cached = model.get_geometry_features(inputs["geometry_pixel_values"], inputs["image_grid_thw"], [views])
    encoder_free = build_tiny_model(processor=processor, size=size)[0]
    encoder_free.load_state_dict(model.state_dict())
    encoder_free.model.get_geometry_features = lambda *args, **kwargs: cached  # the encoder's share removed

    arms = {
        "qwen": lambda: model(**stock_inputs),  # no geometry inputs: the stock Qwen3-VL path
        "fusion": lambda: encoder_free(**inputs),
        "gap": lambda: model(**inputs),
    }
    for fn in arms.values():  # warm-up
        _time(fn)
    samples = {name: [] for name in arms}
    for _ in range(repeats):
        for name, fn in arms.items():
            samples[name].append(_time(fn))
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    tokens = int(inputs["input_ids"].shape[1])
    return {"size": size, "tokens": tokens, "visual_tokens_per_view": int(inputs["image_grid_thw"][0].prod()) // 4,
            "params_qwen": sum(p.numel() for p in model.qwen3_vl_state_dict().values()),
            "params_gap": sum(p.numel() for p in model.parameters()), **medians}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"GAP-MLLM vs Qwen3-VL forward latency, CPU, {args.threads} thread(s), {args.views} views, "
          f"median of {args.repeats} interleaved runs")
    print(f"{'size':6} {'seq':>5} {'tok/view':>8} {'qwen ms':>8} {'fusion ms':>9} {'gap ms':>8} "
          f"{'fusion/qwen':>11} {'gap/qwen':>9}")
    for size in SETTINGS:
        r = bench_size(size, args.views, args.repeats)
        print(f"{size:6} {r['tokens']:>5} {r['visual_tokens_per_view']:>8} {r['qwen']:>8.2f} {r['fusion']:>9.2f} "
              f"{r['gap']:>8.2f} {r['fusion'] / r['qwen']:>11.3f} {r['gap'] / r['qwen']:>9.3f}")
        print(f"       parameters: qwen {r['params_qwen']:,}  gap {r['params_gap']:,}")


if __name__ == "__main__":
    main()
