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

A full disk during a save (`is_disk_full`: ENOSPC / EDQUOT anywhere in the error's chain, the texts
safetensors and the OS use for them, or any error of a writer while the device has less room than the
checkpoint takes: torch.save's zip writer loses the errno and says "file write failed" or "unexpected
pos 1529920 vs 1529812" depending on where the write stopped) becomes `CheckpointDiskFull`, an OSError
whose message says which device and folder are full, how much to free, and that `--resume auto`
continues from the last complete checkpoint. The half-written staging folder is removed (it is useless,
and it holds space); the complete checkpoints are untouched, since the older one is rotated away only
after the new one is complete. (Checked on a 9 MB and an 11 MB tmpfs with the tiny model, whose
checkpoint takes 6.4 MB: safetensors fails with errno 28 in the first, torch.save with "unexpected pos"
in the second; both give this error, and the run resumes from checkpoint-2.)
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

# the full-disk rule and the device's name are defined once, in processing/errors.py (the CLI uses them too)
from gap_mllm.processing.errors import DiskFullError, device_of, exception_chain, names_full_disk
from gap_mllm.processing.errors import existing_parent as _existing_parent

logger = logging.getLogger(__name__)

STAGING_PREFIX = "tmp-"  # tmp-checkpoint-N: not matched by Trainer's "checkpoint-*" rotation glob
TRAINER_STATE_FILE = "trainer_state.json"
# Any one of these holds the model (full weights, sharded weights, a LoRA adapter, pickled weights).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
MODEL_FILE = "model.safetensors"
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


class MissingSafetensorsWeights(FileNotFoundError):
    """A folder without safetensors model weights (a LoRA adapter, pickled weights, or none)."""


def load_model_weights(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors weights (one file or an index of shards).

    Raises:
        MissingSafetensorsWeights: the folder has neither `model.safetensors` nor its shard index."""
    from safetensors.torch import load_file  # here: this module is read by light commands too
    folder = Path(folder)
    index = folder / f"{MODEL_FILE}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(folder / shard))
        return tensors
    if (folder / MODEL_FILE).is_file():
        return load_file(folder / MODEL_FILE)
    raise MissingSafetensorsWeights(f"{folder}: no {MODEL_FILE} or {MODEL_FILE}.index.json (safetensors weights)")


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


# ------------------------------------------------------------------------------------------ disk full

class CheckpointDiskFull(DiskFullError):
    """A checkpoint (or the final model) could not be written because its device is full."""


def folder_size(folder) -> int:
    """Bytes of the regular files under `folder` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                continue
    return total


def free_bytes(path) -> int:
    return shutil.disk_usage(_existing_parent(path)).free


def is_disk_full(error: BaseException, folder, needed_bytes: int = 0) -> bool:
    """Whether `error` (raised while writing into `folder`) means its device is full (module docstring):
    a full-disk errno or text in its chain, or, for writers that lose the errno (torch.save), less room
    left on the device than `needed_bytes` (what the write takes)."""
    return names_full_disk(error) or (needed_bytes > 0 and free_bytes(folder) < needed_bytes)


def file_size_limit() -> int | None:
    """This process's file-size limit in bytes (`ulimit -f`, RLIMIT_FSIZE), None when there is none."""
    import resource  # POSIX only; here, so that importing the module never needs it

    soft, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


# what torch.save's zip writer says when a write stopped short (it loses the errno): a full disk or a size limit
SHORT_WRITE_TEXTS = ("unexpected pos", "file write failed")


def names_size_limit(error: BaseException) -> bool:
    """Whether `error` means a file grew past the file-size limit (`ulimit -f`): EFBIG or its text anywhere in its
    chain, or a writer's short write (torch.save: `SHORT_WRITE_TEXTS`) while this process has such a limit. (Python
    ignores SIGXFSZ, so the write fails instead of killing the process.)"""
    for link in exception_chain(error):
        text = str(link).lower()
        if (isinstance(link, OSError) and link.errno == errno.EFBIG) or "file too large" in text:
            return True
        if file_size_limit() is not None and any(marker in text for marker in SHORT_WRITE_TEXTS):
            return True
    return False


def size_limit_error(folder, what: str) -> DiskFullError:
    """The one-line error after the file-size limit (`names_size_limit`) stopped writing `what` into `folder`."""
    return DiskFullError(errno.EFBIG, f"a file grew past this process's file-size limit (ulimit -f, "
                         f"{file_size_limit() or 'unknown'} bytes) while writing {what} in {folder}; raise the limit "
                         "(ulimit -f unlimited), then run the command again with --resume auto (the complete checkpoints "
                         "and states are kept)")


def newest_checkpoint_size(run_dir) -> int:
    """Bytes of the newest complete checkpoint in `run_dir` (what the next one will take), 0 if none."""
    newest = find_resumable_checkpoint(run_dir)
    return folder_size(newest) if newest else 0


def disk_full_error(folder, needed_bytes: int, resume_from: str | None, what: str = "the checkpoint") -> CheckpointDiskFull:
    """The `CheckpointDiskFull` to raise after a full disk stopped writing `what` into `folder`."""
    free = free_bytes(folder)
    to_free = max(1, math.ceil((needed_bytes * 1.1 - free) / 2**20))  # 10 % margin over the last checkpoint's size
    if resume_from:
        then = f"resume: `--resume auto` continues from {resume_from} (complete; nothing already written was lost)"
    else:
        then = "start the run again (no checkpoint had been completed yet)"
    return CheckpointDiskFull(
        errno.ENOSPC,
        f"no space left on {device_of(folder)} at {folder} while writing {what}; free {to_free} MB and {then} "
        f"[{free / 2**20:.0f} MB free now, a checkpoint takes about {needed_bytes / 2**20:.0f} MB]",
    )
