"""The embedded GAP-MLLM-Mini as a loadable Hub folder whose remote code is the installed package's.

The repository ships `mini/gap-mllm-mini/`: the model's data (weights, configs, tokenizer, card, results) and, as
links into `modeling_gap_mllm/` (lab/mini/code_links.py), the remote-code files `trust_remote_code` imports, so the
folder loads by path. Links can fail where the package's files are not beside them as in a checkout (a clone whose
git wrote the links as text files, an installation that moved): `default_model_path()` therefore assembles the
folder it returns in the user cache, whatever the shipped folder's links are:

    <cache>/gap-mllm-mini-<id>/   links to every shipped file (copies where links are not possible)
                                 + the remote-code files, written from the installed `gap_mllm` package

and rewrites any file that differs from its source on every call (a cheap comparison of about 30 small files), so
the default always runs the package's own code, also after the package changed. `<cache>` is `$GAP_MLLM_CACHE`, or
`$HF_HOME/gap_mllm` (huggingface_hub's cache root); `<id>` is a digest of the shipped folder's path, so two
installations (two checkouts, two virtual environments) never share, and rewrite, one folder. Writes go through a
temporary name and `os.replace`, so several processes (e.g. under `accelerate launch`) may assemble the folder at
the same time.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import gap_mllm
from gap_mllm import register_auto_classes

SHIPPED_DIR = Path(__file__).resolve().parent / "gap-mllm-mini"
CACHE_ENV = "GAP_MLLM_CACHE"
FOLDER_NAME = "gap-mllm-mini"
# The folder's configs name the modules trust_remote_code imports (`auto_map`: "module.Class").
AUTO_MAP_FILES = ("config.json", "processor_config.json")


def cache_root() -> Path:
    """Where assembled folders live: `$GAP_MLLM_CACHE`, else `$HF_HOME/gap_mllm`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from huggingface_hub import constants  # here, not at the top: `import gap_mllm.mini` needs no huggingface_hub

    return Path(constants.HF_HOME).expanduser() / "gap_mllm"


def default_destination(shipped: Path = SHIPPED_DIR) -> Path:
    """`<cache>/gap-mllm-mini-<id>`: the assembled folder of the shipped folder `shipped` (module docstring)."""
    digest = hashlib.sha256(str(Path(shipped).resolve()).encode("utf-8")).hexdigest()[:12]
    return cache_root() / f"{FOLDER_NAME}-{digest}"


def remote_code_sources(model_dir: Path = SHIPPED_DIR) -> list[Path]:
    """The package files `trust_remote_code` needs for `model_dir`: the modules its configs' `auto_map` name and,
    recursively, the files they import relatively (transformers' own rule for what `save_pretrained` copies)."""
    # transformers' own rule, imported here: `import gap_mllm.mini` stays free of it
    from transformers.dynamic_module_utils import get_relative_import_files

    package = Path(gap_mllm.__file__).resolve().parent
    modules = set()
    for name in AUTO_MAP_FILES:
        path = model_dir / name
        if path.is_file():
            auto_map = json.loads(path.read_text(encoding="utf-8")).get("auto_map") or {}
            modules.update(reference.split(".")[0] for reference in auto_map.values() if isinstance(reference, str))
    files = set()
    for module in modules:
        entry = package / f"{module}.py"
        if not entry.is_file():
            raise FileNotFoundError(f"{model_dir}: its auto_map names {module!r}, which the installed gap_mllm package "
                                    f"({package}) does not have; reinstall the package")
        files.add(entry)
        files.update(Path(f) for f in get_relative_import_files(str(entry)))
    return sorted(files)


def replace_atomically(target: Path, write) -> None:
    """Create `target` through `write(temporary path)` and `os.replace`, so readers never see half a file."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    os.close(handle)
    os.unlink(temporary)
    try:
        write(Path(temporary))
        os.replace(temporary, target)
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` a symlink to `source` (a copy where the file system refuses links), unless it already is one."""
    if target.is_symlink() and Path(os.readlink(target)) == source:
        return
    if not target.is_symlink() and target.is_file() and target.read_bytes() == source.read_bytes():
        return  # an earlier copy, still identical

    def write(temporary: Path) -> None:
        try:
            temporary.symlink_to(source)
        except OSError:
            shutil.copyfile(source, temporary)

    replace_atomically(target, write)


def _write_if_different(source: Path, target: Path) -> None:
    data = source.read_bytes()
    if target.is_file() and not target.is_symlink() and target.read_bytes() == data:
        return
    replace_atomically(target, lambda temporary: temporary.write_bytes(data))


def assemble(shipped: Path = SHIPPED_DIR, destination: Path | None = None) -> Path:
    """Assemble the Hub folder of `shipped` at `destination` (default `default_destination(shipped)`) as the module
    docstring says, removing files that belong to neither (e.g. weight shards of an earlier release)."""
    destination = Path(destination) if destination is not None else default_destination(shipped)
    destination.mkdir(parents=True, exist_ok=True)
    data_files = {path.name: path for path in shipped.iterdir() if path.is_file() and path.suffix != ".py"}
    code_files = {path.name: path for path in remote_code_sources(shipped)}
    for name, source in data_files.items():
        _link_or_copy(source, destination / name)
    for name, source in code_files.items():
        _write_if_different(source, destination / name)
    for stale in destination.iterdir():
        if stale.name not in data_files and stale.name not in code_files and not stale.name.startswith("."):
            if stale.is_file() or stale.is_symlink():
                stale.unlink()
    return destination


def default_model_path() -> Path:
    """The loadable folder of the embedded, trained GAP-MLLM-Mini (assembled on first use, see the module
    docstring); FileNotFoundError with what to do when this installation does not ship it."""
    if not (SHIPPED_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded GAP-MLLM-Mini is not in this installation ({SHIPPED_DIR} has no config.json): "
            "train it with `make mini`, or pass another model folder or Hub id"
        )
    # `import gap_mllm` is light and registers nothing (gap_mllm/__init__.py): register the package's classes here, so
    # that `AutoModel.from_pretrained(default_model_path(), trust_remote_code=True)` returns them (and its results
    # are the package's types, e.g. the Box3D that gap_mllm.cli.visualize draws), as it did before the lazy import
    register_auto_classes()
    return assemble()
