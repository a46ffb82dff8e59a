"""Checkpoints that are never half there: written under a temporary name, renamed when complete.

`GeometryAlignedTrainer._save_checkpoint` lets Trainer write everything (weights, optimizer, scheduler,
RNG states, `trainer_state.json`) into `<output_dir>/tmp-checkpoint-N/checkpoint-N`; only when every
process has finished is that folder renamed to `<output_dir>/checkpoint-N` (one `rename`, atomic on
one filesystem). A run killed while saving leaves a `tmp-checkpoint-N` folder, which no
`checkpoint-*` pattern (Trainer's rotation, `--resume auto`) matches; the next save of that step
removes it.

`checkpoint_problem` is the one rule for what a resume needs of a checkpoint's own files: a `trainer_state.json`
that parses, whose `global_step` is the step its folder is named for; model weights that can be read (each
safetensors file's header covers the file, each torch file is a whole zip); and, unless it is the run's last step
(nothing trains from it), the optimizer's state (`optimizer.pt`, or FSDP's / DeepSpeed's folders), the scheduler
(`scheduler.pt`) and the RNG states. Trainer resumes without a missing optimizer or scheduler file, silently: the
run would go on with a fresh optimizer and a restarted schedule. `find_resumable_checkpoint` (`--resume auto`)
takes the newest `checkpoint-N` that is complete, and skips, with a warning naming it and what is wrong, any that
is not (a folder a kill left, a file deleted, truncated or edited); `check_resume_checkpoint` (`--resume DIR`)
refuses an incomplete folder by name.

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
import zipfile
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
FSDP_MODEL_PREFIX = "pytorch_model_fsdp"  # FSDP's sharded weights: a folder per shard set, read by accelerate
OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")  # FSDP's sharded optimizer: a folder named "optimizer..."
SCHEDULER_FILE = "scheduler.pt"
RNG_STATE_GLOB = "rng_state*.pth"  # rng_state.pth, or rng_state_<rank>.pth per process of a distributed run
DEEPSPEED_STATE_GLOB = "global_step*"  # DeepSpeed's own checkpoint folder (weights, optimizer, its scheduler)
_CHECKPOINT_NAME = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def staging_root(run_dir, step: int) -> Path:
    """`<run_dir>/tmp-checkpoint-<step>`: Trainer writes the checkpoint inside it before the rename."""
    return Path(run_dir) / f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-{step}"


def checkpoint_problem(folder, max_steps: int | None = None) -> str | None:
    """None when `folder` is a complete Trainer checkpoint a run can resume from, else what is wrong with it, naming
    the file (for messages; module docstring). Reads headers, never whole tensors. `max_steps`: the steps of the run
    that resumes it (> 0; else the checkpoint's own), past which it needs no optimizer, scheduler or RNG state."""
    folder = Path(folder)
    if not folder.is_dir():
        return "not a folder"
    state = folder / TRAINER_STATE_FILE
    if not state.is_file():
        return f"no {TRAINER_STATE_FILE} (the save did not finish)"
    try:
        trainer_state = json.loads(state.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f"{TRAINER_STATE_FILE} is truncated or not JSON (the save did not finish)"
    step = trainer_state.get("global_step") if isinstance(trainer_state, dict) else None
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"{TRAINER_STATE_FILE} holds no global_step (a step count): not a Trainer checkpoint, or edited"
    named = checkpoint_step(folder)
    if named is not None and step != named:
        return (f"{TRAINER_STATE_FILE} says global_step {step}, and the folder is the checkpoint of step {named} "
                "(the file was edited, or is another checkpoint's)")
    weights = [name for name in WEIGHT_FILES if (folder / name).is_file()]
    sharded = [entry.name for entry in folder.glob(f"{FSDP_MODEL_PREFIX}*") if entry.is_dir()]
    if not weights and not sharded:
        return f"no model weights ({', '.join(WEIGHT_FILES[:3])}, ...)"
    for name in weights:
        if (fault := _weights_fault(folder, name)) is not None:
            return fault
    if max_steps is None or max_steps <= 0:
        max_steps = trainer_state.get("max_steps")
    if isinstance(max_steps, int) and 0 < max_steps <= step:
        return None  # the run's last step: nothing trains from it (a run state keeps no optimizer there)
    if any(entry.is_dir() for entry in folder.glob(DEEPSPEED_STATE_GLOB)):
        return None  # DeepSpeed keeps the optimizer (and its scheduler) in its own folder, read by DeepSpeed
    optimizers = [name for name in OPTIMIZER_FILES if (folder / name).is_file()]
    if not optimizers and not any(entry.is_dir() and "optimizer" in entry.name for entry in folder.iterdir()):
        return (f"no {OPTIMIZER_FILES[0]} (the optimizer's state; without it the run would go on with a fresh "
                "optimizer and a restarted schedule)")
    for name in optimizers:
        if (fault := _torch_file_fault(folder / name)) is not None:
            return fault
    if not (folder / SCHEDULER_FILE).is_file():
        return f"no {SCHEDULER_FILE} (the learning-rate schedule's state; without it the schedule would restart)"
    if (fault := _torch_file_fault(folder / SCHEDULER_FILE)) is not None:
        return fault
    if not any(folder.glob(RNG_STATE_GLOB)):
        return "no rng_state.pth (the random states; without them the run would not continue its data order)"
    return None


def _safetensors_fault(path: Path) -> str | None:
    """Why safetensors cannot read `path` (its header, and that the header's tensors cover the file), or None."""
    from safetensors import SafetensorError, safe_open  # here: this module is read by light commands too

    try:
        with safe_open(str(path), framework="pt"):
            return None
    except (SafetensorError, OSError) as error:
        return f"{path.name} cannot be read ({error}: truncated or not a safetensors file)"


def _torch_file_fault(path: Path) -> str | None:
    """Why `path`, a file torch.save wrote, is not whole, or None: torch's files are zip archives, and a truncated one
    has lost the directory at its end (a file of torch's old format, not a zip, is left to torch)."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(4)
        if not start:
            return f"{path.name} is empty (the save did not finish)"
        if start.startswith(b"PK"):
            zipfile.ZipFile(path).close()
    except (zipfile.BadZipFile, OSError) as error:
        return f"{path.name} cannot be read ({error}: truncated or not a file torch.save wrote)"
    return None


def _weights_fault(folder: Path, name: str) -> str | None:
    """Why the weight file `name` of `folder` (one of `WEIGHT_FILES`; an index: each of its shards) cannot be read."""
    path = folder / name
    if name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as error:
            return f"{name} cannot be read ({type(error).__name__}: truncated or not a weight index)"
        for shard in shards:
            if not isinstance(shard, str) or Path(shard).name != shard or not (folder / shard).is_file():
                return f"{name} names the shard {shard!r}, which the folder does not hold"
            fault = _safetensors_fault(folder / shard) if shard.endswith(".safetensors") else _torch_file_fault(folder / shard)
            if fault is not None:
                return fault
        return None
    return _safetensors_fault(path) if name.endswith(".safetensors") else _torch_file_fault(path)


class MissingSafetensorsWeights(FileNotFoundError):
    """A folder without safetensors model weights (a LoRA adapter, pickled weights, or none)."""


def load_model_weights(folder) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors weights (one file or an index of shards), under the model's names:
    a folder of the earlier layout (`vlm.*`) is read as `from_pretrained` reads it (`EARLIER_LAYOUT_KEY_MAPPING`).

    Raises:
        MissingSafetensorsWeights: the folder has neither `model.safetensors` nor its shard index."""
    from safetensors.torch import load_file  # here: this module is read by light commands too

    from gap_mllm.modeling_gap_mllm import EARLIER_LAYOUT_KEY_MAPPING
    folder = Path(folder)
    index = folder / f"{MODEL_FILE}.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        tensors = {}
        for shard in shards:
            tensors.update(load_file(folder / shard))
    elif (folder / MODEL_FILE).is_file():
        tensors = load_file(folder / MODEL_FILE)
    else:
        raise MissingSafetensorsWeights(f"{folder}: no {MODEL_FILE} or {MODEL_FILE}.index.json (safetensors weights)")
    for earlier, name in EARLIER_LAYOUT_KEY_MAPPING.items():
        tensors = {re.sub(earlier, name, key): tensor for key, tensor in tensors.items()}
    return tensors


def checkpoint_step(folder) -> int | None:
    match = _CHECKPOINT_NAME.match(Path(folder).name)
    return int(match.group(1)) if match else None


def incomplete_checkpoints(output_dir, max_steps: int | None = None) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir` that `checkpoint_problem` finds incomplete, newest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if checkpoint_step(p) is not None and checkpoint_problem(p, max_steps) is not None]
    return sorted(found, key=checkpoint_step, reverse=True)


def find_resumable_checkpoint(output_dir, max_steps: int | None = None) -> str | None:
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
        problem = checkpoint_problem(folder, max_steps)
        if problem is None:
            return str(folder)
        logger.warning("skipping incomplete checkpoint %s: %s", folder, problem)
    return None


def check_resume_checkpoint(folder, max_steps: int | None = None) -> str:
    """An explicit `--resume DIR`: the folder if complete, else a ValueError that says what is wrong."""
    problem = checkpoint_problem(folder, max_steps)
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
