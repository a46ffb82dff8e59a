"""bench/bench_mini_arm_steps.py's table: each arm's step and cache fill as ratios to gap_gated's of the same stage;
and each arm trains the model the ablation trains (lab/mini/arms.py `fresh_model_settings`, the pipeline's own)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import bench_mini_arm_steps as bench  # noqa: E402

from lab.mini.arms import ARMS, fresh_model_settings  # noqa: E402


def test_the_table_gives_each_arm_against_gap_gated_of_its_stage():
    results = [{"arm": "gap_gated_s0", "stage": "stage1", "step_s": 2.0},
               {"arm": "no_geometry_s0", "stage": "stage1", "step_s": 1.5},
               {"arm": "gap_gated_s0", "stage": "stage2", "step_s": 1.0, "cache_fill_s_per_sample": 0.2},
               {"arm": "no_geometry_s0", "stage": "stage2", "step_s": 0.9, "cache_fill_s_per_sample": 0.05}]
    assert bench.table(results)[2:] == ["| gap_gated_s0 | stage1 | 2.000 | 1.00 | — | — |",
                                        "| no_geometry_s0 | stage1 | 1.500 | 0.75 | — | — |",
                                        "| gap_gated_s0 | stage2 | 1.000 | 1.00 | 0.200 | 1.00 |",
                                        "| no_geometry_s0 | stage2 | 0.900 | 0.90 | 0.050 | 0.25 |"]


def test_the_bench_times_the_three_models_of_the_ablation():
    models = {(ARMS[name].fusion_method, ARMS[name].use_geometry) for name in bench.MODELS}
    assert models == {("gated", True), ("add", True), ("gated", False)}
    assert "model.use_geometry=false" in fresh_model_settings(ARMS["no_geometry_s0"], "stage0")
    assert bench.STAGES["stage2"][1] == ["cpu_bf16_autocast=true"]  # the ablation's stage-2 settings
