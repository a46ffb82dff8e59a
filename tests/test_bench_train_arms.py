"""bench/bench_train_arms.py's steady-state figures (median after the warm-up; compilation time apart) and its arms
for the recipes' new defaults: the bucketed arm trains the plain arm's losses on the CPU; the compiled default arm is
skipped there with the reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_train_arms  # noqa: E402


def test_steady_state_is_the_median_and_compilation_is_apart():
    times = [9.0, 0.5, 0.4, 6.0, 0.5, 0.6, 0.5]  # a first compile, a recompile at step 4
    timing = bench_train_arms.steady_state(times, warmup=1)
    assert timing["median_step_s"] == 0.5 and timing["timed_steps"] == 6
    assert timing["slow_steps"] == [1, 4] and timing["compile_s"] == pytest.approx(8.5 + 5.5)
    assert timing["mean_step_s"] == pytest.approx(8.5 / 6)  # what the old `mfu` divided by
    assert bench_train_arms.default_buckets([300, 410, 450, 700, 520, 640]) == [512, 640, 704]
    assert bench_train_arms.default_buckets([100]) == [128]


def test_the_bucketed_arm_trains_the_plain_arms_losses_and_the_default_needs_cuda(tmp_path, capsys):
    out = tmp_path / "arms.json"
    threads = torch.get_num_threads()
    try:
        code = bench_train_arms.main(["--size", "small", "--device", "cpu", "--steps", "3", "--warmup-steps", "1",
                                      "--threads", "1", "--out", str(out), "--arms", "sdpa", "sdpa_bucketed", "default"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0 and "done; results in" in capsys.readouterr().out
    measured = json.loads(out.read_text())["measurements"]
    plain, bucketed = measured["arm_sdpa"], measured["arm_sdpa_bucketed"]
    assert bucketed["losses"] == pytest.approx(plain["losses"], rel=1e-5)  # the padding is masked
    assert bucketed["padding_share"] > plain["padding_share"] and len(bucketed["buckets"]) >= 1
    for arm in (plain, bucketed):
        assert arm["median_step_s"] > 0 and arm["timed_steps"] == 2 and arm["mfu"] is None and arm["tokens_per_s"] > 0
        assert {"mean_step_s", "compile_s", "slow_steps", "graphs_compiled"} <= set(arm)
    assert measured["arm_default"]["skipped"].startswith("this bench compiles on CUDA only")


def test_arms_run_in_the_order_given_with_liger_language_model_arms_last():
    """A GPU call's budget skips the arms still to come, so it names first what it needs most; Liger's language-model
    kernels patch the model for good, so their arms stay last whatever the order given."""
    order = bench_train_arms.arms_in_order(["default", "sdpa_checkpointed", "sdpa_graph_towers_bucketed", "sdpa",
                                            "sdpa_checkpointed"])
    assert [arm.name for arm in order] == ["sdpa_checkpointed", "sdpa_graph_towers_bucketed", "sdpa", "default"]
    assert bench_train_arms.arms_in_order(None) == list(bench_train_arms.ARMS)
    graphed = next(arm for arm in bench_train_arms.ARMS if arm.name == "sdpa_graph_towers_bucketed")
    assert bench_train_arms.arm_kernels(graphed).graph_geometry_encoder is True
    assert bench_train_arms.arm_unavailable_reason(graphed, "cpu") is not None


def test_the_checkpointed_arms_recompute_each_layer_and_train_the_plain_arms_losses(tmp_path, monkeypatch):
    """sdpa_checkpointed and sdpa_packed_checkpointed (the real-size recipes' activation checkpointing): the first
    decoder layer's attention runs twice a step (forward, then the layer's recompute in the backward; transformers
    checkpoints a layer's `forward`, so the layer's own hooks run once), the plain arm's once, and the three arms train
    the same losses (float32); the arms that compile the towers are CUDA-only here."""
    calls, original = [], bench_train_arms.ArmsBench.train_step

    def counted(wrapped, optimizer, guard, step, batch):
        attention = wrapped.gap_model.model.language_model.layers[0].self_attn
        count = [0]
        handle = attention.register_forward_hook(lambda *_: count.__setitem__(0, count[0] + 1))
        try:
            return original(wrapped, optimizer, guard, step, batch)
        finally:
            handle.remove()
            calls.append(count[0])

    monkeypatch.setattr(bench_train_arms.ArmsBench, "train_step", staticmethod(counted))
    out = tmp_path / "arms.json"
    threads = torch.get_num_threads()
    try:
        assert bench_train_arms.main(["--size", "small", "--device", "cpu", "--steps", "3", "--warmup-steps", "1",
                                      "--threads", "1", "--out", str(out), "--arms", "sdpa", "sdpa_checkpointed",
                                      "sdpa_packed_checkpointed", "sdpa_compile_towers_checkpointed"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert calls == [1] * 3 + [2] * 6
    measured = json.loads(out.read_text())["measurements"]
    for arm in ("sdpa_checkpointed", "sdpa_packed_checkpointed"):
        assert measured[f"arm_{arm}"]["losses"] == pytest.approx(measured["arm_sdpa"]["losses"], rel=1e-5), arm
    assert measured["arm_sdpa_compile_towers_checkpointed"]["skipped"].startswith("this bench compiles on CUDA only")
