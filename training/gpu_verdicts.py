"""Which kernel switch a CUDA run turns on by default: only those the latest GPU figures earned.

A default that never met a GPU corrupted runs (compiled layers + length buckets wrote NaN weights on an H100) and
another made steps slower (Liger). So a switch is on by default on CUDA only when the committed verdict file
(`training/configs/gpu_verdicts.json`, written by `bench/gpu_figures.py` from its training arms and copied here with
the figures it came from) says its arm earned it:

    finite       the arm trained every step (the package's divergence guard stopped none), over at least
                 `MIN_STEPS` steps with compile or buckets (every bucket crossed), `MIN_STEPS_PLAIN` without
    same curve   its losses stay within `LOSS_TOLERANCE` of its baseline arm's, step by step
    faster       its median step is at most `SPEED_MARGIN` × its baseline's

`SWITCH_ARMS` names each switch's arm and baseline; a `<switch>_checkpointed` entry is the same switch measured under
activation checkpointing, which a checkpointing run needs as well (`earned_switches(checkpointing=True)`: the recompute
runs the switch's kernels again). training/kernels.py `resolve_kernels` reads `earned_switches()`,
and no shipped recipe turns on a switch (or `data.packing`) the file did not earn (tests/test_gpu_verdicts.py checks
both).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VERDICT_FILE = Path(__file__).resolve().parent / "configs" / "gpu_verdicts.json"
MIN_STEPS = 30  # an arm that compiles or buckets: enough steps to cross every bucket and recompile
MIN_STEPS_PLAIN = 10  # an arm without either (nothing recompiles)
LOSS_TOLERANCE = 0.01  # packed rows moved the loss by 0.0026-0.0034 (bf16 rounding); the NaN-free default_packed by 0.054
SPEED_MARGIN = 0.97  # 3 % faster at least: step times of one arm vary by ~1-2 % between runs on one warm GPU


@dataclass(frozen=True)
class SwitchArm:
    """The training-arm (bench/bench_train_arms.py `ARMS`) that measures a switch, and the arm it must beat."""

    arm: str
    baseline: str = "sdpa"


SWITCH_ARMS = {
    "packing": SwitchArm("sdpa_packed"),
    "compile_layers": SwitchArm("sdpa_compile_bucketed"),
    "liger_fused_linear_cross_entropy": SwitchArm("sdpa_liger"),
    "liger_language_model": SwitchArm("default", baseline="sdpa_compile_bucketed"),
    "compile_towers": SwitchArm("sdpa_compile_towers_bucketed", baseline="sdpa_compile_bucketed"),
    "graph_geometry_encoder": SwitchArm("sdpa_graph_towers_bucketed", baseline="sdpa_compile_towers_bucketed"),
    # under activation checkpointing (the real-size recipes), measured as such a recipe runs on CUDA: towers compiled
    "compile_towers_checkpointed": SwitchArm("sdpa_compile_towers_checkpointed", baseline="sdpa_checkpointed"),
    "packing_checkpointed": SwitchArm("sdpa_packed_compile_towers_checkpointed",
                                      baseline="sdpa_compile_towers_checkpointed"),
    "compile_layers_checkpointed": SwitchArm("sdpa_compile_bucketed_checkpointed", baseline="sdpa_checkpointed"),
}
# a switch whose arm no GPU call has measured yet: its entry in the verdict file has no source and is not earned
NOT_MEASURED = "its arm has not been measured on a GPU yet"
CHECKPOINTED = "_checkpointed"  # the suffix of a switch's verdict under activation checkpointing
# Liger's fused cross-entropy is the LM head and the loss, outside every checkpointed layer: checkpointing changes
# nothing it computes, so its one verdict holds with or without. Every other switch works inside the checkpointed
# layers (the recompute runs its kernels again, packed rows recompute per sample): its verdict without checkpointing
# says nothing of a checkpointed run (the H200's packed rows: 0.67x plain without, 1.14x with towers compiled, with).
CHECKPOINT_NEUTRAL = frozenset({"liger_fused_linear_cross_entropy"})


def arm_verdict(arm: dict | None, baseline: dict | None) -> dict:
    """`{"earned": bool, "why": str}` for one arm's record of bench_train_arms.py (`arm_<name>`) against its
    baseline's record (module docstring)."""
    if not arm or "skipped" in arm:
        return {"earned": False, "why": f"not measured{': ' + arm['skipped'] if arm else ''}"}
    if "error" in arm:
        return {"earned": False, "why": f"failed: {arm['error'][:200]}"}
    if not baseline or "losses" not in baseline:
        return {"earned": False, "why": "its baseline arm was not measured"}
    losses = arm.get("losses", [])
    needed = MIN_STEPS if arm.get("compile") or arm.get("buckets") else MIN_STEPS_PLAIN
    if len(losses) < needed:
        return {"earned": False, "why": f"{len(losses)} steps measured, fewer than {needed}"}
    if arm.get("buckets") and arm.get("buckets_crossed") is False:
        return {"earned": False, "why": "not every length bucket was crossed"}
    gap = max(abs(a - b) for a, b in zip(losses, baseline["losses"]))
    if gap > LOSS_TOLERANCE:
        return {"earned": False, "why": f"losses {gap:.4f} away from {baseline['name']}'s (tolerance {LOSS_TOLERANCE})"}
    ratio = arm["median_step_s"] / baseline["median_step_s"]
    if ratio > SPEED_MARGIN:
        return {"earned": False, "why": f"median step {ratio:.2f}× {baseline['name']}'s (needs ≤ {SPEED_MARGIN})"}
    return {"earned": True, "why": f"finite over {len(losses)} steps, losses within {gap:.4f}, step {ratio:.2f}× "
                                   f"{baseline['name']}'s"}


def verdicts_from_arms(measurements: dict) -> dict:
    """Per switch: its arm's verdict, from bench_train_arms.py's `measurements` (`arm_<name>` records)."""
    return {switch: {"arm": pair.arm, "baseline": pair.baseline,
                     **arm_verdict(measurements.get(f"arm_{pair.arm}"), measurements.get(f"arm_{pair.baseline}"))}
            for switch, pair in SWITCH_ARMS.items()}


def load_verdicts(path: Path = VERDICT_FILE) -> dict:
    """The committed verdict file: `{"device", "date", "source", "switches": {switch: {"earned", "why", ...}}}`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def earned_switches(path: Path = VERDICT_FILE, checkpointing: bool = False) -> dict[str, bool]:
    """Switch name → whether the committed GPU figures earned it for a run that checkpoints activations or not
    (`checkpointing`): with it, a switch needs its `<switch>_checkpointed` verdict too (none: not earned), unless it is
    `CHECKPOINT_NEUTRAL`. A switch the file does not name is not earned. The names are the kernel and data switches
    (`packing`, `compile_layers`, ...), never the `_checkpointed` verdicts themselves."""
    switches = load_verdicts(path).get("switches", {})

    def earned(name: str) -> bool:
        return bool(switches.get(name, {}).get("earned"))

    return {name: earned(name) and (not checkpointing or name in CHECKPOINT_NEUTRAL or earned(name + CHECKPOINTED))
            for name in SWITCH_ARMS if not name.endswith(CHECKPOINTED)}
