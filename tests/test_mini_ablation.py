"""The ablation's plan (lab/mini/ablation.py): the arms, their order and claims, one budget for every arm (the
arm without stage 1 gets its steps as stage 2), each stage's run state in its own folder, `--time-limit` for the whole
command, and the fresh seeds fixed apart from every other seed. What `python -m lab.mini --ablation` gives each training
stage is read from the settings it passes (no training: `load_recipe` and `run_training` are stand-ins)."""

from __future__ import annotations

import argparse
import json
import signal
import time
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pytest

from gap_mllm.training.config import load_recipe
from gap_mllm.processing.errors import RUN_STOPPED_STATUS, RunStoppedEarly

from lab.mini import pipeline
from lab.mini.ablation import (
    ABLATION_FRESH_SEEDS,
    ABLATION_ORDER,
    ABLATION_STAGE2_STEPS,
    CLAIMS,
    SEED_PAIRS,
    ablation_arms,
    stage_steps,
)
from lab.mini.arms import ABLATION_ARMS, ARMS, MAIN_ARM, MARKER_FREE_STAGE2, Arm
from lab.mini.fresh_seeds import FRESH_SEEDS
from lab.mini.pipeline_settings import add_arguments


def _differences(a: str, b: str) -> set[str]:
    return {f.name for f in fields(ARMS[a]) if f.name != "name" and getattr(ARMS[a], f.name) != getattr(ARMS[b], f.name)}


def test_the_order_trains_every_ablation_arm_main_first_then_one_per_claim_then_the_second_seeds_then_the_title_arm():
    assert sorted(ABLATION_ORDER) == sorted(arm.name for arm in ABLATION_ARMS)
    assert ABLATION_ORDER[0] == MAIN_ARM.name
    assert ABLATION_ORDER[1:4] == tuple(claim.without for claim in CLAIMS[:3])
    assert all(ARMS[name].seed == 1 for name in ABLATION_ORDER[4:6])
    # the arm that never trains the geometry-aligned objective came last: the six before it were finished and archived
    assert ABLATION_ORDER[6:] == ("gap_gated_no_gap_s0",) == tuple({claim.without for claim in CLAIMS[3:]})
    assert [arm.name for arm in ablation_arms()] == list(ABLATION_ORDER)


def test_each_claim_and_seed_pair_differs_in_one_ingredient():
    assert [_differences(c.arm, c.without) for c in CLAIMS] == [
        {"use_geometry"}, {"stage1"}, {"fusion_method"}, {"stage1", "marker_task"}, {"marker_task"}]
    assert _differences(*CLAIMS[0].second) == {"use_geometry"}
    assert all(_differences(a, b) == {"seed"} for a, b in SEED_PAIRS)
    assert _differences("gap_gated_no_gap_s0", "gap_gated_no_gap_s1") == {"seed"}


def test_an_arm_without_the_marker_task_has_no_stage_1():
    with pytest.raises(ValueError, match="stage 1 is the marker task"):
        Arm("x", marker_task=False)


def test_the_arm_without_the_objective_trains_the_stage_2_mix_without_marker_samples(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    _train_arms(_run(tmp_path), ["gap_gated_stage2_only_s0", "gap_gated_no_gap_s0"])
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "data.tasks") == []  # the recipe's mix
    assert captured.setting("gap_gated_no_gap_s0", "stage2", "data.tasks") == [
        "[grounding_stage1, grounding_stage2, detection, captioning]"]
    assert captured.setting("gap_gated_no_gap_s0", "stage2", "evaluation.tasks") == ["[grounding, detection, captioning]"]
    # equal steps: the stage-1 budget as more stage 2, as the stage-2-only arm
    assert (captured.setting("gap_gated_no_gap_s0", "stage2", "training.max_steps")[-1]
            == captured.setting("gap_gated_stage2_only_s0", "stage2", "training.max_steps")[-1]
            == str(1000 + ABLATION_STAGE2_STEPS))
    # the settings make a valid recipe: the other tasks' caps, repeats and weights as mini_stage2.yaml writes them
    recipe = load_recipe(pipeline.RECIPES / "mini_stage2.yaml", list(MARKER_FREE_STAGE2))
    assert recipe.data.tasks == ["grounding_stage1", "grounding_stage2", "detection", "captioning"]
    assert recipe.data.task_max_samples == {"captioning": 2500}
    assert recipe.data.task_repeats == {"grounding_stage2": 2, "detection": 2}
    assert recipe.evaluation.tasks == ["grounding", "detection", "captioning"]


def test_the_fresh_seeds_are_none_of_the_data_or_the_release_rule():
    assert len(set(ABLATION_FRESH_SEEDS)) == 3
    assert not set(ABLATION_FRESH_SEEDS) & {0, *FRESH_SEEDS}


def test_stage_steps_take_the_last_setting():
    assert stage_steps(1000, []) == 1000
    assert stage_steps(7200, ["training.max_steps=3600", "training.seed=1", "training.max_steps = 100"]) == 100


class _Captured:
    """Stand-ins for the recipe loader and the training: each stage's settings, by its output folder."""

    def __init__(self, monkeypatch):
        self.values = {}
        monkeypatch.setattr(pipeline, "load_recipe", lambda path, values: (path.name, list(values)))
        monkeypatch.setattr(pipeline, "run_training", self._train)
        monkeypatch.setattr(pipeline, "export_default", lambda *args, **kwargs: None)

    def _train(self, recipe, resume_from_checkpoint=None):
        name, values = recipe
        output = next(v.split("=", 1)[1] for v in values if v.startswith("training.output_dir="))
        self.values[(Path(output).parent.name, Path(output).name)] = values
        Path(output).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(global_step=0, training_loss=0.0)

    def setting(self, arm: str, stage: str, name: str) -> list[str]:
        return [v.split("=", 1)[1] for v in self.values[(arm, stage)] if v.split("=", 1)[0] == name]


def _run(tmp_path, **kwargs) -> pipeline.MiniRun:
    return pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "data", device="cpu", ablation=True, **kwargs)


def _train_arms(run, names=ABLATION_ORDER):
    for name in names:
        pipeline.run_arm(run, ARMS[name], run.stage_dir("stage0"))


def test_every_arm_makes_the_same_steps_with_the_sixth_releases_stage2(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    _train_arms(_run(tmp_path))
    for name in ABLATION_ORDER:
        arm = ARMS[name]
        if arm.stage1:
            assert captured.setting(name, "stage1", "training.max_steps") in ([], ["1000"])  # the recipe's
            assert captured.setting(name, "stage2", "training.max_steps")[-1] == str(ABLATION_STAGE2_STEPS)
        else:  # the stage-1 budget as more stage 2
            assert (name, "stage1") not in captured.values
            assert captured.setting(name, "stage2", "training.max_steps")[-1] == str(1000 + ABLATION_STAGE2_STEPS)
        assert captured.setting(name, "stage2", "cpu_bf16_autocast") == ["true"]
        assert captured.setting(name, "stage2", "model.fusion_method" if not arm.stage1 else "model.name_or_path")


def test_a_users_steps_change_every_arm_alike(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    run = _run(tmp_path, stage_overrides=(("stage2", "training.max_steps=100"), ("stage1", "training.max_steps=10")))
    _train_arms(run, ["gap_gated_s0", "gap_gated_stage2_only_s0"])
    assert captured.setting("gap_gated_s0", "stage1", "training.max_steps")[-1] == "10"
    assert captured.setting("gap_gated_s0", "stage2", "training.max_steps")[-1] == "100"
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "training.max_steps")[-1] == "110"


def test_the_toy_budget_keeps_its_own_steps(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    _train_arms(_run(tmp_path, budget="toy"), ["gap_gated_s0", "gap_gated_stage2_only_s0"])
    assert captured.setting("gap_gated_s0", "stage2", "training.max_steps")[-1] == "2"
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "training.max_steps")[-1] == "4"


def test_without_ablation_the_recipes_steps_stay(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    run = pipeline.MiniRun(out=tmp_path / "run", data=tmp_path / "data", device="cpu")
    _train_arms(run, ["gap_gated_stage2_only_s0"])
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "training.max_steps") == []
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "cpu_bf16_autocast") == []


def test_each_arms_stage_keeps_its_run_state_in_its_own_folder(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    _train_arms(_run(tmp_path, run_state=Path("mini/ablation-run")), ["gap_gated_s0", "gap_gated_stage2_only_s0"])
    assert captured.setting("gap_gated_s0", "stage1", "run_state.directory") == ["mini/ablation-run/gap_gated_s0/stage1"]
    assert captured.setting("gap_gated_s0", "stage2", "run_state.directory") == ["mini/ablation-run/gap_gated_s0/stage2"]
    assert captured.setting("gap_gated_s0", "stage2", "run_state.moments_dtype") == ["bfloat16"]
    assert captured.setting("gap_gated_stage2_only_s0", "stage2", "run_state.directory") == [
        "mini/ablation-run/gap_gated_stage2_only_s0/stage2"]


def test_the_time_limit_gives_each_stage_what_is_left_and_starts_none_too_late(tmp_path, monkeypatch):
    captured = _Captured(monkeypatch)
    _train_arms(_run(tmp_path, deadline=time.monotonic() + 3000), ["gap_gated_s0"])
    limit = int(captured.setting("gap_gated_s0", "stage1", "time_limit_s")[-1])
    assert 2900 < limit <= 3000
    run = _run(tmp_path / "late", deadline=time.monotonic() + 10)
    with pytest.raises(RunStoppedEarly, match="--time-limit before mini_stage1.yaml") as stopped:
        _train_arms(run, ["no_geometry_s0"])
    assert stopped.value.status == RUN_STOPPED_STATUS
    assert ("no_geometry_s0", "stage1") not in captured.values


def test_a_done_stage_is_not_stopped_by_the_time_limit(tmp_path, monkeypatch):
    _Captured(monkeypatch)
    run = _run(tmp_path, deadline=time.monotonic() - 1)
    for stage in ("stage1", "stage2"):
        run.stage_dir("gap_gated_s0", stage).mkdir(parents=True)
        (run.stage_dir("gap_gated_s0", stage) / pipeline.DONE_MARKER).write_text(json.dumps({}))
    pipeline.run_arm(run, MAIN_ARM, run.stage_dir("stage0"))


def _parse(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def test_the_command_takes_the_run_state_and_time_limit():
    args = _parse("--ablation", "--run-state", "mini/ablation-run", "--time-limit", "5400")
    assert (args.ablation, args.run_state, args.time_limit) == (True, "mini/ablation-run", 5400)


@pytest.mark.parametrize("extra", [["--export", "x"], ["--release-reference", "x"], ["--stage1", "x"]])
def test_the_ablation_is_not_a_release(extra, tmp_path):
    with pytest.raises(ValueError, match="--ablation"):
        pipeline.main(_parse("--ablation", "--out", str(tmp_path), *extra))
    assert not (tmp_path / "data").exists()


def test_the_full_ablation_takes_the_sixth_releases_stage0_only(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"not the sixth")
    for stage0 in ([], ["--stage0", str(other)]):
        with pytest.raises(ValueError, match="sixth release"):
            pipeline.main(_parse("--ablation", "--out", str(tmp_path / "run"), *stage0))
    assert not (tmp_path / "run").exists()


def test_the_time_limit_outside_training_stops_with_the_runs_status():
    previous = signal.getsignal(signal.SIGTERM)
    try:
        timer = pipeline.stop_at_time_limit(0.05)
        with pytest.raises(RunStoppedEarly, match="outside a training step") as stopped:
            for _ in range(200):  # the feature cache, an evaluation: anything but a training loop
                time.sleep(0.01)
        assert stopped.value.status == RUN_STOPPED_STATUS
        timer.cancel()
    finally:
        signal.signal(signal.SIGTERM, previous)
