"""The CUDA defaults follow the committed GPU figures (training/kernels.py, training/configs/gpu_verdicts.json):
the verdict rule itself, `resolve_kernels` on a simulated CUDA machine, the shipped recipes' packing, and the end of
`make gpu-figures` (its table and its log without repeated warnings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from gap_mllm.training import kernels
from gap_mllm.training.activation_checkpointing import checkpoints_activations
from gap_mllm.training.config import load_recipe, recipe_from_dict
from gap_mllm.training.device import apply_device_plan
from gap_mllm.training.kernels import (
    MIN_STEPS,
    NOT_MEASURED,
    SWITCH_ARMS,
    arm_verdict,
    earned_switches,
    load_verdicts,
    verdicts_from_arms,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_figures_table  # noqa: E402


def arm(name, steps=MIN_STEPS, loss=2.0, step_s=1.0, **extra):
    return {"name": name, "losses": [loss] * steps, "median_step_s": step_s, **extra}


def test_the_verdict_rule_needs_finite_steps_the_same_curve_and_speed():
    plain = arm("sdpa")
    assert arm_verdict(arm("x", step_s=0.9), plain)["earned"]
    assert not arm_verdict(arm("x", step_s=0.99), plain)["earned"]  # within the 3 % margin: not faster
    assert "losses 0.0500 away" in arm_verdict(arm("x", loss=2.05, step_s=0.5), plain)["why"]
    failed = arm_verdict({"name": "x", "error": "TrainingDivergedError: training diverged at optimizer step 13"}, plain)
    assert not failed["earned"] and failed["why"].startswith("failed: TrainingDivergedError")
    short = arm_verdict(arm("x", steps=15, step_s=0.5, compile=True), plain)
    assert not short["earned"] and "15 steps measured, fewer than 30" in short["why"]
    assert arm_verdict(arm("x", steps=15, step_s=0.5), plain)["earned"]  # nothing recompiles: 10 steps are enough
    assert not arm_verdict(arm("x", step_s=0.5, buckets=[512], buckets_crossed=False), plain)["earned"]
    assert not arm_verdict({"skipped": "needs liger"}, plain)["earned"]


def test_the_committed_file_is_what_the_rule_says_of_its_figures():
    committed = load_verdicts()
    assert set(committed["switches"]) == set(SWITCH_ARMS)
    for switch, verdict in committed["switches"].items():
        if verdict["source"] is None:  # no GPU call has measured its arm yet: not earned, and saying so
            assert verdict["earned"] is False and verdict["why"] == NOT_MEASURED, switch
            continue
        figures = json.loads((ROOT / verdict["source"]).read_text())["measurements"]
        assert verdicts_from_arms(figures)[switch]["earned"] == verdict["earned"], switch
        assert verdicts_from_arms(figures)[switch]["why"] == verdict["why"], switch


def decided(values):
    recipe, plan = apply_device_plan(recipe_from_dict(values), cuda_available=True, bf16_supported=True)
    return kernels.resolve_kernels(recipe, plan).kernels


def test_the_cuda_defaults_agree_with_the_committed_verdicts(monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda name: "1.0")
    monkeypatch.setattr(kernels, "cuda_capability", lambda: (9, 0))
    monkeypatch.setattr(kernels, "compile_problem", lambda device: None)
    earned = earned_switches()
    settings = decided({"data": {"length_buckets": [512, 1024]}})
    for switch in ("compile_layers", "compile_towers", "liger_fused_linear_cross_entropy", "liger_language_model"):
        assert getattr(settings, switch) is earned[switch], switch
    assert decided({}).compile_layers is False  # no buckets: not the shapes that earned it
    # packed rows under activation checkpointing recompute through a checkpoint context, which a compiled layer refuses
    packed = {"data": {"length_buckets": [512, 1024], "packing": True}, "training": {"activation_checkpointing": True}}
    assert decided(packed).compile_layers is False
    assert decided({**packed, "training": {}}).compile_layers is earned["compile_layers"]


@pytest.mark.parametrize("recipe", sorted(path.name for path in (ROOT / "training" / "recipes").glob("*.yaml")))
def test_no_shipped_recipe_turns_on_a_switch_the_verdicts_did_not_earn(recipe):
    """A recipe may leave an earned switch off (the real-size recipes checkpoint activations and do not pack yet:
    packing's verdict was measured without checkpointing), never turn on one that was not earned."""
    settings = load_recipe(ROOT / "training" / "recipes" / recipe)
    earned = earned_switches()
    assert not settings.data.packing or earned["packing"]
    if checkpoints_activations(settings.training):  # the recompute runs the kernels again: their own verdicts
        checkpointed = earned_switches(checkpointing=True)
        assert not settings.data.packing or checkpointed["packing"], recipe
        for switch in ("compile_layers", "compile_towers", "liger_fused_linear_cross_entropy", "liger_language_model"):
            assert getattr(settings.kernels, switch) is not True or checkpointed[switch], (recipe, switch)
    for switch in ("compile_layers", "compile_towers", "liger_fused_linear_cross_entropy", "liger_language_model"):
        assert getattr(settings.kernels, switch) is not True or earned[switch], (recipe, switch)


def test_the_end_of_the_gpu_call_collapses_repeats_and_tables_each_arm(tmp_path):
    text = "start\n" + "W: Triton CompilationError\n" * 500 + "done\n"
    collapsed = gpu_figures_table.collapse_repeats(text)
    assert collapsed.splitlines() == ["start", "W: Triton CompilationError", "done",
                                      "[repeated 500 times: W: Triton CompilationError]"]
    figures = {"measurements": {"arm_sdpa": {"median_step_s": 0.782, "mfu": 0.138},
                                "arm_default": {"error": "TrainingDivergedError: training diverged at optimizer step 13"}}}
    (tmp_path / "train_arms.json").write_text(json.dumps(figures))
    scale = {"tasks": {"grounding": {"samples": 8, "one_at_a_time": {"per_sample_s": 4.72, "slowest_stage": "decode"},
                                     "full_split": "ScanRefer val"}}}  # bench_eval_scale.py's layout
    (tmp_path / "eval_scale.json").write_text(json.dumps(scale))
    summary = {"arms": {"train_arms": {"status": "ok", "seconds": 150.5, "output": "train_arms.json"},
                        "eval_scale": {"status": "ok", "seconds": 41.0, "output": "eval_scale.json"},
                        "profile": {"status": "stopped at its budget; no figures written", "output": "profile.json"}},
               "verdicts": {"packing": {"earned": True}, "compile_layers": {"earned": False}}}
    table = gpu_figures_table.figures_table(summary, tmp_path).splitlines()
    assert table[2] == ("| train_arms | ok | 150.5 | sdpa 0.782 s 13.8 % MFU; default FAILED (TrainingDivergedError) | "
                        "packing EARNED; compile_layers not earned |")
    assert table[3] == "| eval_scale | ok | 41.0 | grounding one_at_a_time 4.72 s/sample (slowest: decode) | ok |"
    assert table[4].startswith("| profile | stopped at its budget; no figures written |")


def test_packed_rows_with_a_reentrant_checkpoint_under_sdpa_are_refused_when_read():
    """Packed rows' per-sample attention is switched on for the forward; the non-reentrant checkpoint (transformers'
    default) recomputes a layer under the same switch (tests/test_train_packing.py checks its gradients), the
    reentrant one has no hook for it and would attend across the samples of a row in the backward."""
    with pytest.raises(ValueError, match=r"^data.packing with training.activation_checkpointing and use_reentrant=true"):
        recipe_from_dict({"data": {"packing": True}, "training": {
            "activation_checkpointing": True, "activation_checkpointing_kwargs": {"use_reentrant": True}}})
    with pytest.raises(ValueError, match=r"use_reentrant=true under sdpa"):
        recipe_from_dict({"data": {"packing": True}, "training": {
            "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": True}}})
    recipe_from_dict({"data": {"packing": True}, "training": {"activation_checkpointing": True}})  # non-reentrant
    with pytest.raises(ValueError, match=r"^kernels.compile_layers=true with data.packing and training.activation_che"):
        recipe_from_dict({"data": {"packing": True}, "training": {"activation_checkpointing": True},
                          "kernels": {"compile_layers": True}})
    recipe_from_dict({"data": {"packing": True}})  # either alone is fine
    recipe_from_dict({"training": {"activation_checkpointing": True}})


def test_a_checkpointing_run_needs_each_switchs_checkpointed_verdict(tmp_path):
    """The recompute of activation checkpointing runs a switch's kernels again (packed rows recompute per sample), so
    a verdict measured without it says nothing of a checkpointing run; Liger's fused cross-entropy (the LM head and the
    loss, outside every checkpointed layer) is the exception."""
    verdicts = {name: {"earned": True} for name in ("packing", "compile_layers", "compile_towers",
                                                    "liger_fused_linear_cross_entropy", "compile_towers_checkpointed")}
    verdicts["packing_checkpointed"] = {"earned": False}
    path = tmp_path / "verdicts.json"
    path.write_text(json.dumps({"switches": verdicts}))
    assert earned_switches(path) == {"packing": True, "compile_layers": True, "liger_fused_linear_cross_entropy": True,
                                     "liger_language_model": False, "compile_towers": True,
                                     "graph_geometry_encoder": False}  # a switch the file does not name
    assert earned_switches(path, checkpointing=True) == {
        "packing": False, "compile_layers": False,  # measured checkpointed and not earned / never measured so
        "liger_fused_linear_cross_entropy": True, "liger_language_model": False, "compile_towers": True,
        "graph_geometry_encoder": False}


def test_the_real_size_recipes_cuda_defaults_follow_the_checkpointed_verdicts(monkeypatch):
    monkeypatch.setattr(kernels, "installed_version", lambda name: "1.0")
    monkeypatch.setattr(kernels, "cuda_capability", lambda: (9, 0))
    monkeypatch.setattr(kernels, "compile_problem", lambda device: None)
    checkpointed = earned_switches(checkpointing=True)
    settings = decided({"data": {"length_buckets": [512, 1024]}, "training": {"activation_checkpointing": True}})
    for switch in ("compile_layers", "compile_towers", "liger_fused_linear_cross_entropy", "liger_language_model"):
        assert getattr(settings, switch) is checkpointed[switch], switch
