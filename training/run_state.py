"""Run state that outlives the machine: a Trainer checkpoint reduced to what cannot be rebuilt, for a git repository.

A long run on a machine that is not kept between sessions (a lent GPU, a CI runner, a notebook host) loses its
`output_dir` with the machine. The run state is the part of the newest checkpoint that a fresh clone cannot rebuild,
small enough to commit:

    README.md                   the step, the best validation and the command, for a person
    run_state.json              step, schedule length, the command that continues the run, the recipe settings that
                                define the run and the changes of them its resumes accepted, the digests below (of
                                the data, of the tensors and of every file of the folder), the best validation so
                                far, which tensors come from the source, and the digest of the record itself
    weights.safetensors         the checkpoint's weights that differ from the source model (the trained ones), exact
    optimizer_moments.safetensors  the optimizer's per-parameter tensors (AdamW: exp_avg, exp_avg_sq), float32 (exact)
                                or bfloat16 (`moments_dtype`); scalars (AdamW's step) and the parameter groups in
                                run_state.json; none at the run's last step, from which nothing trains
    data_sketch.safetensors     the sketch of the data the run trains on (training/data_sketch.py): the same file in
                                every state of one run
    checkpoint/                 the checkpoint's small files as they are: trainer_state.json (step, logs, the data
                                position), scheduler.pt, rng_state.pth, training_args.bin, config, tokenizer, processor
    best/                       the model kept by `evaluation.best_metric` (its weights that differ from both the
                                source and the checkpoint, in `best_dtype`: none when the best is the checkpoint's
                                step, which is restored exactly) and its best.json

Not copied: the weights equal to the source model's (the frozen encoders, and whatever did not train): the state
names the source folder and the digest of its tensors, and `restore_run_state` refuses a source whose tensors differ.
The restored model is checked against the digest of the checkpoint's whole state dict, so a restore is exact or
refused. The data are named by a sketch of every file of the data root (training/data_sketch.py), checked on every
resume: Trainer's data order comes from the seed, the step and the dataset, so the same data continue the same order.
A resume continues only on the same files: images with the same bytes or pixels, text files whose every decimal
number is written in the same form and equals the recorded one in its place up to another CPU's last digits (1e-12
relative of each); anything else (a reformatted number too) is
other data, refused in one line naming the first file that differs. The output folder keeps the sketch of its run
(`.gap-mllm-data.sketch`, training/run.py), so a resume from a checkpoint there is checked as well, and a run
records the data it continues (the state's, or the folder's), never the data it is given. A state written before
the sketch (format 2) cannot be checked file by file: `run_state.accept_other_data` continues it (the user's word
that the data are those the run trained on), and so it does any other data, with a warning that names the first
file that differs. The remote-code `.py` files of a checkpoint are the installed package's and are not kept.

A state continues only the run that wrote it: it records the recipe settings that define the run (`run.py`'s
`run_definition`: every setting but where the run writes and how it reports), and a resume with other settings is
refused naming them (`check_same_settings`, the same rule a checkpoint of an output folder is checked by against the
folder's run record, `RUN_RECORD_FILE`; `run_state.accept_other_settings` continues a deliberate change, recorded,
but for the settings a checkpoint carries: `CARRIED_BY_CHECKPOINT`). The changes a run accepted are kept in each of
its states (`changes`), so a run continued on a fresh machine still records them. Every file of the folder carries
its sha256 in run_state.json, and the record its shape and its own digest: a damaged file (truncated, a Git LFS pointer, edited) is one line naming the file and the fault, found
before anything is written. A state committed to a shared repository never writes outside its folder: every name it
lists is a file of a state's layout (`checkpoint/scheduler.pt`, never `../x` or an absolute path), and a file of the
state that is a symbolic link is refused. The folder is the package's alone: a folder holding other files (at its
top, or in `checkpoint/` and `best/`) is refused before a run trains; files added while a run writes it are carried
into each new state, never deleted. A state folder given as a symbolic link is written through to its target.

A state is untrusted input (its record's digest is one anyone recomputes): before a restore writes anything, every
value that steers training is checked against the recipe and the checkpoint (training/state_steering.py: the step
within [1, max_steps] and the checkpoint's, each optimizer group's rates and settings, the scheduler), and refused
naming the field. The record's digest covers its file's bytes (format 4), a key written twice is refused, and a
refusal prints the command of the current process, never the record's.

`RunStateCallback` writes the state after every checkpoint save of a run whose recipe names `run_state.directory`,
and `run_training` restores it when the output folder holds no newer checkpoint (`--resume auto`). The run holds
the folder's lock for its whole life (processing/folder_lock.py; the lock of the folder the path resolves to): a
second run with the same folder, by any path, is refused at its start. A state write killed between its two renames
is put back before the restore decision reads the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from gap_mllm.processing.errors import DiskFullError, device_of, names_full_disk
from gap_mllm.processing.path_containment import resolve_inside
from gap_mllm.processing.output_folder import (
    MARKER,
    PARTIAL_SUFFIX,
    REPLACED_SUFFIX,
    check_output_folder,
    clean_leftovers,
    sibling,
    writing_output_folder,
)

from .checkpoints import (
    MODEL_FILE,
    TRAINER_STATE_FILE,
    MissingSafetensorsWeights,
    checkpoint_problem,
    checkpoint_step,
    find_resumable_checkpoint,
    folder_size,
    load_model_weights,
    names_size_limit,
    size_limit_error,
    staging_root,
)
from .config import NO_DEFAULT, training_default, without_defaults
from .data_sketch import RECORD_FILE, DamagedSketch, DataSketch, compare_data, decode_sketch, log_accepted, read_sketch
from .data_sketch import sketch_data_root, write_sketch
from .state_steering import Steering, SteeringRefused, check_steering

logger = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 4: the record's digest over its file's bytes; 3: the data's sketch, the record's own digest (of
# its parsed content); 2: the run's settings, every file's digest
READ_FORMATS = (2, 3, 4)  # a format-2 state continues only with run_state.accept_other_data (its data cannot be checked)
UNSIGNED = "0" * 64  # the digest's place while the record's bytes are digested
STATE_FILE = "run_state.json"
README_FILE = "README.md"
WEIGHTS_FILE = "weights.safetensors"
MOMENTS_FILE = "optimizer_moments.safetensors"
DATA_SKETCH_FILE = "data_sketch.safetensors"
CHECKPOINT_FILES = "checkpoint"
BEST_FOLDER = "best"
BEST_RECORD = "best.json"  # written by training/generation_eval.py
OPTIMIZER_FILE = "optimizer.pt"
MOMENT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# one small file of a checkpoint above this is not a "small file": refused by name rather than committed unseen
SMALL_FILE_LIMIT = 8 * 2**20
LFS_POINTER = b"version https://git-lfs"


class RunStateError(ValueError):
    """A run state that cannot be written or restored as asked; the message names the folder and what differs."""


# ------------------------------------------------------------------------------------------ digests

def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the tensors in name order: name, dtype, shape and bytes of each (the layout of files aside)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def state_folder(state_dir) -> Path:
    """The folder a state is read from and written to: `state_dir` with every symbolic link resolved, so a state
    folder given as a link (`--run-state st`, `st -> repo/state`) is written through to its target, never replaced by
    a folder of its own, and locked as the target (processing/folder_lock.py)."""
    return Path(os.path.realpath(state_dir))


def record_digest(record: dict, indent: int | None = None) -> str:
    """The digest of the run_state.json that `json.dumps(record, indent=indent)` writes (format 4): sha256 of those
    bytes with UNSIGNED in the digest's place. The file's every byte is covered: a key written twice, an edit,
    even of spacing, is another digest."""
    text = json.dumps({**record, "digest": UNSIGNED}, indent=indent, ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def record_text(record: dict) -> str:
    """The text of `record`'s run_state.json, signed (`record_digest`)."""
    return json.dumps({**record, "digest": record_digest(record, indent=1)}, indent=1, ensure_ascii=True)


def _parsed_record_digest(record: dict) -> str:
    """A format-3 record's digest: of its parsed content without "digest" (keys sorted, compact)."""
    canonical = json.dumps({key: value for key, value in record.items() if key != "digest"}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _digest_fault(record: dict, data: bytes) -> str | None:
    """Why the record (parsed from file bytes `data`) is not the one its digest signs, or None."""
    digest = record.get("digest")
    if record["format"] == 3:
        return None if digest == _parsed_record_digest(record) else "its content differs from its digest (the record was edited)"
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        return '"digest" is missing or not a sha256'
    unsigned = data.replace(digest.encode("ascii"), UNSIGNED.encode("ascii"))
    if hashlib.sha256(unsigned).hexdigest() != digest:
        return "its content differs from its digest (the record was edited)"
    return None


def _no_duplicate_keys(pairs: list) -> dict:
    """A JSON object's members, refused when a key is written twice (the second would silently win)."""
    record = {}
    for key, value in pairs:
        if key in record:
            raise ValueError(f'the key "{key}" is written twice')
        record[key] = value
    return record


def _weights_for_state(folder) -> dict[str, torch.Tensor]:
    try:
        return load_model_weights(folder)
    except MissingSafetensorsWeights as error:
        raise RunStateError(f"{error}: a run state needs safetensors weights") from error


def _weight_file_names(folder: Path) -> set[str]:
    index = folder / f"{MODEL_FILE}.index.json"
    names = {MODEL_FILE, index.name}
    if index.is_file():
        names |= set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
    return names


# ------------------------------------------------------------------------------------------ weights against a source

def _split_from_source(tensors: dict, source: dict, dtype: torch.dtype | None = None) -> tuple[dict, dict]:
    """(tensors to store, {name: dtype} of those equal to the source's, which are not stored). `dtype`: store the
    differing tensors in it (None: as they are)."""
    stored, from_source = {}, {}
    for name, tensor in tensors.items():
        reference = source.get(name)
        if reference is not None and reference.shape == tensor.shape and torch.equal(reference.to(tensor.dtype), tensor):
            from_source[name] = str(tensor.dtype).removeprefix("torch.")
        else:
            stored[name] = tensor if dtype is None else tensor.to(dtype)
    return stored, from_source


def _join_with_source(stored: dict, from_source: dict, source: dict, what: str, source_path) -> dict:
    tensors = {}
    for name, dtype in from_source.items():
        if name not in source:
            raise RunStateError(f"{what}: the source model {source_path} has no tensor {name!r}")
        tensors[name] = source[name].to(getattr(torch, dtype))
    for name, tensor in stored.items():
        tensors[name] = tensor
    return tensors


# ------------------------------------------------------------------------------------------ optimizer

def _pack_optimizer(optimizer_state: dict, dtype: torch.dtype) -> tuple[dict, dict]:
    """(moments as named tensors in `dtype`, the rest as JSON): per-parameter tensors of more than one element go to
    the tensors; scalar tensors (AdamW's step) and plain values to the JSON with their dtype."""
    moments, scalars = {}, {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor) and value.numel() > 1:
                moments[f"{index}.{key}"] = value.detach().to(dtype).contiguous()
                scalars.setdefault(str(index), {})[key] = {"moment": str(value.dtype).removeprefix("torch."),
                                                            "shape": list(value.shape)}
            elif isinstance(value, torch.Tensor):
                scalars.setdefault(str(index), {})[key] = {"tensor": value.item(), "dtype": str(value.dtype).removeprefix("torch."),
                                                            "shape": list(value.shape)}
            else:
                scalars.setdefault(str(index), {})[key] = {"value": value}
    groups = []
    for group in optimizer_state["param_groups"]:
        groups.append({key: ({"tuple": list(value)} if isinstance(value, tuple) else value) for key, value in group.items()})
    return moments, {"state": scalars, "param_groups": groups}


def _unpack_optimizer(moments: dict, packed: dict) -> dict:
    state = {}
    for index, values in packed["state"].items():
        entry = {}
        for key, spec in values.items():
            if "moment" in spec:
                entry[key] = moments[f"{index}.{key}"].to(getattr(torch, spec["moment"])).reshape(spec["shape"])
            elif "tensor" in spec:
                entry[key] = torch.tensor(spec["tensor"], dtype=getattr(torch, spec["dtype"])).reshape(spec["shape"])
            else:
                entry[key] = spec["value"]
        state[int(index)] = entry
    groups = [{key: (tuple(value["tuple"]) if isinstance(value, dict) and set(value) == {"tuple"} else value)
               for key, value in group.items()} for group in packed["param_groups"]]
    return {"state": state, "param_groups": groups}


# ------------------------------------------------------------------------------------------ small files

def _small_files(folder: Path, leave_out: set[str]) -> list[Path]:
    """The checkpoint's files a state keeps as they are: all but the weights, the optimizer and remote code."""
    files = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name in leave_out or path.suffix == ".py":
            continue
        if path.stat().st_size > SMALL_FILE_LIMIT:
            raise RunStateError(f"{path}: {path.stat().st_size / 2**20:.1f} MB, not a small file of a checkpoint; a run "
                                f"state keeps weights and optimizer tensors only as {WEIGHTS_FILE} / {MOMENTS_FILE}")
        files.append(path)
    return files


# what writes a state folder, as processing/output_folder.py names it in a refusal
STATE_WRITER = "a run state (training/run_state.py)"
# the entries of a state folder (the output-folder marker is written by no state, but is this package's own)
STATE_ENTRIES = frozenset({STATE_FILE, README_FILE, WEIGHTS_FILE, MOMENTS_FILE, DATA_SKETCH_FILE, CHECKPOINT_FILES,
                           BEST_FOLDER, MARKER})
# the folders of a state, which hold the files run_state.json lists ("checkpoint/scheduler.pt") and nothing else
STATE_SUBFOLDERS = (CHECKPOINT_FILES, BEST_FOLDER)


def _listed_files(folder: Path) -> set[str] | None:
    """The files the run_state.json of `folder` lists; None when it cannot be read (a damaged record, refused by
    name when the state is read)."""
    try:
        files = json.loads((folder / STATE_FILE).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return set(files) if isinstance(files, dict) else None


def foreign_entries(folder) -> list[str]:
    """The entries of a state folder that no run state writes, sorted: at its top (a user's NOTES.md, a plots/
    folder), and in `checkpoint/` and `best/` what run_state.json does not list (`checkpoint/notes.txt`); a folder
    is named with a trailing "/". The output-folder module's siblings of a killed write are not in it (they lie
    beside it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    listed = _listed_files(folder)
    found = []
    for path in folder.iterdir():
        if path.name not in STATE_ENTRIES:
            found.append(path.name + ("/" if path.is_dir() else ""))
        elif path.name in STATE_SUBFOLDERS and listed is not None and path.is_dir() and not path.is_symlink():
            found += [f"{path.name}/{inner.name}" + ("/" if inner.is_dir() else "") for inner in path.iterdir()
                      if f"{path.name}/{inner.name}" not in listed]
    return sorted(found)


def _is_a_run_state(folder: Path) -> str | None:
    """The owner check of a state write while a run holds the folder: one holding a run_state.json is replaced by
    the next state (files a person added meanwhile are carried over, `save_run_state`)."""
    return None if (folder / STATE_FILE).is_file() else "holds no run state (no run_state.json)"


def _is_only_a_run_state(folder: Path) -> str | None:
    """The owner check before a run trains: a run state and nothing else (the folder is the package's alone)."""
    if not (folder / STATE_FILE).is_file():
        return "holds no run state (no run_state.json)"
    other = foreign_entries(folder)
    if other:
        shown = ", ".join(other[:4]) + (", …" if len(other) > 4 else "")
        return f"holds files a run state does not write ({shown}): the folder is the run state's alone (move them out)"
    return None


def check_state_folder(state_dir, output_dir=None) -> None:
    """Before a run trains: OutputFolderRefused unless `state_dir` is missing, empty or a run state and nothing else;
    RunStateError when the run's `output_dir` is the state folder or inside it once links are followed (a state
    write replaces the folder whole, and with it the run's checkpoints)."""
    state_dir = state_folder(state_dir)
    if output_dir is not None:
        inside = resolve_inside(state_dir, os.path.abspath(output_dir))
        if inside is not None:
            where = "the run state folder" if inside == state_dir else "inside the run state folder"
            raise RunStateError(f"training.output_dir {output_dir} is {where} run_state.directory={state_dir} (links "
                                "followed), which every state write replaces whole; give an output folder outside it")
    check_output_folder(state_dir, STATE_WRITER, option="run_state.directory", overwrite_option=None,
                        owner_check=_is_only_a_run_state)


def file_digest(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_record(folder: Path) -> dict:
    """`{relative path: {"sha256", "bytes"}}` of every file a state write put into `folder` (all but its record and
    README, which are written after)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative not in (STATE_FILE, README_FILE, MARKER):
            files[relative] = {"sha256": file_digest(path), "bytes": path.stat().st_size}
    return files


def _state_disk_full(error: Exception, folder: Path, what: str) -> Exception:
    """`error`, or for a full disk a DiskFullError naming the device and folder of the write (the state folder or
    the restore's output folder, which may lie on another disk than the command's output), whichever library
    raised (safetensors' SafetensorError carries the OS's text only)."""
    if names_size_limit(error):
        return size_limit_error(folder, what)
    if not names_full_disk(error):
        return error
    return DiskFullError(f"no space left on {device_of(folder)} while writing {what} in {folder}; free space there (or "
                         "give a folder on a larger disk), then run the command again with --resume auto (the complete "
                         "checkpoints and states are kept)")


# ------------------------------------------------------------------------------------------ write

def save_run_state(checkpoint, state_dir, *, source=None, command: str | None = None, data_root=None,
                   data_description: dict | None = None, moments_dtype: str = "float32", best_dtype: str = "float32",
                   best_dir=None, run: dict | None = None, changes: list[dict] | None = None) -> dict:
    """Write the run state of a complete Trainer `checkpoint` into `state_dir`, written beside it and renamed into place
    (processing/output_folder.py: a kill leaves the last state; a non-empty folder holding no run state is refused,
    `OutputFolderRefused`); returns its run_state.json record. Files a person put into the folder beside the last
    state are carried into the new one (with a warning), never deleted.

    Args:
        source: the model folder the run started from (its tensors are not copied); None stores every tensor.
        command: the command that continues the run, recorded for the person who resumes it.
        data_root / data_description: the data the run trains on (a `DataSketch`, training/data_sketch.py: pass the
            sketch when already made, else the data root is sketched); None when the datasets were given in-process.
        moments_dtype / best_dtype: "float32" (exact) or "bfloat16" (half the bytes) for the optimizer's moments and
            for the best model's weights.
        best_dir: the run's `best/` folder (the model kept by `evaluation.best_metric`), if any.
        run: the settings that define the run (training/run.py `run_definition`), checked when it is continued.
        changes: the deliberate changes of those settings its resumes accepted (`resumed_settings`: `{"at_step",
            "from", "settings"}`), kept so that a run continued from the state on another machine still says them.
    """
    checkpoint, state_dir = Path(checkpoint), state_folder(state_dir)
    for name, value in (("moments_dtype", moments_dtype), ("best_dtype", best_dtype)):
        if value not in MOMENT_DTYPES:
            raise RunStateError(f"run_state.{name}={value!r}: choose from {sorted(MOMENT_DTYPES)}")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise RunStateError(f"{checkpoint}: not a complete checkpoint ({problem}); no run state written")
    trainer_state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    source_tensors = _weights_for_state(source) if source is not None else {}

    data = data_description if data_description is not None else (sketch_data_root(data_root) if data_root else None)
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        record, stored, model = _write_state(checkpoint, state_dir, trainer_state, source, source_tensors, command, data,
                                             moments_dtype, best_dtype, best_dir, run, changes or [])
    except (OSError, SafetensorError, RuntimeError) as error:  # safetensors and torch.save lose the errno
        failed = _state_disk_full(error, state_dir, f"the run state of step {trainer_state.get('global_step')}")
        if failed is error and not isinstance(error, OSError):
            raise
        raise failed from error
    logger.info("run state of step %s written to %s (%.1f MB; %d of %d tensors stored, the rest from %s)",
                record["global_step"], state_dir, folder_size(state_dir) / 2**20, len(stored), len(model), source)
    return record


def _write_state(checkpoint, state_dir, trainer_state, source, source_tensors, command, data, moments_dtype, best_dtype,
                 best_dir, run, changes):
    carried = foreign_entries(state_dir) if (state_dir / STATE_FILE).is_file() else []
    data_record = None
    # written beside and renamed into place; a folder of other files is refused (processing/output_folder.py)
    with writing_output_folder(state_dir, STATE_WRITER, option="run_state.directory", overwrite_option=None,
                               owner_check=_is_a_run_state, marker=False) as staging:
        (staging / CHECKPOINT_FILES).mkdir()
        if data is not None:
            (staging / DATA_SKETCH_FILE).write_bytes(data.encode())
            data_record = data.summary()
        model = _weights_for_state(checkpoint)
        stored, from_source = _split_from_source(model, source_tensors)
        save_file(stored, staging / WEIGHTS_FILE, metadata={"format": "pt"})

        optimizer_record = None
        # the run's last step keeps no moments: nothing trains from it (training/run.py `finish_from_checkpoint`), and
        # a finished stage's state is what a later stage's run rebuilds its start from, kept in git for good
        finished = 0 < (trainer_state.get("max_steps") or 0) <= (trainer_state.get("global_step") or 0)
        if (checkpoint / OPTIMIZER_FILE).is_file() and not finished:
            optimizer_state = torch.load(checkpoint / OPTIMIZER_FILE, map_location="cpu", weights_only=True)
            moments, packed = _pack_optimizer(optimizer_state, MOMENT_DTYPES[moments_dtype])
            save_file(moments, staging / MOMENTS_FILE, metadata={"format": "pt"})
            optimizer_record = {"moments_dtype": moments_dtype, **packed}

        kept = []
        for path in _small_files(checkpoint, _weight_file_names(checkpoint) | {OPTIMIZER_FILE}):
            shutil.copy2(path, staging / CHECKPOINT_FILES / path.name)
            kept.append(path.name)

        best_record = None
        best_dir = Path(best_dir) if best_dir is not None else None
        if best_dir is not None and (best_dir / BEST_RECORD).is_file():
            (staging / BEST_FOLDER).mkdir()
            best_model = _weights_for_state(best_dir)
            # a tensor the best model shares with the checkpoint (all of them when the best is the checkpoint's step)
            # is taken from the checkpoint on restore, exactly: `best_dtype` rounds only what only the best holds
            best_differs, from_checkpoint = _split_from_source(best_model, model)
            best_stored, best_from_source = _split_from_source(best_differs, source_tensors, MOMENT_DTYPES[best_dtype])
            save_file(best_stored, staging / BEST_FOLDER / WEIGHTS_FILE, metadata={"format": "pt"})
            for path in _small_files(best_dir, _weight_file_names(best_dir)):
                shutil.copy2(path, staging / BEST_FOLDER / path.name)
            best_record = {"record": json.loads((best_dir / BEST_RECORD).read_text(encoding="utf-8")),
                           "dtype": best_dtype,
                           "from_source": best_from_source,
                           "from_checkpoint": from_checkpoint,
                           "stored_dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in best_model.items()
                                             if name in best_stored}}

        record = {
            "format": FORMAT_VERSION,
            "global_step": trainer_state.get("global_step"),
            "max_steps": trainer_state.get("max_steps"),
            "command": command,
            "written_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "run": run,
            "changes": changes,
            "source": None if source is None else {"path": str(source), "digest": tensor_digest(source_tensors)},
            "data": data_record,
            "model": {"digest": tensor_digest(model), "stored": len(stored), "from_source": from_source},
            "optimizer": optimizer_record,
            "checkpoint_files": kept,
            "best": best_record,
            "files": _file_record(staging),
        }
        (staging / STATE_FILE).write_text(record_text(record), encoding="utf-8")
        (staging / README_FILE).write_text(describe_run_state(record), encoding="utf-8")
        _carry_foreign_entries(state_dir, staging, carried)
    return record, stored, model


def _carry_foreign_entries(state_dir: Path, staging: Path, carried: list[str]) -> None:
    """Copy a person's files (`foreign_entries`, added while the run wrote here) into the new state `staging`, as they
    are (links as links): kept, not part of the state. One the new state writes itself (a name it now lists) is
    refused rather than lost (the old state stays)."""
    for name in carried:
        entry, target = state_dir / name.rstrip("/"), staging / name.rstrip("/")
        if os.path.lexists(target):
            raise RunStateError(f"{entry}: a file a person put into the run state folder, and the new state writes "
                                f"{name.rstrip('/')} itself; move it out of {state_dir} (the last state is kept)")
        logger.warning("%s: %s is not part of a run state; carried into the new state (move it out: the folder is "
                       "the run state's alone)", state_dir, name)
        target.parent.mkdir(exist_ok=True)
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, target, symlinks=True)
        else:
            shutil.copy2(entry, target, follow_symlinks=False)


def describe_run_state(record: dict) -> str:
    """The folder's README.md: what the state is and the command that continues it (written with every state)."""
    best = record.get("best")
    best_line = "none yet" if best is None else (
        f"step {best['record']['step']}, {best['record']['metric']} = {best['record']['value']}")
    source = record["source"]["path"] if record["source"] else "none (every tensor is stored here)"
    return "\n".join([
        "# Run state (training/run_state.py)",
        "",
        f"Step {record['global_step']} of {record['max_steps']}, written {record['written_at']}. Best validation so far: "
        f"{best_line}.",
        "",
        "The checkpoint of a training run without what its source model already holds: the trained weights, the "
        f"optimizer's moments ({record['optimizer']['moments_dtype'] if record['optimizer'] else 'none'}), the scheduler, "
        "RNG and data position. Untrained tensors come from the source model, checked by digest on restore: "
        f"`{source}`.",
        "",
        "This folder is the run state's alone: every checkpoint of the run replaces it whole. Continue the run (on any "
        "machine, from a clone of this repository) with the command below; it starts from this state when its output "
        "folder holds no newer checkpoint, and refuses another recipe:",
        "",
        "```bash",
        str(record.get("command")),
        "```",
        "",
    ])


# ------------------------------------------------------------------------------------------ read

_NONE = type(None)
# the shape of run_state.json: (key path, accepted types); checked before any of it is used
_RECORD_SHAPE = (
    (("global_step",), int), (("max_steps",), int), (("command",), (str, _NONE)), (("run",), (dict, _NONE)),
    (("source",), (dict, _NONE)), (("data",), (dict, _NONE)), (("model",), dict), (("model", "digest"), str),
    (("model", "from_source"), dict), (("optimizer",), (dict, _NONE)), (("checkpoint_files",), list),
    (("best",), (dict, _NONE)), (("files",), dict),
)
_SOURCE_SHAPE = ((("source", "path"), str), (("source", "digest"), str))
_OPTIMIZER_SHAPE = ((("optimizer", "moments_dtype"), str), (("optimizer", "state"), dict),
                    (("optimizer", "param_groups"), list))
_BEST_SHAPE = ((("best", "record"), dict), (("best", "record", "step"), int), (("best", "from_source"), dict),
               (("best", "stored_dtypes"), dict))


def _shape_fault(record: dict) -> str | None:
    """What in `record` is not of a run state's shape ('"model.digest" is missing'), or None."""
    shapes = list(_RECORD_SHAPE)
    for key, extra in (("source", _SOURCE_SHAPE), ("optimizer", _OPTIMIZER_SHAPE), ("best", _BEST_SHAPE)):
        if isinstance(record.get(key), dict):
            shapes += extra
    for keys, types in shapes:
        value, name = record, ".".join(keys)
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return f'"{name}" is missing'
            value = value[key]
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            wanted = " or ".join(t.__name__ for t in (types if isinstance(types, tuple) else (types,)))
            return f'"{name}" is {type(value).__name__}, not {wanted}'
    changes = record.get("changes", [])  # a state written before changes were kept holds none
    if not (isinstance(changes, list) and all(isinstance(change, dict) and isinstance(change.get("at_step"), int)
                                              and isinstance(change.get("settings"), dict) for change in changes)):
        return '"changes" is not a list of setting changes (at_step, settings)'
    if isinstance(record.get("best"), dict) and not isinstance(record["best"].get("from_checkpoint", {}), dict):
        return f'"best.from_checkpoint" is {type(record["best"]["from_checkpoint"]).__name__}, not dict'
    for name, spec in record["files"].items():
        if not (isinstance(spec, dict) and isinstance(spec.get("sha256"), str) and isinstance(spec.get("bytes"), int)):
            return f'"files.{name}" is not a digest record (sha256, bytes)'
    return _name_fault(record)


def _plain_name(name) -> bool:
    """A file name without a folder: not empty, ".", "..", and no separator."""
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def is_state_file_name(name: str) -> bool:
    """Whether `name` (from run_state.json) is a file of a state's layout: one of its top files, or
    `checkpoint/NAME` or `best/NAME` (never `..`, an absolute path, or a deeper folder)."""
    parts = name.split("/")
    if len(parts) == 1:
        return name in (WEIGHTS_FILE, MOMENTS_FILE, DATA_SKETCH_FILE)
    return len(parts) == 2 and parts[0] in STATE_SUBFOLDERS and _plain_name(parts[1])


def _name_fault(record: dict) -> str | None:
    """What name of `record` is not a file of the state (a state from a shared repository must never make a restore
    read or write outside its folders), or None: every file listed is of a state's layout, every checkpoint file is
    a listed `checkpoint/NAME`, and the data sketch named is the listed file."""
    for name in record["files"]:
        if not is_state_file_name(name):
            return (f'"files" lists {name!r}, not a file of a run state ({WEIGHTS_FILE}, {MOMENTS_FILE}, {DATA_SKETCH_FILE}, '
                    f'{CHECKPOINT_FILES}/NAME, {BEST_FOLDER}/NAME)')
    for name in record["checkpoint_files"]:
        if not _plain_name(name) or f"{CHECKPOINT_FILES}/{name}" not in record["files"]:
            return f'"checkpoint_files" lists {name!r}, not a file of its {CHECKPOINT_FILES}/ folder listed in "files"'
    sketch = (record.get("data") or {}).get("sketch")
    if sketch is not None and record["files"].get(DATA_SKETCH_FILE, {}).get("sha256") != sketch:
        return f'"data.sketch" is not the digest of the listed {DATA_SKETCH_FILE}'
    return None


def state_changes(record: dict) -> list[dict]:
    """The deliberate setting changes (`resumed_settings`) the run of the run state `record` accepted before its step;
    none for a state written before they were kept."""
    return list(record.get("changes", []))


def read_run_state(state_dir) -> dict | None:
    """The run_state.json record of `state_dir` (None when it holds no state).

    Raises:
        RunStateError: the record is not JSON, of another format, or not of a run state's shape (one line naming the
            file and what is wrong)."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    data = path.read_bytes()
    try:
        record = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as error:
        raise RunStateError(f"{path}: damaged run state file: not JSON ({error})") from error
    except ValueError as error:  # UnicodeDecodeError, a key written twice
        raise RunStateError(f"{path}: damaged run state file: {error}") from error
    if not isinstance(record, dict):
        raise RunStateError(f"{path}: damaged run state file: a JSON {type(record).__name__}, not a run state record")
    found = record.get("format")
    if found not in READ_FORMATS:
        raise RunStateError(f"{path}: {_format_words(found)}; this version of gap-mllm reads run state formats "
                            f"{', '.join(map(str, READ_FORMATS))}")
    fault = _shape_fault(record)
    if fault is None and record["format"] >= 3:
        fault = _digest_fault(record, data)
    if fault is not None:
        raise RunStateError(f"{path}: damaged run state file: {fault}")
    return record


def _format_words(found) -> str:
    """What a run state of format `found` (not one this version reads) is, in words, and what to do."""
    if isinstance(found, int) and not isinstance(found, bool) and found > FORMAT_VERSION:
        return (f"run state format {found}, written by a later version of gap-mllm than this one; update the package "
                "(pip install -U gap-mllm, or pull the repository) to continue it")
    if isinstance(found, int) and not isinstance(found, bool) and 0 < found < min(READ_FORMATS):
        return (f"run state format {found}, written by an earlier version of gap-mllm; continue it with the version "
                "that wrote it (git history)")
    return f'damaged run state file: "format" is {found!r}, not a run state format'


def check_state_files(record: dict, state_dir) -> None:
    """RunStateError naming the first file of `state_dir` that is missing or not the one written (its size or
    sha256 differ from run_state.json's: truncated, a Git LFS pointer, edited). Nothing is read otherwise."""
    state_dir = Path(state_dir)
    for name, spec in record["files"].items():
        path = state_dir / name
        link = next((p for p in (state_dir / name.split("/")[0], path) if p.is_symlink()), None)
        if link is not None:
            raise RunStateError(f"{link}: damaged run state: a symbolic link (a state holds its files themselves, and "
                                "nothing is read through a link); nothing was restored")
        if not path.is_file():
            raise RunStateError(f"{path}: damaged run state: the file is missing (run_state.json lists it)")
        size = path.stat().st_size
        fault = None
        if size != spec["bytes"]:
            with open(path, "rb") as handle:
                pointer = handle.read(len(LFS_POINTER)) == LFS_POINTER
            fault = ("a Git LFS pointer, not the file (fetch it: git lfs pull)" if pointer else
                     f"{size} bytes, {spec['bytes']} when written (truncated or replaced)")
        elif file_digest(path) != spec["sha256"]:
            fault = "its sha256 differs from the one written (the file was changed)"
        if fault is not None:
            raise RunStateError(f"{path}: damaged run state file: {fault}; nothing was restored")


# recipe settings whose value a resumed run takes from its checkpoint, whatever the recipe says: Trainer loads the
# optimizer's parameter groups (their rates, weight decay, betas, eps) and the scheduler's base rates from it. A resume
# with another value of these would print and record the recipe's value and train with the checkpoint's, so it is
# refused even with `run_state.accept_other_settings` (a new run from the checkpoint's weights takes them).
CARRIED_BY_CHECKPOINT = ("training.learning_rate", "learning_rates.", "training.weight_decay", "training.adam_beta1",
                         "training.adam_beta2", "training.adam_epsilon", "training.optim", "training.optim_args")
ACCEPT_OTHER_SETTINGS = "run_state.accept_other_settings=true"
UNSET = "(unset)"  # a setting one side of a comparison does not hold (left at its default, or added since)


def setting_differences(recorded: dict, run: dict) -> dict[str, dict]:
    """`{name: {"then": recorded value, "now": run's value}}` for each setting that differs (a `training.*` one a side
    leaves out at TrainingArguments' default, another `UNSET`), in name order; both sides compared resolved (config.py
    `without_defaults`): a setting written out at its default is the same as one left out."""
    recorded, run = without_defaults(recorded), without_defaults(run)

    def value(settings: dict, key: str):
        if key in settings:
            return settings[key]
        default = training_default(key[len("training."):]) if key.startswith("training.") else NO_DEFAULT
        return UNSET if default is NO_DEFAULT else default  # a training.* setting left out is at its default

    return {key: {"then": value(recorded, key), "now": value(run, key)}
            for key in sorted(set(recorded) | set(run)) if recorded.get(key, UNSET) != run.get(key, UNSET)}


def describe_differences(differences: dict[str, dict], shown: int = 4) -> str:
    """The first `shown` differences of `setting_differences`, in one line ("name: then then, now now; ...")."""
    text = "; ".join(f"{key}: {change['then']!r} then, {change['now']!r} now"
                     for key, change in list(differences.items())[:shown])
    return text + (f" and {len(differences) - shown} more" if len(differences) > shown else "")


def _carried(name: str) -> bool:
    return any(name == carried or (carried.endswith(".") and name.startswith(carried)) for carried in CARRIED_BY_CHECKPOINT)


def check_same_settings(recorded: dict | None, run: dict | None, holds: str, *, accept_other_settings: bool = False,
                        remedy: str) -> dict[str, dict]:
    """The one rule for the settings a resume continues with, for a run state and for a checkpoint of an output folder
    alike: `run` (the settings of the run about to continue, training/run.py `run_definition`) must be `recorded`
    (those the run was trained with). Returns the differences accepted (`setting_differences`; empty: the same run,
    or nothing to compare).

    Raises:
        RunStateError: one line naming what `holds` the step ("X holds step N") and the settings that differ, unless
            `accept_other_settings` (the user's word that the change is deliberate); a setting the checkpoint carries
            (`CARRIED_BY_CHECKPOINT`) is refused even then, since the run would go on with the checkpoint's value.
            `remedy`: what to do, in words."""
    if recorded is None or run is None:
        return {}
    differences = setting_differences(recorded, run)
    if not differences:
        return {}
    carried = {key: change for key, change in differences.items() if _carried(key)}
    if carried:
        raise RunStateError(
            f"{holds} of another run: its settings differ ({describe_differences(carried)}), which a resume cannot change: "
            "its optimizer and scheduler carry them, and the run would go on with the checkpoint's values while "
            f"printing the new ones. {remedy}; or start a new run from its weights (model.name_or_path=<the "
            "checkpoint>)")
    if not accept_other_settings:
        raise RunStateError(f"{holds} of another run: its settings differ ({describe_differences(differences)}). {remedy}; "
                            f"or, for a deliberate change, --set {ACCEPT_OTHER_SETTINGS} continues with them (the change "
                            "is printed and recorded in the training record)")
    return differences


def check_same_run(record: dict, run: dict | None, state_dir, accept_other_settings: bool = False) -> dict[str, dict]:
    """`check_same_settings` for a run state: `run` against the settings the state was written by (a state continues
    only its own run, or, with `accept_other_settings`, a deliberate change of it: returned). Names the differing
    settings."""
    return check_same_settings(
        record.get("run"), run, f"run_state.directory={state_dir} holds step {record['global_step']}",
        accept_other_settings=accept_other_settings,
        remedy="A state continues only the run that wrote it: give the settings it was written with (its README.md), "
               "or another run_state.directory for a new run")


# ------------------------------------------------------------------------------------------ the output folder's record

RUN_RECORD_FILE = ".gap-mllm-run.json"  # in a training output folder: the settings its run trains with, and changes


def read_run_record(output_dir) -> dict | None:
    """The run record of training output folder `output_dir` (`record_run_settings`), None when it has none.

    Raises:
        RunStateError: a record that is not a run record (truncated, edited), naming the file."""
    path = Path(output_dir) / RUN_RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise RunStateError(f"{path}: damaged run record ({type(error).__name__}); the settings the run trained with "
                            f"cannot be checked (delete the file and give --set {ACCEPT_OTHER_SETTINGS} if the "
                            "settings are the run's)") from error
    if not (isinstance(record, dict) and isinstance(record.get("run"), dict) and isinstance(record.get("changes"), list)):
        raise RunStateError(f"{path}: damaged run record (not the shape written); delete it and give "
                            f"--set {ACCEPT_OTHER_SETTINGS} if the settings are the run's")
    return record


def record_run_settings(output_dir, run: dict, changes: list[dict]) -> None:
    """Keep `run` (the settings the run in `output_dir` trains with, training/run.py `run_definition`) and `changes`
    (the deliberate changes its resumes accepted: `{"at_step", "from", "settings"}`) as the folder's run record, which
    a resume from a checkpoint there is checked against (written beside it and renamed)."""
    path = Path(output_dir) / RUN_RECORD_FILE
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps({"run": run, "changes": changes}, indent=1, default=str), encoding="utf-8")
    os.replace(partial, path)


def resumed_settings(checkpoint, run: dict, *, state_dir=None,
                     accept_other_settings: bool = False) -> tuple[list[dict], dict[str, dict]]:
    """`(changes, differences)`: the changes of settings the run record of a run resuming from `checkpoint` holds from
    here on (those of the record of the checkpoint's folder, else, for a folder an earlier version wrote, of the run
    state's settings, and this resume's), and this resume's differences (empty: the same settings), when `run`
    differs from the recorded settings and `accept_other_settings` accepts it (`check_same_settings`, the rule a run
    state's settings are checked by).

    Raises:
        RunStateError: other settings without `accept_other_settings`, a setting the checkpoint carries, or no record
            of the settings (a folder an earlier version wrote) without `accept_other_settings`: one line naming the
            checkpoint and the settings."""
    checkpoint = Path(checkpoint)
    folder_record = read_run_record(checkpoint.parent)
    recorded, history = (folder_record["run"], list(folder_record["changes"])) if folder_record else (None, [])
    if recorded is None and state_dir is not None:
        state = read_run_state(state_folder(state_dir))
        recorded, history = (None, []) if state is None else (state.get("run"), state_changes(state))
    where = str(checkpoint)
    if recorded is None:
        if not accept_other_settings:
            raise RunStateError(f"{where}: its folder holds no record of the settings it was trained with "
                                f"({RUN_RECORD_FILE}: an earlier version wrote it, or the file was removed), so this "
                                f"recipe cannot be checked against them. If it is the recipe the run was trained with, "
                                f"--set {ACCEPT_OTHER_SETTINGS} continues it (recorded as the run's settings from now "
                                "on); else start a new run")
        logger.warning("%s: no record of the settings it was trained with; continuing with this recipe's as %s asks "
                       "(recorded as the run's settings from now on)", where, ACCEPT_OTHER_SETTINGS)
        return history, {}
    step = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))["global_step"]
    differences = check_same_settings(recorded, run, f"{checkpoint} holds step {step}",
                                      accept_other_settings=accept_other_settings,
                                      remedy="A resume continues the run that wrote the checkpoint: give the settings "
                                             "it was trained with")
    if differences:
        logger.warning("%s: continuing with other settings than it was trained with, as %s asks: %s (recorded in the "
                       "training record)", where, ACCEPT_OTHER_SETTINGS, describe_differences(differences, shown=100))
        history.append({"at_step": step, "from": checkpoint.name, "settings": differences})
    return history, differences


def state_sketch(record: dict, state_dir: Path) -> DataSketch | None:
    """The sketch of the data the state's run trained on (None: the state records no data, or predates the sketch).
    Call after `check_state_files` (the file's digest is checked there)."""
    if (record.get("data") or {}).get("sketch") is None:
        return None
    path = state_dir / DATA_SKETCH_FILE
    try:
        return decode_sketch(path.read_bytes())
    except DamagedSketch as error:
        raise RunStateError(f"{path}: damaged run state file: {error}") from error


def check_same_data(recorded: DataSketch | None, current: DataSketch, where, data_root, *,
                    accept_other_data: bool = False, unrecorded: str = "") -> DataSketch:
    """The sketch a run resumed at `where` (a state folder, a checkpoint) records from here on: `recorded` (the
    data it trained on) when `current` (the data it is given, from `data_root`) are the same data
    (training/data_sketch.py), else `current` when `accept_other_data` continues on other data (a warning names the
    first file that differs). `unrecorded`: why nothing is recorded, in words, when `recorded` is None.

    Raises:
        RunStateError: other data, or none recorded, without `accept_other_data`: one line naming the first file that
            differs."""
    data_root = data_root or current.folder
    if recorded is None:
        if accept_other_data:
            logger.warning("%s: %s; continuing on %s as run_state.accept_other_data asks (recorded as the run's data "
                           "from now on)", where, unrecorded, data_root)
            return current
        raise RunStateError(f"{where}: {unrecorded}, so {data_root} cannot be checked against the data the run trained "
                            "on. If they are those data (written again by the same command), "
                            "run_state.accept_other_data=true continues on them (recorded as the run's data from now "
                            "on); else start a new run")
    comparison = compare_data(recorded, current)
    if comparison.same():
        log_accepted(comparison, where)
        return recorded
    if accept_other_data:
        logger.warning("%s: the run trained on other data than %s (%s); continuing on them as "
                       "run_state.accept_other_data asks (recorded as the run's data from now on)", where, data_root,
                       comparison.first(data_root))
        return current
    raise RunStateError(
        f"{where}: the run trained on other data than {data_root}: {comparison.first(data_root)}; continuing it there "
        "would change its samples and their order. Give the data root the run trained on (the command that wrote it, "
        "e.g. gap-mllm synth, writes the same again), or start a new run")


def _check_data(record: dict, state_dir: Path, data_root, data: DataSketch | None,
                accept_other_data: bool = False) -> DataSketch | None:
    """The sketch of the data the restored checkpoint continues on (`check_same_data`, for the state's data), None
    when the state records none; unchecked (the state's sketch) when neither `data_root` nor `data` is given."""
    if record.get("data") is None:
        return None
    recorded = state_sketch(record, state_dir)
    if data_root is None and data is None:
        return recorded
    current = data if data is not None else sketch_data_root(data_root)
    return check_same_data(recorded, current, state_dir, data_root, accept_other_data=accept_other_data,
                           unrecorded="this state recorded its data by whole-root digests (format 2, before the "
                                      "per-file sketch)")


def restore_run_state(state_dir, output_dir, *, source=None, data_root=None, data_description: DataSketch | None = None,
                      run: dict | None = None, accept_other_data: bool = False, steering: Steering | None = None,
                      accept_other_settings: bool = False) -> Path:
    """Rebuild the checkpoint of `state_dir` as `<output_dir>/checkpoint-<step>` (staged, then renamed), and the best
    model as `<output_dir>/best`; returns the checkpoint folder. The output folder's data record
    (`.gap-mllm-data.sketch`) becomes the state's sketch (the data the checkpoint trained on; the data given,
    with `accept_other_data` on other data), so a resume from the rebuilt checkpoint is checked as well.
    `data_root` / `data_description` (a `DataSketch` of it): the data the run continues on, checked against the
    state's (none given: not checked here). `accept_other_settings`: `run` may differ from the state's settings but
    in what the checkpoint carries (`check_same_run`); the steering values are then checked for the step only (the
    recipe's schedule is not the one the state was written with). The output folder's run record
    (`RUN_RECORD_FILE`) becomes the state's settings, against which the resume is then checked and recorded.

    Raises:
        RunStateError: no state there; a file of it is damaged (`read_run_state`, `check_state_files`); `run` (the
            settings of the run that continues it) is not the recorded one; `source` (the model the run started
            from) is not the recorded one; the data differ; or the rebuilt weights do not match the checkpoint's
            digest. Nothing is written then.
    """
    state_dir, output_dir = state_folder(state_dir), Path(output_dir)
    record = read_run_state(state_dir)
    if record is None:
        raise RunStateError(f"{state_dir}: no {STATE_FILE} (no run state here)")
    step = record["global_step"]
    accepted = check_same_run(record, run, state_dir, accept_other_settings)
    check_state_files(record, state_dir)
    check_steering_values(record, state_dir, None if accepted else steering)

    source_tensors = {}
    if record["source"] is not None:
        if source is None:
            raise RunStateError(f"{state_dir}: the state takes its untrained tensors from {record['source']['path']}; "
                                "give the model the run started from")
        source_tensors = _weights_for_state(source)
        if tensor_digest(source_tensors) != record["source"]["digest"]:
            raise RunStateError(
                f"{state_dir}: the run started from {record['source']['path']} (tensor digest "
                f"{record['source']['digest'][:16]}), and {source} holds other weights; restore it with that model "
                "(git history has every committed release)")
    data = _check_data(record, state_dir, data_root, data_description, accept_other_data)

    model = _join_with_source(load_file(state_dir / WEIGHTS_FILE), record["model"]["from_source"], source_tensors,
                              str(state_dir), record["source"] and record["source"]["path"])
    if tensor_digest(model) != record["model"]["digest"]:
        raise RunStateError(f"{state_dir}: the rebuilt weights of step {step} do not match the checkpoint's digest "
                            f"(the state's {WEIGHTS_FILE} was changed, or the source is not the recorded one)")
    optimizer = None
    if record["optimizer"] is not None:
        optimizer = _unpack_optimizer(load_file(state_dir / MOMENTS_FILE), record["optimizer"])
    best = record.get("best")
    best_weights = None if best is None else _best_weights(state_dir, output_dir, best, source_tensors, record, model)

    # every check passed: now the output folder is written (a failed write leaves no staging folder behind)
    staging = staging_root(output_dir, step)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        record_run_data(output_dir, data)  # first: a kill after the rename below leaves no checkpoint unrecorded
        if record.get("run") is not None:
            record_run_settings(output_dir, record["run"], state_changes(record))
        shutil.rmtree(staging, ignore_errors=True)
        folder = staging / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        save_file(model, folder / MODEL_FILE, metadata={"format": "pt"})
        if optimizer is not None:
            torch.save(optimizer, folder / OPTIMIZER_FILE)
        for name in record["checkpoint_files"]:
            shutil.copy2(state_dir / CHECKPOINT_FILES / name, folder / name)
        target = output_dir / folder.name
        shutil.rmtree(target, ignore_errors=True)
        os.replace(folder, target)
        if best_weights is not None:
            _write_best(state_dir, output_dir, best_weights, record)
    except (OSError, SafetensorError, RuntimeError) as error:  # safetensors and torch.save lose the errno
        failed = _state_disk_full(error, output_dir, f"the checkpoint of step {step} restored from {state_dir}")
        if failed is error and not isinstance(error, OSError):
            raise
        raise failed from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("restored step %d of %s from the run state %s into %s", step, record.get("max_steps"), state_dir, target)
    return target


def check_steering_values(record: dict, state_dir: Path, steering: Steering | None) -> None:
    """RunStateError naming the first value of the state that steers training and is not the recipe's or its
    checkpoint's (training/state_steering.py: the step, each optimizer group's rates and settings, the scheduler);
    the step alone when no recipe's `steering` is given. Call after `check_state_files`."""
    try:
        check_steering(record, state_dir, steering)
    except SteeringRefused as error:
        raise RunStateError(f"{Path(state_dir) / STATE_FILE}: refused: its {error}; a run state steers nothing the recipe "
                            "and its checkpoint do not say (nothing was restored): give the recipe it was written with, "
                            "or another run_state.directory for a new run") from error


def _best_weights(state_dir: Path, output_dir: Path, best: dict, source_tensors: dict, record: dict,
                  checkpoint_model: dict) -> dict | None:
    """The best model's weights rebuilt from the state (None when `<output_dir>/best` already keeps a best model of
    a later or the same step). `checkpoint_model`: the restored checkpoint's weights, which give the tensors the best
    shares with it. RunStateError for a best that names tensors the checkpoint lacks or disagrees with it."""
    kept = output_dir / BEST_FOLDER / BEST_RECORD
    if kept.is_file() and json.loads(kept.read_text(encoding="utf-8")).get("step", -1) >= best["record"]["step"]:
        return None
    stored = {name: tensor.to(getattr(torch, best["stored_dtypes"][name]))
              for name, tensor in load_file(state_dir / BEST_FOLDER / WEIGHTS_FILE).items()}
    from_checkpoint = best.get("from_checkpoint", {})
    if "from_checkpoint" not in best and best["record"]["step"] == record["global_step"]:
        # a state written before `from_checkpoint` stored a best of the checkpoint's own step rounded to `best_dtype`:
        # that model is the checkpoint's (kept at the same step), taken exactly once its stored copy agrees
        if best.get("dtype") not in MOMENT_DTYPES:
            raise RunStateError(f"{state_dir}/{STATE_FILE}: best.dtype is {best.get('dtype')!r}, not one of "
                                f"{sorted(MOMENT_DTYPES)}; the state is damaged")
        from_checkpoint = _same_model_rounded(stored, checkpoint_model, MOMENT_DTYPES[best["dtype"]], state_dir)
        stored = {name: tensor for name, tensor in stored.items() if name not in from_checkpoint}
    missing = sorted(set(from_checkpoint) - set(checkpoint_model))
    if missing:
        raise RunStateError(f"{state_dir}/{BEST_FOLDER}: the best model takes {missing[0]!r} from the checkpoint, "
                            "which has no such tensor; the state is damaged")
    stored.update({name: checkpoint_model[name].to(getattr(torch, dtype)) for name, dtype in from_checkpoint.items()})
    return _join_with_source(stored, best["from_source"], source_tensors, f"{state_dir}/{BEST_FOLDER}",
                             record["source"] and record["source"]["path"])


def _write_best(state_dir: Path, output_dir: Path, tensors: dict, record: dict) -> None:
    """`<output_dir>/best`: `tensors` (`_best_weights`) and the state's listed best/ files."""
    with writing_output_folder(output_dir / BEST_FOLDER, STATE_WRITER, overwrite=True, marker=False) as staging:
        save_file(tensors, staging / MODEL_FILE, metadata={"format": "pt"})
        for name in sorted(record["files"]):  # the listed files only (checked by their digests)
            folder, _, file = name.partition("/")
            if folder == BEST_FOLDER and file != WEIGHTS_FILE:
                shutil.copy2(state_dir / name, staging / file)


def _same_model_rounded(stored: dict, checkpoint_model: dict, rounding: torch.dtype, state_dir: Path) -> dict:
    """{name: dtype} of the checkpoint's tensors for `stored`, a best model kept at the checkpoint's step rounded to
    `rounding` (the record's `best.dtype`; `stored` is back in the tensors' own dtypes). RunStateError when a stored
    tensor is not the checkpoint's tensor so rounded."""
    for name, tensor in stored.items():
        reference = checkpoint_model.get(name)
        if (reference is None or reference.shape != tensor.shape
                or not torch.equal(reference.to(rounding).to(tensor.dtype), tensor)):
            raise RunStateError(f"{state_dir}/{BEST_FOLDER}: the best model, kept at the checkpoint's step, holds {name!r} "
                                "other than the checkpoint's (rounded to its stored dtype); the state is damaged")
    return {name: str(checkpoint_model[name].dtype).removeprefix("torch.") for name in stored}


def record_run_data(output_dir, data: DataSketch | None) -> None:
    """Keep `data`, the sketch of the data the run in training output folder `output_dir` trains on, as the folder's
    data record (`RECORD_FILE`), which a resume from a checkpoint there is checked against; None (datasets given
    in-process, or a state that records no data) removes a record left by an earlier run."""
    path = Path(output_dir) / RECORD_FILE
    if data is None:
        path.unlink(missing_ok=True)
    else:
        write_sketch(data, path)


def resumed_data(checkpoint, data: DataSketch, data_root, *, state_dir=None, accept_other_data: bool = False) -> DataSketch:
    """The sketch of the data a run resuming from `checkpoint` records: the data record of the checkpoint's folder
    (else, for a checkpoint at or after the run state's step, the state's sketch), checked against `data`, the
    sketch of the data root it is given (`check_same_data`).

    Raises:
        RunStateError: other data, or none recorded (a folder an earlier version wrote), without
            `accept_other_data`: one line naming the first file that differs."""
    checkpoint = Path(checkpoint)
    try:
        recorded = read_sketch(checkpoint.parent / RECORD_FILE)
    except DamagedSketch as error:
        raise RunStateError(f"{error}; the data {checkpoint} trained on cannot be checked (delete the file and give "
                            "run_state.accept_other_data=true if the data root is the one it trained on)") from error
    if recorded is None and state_dir is not None:
        record = read_run_state(state_folder(state_dir))
        if record is not None:
            check_state_files(record, state_folder(state_dir))
            recorded = state_sketch(record, state_folder(state_dir))
    return check_same_data(recorded, data, checkpoint, data_root, accept_other_data=accept_other_data,
                           unrecorded=f"its folder holds no record of the data it trained on ({RECORD_FILE}: an "
                                      "earlier version wrote it, or the file was removed)")


def put_back_interrupted_write(state_dir) -> None:
    """A state write killed between its two renames left the last state moved aside (`.<name>.gap-mllm-replaced`)
    and no folder: put it back (and delete a half-written sibling), so the restore decision sees it. Call while
    holding the folder's lock (no write of a live run is undone)."""
    state_dir = state_folder(state_dir)
    if sibling(state_dir, REPLACED_SUFFIX).is_dir() or sibling(state_dir, PARTIAL_SUFFIX).is_dir():
        had = state_dir.exists()
        clean_leftovers(state_dir)
        if not had and state_dir.is_dir():
            logger.warning("%s: put back the run state a killed write had moved aside", state_dir)


def restore_if_newer(state_dir, output_dir, *, source=None, data_root=None, data_description: DataSketch | None = None,
                     run: dict | None = None, accept_other_data: bool = False,
                     steering: Steering | None = None, accept_other_settings: bool = False) -> str | None:
    """The checkpoint to resume from under `--resume auto` with a run state: the state's, rebuilt in `output_dir`,
    when the folder holds no complete checkpoint of that step or later (a fresh machine); else the folder's newest
    (whose data the caller checks against the folder's record: `resumed_data`). `data_description`: the sketch of
    the run's data (of `data_root`, which a refusal names), checked against the state's; `run`: the run's settings (`run_definition`), checked against the
    state's either way (the run writes its states there)."""
    state_dir = state_folder(state_dir)
    put_back_interrupted_write(state_dir)
    local = find_resumable_checkpoint(output_dir)
    record = read_run_state(state_dir)
    if record is None:
        return local
    check_same_run(record, run, state_dir, accept_other_settings)
    if local is not None and checkpoint_step(local) >= record["global_step"]:
        return local
    return str(restore_run_state(state_dir, output_dir, source=source, data_root=data_root,
                                 data_description=data_description, run=run, accept_other_data=accept_other_data,
                                 steering=steering, accept_other_settings=accept_other_settings))


# ------------------------------------------------------------------------------------------ during training

class RunStateCallback(TrainerCallback):
    """After every checkpoint save (main process), write the run state of that checkpoint into `state_dir`.
    `data_description`: the sketch of the data the run trains on (the one recorded when it resumed: `resumed_data`,
    the state's; else its data root's, sketched once per run by its caller). `changes`: the setting changes the run
    accepted so far (`resumed_settings`), kept in every state it writes."""

    def __init__(self, state_dir, *, source=None, command=None, data_description=None, moments_dtype="float32",
                 best_dtype="float32", run=None, changes=None):
        self.state_dir = state_folder(state_dir)
        self.settings = {"source": source, "command": command, "data_description": data_description,
                         "moments_dtype": moments_dtype, "best_dtype": best_dtype, "run": run, "changes": changes}

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_run_state(checkpoint, self.state_dir, best_dir=Path(args.output_dir) / BEST_FOLDER, **self.settings)
