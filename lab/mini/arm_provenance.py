"""Where each arm of the ablation was trained (the claims table carries each arm's provenance), read from
what its run left, not from what the design says it should be:

    model         geometry on or off, the fusion and the model seed its first stage was built with (that stage's
                  `model.*` settings: a later stage continues the model it is given)
    each stage    the recipe, steps, training seed, device, precision (bf16 autocast or float32 on the CPU: a CPU
                  without native bfloat16 trains in float32; a run resumed in the other precision, a deliberate
                  change its run record keeps, says both, the step of the change and the training loss logged
                  either side of it) and whether its mix held the marker task (a `data.tasks` setting without it:
                  lab/mini/arms.py `MARKER_FREE_STAGE2`) its `stage_done.json` records (lab/mini/pipeline.py writes
                  it when the stage's training returns, on a fresh machine too, where the stage is rebuilt from its
                  run state)
    final model   the validation step its stage 2 kept (`best.json`: the best by validation grounding, the final
                  model of every arm, training/generation_eval.py)
    data          which data each stage trained on, from its run state's data sketch (training/run_state.py),
                  compared across all stages by the rule a resumed run is held to (training/data_sketch.py: the same
                  files, the same image pixels, every number within another CPU's float rounding): stages numbered
                  1 trained on the first stage's data, 2 on other data, and so on, so that "every arm trained on the
                  same data" is checked rather than taken on trust. Data written again on another machine differ in
                  the last digits of some numbers: the same data, with another sketch digest, counted by name. A
                  stage without a run state (no `--run-state`) has no data number

An arm whose stage folder is missing (not trained yet, or a run without it) has no entry for that stage."""

from __future__ import annotations

import json
from pathlib import Path

from transformers.trainer import TRAINER_STATE_NAME

from gap_mllm.training.checkpoints import checkpoint_step
from gap_mllm.training.data_sketch import compare_data
from gap_mllm.training.generation_eval import read_best
from gap_mllm.training.run_state import UNSET, check_state_files, read_run_record, read_run_state, state_sketch

from .ablation import ARM_STAGES, arm_state_dir, override_value
from .arms import MARKER_TASK
from .provenance import DONE_MARKER, stage_device


def _stage_done(folder: Path) -> dict | None:
    """The `stage_done.json` of a stage folder, None when the stage is not done."""
    marker = Path(folder) / DONE_MARKER
    return json.loads(marker.read_text(encoding="utf-8")) if marker.is_file() else None


AUTOCAST = "cpu_bf16_autocast"


def _precision_name(value) -> str | None:
    """"bf16 autocast" or "float32" for a `cpu_bf16_autocast` value (a setting's text, a recorded value, or `UNSET`:
    left at its default, float32); None for no value."""
    if value is None:
        return None
    return "float32" if value == UNSET else {"true": "bf16 autocast", "false": "float32"}.get(str(value).strip().lower())


LOSS_WINDOW_STEPS = 200  # the logged training loss either side of a precision change: the span bench/README.md compares


def _mean_loss(log_history: list[dict], after: int, to: int) -> float | None:
    """The mean of the training losses logged at steps in (`after`, `to`] (each the mean over its logging interval),
    None when none was logged there."""
    losses = [entry["loss"] for entry in log_history if "loss" in entry and after < entry.get("step", -1) <= to]
    return sum(losses) / len(losses) if losses else None


def stage_precision(autocast, changes: list[dict], last_step: int | None = None, log_history=()) -> str | None:
    """The precision a stage trained in: `autocast` (its last `cpu_bf16_autocast` setting, None without one) and,
    where a resume changed it (`changes`: the stage's run record, training/run_state.py `resumed_settings`), each
    precision with the step it ran to and, from the run's `log_history` (its last checkpoint's trainer state), the
    mean training loss logged over the `LOSS_WINDOW_STEPS` either side of each change ("bf16 autocast to step 3009,
    float32 after; training loss 0.621 in the 200 steps before step 3009, 0.627 in the 200 after"). A change at
    the stage's `last_step` or later trained no step (a finished run rebuilt under another setting): not a precision
    the stage trained in."""
    switches = [(change["at_step"], change["settings"][AUTOCAST]) for change in changes if AUTOCAST in change["settings"]]
    if last_step is not None and any(step >= last_step for step, _ in switches):
        autocast = next(switch["then"] for step, switch in switches if step >= last_step)
        switches = [(step, switch) for step, switch in switches if step < last_step]
    if not switches:
        return _precision_name(autocast)
    parts = [f"{_precision_name(switch['then'])} to step {step}" for step, switch in switches]
    text = ", ".join([*parts, f"{_precision_name(switches[-1][1]['now'])} after"])
    losses = []
    for step, _ in switches:
        before = _mean_loss(log_history, step - LOSS_WINDOW_STEPS, step)
        after = _mean_loss(log_history, step, step + LOSS_WINDOW_STEPS)
        if before is not None and after is not None:
            losses.append(f"{before:.3f} in the {LOSS_WINDOW_STEPS} steps before step {step}, {after:.3f} in the "
                          f"{LOSS_WINDOW_STEPS} after")
    return f"{text}; training loss {'; '.join(losses)}" if losses else text


def last_log_history(folder: Path) -> list[dict]:
    """The `log_history` of the newest `checkpoint-N` of the stage output folder `folder` (its trainer state: the
    whole run's logged losses, a run rebuilt from its run state included); empty without one."""
    states = [path / TRAINER_STATE_NAME for path in Path(folder).glob("checkpoint-*") if checkpoint_step(path) is not None]
    states = [path for path in states if path.is_file()]
    if not states:
        return []
    newest = max(states, key=lambda path: checkpoint_step(path.parent))
    return json.loads(newest.read_text(encoding="utf-8")).get("log_history", [])


def trained_stage(done: dict, state_dir: Path | None, folder: Path | None = None) -> dict:
    """One training stage of an arm: recipe, steps, training seed, device, "marker_task" (False where a `data.tasks`
    setting left the marker task out, else None: the recipe's mix) and "precision" (`stage_precision`: what the last
    `cpu_bf16_autocast` setting chose, and the changes of it the stage folder's run record holds; None without
    either) from its `stage_done.json` (`done`) and its `folder`, and the digest of the data sketch of its run state
    in `state_dir` (None without one)."""
    seed = override_value(done.get("overrides"), "training.seed")
    tasks = override_value(done.get("overrides"), "data.tasks")
    autocast = override_value(done.get("overrides"), AUTOCAST)
    record = read_run_state(state_dir) if state_dir is not None else None
    run_record = read_run_record(folder) if folder is not None else None
    return {"recipe": done.get("recipe"), "steps": done.get("global_step"), "device": stage_device(done),
            "seed": int(seed) if seed is not None else None,
            "marker_task": False if tasks is not None and MARKER_TASK not in tasks else None,
            "precision": stage_precision(autocast, run_record["changes"] if run_record is not None else [],
                                         done.get("global_step"), last_log_history(folder) if folder is not None else ()),
            "data_sketch": record["data"]["sketch"] if record is not None and record.get("data") else None}


def model_built(done: dict) -> dict | None:
    """{"use_geometry", "fusion_method", "seed"} of the model a stage built (its `model.*` settings,
    lab/mini/arms.py `fresh_model_settings`); None for a stage that continued a model it was given."""
    overrides = done.get("overrides")
    found = {key: override_value(overrides, f"model.{key}") for key in ("use_geometry", "fusion_method", "seed")}
    if None in found.values():
        return None
    return {"use_geometry": found["use_geometry"] == "true", "fusion_method": found["fusion_method"],
            "seed": int(found["seed"])}


def _state_dir(run, name: str, stage: str) -> Path | None:
    state_root = getattr(run, "run_state", None)
    return arm_state_dir(state_root, name, stage) if state_root is not None else None


def arm_provenance(run, name: str) -> dict:
    """{"model": `model_built` of its first stage, "stages": {stage: `trained_stage`}, "final": the validation step
    its stage 2 kept ({"step", "metric", "value"}; None while stage 2 is not done, or kept none), "run_state": its
    folder or None} for the arm `name` of `run` (lab/mini/pipeline.py's MiniRun: its `out` and `run_state`)."""
    root = Path(run.out) / "stages" / name
    done = {stage: found for stage in ARM_STAGES if (found := _stage_done(root / stage)) is not None}
    best = read_best(root / ARM_STAGES[-1]) if ARM_STAGES[-1] in done else None  # the final model is stage 2's
    state_root = getattr(run, "run_state", None)
    return {"model": model_built(next(iter(done.values()))) if done else None,
            "stages": {stage: trained_stage(found, _state_dir(run, name, stage), root / stage)
                       for stage, found in done.items()},
            "final": {key: best[key] for key in ("step", "metric", "value")} if best is not None else None,
            "run_state": str(Path(state_root) / name) if state_root is not None else None}


def _data_number(sketch, firsts: list) -> tuple[int, int]:
    """(number, last-digit files) of `sketch` among the data seen so far (`firsts`: the first sketch of each number,
    appended to when `sketch` is other data than all of them)."""
    for number, first in enumerate(firsts, start=1):
        comparison = compare_data(first, sketch)
        if comparison.same():
            return number, len(comparison.last_digits)
    firsts.append(sketch)
    return len(firsts), 0


def number_the_data(run, arms: dict[str, dict]) -> None:
    """Give every stage of `arms` (name -> `arm_provenance`) with a run state its "data" number (1 for the data of
    the first such stage, 2 for the first other data, ...) and "last_digit_files": how many text files differ from
    that number's first stage only in the last digits of their numbers (data written again on another machine).
    Stages with the same sketch digest are the same data without comparing (one comparison per distinct digest)."""
    firsts: list = []
    by_digest: dict[str, tuple[int, int]] = {}
    for name, found in arms.items():
        for stage, entry in found["stages"].items():
            digest = entry["data_sketch"]
            if digest is None:
                continue
            if digest not in by_digest:
                state_dir = _state_dir(run, name, stage)
                record = read_run_state(state_dir)
                check_state_files(record, state_dir)  # the sketch file is the one the record's digest names
                by_digest[digest] = _data_number(state_sketch(record, state_dir), firsts)
            entry["data"], entry["last_digit_files"] = by_digest[digest]


def arms_provenance(run, names) -> dict[str, dict]:
    """`arm_provenance` of each arm of `names`, in their order, their stages' data numbered (`number_the_data`)."""
    arms = {name: arm_provenance(run, name) for name in names}
    number_the_data(run, arms)
    return arms
