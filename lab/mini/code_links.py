"""The remote code of the committed GAP-MLLM-Mini folder: relative links into the package, not copies.

A Hub folder is loaded with `trust_remote_code=True`, so `mini/gap-mllm-mini/` must hold, besides the weights, every
`.py` file its `auto_map` names and, recursively, every file those import relatively (transformers' dynamic-module
loader copies exactly these into its module cache). Copies would be a second definition of `modeling_gap_mllm/` that
drifts from the package; so each is a symbolic link, committed as one (git mode 120000), to the package's file of the
same name (`../../modeling_gap_mllm/<name>.py` in a checkout). Both git and transformers' loader follow the links
(`shutil.copyfile` reads through them), as does `huggingface_hub`'s upload (`CommitOperationAdd` reads the file a
path names), so `gap-mllm push` publishes the files' contents; a wheel holds copies (setuptools copies through them).

A clone whose git writes links as small text files (Windows without `core.symlinks`) cannot load the folder by path;
`gap_mllm.mini.default_model_path()` still can (it writes the code from the installed package: mini/default_model.py).

When the package's closure changes (a module imported relatively added or removed), write the links again:

    python -m lab.mini.code_links            # mini/gap-mllm-mini; tests/test_mini_default.py checks them
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import gap_mllm
from gap_mllm.mini.default_model import SHIPPED_DIR, remote_code_sources

PACKAGE = Path(gap_mllm.__file__).resolve().parent


def link_target(source: Path, folder: Path) -> str:
    """The relative path a link in `folder` holds to reach the package file `source` (relative, so that it works in
    every clone and in the folder's staging sibling, which has the same parent)."""
    return os.path.relpath(Path(source).resolve(), Path(folder).resolve()).replace(os.sep, "/")


def expected_links(folder: Path, link_folder: Path | None = None) -> dict[str, str]:
    """`{file name: link target}` that `folder`'s remote code should be: the package files its configs need, reached
    from `link_folder` (default `folder`: where the links live)."""
    place = Path(link_folder) if link_folder is not None else Path(folder)
    return {source.name: link_target(source, place) for source in remote_code_sources(Path(folder))}


def link_problems(folder: Path = SHIPPED_DIR) -> list[str]:
    """What differs between the `.py` entries of `folder` and `expected_links` (empty when every needed file is a link
    to the package's file and no other `.py` is there), one line per file."""
    folder = Path(folder)
    expected = expected_links(folder)
    problems = []
    for name, target in sorted(expected.items()):
        path = folder / name
        if not path.is_symlink():
            problems.append(f"{name}: {'a copy, not a link' if path.exists() else 'missing'} (wanted a link to {target})")
        elif os.readlink(path).replace(os.sep, "/") != target:
            problems.append(f"{name}: links to {os.readlink(path)}, not {target}")
    for stray in sorted(p.name for p in folder.glob("*.py") if p.name not in expected):
        problems.append(f"{stray}: not remote code of this folder (no auto_map module imports it)")
    return problems


def write_code_links(folder: Path = SHIPPED_DIR, link_folder: Path | None = None) -> list[str]:
    """Make the `.py` files of `folder` exactly the links `expected_links` names, removing any other `.py` (a copy
    `save_pretrained` wrote, a module the package no longer imports). `link_folder`: where the links will finally live,
    when `folder` is a staging sibling of it (the targets are computed from there). Returns the names written."""
    folder = Path(folder)
    expected = expected_links(folder, link_folder)
    for path in folder.glob("*.py"):
        if path.name not in expected or not path.is_symlink() or os.readlink(path) != expected[path.name]:
            path.unlink()
    for name, target in sorted(expected.items()):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(target)
    return sorted(expected)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", type=Path, default=SHIPPED_DIR, help="the Mini folder (default: the shipped one)")
    args = parser.parse_args(argv)
    names = write_code_links(args.folder)
    print(f"{args.folder}: {len(names)} links into {PACKAGE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
