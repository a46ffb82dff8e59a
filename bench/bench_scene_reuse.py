"""Scene reuse vs separate full calls: K questions about one scene, side by side in one run (not a test).

For each size (tiny, small) and K in --questions (default 1, 4, 8, 32), on one 4-view scene:
  full      K ordinary `generate` calls on the whole prompt (geometry encoder, vision tower, fusion and
            the multi-view prefill every time): what the runner and the Space did before scene reuse
  scene     `encode_scene` once, then K `generate(model, scene=...)` calls, one question each (batch 1)
  batched   `encode_scene` once, then ONE `generate(model, scene=...)` call with the K questions batched
Every arm produces exactly `--new-tokens` tokens per question (min = max new tokens), greedy; the
answers of `scene` and `batched` are checked equal to `full` before timing. Inputs are prepared by the
processor outside the timed region. Arms are interleaved (full, scene, batched, full, ...) so machine
drift hits them alike; the median of `--repeats` runs is reported with the ratios full/scene and
full/batched.

    python bench/bench_scene_reuse.py [--repeats 3] [--views 4] [--new-tokens 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from PIL import Image

from gap_mllm.generation import encode_scene, generate
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.tiny.tiny_tokenizer import build_tiny_processor

# size -> (view height, width, processor max pixels): the settings of bench_forward.py
SETTINGS = {"tiny": (128, 160, 128 * 160), "small": (256, 320, 256 * 320)}
QUESTION_STEMS = ("Where is the {} chair?", "How far is the {} lamp from the door?", "Describe the {} table.",
                  "Is the {} sofa left of the window?")
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")


def questions(count: int) -> list[str]:
    """`count` distinct questions of a few lengths (4 stems × 8 ordinals, numbered beyond 32)."""
    out = []
    for i in range(count):
        stem = QUESTION_STEMS[i % len(QUESTION_STEMS)]
        text = stem.format(ORDINALS[(i // len(QUESTION_STEMS)) % len(ORDINALS)])
        out.append(text if i < len(QUESTION_STEMS) * len(ORDINALS) else f"{text} ({i})")
    return out


def views(count, height, width, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)) for _ in range(count)]


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    with torch.no_grad():
        result = fn()
    return time.perf_counter() - start, result


def bench_size(size: str, num_views: int, counts: list[int], repeats: int, new_tokens: int) -> list[dict]:
    height, width, max_pixels = SETTINGS[size]
    processor = build_tiny_processor(max_pixels=max_pixels)
    model, _ = build_tiny_model(processor=processor, size=size)
    frames = views(num_views, height, width)
    generation = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    rows = []
    for count in counts:
        asked = questions(count)
        full_inputs = [processor(images=frames, text=q, return_tensors="pt") for q in asked]
        prefix, suffixes = processor.split_scene_prompt(asked, num_views=num_views)
        scene_inputs = processor(images=frames, text=prefix, return_tensors="pt")
        single_inputs = [processor(text=s, return_tensors="pt") for s in suffixes]
        batch_inputs = processor(text=suffixes, return_tensors="pt")

        def full():
            return [model.generate(**inputs, **generation)[0, inputs["input_ids"].shape[1]:] for inputs in full_inputs]

        def scene():
            encoded = encode_scene(model, **scene_inputs)
            return [generate(model, scene=encoded, **inputs, **generation)[0, inputs["input_ids"].shape[1]:]
                    for inputs in single_inputs]

        def batched():
            encoded = encode_scene(model, **scene_inputs)
            out = generate(model, scene=encoded, **batch_inputs, **generation)
            return list(out[:, batch_inputs["input_ids"].shape[1]:])

        arms = {"full": full, "scene": scene, "batched": batched}
        answers = {name: timed(fn)[1] for name, fn in arms.items()}  # warm-up, and the answers to compare
        for name in ("scene", "batched"):
            if not all(torch.equal(a, b) for a, b in zip(answers["full"], answers[name], strict=True)):
                raise RuntimeError(f"{size}, K={count}: the {name} answers differ from the full calls")
        samples = {name: [] for name in arms}
        for _ in range(repeats):
            for name, fn in arms.items():
                samples[name].append(timed(fn)[0])
        medians = {name: statistics.median(values) for name, values in samples.items()}
        rows.append({"size": size, "K": count, "prefix_tokens": int(scene_inputs["input_ids"].shape[1]), **medians})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--questions", type=int, nargs="+", default=[1, 4, 8, 32])
    parser.add_argument("--sizes", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 = steadier figures)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"scene reuse vs K full generate calls, CPU, {args.threads} thread(s), {args.views} views, "
          f"{args.new_tokens} new tokens per question, median of {args.repeats} interleaved runs", flush=True)
    print(f"{'size':6} {'K':>3} {'prefix':>6} {'full s':>8} {'scene s':>8} {'batched s':>9} "
          f"{'full/scene':>10} {'full/batched':>12}", flush=True)
    for size in args.sizes:
        for r in bench_size(size, args.views, args.questions, args.repeats, args.new_tokens):
            print(f"{size:6} {r['K']:>3} {r['prefix_tokens']:>6} {r['full']:>8.3f} {r['scene']:>8.3f} "
                  f"{r['batched']:>9.3f} {r['full'] / r['scene']:>10.2f} {r['full'] / r['batched']:>12.2f}", flush=True)


if __name__ == "__main__":
    main()
