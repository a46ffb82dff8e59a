"""Which files of a checkpoint folder go to the Hub, and the checks that make the upload loadable.

A GAP-MLLM repository is loaded with `trust_remote_code=True`, so it must hold, besides the weights,
every Python file the `auto_map` entries reach through relative imports (`from .x import y`, copied
flat by `save_pretrained`; docs/transformers-notes.md §4), the processor / tokenizer files and the chat template.

Upload rules:
- weights: safetensors only (`*.safetensors` + the shard index). Pickle formats (`.bin`, `.pt`,
  `.pth`, `.ckpt`, `.pkl`) are never uploaded: they execute code when loaded. A folder whose weights
  exist only as pickles is refused with the re-save command.
- everything else outside `UPLOAD_PATTERNS` (optimizer states, trainer logs, caches) is left out and
  listed, so a training output folder can be pushed as is.
"""

from __future__ import annotations

import fnmatch
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from gap_mllm.processing.dataset_identity import TRAINING_RECORD

UPLOAD_PATTERNS = (
    "*.safetensors", "model.safetensors.index.json",
    "config.json", "generation_config.json",
    "processor_config.json", "preprocessor_config.json", "image_processor_config.json",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model",
    "chat_template.jinja", "chat_template.json",
    TRAINING_RECORD,  # what the model was trained on (training/run.py), read by the card
    "*.py",
    "README.md",
)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", flags=re.MULTILINE)


class HubFolderError(ValueError):
    """The folder cannot be published as is; the message says what to do."""


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
        auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
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
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("chat_template"):
            return True
    return False


def plan_upload(folder) -> UploadPlan:
    """Check `folder` and list what to upload (see the module docstring for the rules)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise HubFolderError(f"{folder} has no config.json: not a save_pretrained folder")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    safetensors = [f for f in files if f.endswith(".safetensors")]
    pickles = [f for f in files if f.lower().endswith(PICKLE_SUFFIXES)]
    if not safetensors:
        hint = f" (found {', '.join(pickles)})" if pickles else ""
        raise HubFolderError(
            f"{folder} has no .safetensors weights{hint}; only safetensors are uploaded. Re-save with "
            "model.save_pretrained(folder) (safetensors is the default) and push again")
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
        wanted = top_level and any(fnmatch.fnmatch(name, pattern) for pattern in UPLOAD_PATTERNS)
        if wanted and name.endswith(".py") and name not in code:
            wanted = False  # stray scripts are not remote code
        (plan.files if wanted else plan.skipped).append(name)
    return plan
