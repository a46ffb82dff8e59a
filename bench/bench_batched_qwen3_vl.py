"""Per-image and per-sample host loops vs the package's batch-wide paths, side by side.

    .venv/bin/python bench/bench_batched_qwen3_vl.py [--batch 32] [--views 8] [--repeats 5] [--device cuda]

Inputs: the GAP-MLLM-Mini model (random weights: the positions and the step's work do not depend on them) and
a collated batch of grounding stage-1 samples of the mini preset (`--views` frames of 160×128 and the official
prompt). Both arms run on the same model and batch: *loops* switches the Qwen3-VL modules back to transformers'
classes and the geometry mergers to one call per sample (the package before gap_mllm.modeling_gap_mllm), *batched*
is what the package uses (batch-wide position ids, one ViT attention call per layer, one merger call per fusion
level). For each arm:

- operations: aten calls counted by a dispatch mode, and among them `_local_scalar_dense` (`.item()`), each a
  host-device synchronisation on a GPU (`.tolist()` reads do not pass the dispatcher and are not counted);
- seconds: medians of `--repeats` interleaved runs on `--device` (on CUDA, synchronised before and after each).

Measured for `get_rope_index` alone, for the ViT alone, and for a training forward + backward of the whole model
(whose loss must agree between the arms to float32 round-off).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionAttention

from gap_mllm.mini.mini_config import build_mini_model
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.modeling_gap_mllm import GapMllmModel
from gap_mllm.speedups import BatchedGapMllmModel, GapMllmQwen3VLVisionAttention
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1

# the model is GapMllmModel (Qwen3VLModel plus geometry): its stock loops, or its batch-wide subclass
ARMS = {"loops": (GapMllmModel, Qwen3VLVisionAttention), "batched": (BatchedGapMllmModel, GapMllmQwen3VLVisionAttention)}


def switch(model, classes) -> None:
    model.model.__class__ = classes[0]
    for block in model.model.visual.blocks:
        block.attn.__class__ = classes[1]
    fusion = model.geometry_fusion
    if classes is ARMS["loops"]:  # one merger call per sample, as before
        fusion._merge = lambda level, geometry: torch.cat([fusion.mergers[level](f) for f in geometry])
    else:
        fusion.__dict__.pop("_merge", None)


class OperationCounter(TorchDispatchMode):
    """Counts every aten call made while active (by overload packet name)."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def grounding_batch(processor, batch: int, views: int):
    """A collated training batch of `batch` stage-1 grounding samples of `views` 160×128 frames each."""
    rng = np.random.default_rng(0)
    examples = [
        {
            "images": [Image.fromarray(rng.integers(0, 255, (128, 160, 3), dtype=np.uint8)) for _ in range(views)],
            "prompt": GROUNDING_STAGE1.annotation_prompt(views, query=f"the chair number {index}"),
            "answer": f"Frame-{index % views}",
        }
        for index in range(batch)
    ]
    return GapMllmDataCollator(processor)(examples)


def count(function) -> tuple[int, int]:
    with OperationCounter() as counter:
        function()
    return sum(counter.calls.values()), counter.calls["_local_scalar_dense"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    options = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    device = torch.device(options.device)
    model, processor = build_mini_model()
    model.to(device)
    model.train()
    inputs = grounding_batch(processor, options.batch, options.views).to(device)
    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    inner = model.model
    rope_args = dict(mm_token_type_ids=inputs["mm_token_type_ids"], image_grid_thw=inputs["image_grid_thw"],
                     attention_mask=inputs["attention_mask"])

    def rope_index():
        return inner.get_rope_index(inputs["input_ids"], **rope_args)

    def vision_tower():
        with torch.no_grad():
            return inner.get_vision_features(inputs["pixel_values"], inputs["image_grid_thw"]).pooler_output

    def train_step():
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach()

    results = {}
    parts = {"rope": rope_index, "vision": vision_tower, "step": train_step}
    for arm, classes in ARMS.items():
        switch(model, classes)
        results[arm] = {"positions": rope_index(), "features": vision_tower(), "loss": train_step()}
        for part, function in parts.items():
            results[arm][f"{part}_ops"], results[arm][f"{part}_items"] = count(function)
            results[arm][f"{part}_s"] = []
    for _ in range(options.repeats):  # interleaved, so that machine load hits both arms alike
        for arm, classes in ARMS.items():
            switch(model, classes)
            for part, function in parts.items():
                synchronise()
                start = time.perf_counter()
                function()
                synchronise()
                results[arm][f"{part}_s"].append(time.perf_counter() - start)
    switch(model, ARMS["batched"])

    loops, batched = results["loops"], results["batched"]
    for a, b in zip(loops["positions"], batched["positions"]):
        assert torch.equal(a, b), "the arms' positions differ"
    for a, b in zip(loops["features"], batched["features"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loops["loss"], batched["loss"], rtol=1e-5, atol=1e-6)
    tokens = inputs["input_ids"].shape
    print(f"batch {options.batch} × {options.views} views, {tokens[1]} tokens per row; positions equal, ViT features "
          f"and loss within 1e-5 (loss difference {float((loops['loss'] - batched['loss']).abs()):.1e}); "
          f"medians of {options.repeats} on {device.type} (CPU threads: {torch.get_num_threads()})\n")
    print("| measured | loops | batched | loops / batched |")
    print("|---|---|---|---|")
    rows = (("get_rope_index: aten operations", "rope_ops", int), ("get_rope_index: .item() calls", "rope_items", int),
            ("get_rope_index: seconds", "rope_s", statistics.median),
            ("ViT (no grad): aten operations", "vision_ops", int), ("ViT: .item() calls", "vision_items", int),
            ("ViT: seconds", "vision_s", statistics.median),
            ("train forward + backward: aten operations", "step_ops", int),
            ("train forward + backward: .item() calls", "step_items", int),
            ("train forward + backward: seconds", "step_s", statistics.median))
    for label, key, reduce in rows:
        a, b = reduce(loops[key]), reduce(batched[key])
        ratio = f"{a / b:.2f}" if b else "—"
        fmt = (lambda v: f"{v:.4f}") if isinstance(a, float) else str
        print(f"| {label} | {fmt(a)} | {fmt(b)} | {ratio} |")


if __name__ == "__main__":
    main()
