"""Where each arm of the ablation was trained (lab/mini/arm_provenance.py) and its table under the claims
(lab/mini/claims_table.py `provenance_lines`): read from the stage folders the run left, and the stages' data compared
by the rule a resumed run is held to, so that "every arm trained on the same data" is checked, not assumed."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from gap_mllm.training.data_sketch import sketch_data_root
from gap_mllm.training.run_state import UNSET, record_run_settings

from lab.mini import arm_provenance
from lab.mini.arm_provenance import arms_provenance, number_the_data
from lab.mini.claims_table import provenance_lines
from lab.mini.provenance import DONE_MARKER, stage_device


def _stage(out: Path, arm: str, stage: str, steps: int, seed: int, best_step: int | None = None, first: bool = False,
           geometry: bool = True, settings: tuple[str, ...] = ()) -> None:
    """A stage folder as lab/mini/pipeline.py leaves it: its `stage_done.json` (a first stage with the settings that
    built the model) and, with `best_step`, the best validation model's `best.json`."""
    folder = out / "stages" / arm / stage
    folder.mkdir(parents=True)
    built = [f"model.use_geometry={str(geometry).lower()}", "model.fusion_method=gated", f"model.seed={seed}"]
    (folder / DONE_MARKER).write_text(json.dumps({
        "recipe": f"mini_{stage}.yaml",
        "overrides": [*(built if first else []), "training.seed=0", f"training.seed={seed}", *settings, "device=cpu"],
        "global_step": steps, "training_loss": 0.5, "device": "cpu"}))
    if best_step is not None:
        (folder / "best").mkdir()
        (folder / "best" / "best.json").write_text(json.dumps({"step": best_step, "metric": "gen_grounding_acc@0.25",
                                                               "value": 0.09375, "figures": {}}))


def test_each_arm_says_what_trained_it_from_its_stage_folders(tmp_path):
    """Recipe, steps, the last training seed of the overrides and device of each stage; the final model is the step
    stage 2 kept; an arm without stage 1 has none; an arm whose stage 2 is not done has no final model yet; without
    --run-state no data is recorded, and the sentence under the table says the stages are not shown on one data."""
    _stage(tmp_path, "gap_gated_s1", "stage1", 1000, 1, first=True)
    _stage(tmp_path, "gap_gated_s1", "stage2", 7200, 1, best_step=6000)
    _stage(tmp_path, "gap_gated_stage2_only_s0", "stage2", 8200, 0, first=True)
    _stage(tmp_path, "no_geometry_s1", "stage1", 1000, 1, first=True, geometry=False)
    _stage(tmp_path, "given_s0", "stage2", 10, 0)  # continued a model it was given: how it was built is not known
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None),
                            ["gap_gated_s1", "gap_gated_stage2_only_s0", "no_geometry_s1", "given_s0"])
    assert found["gap_gated_s1"] == {
        "model": {"use_geometry": True, "fusion_method": "gated", "seed": 1},
        "stages": {stage: {"recipe": f"mini_{stage}.yaml", "steps": steps, "device": "cpu", "seed": 1,
                           "marker_task": None, "precision": None, "data_sketch": None}
                   for stage, steps in (("stage1", 1000), ("stage2", 7200))},
        "final": {"step": 6000, "metric": "gen_grounding_acc@0.25", "value": 0.09375}, "run_state": None}
    assert list(found["gap_gated_stage2_only_s0"]["stages"]) == ["stage2"]
    assert found["gap_gated_stage2_only_s0"]["final"] is None and found["no_geometry_s1"]["final"] is None
    assert found["no_geometry_s1"]["model"]["use_geometry"] is False and found["given_s0"]["model"] is None

    lines = provenance_lines(found)
    assert ("| gap_gated_s1 | VGGT, gated fusion | mini_stage1.yaml, 1000 steps, seed 1, cpu | mini_stage2.yaml, "
            "7200 steps, seed 1, cpu | validation step 6000 (the best grounding_acc@0.25: 0.094) | no run state | — |"
            ) in lines
    assert ("| gap_gated_stage2_only_s0 | VGGT, gated fusion | — | mini_stage2.yaml, 8200 steps, seed 0, cpu | its "
            "last step (no validation kept) | no run state | — |") in lines
    assert "| no_geometry_s1 | none | mini_stage1.yaml, 1000 steps, seed 1, cpu | — | — | no run state | — |" in lines
    assert ("| given_s0 | — | — | mini_stage2.yaml, 10 steps, seed 0, cpu | its last step (no validation kept) | "
            "no run state | — |") in lines
    assert lines[-1].startswith("The stages did not all train on one data")


def test_a_stage_without_the_marker_task_and_its_precision_are_named_in_its_cell(tmp_path):
    """The stage-2 cell says what the stage's settings changed of the recipe's run: a mix without marker samples
    (lab/mini/arms.py `MARKER_FREE_STAGE2`) and bf16 autocast or float32 (the last `cpu_bf16_autocast` setting)."""
    from lab.mini.arms import MARKER_FREE_STAGE2

    _stage(tmp_path, "gap_gated_stage2_only_s0", "stage2", 8200, 0, first=True, settings=("cpu_bf16_autocast=true",))
    _stage(tmp_path, "gap_gated_no_gap_s0", "stage2", 8200, 0, first=True,
           settings=(*MARKER_FREE_STAGE2, "cpu_bf16_autocast=true", "cpu_bf16_autocast=false"))
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None),
                            ["gap_gated_stage2_only_s0", "gap_gated_no_gap_s0"])
    assert found["gap_gated_stage2_only_s0"]["stages"]["stage2"]["marker_task"] is None
    assert found["gap_gated_no_gap_s0"]["stages"]["stage2"]["marker_task"] is False
    lines = provenance_lines(found)
    assert ("| gap_gated_stage2_only_s0 | VGGT, gated fusion | — | mini_stage2.yaml, 8200 steps, seed 0, cpu, bf16 "
            "autocast | its last step (no validation kept) | no run state | — |") in lines
    assert ("| gap_gated_no_gap_s0 | VGGT, gated fusion | — | mini_stage2.yaml, no marker samples, 8200 steps, seed 0, "
            "cpu, float32 | its last step (no validation kept) | no run state | — |") in lines


def test_a_stage_resumed_in_the_other_precision_says_both_and_where(tmp_path):
    """A stage whose run changed `cpu_bf16_autocast` on a resume (`run_state.accept_other_settings`: a machine without
    native bfloat16 continues a bf16-autocast run in float32) says each precision and the step of the change, read
    from the stage folder's run record; the last setting alone would call the whole stage float32."""
    from lab.mini.arms import MARKER_FREE_STAGE2

    _stage(tmp_path, "gap_gated_no_gap_s0", "stage2", 8200, 0, first=True,
           settings=(*MARKER_FREE_STAGE2, "cpu_bf16_autocast=true", "cpu_bf16_autocast=false"))
    folder = tmp_path / "stages" / "gap_gated_no_gap_s0" / "stage2"
    switch = {"at_step": 3009, "from": "checkpoint-3009",
              "settings": {"cpu_bf16_autocast": {"then": True, "now": UNSET}}}  # float32 is the setting's default
    record_run_settings(folder, {"cpu_bf16_autocast": False}, [switch])
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None), ["gap_gated_no_gap_s0"])
    assert found["gap_gated_no_gap_s0"]["stages"]["stage2"]["precision"] == "bf16 autocast to step 3009, float32 after"
    back = {"at_step": 5000, "from": "checkpoint-5000", "settings": {"cpu_bf16_autocast": {"then": False, "now": True},
                                                                     "data.tasks": {"then": ["a"], "now": ["b"]}}}
    other = {"at_step": 4000, "from": "checkpoint-4000", "settings": {"data.tasks": {"then": ["a"], "now": ["b"]}}}
    record_run_settings(folder, {"cpu_bf16_autocast": True}, [switch, other, back])
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None), ["gap_gated_no_gap_s0"])
    assert found["gap_gated_no_gap_s0"]["stages"]["stage2"]["precision"] == (
        "bf16 autocast to step 3009, float32 to step 5000, bf16 autocast after")


def test_a_precision_change_says_the_loss_either_side_and_a_finished_runs_rebuild_is_no_change(tmp_path):
    """The cell of a stage resumed in the other precision carries the mean training loss logged in the 200 steps
    either side of the change, read from the stage's newest checkpoint's trainer state (the older checkpoint's log is
    not read); a change recorded at the stage's last step (a finished run rebuilt under another setting: no step
    trained after it) is not a precision the stage trained in."""
    from lab.mini.arms import MARKER_FREE_STAGE2

    _stage(tmp_path, "gap_gated_no_gap_s0", "stage2", 8200, 0, first=True,
           settings=(*MARKER_FREE_STAGE2, "cpu_bf16_autocast=true", "cpu_bf16_autocast=false"))
    folder = tmp_path / "stages" / "gap_gated_no_gap_s0" / "stage2"
    switch = {"at_step": 3009, "from": "checkpoint-3009", "settings": {"cpu_bf16_autocast": {"then": True, "now": UNSET}}}
    rebuilt = {"at_step": 8200, "from": "checkpoint-8200", "settings": {"cpu_bf16_autocast": {"then": False, "now": True}}}
    record_run_settings(folder, {"cpu_bf16_autocast": True}, [switch, rebuilt])
    # logged every 50 steps: (2809, 3009] holds 2850..3000, (3009, 3209] holds 3050..3200; 2800 and 3250 are outside
    losses = {2800: 9.0, 2850: 0.6, 2900: 0.7, 2950: 0.6, 3000: 0.5, 3050: 0.7, 3100: 0.8, 3150: 0.6, 3200: 0.7, 3250: 9.0}
    for step, history in ((8200, [{"loss": loss, "step": step} for step, loss in losses.items()]),
                          (6000, [{"loss": 5.0, "step": 3000}, {"loss": 5.0, "step": 3050}])):
        (folder / f"checkpoint-{step}").mkdir()
        (folder / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None), ["gap_gated_no_gap_s0"])
    assert found["gap_gated_no_gap_s0"]["stages"]["stage2"]["precision"] == (
        "bf16 autocast to step 3009, float32 after; training loss 0.600 in the 200 steps before step 3009, 0.700 in "
        "the 200 after")
    # without the rebuilt change's rule the cell would end "float32 to step 8200, bf16 autocast after"
    record_run_settings(folder, {"cpu_bf16_autocast": True}, [rebuilt])
    found = arms_provenance(SimpleNamespace(out=tmp_path, run_state=None), ["gap_gated_no_gap_s0"])
    assert found["gap_gated_no_gap_s0"]["stages"]["stage2"]["precision"] == "float32"


def _nudged(source: Path, target: Path, factor: float) -> Path:
    """A copy of the data folder `source` with every decimal number written at full precision times `factor` (a
    short one, 1.5, keeps its form: another CPU's float maths moves only the last digits of a full repr)."""
    shutil.copytree(source, target)
    number = re.compile(r"(?<![\w.])-?\d+\.\d{12,}(?:[eE][-+]?\d+)?(?![\w.])")
    for path in sorted(target.rglob("*.txt")):
        path.write_text(number.sub(lambda m: repr(float(m.group()) * factor), path.read_text()))
    return target


@pytest.fixture()
def three_data(tmp_path):
    """Sketches of one data folder, of it written again with other last digits (1 + 1e-15) and of other numbers
    (1 + 1e-6)."""
    data = tmp_path / "data"
    (data / "poses").mkdir(parents=True)
    for index in range(3):
        (data / "poses" / f"{index:05d}.txt").write_text(f"0.{index}123456789012345 1.5 -2.25\n3.0 {index}.75 0.1\n")
    return {"first": sketch_data_root(data),
            "last_digits": sketch_data_root(_nudged(data, tmp_path / "again", 1 + 1e-15)),
            "other": sketch_data_root(_nudged(data, tmp_path / "other", 1 + 1e-6))}


def test_the_stages_are_numbered_by_their_data_under_the_resume_rule(three_data, monkeypatch):
    """Data written again on another CPU (other sketch digest, numbers within the last digits) are the first data,
    with the files that differ so counted; other numbers are data 2; a digest seen before is not compared again."""
    by_state = {"a/stage1": "first", "a/stage2": "first", "b/stage1": "last_digits", "b/stage2": "other"}
    digest = {"first": "d1", "last_digits": "d2", "other": "d3"}
    monkeypatch.setattr(arm_provenance, "read_run_state", lambda state_dir: {"state": state_dir})
    monkeypatch.setattr(arm_provenance, "check_state_files", lambda record, state_dir: None)
    monkeypatch.setattr(arm_provenance, "state_sketch",
                        lambda record, state_dir: three_data[by_state[f"{state_dir.parent.name}/{state_dir.name}"]])
    compared = []
    real_compare = arm_provenance.compare_data
    monkeypatch.setattr(arm_provenance, "compare_data", lambda a, b: compared.append(1) or real_compare(a, b))

    def arm(*names):
        return {"stages": {stage: {"data_sketch": digest[name]} for stage, name in zip(("stage1", "stage2"), names)}}

    arms = {"a": arm("first", "first"), "b": arm("last_digits", "other")}
    number_the_data(SimpleNamespace(out=Path("unused"), run_state=Path("state")), arms)
    assert [(stage["data"], stage["last_digit_files"]) for found in arms.values() for stage in found["stages"].values()
            ] == [(1, 0), (1, 0), (1, 3), (2, 0)]
    assert len(compared) == 2  # d1 is the first data, then known by its digest; d2 and d3 each against data 1


def test_the_sentence_under_the_table_says_one_data_and_which_arms_differ_in_last_digits():
    def arm(*numbers):
        return {"model": None, "final": None, "run_state": None,
                "stages": {f"stage{i + 1}": {"recipe": "r", "steps": 1, "seed": 0, "device": "cpu", "data": number,
                                             "last_digit_files": files} for i, (number, files) in enumerate(numbers)}}

    one = provenance_lines({"x_s0": arm((1, 0), (1, 0)), "y_s0": arm((1, 3464), (1, 3464))})
    assert one[-1] == ("Every stage of every arm trained on the same data (1): the same files, image pixels and "
                       "numbers, by the rule a resumed run is held to (training/data_sketch.py). The sketches of y_s0 "
                       "differ from the first's only in the last digits of the numbers of up to 3,464 text files, as "
                       "data written again on another CPU do.")
    assert ("| x_s0 | — | r, 1 steps, seed 0, cpu | r, 1 steps, seed 0, cpu | its last step (no validation kept) | 1 "
            "| — |") in one
    two = provenance_lines({"x_s0": arm((1, 0), (1, 0)), "y_s0": arm((1, 0), (2, 0))})
    assert "| 1 / 2 |" in two[-3] and two[-1].startswith("The stages did not all train on one data")


def test_a_stages_device_is_its_markers_else_the_last_device_override():
    """One reader of a stage's device for the arms' table and the results' stages (lab/mini/report.py): a marker written
    before it recorded the device names it by its overrides, the last one as the recipe applies them."""
    assert stage_device({"device": "cuda", "overrides": ["device=cpu"]}) == "cuda"
    assert stage_device({"overrides": ["device=cuda", "training.seed=0", "device=cpu"]}) == "cpu"
    assert stage_device({"overrides": ["training.seed=0"]}) is None and stage_device({}) is None
