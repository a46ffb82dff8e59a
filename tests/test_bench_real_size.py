"""The real-size GPU bench stays runnable: it runs end to end at the small size on the CPU, its real-size
model has the published parameter counts, its FLOP formula is the stated one, and a failing measurement
is recorded instead of ending the run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import bench_real_size  # noqa: E402
from real_size_flops import forward_flops, training_step_flops  # noqa: E402
from real_size_model import build_model, parameter_counts  # noqa: E402

MEASUREMENTS = ("build", "geometry_518", "geometry_336x448", "prefill_1views", "prefill_2views", "generate",
                "generate_compiled", "scene_reuse_k2", "train_step_sdpa", "cache_read", "geometry_518_large", "geometry_336x448_large")


def test_small_run_measures_everything(tmp_path, capsys):
    out = tmp_path / "small.json"
    threads = torch.get_num_threads()
    try:  # in this process (the imports are paid already); one thread is steadier on a shared machine
        code = bench_real_size.main(["--size", "small", "--device", "cpu", "--threads", "1", "--out", str(out),
                                     "--cache-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "done; results in" in capsys.readouterr().out
    measured = json.loads(out.read_text())["measurements"]
    assert tuple(measured) == MEASUREMENTS
    failed = {name: value for name, value in measured.items() if "error" in value or "skipped" in value}
    assert not failed, failed
    assert all(row["seconds"] > 0 for row in measured["geometry_518"]["rows"])
    assert measured["prefill_2views"]["visual_tokens"] == 12 and measured["prefill_2views"]["model_tflops"] > 0
    assert measured["generate"]["total_s"] > 0 and measured["train_step_sdpa"]["tokens_per_s"] > 0
    assert measured["generate_compiled"]["tokens_equal_to_uncompiled"] is True  # fp32, the decode step compiled whole
    assert measured["scene_reuse_k2"]["answers_equal_to_full"] == {"scene": 2, "batched": 2}  # fp32: exact
    payload = 4 * 256 * 24 * 4 * 2  # levels·2C·patches·views·2 B, plus the safetensors header
    assert payload < measured["cache_read"]["bytes_per_sample"] < payload + 1024
    assert not list(tmp_path.glob("gap-cache-bench-*/*.safetensors"))  # entries removed afterwards


def test_real_size_model_has_the_published_parameter_counts():
    counts = parameter_counts(build_model("real", "meta", torch.bfloat16))
    assert counts["geometry_encoder"] == 909_112_320  # VGGT-1B aggregator
    assert counts["fusion"] == 201_400_320  # 4 RMS mergers + 4 gates (docs/method.md §1.7)
    assert round(counts["llm"] / 1e9, 2) == 1.72 and counts["embeddings"] == 151936 * 2048  # Qwen3-VL-2B LLM
    assert round(counts["vision_tower"] / 1e9, 2) == 0.41
    assert counts["trainable"] == counts["llm"] + counts["fusion"]  # ViT and VGGT frozen
    assert counts["total"] == counts["llm"] + counts["vision_tower"] + counts["geometry_encoder"] + counts["fusion"]


def test_flop_formula_of_the_llm_and_the_training_multipliers():
    model = build_model("small", "meta", torch.float32)
    text = model.config.text_config
    forward = forward_flops(model, [2], (4, 6), [40], [3])
    layers = sum(p.numel() for p in model.model.language_model.layers.parameters() if p.ndim >= 2)
    d_attn = text.num_attention_heads * text.head_dim
    assert forward["llm"] == 2 * layers * 40 + 4 * d_attn * text.num_hidden_layers * 40 * 40
    assert forward["lm_head"] == 2 * text.vocab_size * text.hidden_size * 3
    training = training_step_flops(forward)
    assert training["llm"] == 3 * forward["llm"] and training["geometry_encoder"] == forward["geometry_encoder"]


def test_a_failing_measurement_is_recorded_and_the_run_goes_on(tmp_path):
    args = argparse.Namespace(size="small", device="cpu", dtype="float32", out=str(tmp_path / "r.json"),
                              attn_default="sdpa", budget=None, only=None, warmup=None, repeats=None, cache_dir=None)
    bench = bench_real_size.Bench(args)

    def out_of_memory():
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    bench.run("too_big", out_of_memory)
    bench.run("broken", lambda: {}["missing"])
    bench.run("fine", lambda: {"seconds": 1.0})
    saved = json.loads((tmp_path / "r.json").read_text())["measurements"]
    assert saved["too_big"]["error"] == "out of memory" and "80.00 GiB" in saved["too_big"]["detail"]
    assert saved["broken"]["error"].startswith("KeyError") and saved["fine"] == {"seconds": 1.0}
    bench.args.budget = 0.0
    bench.run("late", lambda: {"seconds": 1.0})
    assert json.loads((tmp_path / "r.json").read_text())["measurements"]["late"] == {"skipped": "time budget spent"}


@pytest.mark.parametrize("name, expected", [("NVIDIA H100 80GB HBM3", 989.4e12), ("NVIDIA H100 PCIe", 756.0e12),
                                            ("NVIDIA H200", 989.4e12), ("Tesla T4", None)])
def test_peak_flops_by_device_name(name, expected):
    from real_size_flops import peak_flops

    assert peak_flops(name) == expected
