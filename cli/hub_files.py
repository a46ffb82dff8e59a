"""Which files of a checkpoint folder go to the Hub, and the checks that make the upload loadable.

A GAP-MLLM repository is loaded with `trust_remote_code=True`, so it must hold, besides the weights,
every Python file the `auto_map` entries reach through relative imports (`from .x import y`, copied
flat by `save_pretrained`; docs/transformers-notes.md §4), the processor / tokenizer files and the chat template.

Upload rules:
- the repo id is one the Hub accepts (`check_repo_id`: huggingface_hub's own validator), checked first.
- weights: safetensors only, under the names transformers loads: `model.safetensors`, or the shards that
  `model.safetensors.index.json` names (with the index). Other `*.safetensors` files (an optimizer's, a copy)
  are left out and listed. Pickle formats (`.bin`, `.pt`, `.pth`, `.ckpt`, `.pkl`) are never uploaded: they
  execute code when loaded. A folder whose weights exist only as pickles is refused with the re-save command.
- the files uploaded are the folder's own: a symbolic link among them whose target lies outside the folder is
  refused by name (a `vocab.json` linking to /etc/passwd would publish that file), except a `.py` file linking
  into the package's own model code (the shipped GAP-MLLM-Mini folder links its code files there).
- everything else outside `UPLOAD_PATTERNS` (optimizer states, trainer logs, caches) is left out and
  listed, so a training output folder can be pushed as is.
- a JSON file read to decide (config.json's `auto_map`, the shard index, ...) that is not a JSON object is
  refused naming the file.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

import gap_mllm
from gap_mllm.processing.path_containment import resolve_inside

from gap_mllm.processing.box_angles import BOX_ANGLES_RECORD
from gap_mllm.processing.dataset_identity import TRAINING_RECORD

WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"  # transformers' names
# the files uploaded besides the weights (`weight_files` decides those)
UPLOAD_PATTERNS = (
    "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "image_processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json",
    TRAINING_RECORD,  # what the model was trained on (training/run.py), read by the card
    BOX_ANGLES_RECORD,  # the orientations of its training boxes (processing/box_angles.py), read by predict
    "*.py",
    "README.md",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", flags=re.MULTILINE)


class HubFolderError(ValueError):
    """The folder cannot be published as is (or not under the repo id given); the message says what to do."""


def check_repo_id(repo_id: str) -> str:
    """`repo_id` if the Hub accepts it as a model repository id ("name" or "namespace/name": huggingface_hub's
    `validate_repo_id`, which also refuses a second "/", ".." and "--"); else a HubFolderError naming it."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        reason = str(error).replace(" Use `repo_type` argument if needed.", "").rstrip(".")  # no repo_type here
        raise HubFolderError(f"repo id {repo_id!r} is not one the Hub accepts ({reason}); give namespace/name, "
                             "e.g. org/gap-mllm") from error
    return repo_id


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; a HubFolderError naming the file when it is not readable JSON or not an object."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HubFolderError(f"{path}: not readable JSON ({error}); fix or re-save the file, then push again"
                             ) from error
    if not isinstance(content, dict):
        raise HubFolderError(f"{path}: a JSON {type(content).__name__}, not an object; fix or re-save the file, "
                             "then push again")
    return content


@dataclass
class UploadPlan:
    """Files to upload (paths relative to the folder, sorted) and files deliberately left out."""

    folder: Path
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _auto_map_modules(folder: Path) -> set[str]:
    """Module stems named by `auto_map` in config.json and processor_config.json."""
    modules = set()
    for name in ("config.json", "processor_config.json", "tokenizer_config.json", "preprocessor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        auto_map = read_json_object(path).get("auto_map") or {}
        for reference in auto_map.values():
            for entry in reference if isinstance(reference, (list, tuple)) else [reference]:
                if entry:
                    modules.add(entry.split("--")[-1].rsplit(".", 1)[0])
    return modules


def remote_code_closure(folder: Path) -> set[str]:
    """Every `.py` file the auto_map modules need, following `from .x import` recursively.

    Raises HubFolderError naming the first missing module (a repo that would fail to load)."""
    needed, pending = set(), sorted(_auto_map_modules(folder))
    while pending:
        module = pending.pop()
        filename = f"{module}.py"
        if filename in needed:
            continue
        path = folder / filename
        if not path.is_file():
            raise HubFolderError(
                f"remote code file {filename} is missing from {folder} (needed through auto_map / relative imports); "
                "re-save the model with save_pretrained so the code files are copied")
        needed.add(filename)
        pending.extend(RELATIVE_IMPORT.findall(path.read_text(encoding="utf-8")))
    return needed


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file() or (folder / "chat_template.json").is_file():
        return True
    for name in ("processor_config.json", "tokenizer_config.json"):
        path = folder / name
        if path.is_file() and read_json_object(path).get("chat_template"):
            return True
    return False


def weight_files(folder: Path, files: list[str]) -> list[str]:
    """The weight files transformers loads from `folder`, in its order: `model.safetensors`, else the shards that
    `model.safetensors.index.json` names, with the index; [] when there are neither. A shard the index names that is
    missing, or that is no plain file name, is a HubFolderError."""
    if WEIGHTS_FILE in files or WEIGHTS_INDEX not in files:
        return [WEIGHTS_FILE] if WEIGHTS_FILE in files else []
    index = folder / WEIGHTS_INDEX
    weight_map = read_json_object(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise HubFolderError(f"{index}: no 'weight_map' naming the shards; re-save the model with save_pretrained")
    shards = sorted({str(name) for name in weight_map.values()})
    for name in shards:
        if "/" in name or "\\" in name or name in ("", ".", "..") or name not in files:
            raise HubFolderError(f"{index} names the shard {name!r}, which is not a file of {folder}; re-save the "
                                 "model with save_pretrained")
    return [WEIGHTS_INDEX, *shards]


def outside_links(folder: Path, names: list[str]) -> list[str]:
    """`"name -> target"` for each of `names` (files of `folder`) whose target, every symbolic link followed, lies
    outside `folder`; a `.py` file linking into the package's own model code (what a model folder's remote code is
    a copy of) is not one."""
    model_code = Path(gap_mllm.__file__).parent
    found = []
    for name in names:
        if resolve_inside(folder, name) is not None:
            continue
        target = (folder / name).resolve()
        if name.endswith(".py") and resolve_inside(model_code, target) is not None:
            continue
        found.append(f"{name} -> {target}")
    return found


def plan_upload(folder) -> UploadPlan:
    """Check `folder` and list what to upload (see the module docstring for the rules)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubFolderError(f"{folder} has no config.json: not a save_pretrained folder")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    weights = weight_files(folder, files)
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if not weights:
        found = [f for f in files if f.endswith(".safetensors") or f in pickles]
        hint = f" (found {', '.join(found)})" if found else ""
        raise HubFolderError(
            f"{folder} has no {WEIGHTS_FILE} nor {WEIGHTS_INDEX} with its shards{hint}; only safetensors "
            "are uploaded, under the names transformers loads. Re-save with model.save_pretrained(folder) "
            "(safetensors is the default) and push again")
    if not any(f in files for f in ("processor_config.json", "preprocessor_config.json")):
        raise HubFolderError(f"{folder} has no processor files; call processor.save_pretrained(folder) too")
    if "tokenizer_config.json" not in files:
        raise HubFolderError(f"{folder} has no tokenizer files; call processor.save_pretrained(folder) too")
    if not _has_chat_template(folder):
        raise HubFolderError(f"{folder} has no chat template (chat_template.jinja); call processor.save_pretrained(folder)")
    code = remote_code_closure(folder)
    plan = UploadPlan(folder=folder)
    for name in files:
        top_level = "/" not in name
        wanted = name in weights or top_level and any(fnmatch.fnmatch(name, pattern) for pattern in UPLOAD_PATTERNS)
        if wanted and name.endswith(".py") and name not in code:
            wanted = False  # stray scripts are not remote code
        (plan.files if wanted else plan.skipped).append(name)
    outside = outside_links(folder, plan.files)
    if outside:
        raise HubFolderError(f"{folder}: {', '.join(outside)}: a link to a file outside the folder, which push would "
                             "upload; copy the file into the folder (or remove the link), then push again")
    return plan
