"""Checkpoints that are never half there: written under a temporary name, renamed when complete.

`GeometryAlignedTrainer._save_checkpoint` lets Trainer write everything (weights, optimizer, scheduler,
RNG states, `trainer_state.json`) into `<output_dir>/tmp-checkpoint-N/checkpoint-N`; only when every
process has finished is that folder renamed to `<output_dir>/checkpoint-N` (one `rename`, atomic on
one filesystem). A run killed while saving leaves a `tmp-checkpoint-N` folder, which no
`checkpoint-*` pattern (Trainer's rotation, `--resume auto`) matches; the next save of that step
removes it.

`find_resumable_checkpoint` (`--resume auto`) takes the newest `checkpoint-N` that is complete, and
skips, with a warning naming it, any that is not: folders written by older versions (or other tools)
that a kill left without `trainer_state.json` or without weights.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

STAGING_PREFIX = "tmp-"  # tmp-checkpoint-N: not matched by Trainer's "checkpoint-*" rotation glob
TRAINER_STATE_FILE = "trainer_state.json"
# Any one of these holds the model (full weights, sharded weights, a LoRA adapter, pickled weights).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def staging_root(run_dir, step: int) -> Path:
    """`<run_dir>/tmp-checkpoint-<step>`: Trainer writes the checkpoint inside it before the rename."""
    return Path(run_dir) / f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoint_problem(folder) -> str | None:
    """None when `folder` is a complete Trainer checkpoint, else why it is not (for messages)."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    state = folder / TRAINER_STATE_FILE
    if not state.is_file():
        return f"no {TRAINER_STATE_FILE} (the save did not finish)"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{TRAINER_STATE_FILE} is truncated or not JSON (the save did not finish)"
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        return f"no model weights ({', '.join(WEIGHT_FILES[:3])}, ...)"
    return None


def checkpoint_step(folder) -> int | None:
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    return int(match.group(1)) if match else None


def find_resumable_checkpoint(output_dir) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir` (None when there is none); incomplete ones
    and staging leftovers are skipped with a warning naming them."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    for leftover in sorted(output_dir.glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*")):
        logger.warning("ignoring %s: a checkpoint save that never finished (the run stopped while saving)", leftover)
    candidates = sorted((p for p in output_dir.iterdir() if checkpoint_step(p) is not None),
                        key=checkpoint_step, reverse=True)
    for folder in candidates:
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        logger.warning("skipping incomplete checkpoint %s: %s", folder, problem)
    return None


def check_resume_checkpoint(folder) -> str:
    """An explicit `--resume DIR`: the folder if complete, else a ValueError that says what is wrong."""
    problem = checkpoint_problem(folder)
    if problem is not None:
        raise ValueError(f"--resume {folder}: not a complete checkpoint ({problem}); "
                         "use --resume auto to take the newest complete one")
    return str(folder)
