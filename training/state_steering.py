"""What a run state may not decide: every value of it that steers training, checked before a restore writes anything.

A run state is untrusted input (it may come from a shared repository, and its record's digest is one anyone
recomputes). A restore therefore checks each value that steers the resumed steps against the two things that define
them, and refuses the state in one line naming the field when one differs:

    the step            within [1, max_steps] (the recorded max_steps and the recipe's), and equal to the step of the
                        checkpoint it comes with (checkpoint/trainer_state.json `global_step`): no `checkpoint--5`, no
                        `checkpoint-10**30` that every later resume would pick
    each optimizer group  initial_lr the recipe's rate for that group (training/param_groups.py: `merger` ->
                        `learning_rates.merger_lr`, else `training.learning_rate`), lr that rate times the recipe's
                        schedule at the step (float tolerance), weight_decay the recipe's (0 for a `_no_decay` group),
                        betas and eps the recipe's (`adam_beta1`, `adam_beta2`, `adam_epsilon`) where the optimizer has
                        them
    the scheduler       checkpoint/scheduler.pt: its step (`last_epoch`), base_lrs and last lrs as the recipe's schedule
                        gives them

The schedule is the one Trainer builds (`get_scheduler` with the recipe's type, warmup and kwargs over max_steps),
stepped on a one-parameter optimizer to the state's step: the same code, so the same floats up to the tolerance.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

REL_TOLERANCE = 1e-9  # of a learning rate (the schedule's floats, computed the same way, agree to the last bits)
NO_DECAY = "_no_decay"  # the suffix of a named group without weight decay (training/param_groups.py)
SCHEDULER_FILE = "scheduler.pt"


class SteeringRefused(ValueError):
    """A run state whose steering values are not the recipe's or its checkpoint's; the message names the field."""


@dataclass(frozen=True)
class Steering:
    """The recipe's values that steer a run's steps (`steering_of`)."""

    max_steps: int
    learning_rate: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float
    adam: bool  # the optimizer is an Adam (its groups carry betas and eps)
    scheduler: str
    warmup: float  # TrainingArguments.warmup_steps: steps, or a fraction of the run's steps below 1
    scheduler_kwargs: dict = field(default_factory=dict)
    group_rates: dict = field(default_factory=dict)  # named group -> its rate (None: learning_rate)


def steering_of(args, learning_rates=None) -> Steering:
    """The `Steering` of a run of TrainingArguments `args` (and the recipe's per-group `learning_rates`)."""
    rates = {} if learning_rates is None else {
        "merger": learning_rates.merger_lr, "vision_tower": learning_rates.vision_tower_lr,
        "geometry_encoder": learning_rates.geometry_encoder_lr, "aux_heads": learning_rates.aux_heads_lr}
    max_steps = int(args.max_steps)
    return Steering(max_steps=max_steps, learning_rate=float(args.learning_rate), weight_decay=float(args.weight_decay),
                    betas=(float(args.adam_beta1), float(args.adam_beta2)), eps=float(args.adam_epsilon),
                    adam="adam" in str(getattr(args.optim, "value", args.optim)).lower(),
                    scheduler=str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
                    warmup=float(args.warmup_steps),
                    scheduler_kwargs=dict(args.lr_scheduler_kwargs or {}), group_rates=rates)


def schedule_factor(steering: Steering, step: int, total: int) -> float:
    """The factor the recipe's schedule gives the learning rate after `step` of `total` steps (Trainer's scheduler,
    stepped; `total`: max_steps, or for a recipe counted in epochs the recorded max_steps, as Trainer computed it)."""
    from transformers import get_scheduler  # here: a restore without a recipe never needs it

    warmup = int(steering.warmup) if steering.warmup >= 1 else math.ceil(total * steering.warmup)  # Trainer's rule
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = get_scheduler(steering.scheduler, optimizer, num_warmup_steps=warmup, num_training_steps=total,
                              scheduler_specific_kwargs=steering.scheduler_kwargs)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    return float(optimizer.param_groups[0]["lr"])


def _close(value, expected: float) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isclose(float(value), expected, rel_tol=REL_TOLERANCE, abs_tol=1e-300))


def check_step(record: dict, checkpoint_files: Path, steering: Steering | None) -> None:
    """SteeringRefused unless the record's step lies in [1, max_steps] (the record's, and the recipe's when given)
    and is the step of checkpoint/trainer_state.json (`checkpoint_files`: the state's `checkpoint/` folder)."""
    step, max_steps = record["global_step"], record["max_steps"]
    if steering is not None and steering.max_steps > 0 and max_steps != steering.max_steps:
        raise SteeringRefused(f"max_steps is {max_steps}, and the recipe's training.max_steps is {steering.max_steps}")
    if not 1 <= step <= max_steps:
        raise SteeringRefused(f"global_step is {step}, not a step of the run (1 to its max_steps {max_steps})")
    path = checkpoint_files / "trainer_state.json"
    try:
        trainer_state = json.loads(path.read_text(encoding="utf-8"))
        checkpoint_step = trainer_state["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SteeringRefused(f"its checkpoint's trainer_state.json cannot be read ({type(error).__name__}: {error}), so "
                              f"global_step {step} cannot be checked") from error
    if checkpoint_step != step:
        raise SteeringRefused(f"global_step is {step}, and its checkpoint's trainer_state.json says {checkpoint_step!r}")


def _expected_group(steering: Steering, group: dict) -> tuple[float, set]:
    """(initial lr, accepted weight decays) of an optimizer group: a named group of training/param_groups.py by its
    name; Trainer's own groups (unnamed: decay and no decay) at the base rate."""
    name = group.get("name")
    if not isinstance(name, str):
        return steering.learning_rate, {steering.weight_decay, 0.0}
    base, decay = (name[:-len(NO_DECAY)], False) if name.endswith(NO_DECAY) else (name, True)
    rate = steering.group_rates.get(base)
    return (steering.learning_rate if rate is None else float(rate)), {steering.weight_decay if decay else 0.0}


def check_optimizer(record: dict, steering: Steering, factor: float) -> list[float]:
    """SteeringRefused naming the first optimizer group field (`optimizer.param_groups[i].lr`, betas, eps,
    weight_decay, initial_lr) other than the recipe's at the record's step (`factor`: its schedule's there); returns
    the groups' initial rates."""
    initial_rates = []
    for index, group in enumerate(record["optimizer"]["param_groups"]):
        where = f"optimizer.param_groups[{index}]"
        if not isinstance(group, dict):
            raise SteeringRefused(f"{where} is not a parameter group")
        initial, decays = _expected_group(steering, group)
        expected = {"initial_lr": initial, "lr": initial * factor}
        for key, value in expected.items():
            if not _close(group.get(key), value):
                raise SteeringRefused(f"{where}.{key} is {group.get(key)!r}, and the recipe's schedule gives {value:.6g} "
                                      f"at step {record['global_step']}")
        if group.get("weight_decay") not in decays:
            raise SteeringRefused(f"{where}.weight_decay is {group.get('weight_decay')!r}, and the recipe's is "
                                  f"{' or '.join(map(str, sorted(decays)))}")
        if steering.adam:
            betas = group.get("betas")
            betas = betas.get("tuple") if isinstance(betas, dict) else betas
            if not (isinstance(betas, (list, tuple)) and len(betas) == 2
                    and all(_close(b, e) for b, e in zip(betas, steering.betas))):
                raise SteeringRefused(f"{where}.betas is {betas!r}, and the recipe's is {list(steering.betas)}")
            if not _close(group.get("eps"), steering.eps):
                raise SteeringRefused(f"{where}.eps is {group.get('eps')!r}, and the recipe's is {steering.eps:g}")
        initial_rates.append(initial)
    return initial_rates


def check_scheduler(record: dict, checkpoint_files: Path, factor: float, initial_rates: list[float]) -> None:
    """SteeringRefused when checkpoint/scheduler.pt is not the recipe's schedule at the record's step (its step,
    base_lrs, last lrs); nothing to check without the file."""
    path = checkpoint_files / SCHEDULER_FILE
    if not path.is_file():
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 (an unpickler's errors have no common class): named, not raised raw
        raise SteeringRefused(f"its checkpoint's {SCHEDULER_FILE} cannot be read ({type(error).__name__})") from error
    step = record["global_step"]
    if not isinstance(state, dict) or state.get("last_epoch") != step:
        found = state.get("last_epoch") if isinstance(state, dict) else type(state).__name__
        raise SteeringRefused(f"its checkpoint's {SCHEDULER_FILE} is at step {found!r}, not {step}")
    for key, expected in (("base_lrs", initial_rates), ("_last_lr", [rate * factor for rate in initial_rates])):
        values = state.get(key)
        if not initial_rates:
            break
        if not (isinstance(values, list) and len(values) == len(expected)
                and all(_close(v, e) for v, e in zip(values, expected))):
            raise SteeringRefused(f"its checkpoint's {SCHEDULER_FILE} holds {key} {values!r}, and the recipe's "
                                  f"schedule gives {[float(f'{e:.6g}') for e in expected]} at step {step}")


def check_steering(record: dict, state_dir: Path, steering: Steering | None) -> None:
    """Every check of the module docstring (those against the recipe when `steering` is given).

    Raises:
        SteeringRefused: the first value that differs, named."""
    checkpoint_files = Path(state_dir) / "checkpoint"
    check_step(record, checkpoint_files, steering)
    if steering is None:
        return
    total = steering.max_steps if steering.max_steps > 0 else record["max_steps"]
    factor = schedule_factor(steering, record["global_step"], total)
    initial_rates = check_optimizer(record, steering, factor) if record.get("optimizer") is not None else []
    check_scheduler(record, checkpoint_files, factor, initial_rates)
