"""Run state that outlives the machine: a Trainer checkpoint reduced to what cannot be rebuilt, for a git repository.

A long run on a machine that is not kept between sessions (a lent GPU, a CI runner, a notebook host) loses its
`output_dir` with the machine. The run state is the part of the newest checkpoint that a fresh clone cannot rebuild,
small enough to commit:

    README.md                   the step, the best validation and the command, for a person
    run_state.json              step, schedule length, the command that continues the run, the recipe settings that
                                define the run, the digests below (of the data, of the tensors and of every file
                                of the folder), the best validation so far, which tensors come from the source
    weights.safetensors         the checkpoint's weights that differ from the source model (the trained ones), exact
    optimizer_moments.safetensors  the optimizer's per-parameter tensors (AdamW: exp_avg, exp_avg_sq), float32 (exact)
                                or bfloat16 (`moments_dtype`); scalars (AdamW's step) and the parameter groups in
                                run_state.json
    checkpoint/                 the checkpoint's small files as they are: trainer_state.json (step, logs, the data
                                position), scheduler.pt, rng_state.pth, training_args.bin, config, tokenizer, processor
    best/                       the model kept by `evaluation.best_metric` (its weights that differ from the source,
                                in `best_dtype`) and its best.json

Not copied: the weights equal to the source model's (the frozen encoders, and whatever did not train): the state
names the source folder and the digest of its tensors, and `restore_run_state` refuses a source whose tensors differ.
The restored model is checked against the digest of the checkpoint's whole state dict, so a restore is exact or
refused. The data are named by digests of the data root's files (records, images, and the other media: depth,
poses), checked on restore: Trainer's data order comes from the seed, the step and the dataset, so the same data
continue the same order. Images may differ in their bytes (another Pillow or zlib encodes the same pixels
otherwise): they are compared by their decoded pixels then. Records and text media may differ in the last digits of
their numbers (a generator's float maths gives other last bits on another CPU: numpy picks its SIMD kernels by the
CPU's features): they are compared by their text with every decimal number masked ("structure", exact) and by the
count, sum and absolute sum of those numbers ("values", within a relative 1e-9); any other difference is other data.
A state written before "structure" was recorded has only the bytes: `run_state.accept_other_data` continues it on
data whose bytes differ, with a warning that names the parts (the user's word that the data are the same). The
remote-code `.py` files of a checkpoint are the installed package's and are not kept.

A state continues only the run that wrote it: it records the recipe settings that define the run (`run.py`'s
`run_definition`: every setting but where the run writes and how it reports), and a resume with other settings is
refused naming them. Every file of the folder carries its sha256 in run_state.json, and the record its shape: a
damaged file (truncated, a Git LFS pointer, edited) is one line naming the file and the fault, found before
anything is written. The folder is the package's alone: a folder holding other files is refused before a run
trains; files added while a run writes it are carried into each new state, never deleted.

`RunStateCallback` writes the state after every checkpoint save of a run whose recipe names `run_state.directory`,
and `run_training` restores it when the output folder holds no newer checkpoint (`--resume auto`). The run holds
the folder's lock for its whole life (processing/folder_lock.py): a second run with the same folder is refused at
its start. A state write killed between its two renames is put back before the restore decision reads the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback

from gap_mllm.processing.errors import DiskFullError, device_of, names_full_disk
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
    staging_root,
)

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: the run's settings, every file's digest, depth and poses compared by content
STATE_FILE = "run_state.json"
README_FILE = "README.md"
WEIGHTS_FILE = "weights.safetensors"
MOMENTS_FILE = "optimizer_moments.safetensors"
CHECKPOINT_FILES = "checkpoint"
BEST_FOLDER = "best"
BEST_RECORD = "best.json"  # written by training/generation_eval.py
OPTIMIZER_FILE = "optimizer.pt"
MOMENT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# one small file of a checkpoint above this is not a "small file": refused by name rather than committed unseen
SMALL_FILE_LIMIT = 8 * 2**20
# the data root's files: images (compared by their decoded pixels when their bytes differ), the other media (depth
# maps, camera poses: compared by their bytes only), and the records (annotations, scene records) that decide the
# samples and their order
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MEDIA_SUFFIXES = (".npy", ".npz", ".exr", ".txt")
_BINARY_MEDIA_SUFFIXES = (".npy", ".npz", ".exr")  # compared by their bytes only
# a decimal number of a text file (records, poses): the part of a file whose last digits may differ across CPUs
_DECIMAL_NUMBER = re.compile(rb"-?(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|-?\d+[eE][-+]?\d+")
VALUES_RTOL = 1e-9  # the relative difference of the number sums that still counts as the same data
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


def data_digest(data_root) -> dict:
    """Digests of a data root's files, `{"folder", "records", "images", "media", "pixels", "files"}`: the records
    (annotation and scene files) decide the samples and their order; the image files and the other media (depth,
    poses) what the model sees; "pixels" digests the decoded pixels of every k-th image file (256 of them), so that
    a restore can tell images that are only encoded otherwise (another Pillow or zlib writes other PNG bytes for the
    same pixels) from other images; "structure" digests the text files (records, text media) with every decimal
    number masked (binary media by their bytes), and "values" is [count, sum, absolute sum] of those numbers, so
    that a restore can tell numbers that differ in their last digits (another CPU's float maths) from other data
    (`same_numbers_but_last_digits`)."""
    root = Path(data_root)
    digests = {"records": hashlib.sha256(), "images": hashlib.sha256(), "media": hashlib.sha256()}
    structure, values = hashlib.sha256(), np.zeros(3)  # the text files: masked text; count, sum, |sum| of numbers
    count, image_files = 0, []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        suffix = path.suffix.lower()
        kind = "images" if suffix in _IMAGE_SUFFIXES else "media" if suffix in _MEDIA_SUFFIXES else "records"
        digests[kind].update(relative.encode() + b"\0")
        content = path.read_bytes()
        digests[kind].update(content)
        count += 1
        if kind == "images":
            image_files.append(path)
        elif suffix in _BINARY_MEDIA_SUFFIXES:
            structure.update(relative.encode() + b"\0" + hashlib.sha256(content).digest())
        else:
            structure.update(relative.encode() + b"\0" + _DECIMAL_NUMBER.sub(b"#", content))
            numbers = np.array([float(token) for token in _DECIMAL_NUMBER.findall(content)], dtype=np.float64)
            values += (numbers.size, numbers.sum(), np.abs(numbers).sum())
    return {"folder": root.name, **{kind: digest.hexdigest() for kind, digest in digests.items()},
            "pixels": pixel_digest(image_files), "structure": structure.hexdigest(),
            "values": [int(values[0]), float(values[1]), float(values[2])], "files": count}


def same_numbers_but_last_digits(recorded: dict, current: dict) -> bool:
    """Whether two `data_digest`s describe text files (records, text media) that differ at most in the last digits
    of their decimal numbers: the same text with the numbers masked, as many numbers, and their sum and absolute
    sum within `VALUES_RTOL`. False when `recorded` predates the "structure" digest."""
    if recorded.get("structure") is None or recorded["structure"] != current.get("structure"):
        return False
    (count_then, sum_then, abs_then), (count_now, sum_now, abs_now) = recorded["values"], current["values"]
    scale = max(abs_then, abs_now, 1.0)  # the sum may cancel to near 0: its tolerance follows the absolute sum
    return (count_then == count_now and abs(sum_then - sum_now) <= VALUES_RTOL * scale
            and abs(abs_then - abs_now) <= VALUES_RTOL * scale)


def pixel_digest(image_files: list[Path], samples: int = 256) -> str:
    """sha256 of the decoded pixels of every k-th of `image_files` (sorted), k chosen for about `samples` images."""
    digest = hashlib.sha256()
    for path in image_files[::max(1, len(image_files) // samples)]:
        with PIL.Image.open(path) as image:
            pixels = np.asarray(image)
        digest.update(f"{path.name}|{image.mode}|{pixels.shape}|".encode())
        digest.update(np.ascontiguousarray(pixels).tobytes())
    return digest.hexdigest()


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
STATE_ENTRIES = frozenset({STATE_FILE, README_FILE, WEIGHTS_FILE, MOMENTS_FILE, CHECKPOINT_FILES, BEST_FOLDER, MARKER})


def foreign_entries(folder) -> list[str]:
    """The entries of a state folder that no run state writes (a user's NOTES.md, a plots/ folder), sorted; the
    output-folder module's siblings of a killed write are not in it (they lie beside it)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in STATE_ENTRIES)


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
        return f"holds files a run state does not write ({shown}): the folder is the run state's alone; move them out, or"
    return None


def check_state_folder(state_dir, output_dir=None) -> None:
    """Before a run trains: OutputFolderRefused unless `state_dir` is missing, empty or a run state and nothing else;
    RunStateError when the run's `output_dir` is the state folder or inside it (a state write replaces the folder
    whole, and with it the run's checkpoints)."""
    state_dir = Path(state_dir)
    if output_dir is not None:
        state, output = Path(os.path.abspath(state_dir)), Path(os.path.abspath(output_dir))
        if output == state or state in output.parents:
            raise RunStateError(f"training.output_dir {output_dir} is {'the run state folder' if output == state else 'inside the run state folder'} "
                                f"run_state.directory={state_dir}, which every state write replaces whole; give an "
                                "output folder outside it")
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


def _state_disk_full(error: OSError, folder: Path, what: str) -> OSError:
    """`error`, or for a full disk a DiskFullError naming the device and folder of the write (the state folder or
    the restore's output folder, which may lie on another disk than the command's output)."""
    if not names_full_disk(error):
        return error
    return DiskFullError(f"no space left on {device_of(folder)} while writing {what} in {folder}; free space there (or "
                         "give a folder on a larger disk), then run the command again with --resume auto (the complete "
                         "checkpoints and states are kept)")


# ------------------------------------------------------------------------------------------ write

def save_run_state(checkpoint, state_dir, *, source=None, command: str | None = None, data_root=None,
                   data_description: dict | None = None, moments_dtype: str = "float32", best_dtype: str = "float32",
                   best_dir=None, run: dict | None = None) -> dict:
    """Write the run state of a complete Trainer `checkpoint` into `state_dir`, written beside it and renamed into place
    (processing/output_folder.py: a kill leaves the last state; a non-empty folder holding no run state is refused,
    `OutputFolderRefused`); returns its run_state.json record. Files a person put into the folder beside the last
    state are carried into the new one (with a warning), never deleted.

    Args:
        source: the model folder the run started from (its tensors are not copied); None stores every tensor.
        command: the command that continues the run, recorded for the person who resumes it.
        data_root / data_description: the data the run trains on (`data_digest`; pass the description when already
            computed); None when the datasets were given in-process.
        moments_dtype / best_dtype: "float32" (exact) or "bfloat16" (half the bytes) for the optimizer's moments and
            for the best model's weights.
        best_dir: the run's `best/` folder (the model kept by `evaluation.best_metric`), if any.
        run: the settings that define the run (training/run.py `run_definition`), checked when it is continued.
    """
    checkpoint, state_dir = Path(checkpoint), Path(state_dir)
    for name, value in (("moments_dtype", moments_dtype), ("best_dtype", best_dtype)):
        if value not in MOMENT_DTYPES:
            raise RunStateError(f"run_state.{name}={value!r}: choose from {sorted(MOMENT_DTYPES)}")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise RunStateError(f"{checkpoint}: not a complete checkpoint ({problem}); no run state written")
    trainer_state = json.loads((checkpoint / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
    source_tensors = _weights_for_state(source) if source is not None else {}

    data = data_description if data_description is not None else (data_digest(data_root) if data_root else None)
    state_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        record, stored, model = _write_state(checkpoint, state_dir, trainer_state, source, source_tensors, command, data,
                                             moments_dtype, best_dtype, best_dir, run)
    except OSError as error:
        raise _state_disk_full(error, state_dir, f"the run state of step {trainer_state.get('global_step')}") from error
    logger.info("run state of step %s written to %s (%.1f MB; %d of %d tensors stored, the rest from %s)",
                record["global_step"], state_dir, folder_size(state_dir) / 2**20, len(stored), len(model), source)
    return record


def _write_state(checkpoint, state_dir, trainer_state, source, source_tensors, command, data, moments_dtype, best_dtype,
                 best_dir, run):
    carried = foreign_entries(state_dir) if (state_dir / STATE_FILE).is_file() else []
    # written beside and renamed into place; a folder of other files is refused (processing/output_folder.py)
    with writing_output_folder(state_dir, STATE_WRITER, option="run_state.directory", overwrite_option=None,
                               owner_check=_is_a_run_state, marker=False) as staging:
        (staging / CHECKPOINT_FILES).mkdir()
        model = _weights_for_state(checkpoint)
        stored, from_source = _split_from_source(model, source_tensors)
        save_file(stored, staging / WEIGHTS_FILE, metadata={"format": "pt"})

        optimizer_record = None
        if (checkpoint / OPTIMIZER_FILE).is_file():
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
            best_stored, best_from_source = _split_from_source(best_model, source_tensors, MOMENT_DTYPES[best_dtype])
            save_file(best_stored, staging / BEST_FOLDER / WEIGHTS_FILE, metadata={"format": "pt"})
            for path in _small_files(best_dir, _weight_file_names(best_dir)):
                shutil.copy2(path, staging / BEST_FOLDER / path.name)
            best_record = {"record": json.loads((best_dir / BEST_RECORD).read_text(encoding="utf-8")),
                           "dtype": best_dtype,
                           "from_source": best_from_source,
                           "stored_dtypes": {name: str(t.dtype).removeprefix("torch.") for name, t in best_model.items()
                                             if name in best_stored}}

        record = {
            "format": FORMAT_VERSION,
            "global_step": trainer_state.get("global_step"),
            "max_steps": trainer_state.get("max_steps"),
            "command": command,
            "written_at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "run": run,
            "source": None if source is None else {"path": str(source), "digest": tensor_digest(source_tensors)},
            "data": data,
            "model": {"digest": tensor_digest(model), "stored": len(stored), "from_source": from_source},
            "optimizer": optimizer_record,
            "checkpoint_files": kept,
            "best": best_record,
            "files": _file_record(staging),
        }
        (staging / STATE_FILE).write_text(json.dumps(record, indent=1), encoding="utf-8")
        (staging / README_FILE).write_text(describe_run_state(record), encoding="utf-8")
        for name in carried:  # a person's files, added while the run wrote here: kept, not part of the state
            entry = state_dir / name.rstrip("/")
            logger.warning("%s: %s is not part of a run state; carried into the new state (move it out: the folder is "
                           "the run state's alone)", state_dir, entry.name)
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, staging / entry.name)
    return record, stored, model


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
    for name, spec in record["files"].items():
        if not (isinstance(spec, dict) and isinstance(spec.get("sha256"), str) and isinstance(spec.get("bytes"), int)):
            return f'"files.{name}" is not a digest record (sha256, bytes)'
    return None


def read_run_state(state_dir) -> dict | None:
    """The run_state.json record of `state_dir` (None when it holds no state).

    Raises:
        RunStateError: the record is not JSON, of another format, or not of a run state's shape (one line naming the
            file and what is wrong)."""
    path = Path(state_dir) / STATE_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RunStateError(f"{path}: damaged run state file: not JSON ({error})") from error
    if not isinstance(record, dict):
        raise RunStateError(f"{path}: damaged run state file: a JSON {type(record).__name__}, not a run state record")
    if record.get("format") != FORMAT_VERSION:
        raise RunStateError(f"{path}: run state format {record.get('format')!r}; this version reads {FORMAT_VERSION} (an "
                            "earlier state is continued by the version of the package that wrote it: git history)")
    fault = _shape_fault(record)
    if fault is not None:
        raise RunStateError(f"{path}: damaged run state file: {fault}")
    return record


def check_state_files(record: dict, state_dir) -> None:
    """RunStateError naming the first file of `state_dir` that is missing or not the one written (its size or
    sha256 differ from run_state.json's: truncated, a Git LFS pointer, edited). Nothing is read otherwise."""
    state_dir = Path(state_dir)
    for name, spec in record["files"].items():
        path = state_dir / name
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


def check_same_run(record: dict, run: dict | None, state_dir) -> None:
    """RunStateError when `run` (the settings of the run about to continue, `run_definition`) differs from those
    the state was written by: a state continues only its own run. Names the differing settings."""
    recorded = record.get("run")
    if recorded is None or run is None:
        return
    missing = object()
    differs = [key for key in sorted(set(recorded) | set(run)) if recorded.get(key, missing) != run.get(key, missing)]
    if not differs:
        return
    shown = "; ".join(f"{key}: {recorded.get(key, '(unset)')!r} then, {run.get(key, '(unset)')!r} now" for key in differs[:4])
    more = f" and {len(differs) - 4} more" if len(differs) > 4 else ""
    raise RunStateError(f"run_state.directory={state_dir} holds step {record['global_step']} of another run: its settings "
                        f"differ ({shown}{more}). A state continues only the run that wrote it: run {record.get('command')} "
                        "to continue it, or give another run_state.directory for a new run")


def _check_data(record: dict, state_dir: Path, data_root, data_description: dict | None,
                accept_other_data: bool = False) -> None:
    """RunStateError when the data differ from those the state was trained on (module docstring: what counts);
    `accept_other_data` turns the error into a warning naming what differs."""
    recorded = record.get("data")
    if recorded is None or (data_root is None and data_description is None):
        return
    current = data_description if data_description is not None else data_digest(data_root)
    differs = [part for part in ("records", "images", "media") if recorded.get(part) != current.get(part)]
    same_pixels = recorded.get("pixels") is not None and recorded["pixels"] == current.get("pixels")
    if "images" in differs and same_pixels:
        logger.info("%s: the data's image files are encoded otherwise than when the state was written, with the same "
                    "pixels in the images compared (another Pillow or zlib); continuing", state_dir)
        differs.remove("images")
    if differs and "images" not in differs and same_numbers_but_last_digits(recorded, current):
        logger.info("%s: the data's records and text media differ from those the state was written with only in the "
                    "last digits of their numbers (the same text and count; sums within %g: another CPU's float "
                    "maths); continuing", state_dir, VALUES_RTOL)
        return
    if not differs:
        return
    words = {"records": "records", "images": "images", "media": "depth or camera files"}
    found = (f"{' and '.join(words[part] for part in differs)} differ: {recorded.get('files')} files then, "
             f"{current.get('files')} now")
    if accept_other_data:
        logger.warning("%s: the run trained on other data than %s (%s); continuing on them as "
                       "run_state.accept_other_data asks", state_dir, data_root or current.get("folder"), found)
        return
    older = (" This state predates the digests that tell numbers differing in their last digits (another CPU) from "
             "other data: if the data were written by the same command, run_state.accept_other_data=true continues it."
             if recorded.get("structure") is None else "")
    raise RunStateError(
        f"{state_dir}: the run trained on other data than {data_root or current.get('folder')} ({found}); "
        "continuing it there would change its samples and their order. Give the data root the run trained on "
        "(run_state.json \"data\" names its folder and digests; the command that wrote it, e.g. gap-mllm synth, "
        f"writes the same again), or start a new run.{older}")


def restore_run_state(state_dir, output_dir, *, source=None, data_root=None, data_description: dict | None = None,
                      run: dict | None = None, accept_other_data: bool = False) -> Path:
    """Rebuild the checkpoint of `state_dir` as `<output_dir>/checkpoint-<step>` (staged, then renamed), and the best
    model as `<output_dir>/best`; returns the checkpoint folder.

    Raises:
        RunStateError: no state there; a file of it is damaged (`read_run_state`, `check_state_files`); `run` (the
            settings of the run that continues it) is not the recorded one; `source` (the model the run started
            from) is not the recorded one; the data differ; or the rebuilt weights do not match the checkpoint's
            digest. Nothing is written then.
    """
    state_dir, output_dir = Path(state_dir), Path(output_dir)
    record = read_run_state(state_dir)
    if record is None:
        raise RunStateError(f"{state_dir}: no {STATE_FILE} (no run state here)")
    step = record["global_step"]
    check_same_run(record, run, state_dir)
    check_state_files(record, state_dir)

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
    _check_data(record, state_dir, data_root, data_description, accept_other_data)

    model = _join_with_source(load_file(state_dir / WEIGHTS_FILE), record["model"]["from_source"], source_tensors,
                              str(state_dir), record["source"] and record["source"]["path"])
    if tensor_digest(model) != record["model"]["digest"]:
        raise RunStateError(f"{state_dir}: the rebuilt weights of step {step} do not match the checkpoint's digest "
                            f"(the state's {WEIGHTS_FILE} was changed, or the source is not the recorded one)")
    optimizer = None
    if record["optimizer"] is not None:
        optimizer = _unpack_optimizer(load_file(state_dir / MOMENTS_FILE), record["optimizer"])

    # every check passed: now the output folder is written (a failed write leaves no staging folder behind)
    staging = staging_root(output_dir, step)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
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
        best = record.get("best")
        if best is not None:
            _restore_best(state_dir, output_dir, best, source_tensors, record)
    except OSError as error:
        raise _state_disk_full(error, output_dir, f"the checkpoint of step {step} restored from {state_dir}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("restored step %d of %s from the run state %s into %s", step, record.get("max_steps"), state_dir, target)
    return target


def _restore_best(state_dir: Path, output_dir: Path, best: dict, source_tensors: dict, record: dict) -> None:
    """`<output_dir>/best` from the state, unless the folder already keeps a best model of a later or the same step."""
    kept = output_dir / BEST_FOLDER / BEST_RECORD
    if kept.is_file() and json.loads(kept.read_text(encoding="utf-8")).get("step", -1) >= best["record"]["step"]:
        return
    stored = {name: tensor.to(getattr(torch, best["stored_dtypes"][name]))
              for name, tensor in load_file(state_dir / BEST_FOLDER / WEIGHTS_FILE).items()}
    tensors = _join_with_source(stored, best["from_source"], source_tensors, f"{state_dir}/{BEST_FOLDER}",
                                record["source"] and record["source"]["path"])
    with writing_output_folder(output_dir / BEST_FOLDER, STATE_WRITER, overwrite=True, marker=False) as staging:
        save_file(tensors, staging / MODEL_FILE, metadata={"format": "pt"})
        for path in sorted((state_dir / BEST_FOLDER).iterdir()):
            if path.is_file() and path.name != WEIGHTS_FILE:
                shutil.copy2(path, staging / path.name)


def put_back_interrupted_write(state_dir) -> None:
    """A state write killed between its two renames left the last state moved aside (`.<name>.gap-mllm-replaced`)
    and no folder: put it back (and delete a half-written sibling), so the restore decision sees it. Call while
    holding the folder's lock (no write of a live run is undone)."""
    state_dir = Path(os.path.abspath(state_dir))
    if sibling(state_dir, REPLACED_SUFFIX).is_dir() or sibling(state_dir, PARTIAL_SUFFIX).is_dir():
        had = state_dir.exists()
        clean_leftovers(state_dir)
        if not had and state_dir.is_dir():
            logger.warning("%s: put back the run state a killed write had moved aside", state_dir)


def restore_if_newer(state_dir, output_dir, *, source=None, data_description: dict | None = None,
                     run: dict | None = None, accept_other_data: bool = False) -> str | None:
    """The checkpoint to resume from under `--resume auto` with a run state: the state's, rebuilt in `output_dir`,
    when the folder holds no complete checkpoint of that step or later (a fresh machine); else the folder's newest.
    `data_description`: the run's data (`data_digest`), checked against the state's; `run`: the run's settings
    (`run_definition`), checked against the state's either way (the run writes its states there)."""
    put_back_interrupted_write(state_dir)
    local = find_resumable_checkpoint(output_dir)
    record = read_run_state(state_dir)
    if record is None:
        return local
    check_same_run(record, run, state_dir)
    if local is not None and checkpoint_step(local) >= record["global_step"]:
        return local
    return str(restore_run_state(state_dir, output_dir, source=source, data_description=data_description, run=run,
                                 accept_other_data=accept_other_data))


# ------------------------------------------------------------------------------------------ during training

class RunStateCallback(TrainerCallback):
    """After every checkpoint save (main process), write the run state of that checkpoint into `state_dir`.
    `data_description`: the run's data (`data_digest`, computed once per run by its caller)."""

    def __init__(self, state_dir, *, source=None, command=None, data_description=None, moments_dtype="float32",
                 best_dtype="float32", run=None):
        self.state_dir = Path(state_dir)
        self.settings = {"source": source, "command": command, "data_description": data_description,
                         "moments_dtype": moments_dtype, "best_dtype": best_dtype, "run": run}

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        save_run_state(checkpoint, self.state_dir, best_dir=Path(args.output_dir) / BEST_FOLDER, **self.settings)
