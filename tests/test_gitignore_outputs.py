"""What the documented commands write into the checkout is ignored by git, so following the README, docs/ and the
folders' READMEs never leaves untracked files behind (`git status` stays clean).

The output paths are read from the tracked documents (markdown, shell examples, the Makefile): the value of every
output option (`--out`, `--output-dir`, `--output_dir`, `--output_path`, `--save-dir`, `--out-dir`, `--table`,
`--export`) and the output folder of `gap-mllm export-llm SRC OUT` / `gap-mllm convert vggt|official SRC OUT`; plus
the default output folder of `gap-mllm demo` (read from its parser). Placeholders (DIR, `$OUT`, `<dir>`) and absolute
paths are skipped; the release outputs that are committed on purpose are listed below.
"""

from __future__ import annotations

import argparse
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCUMENT_SUFFIXES = (".md", ".sh")
DOCUMENT_NAMES = ("Makefile",)
OUTPUT_OPTION = re.compile(
    r"--(?:out|out-dir|output-dir|output_dir|output_path|save-dir|table|export)[ =]([^\s`'\"()\[\],;|&]+)")
# a command line (at the start of a line) whose second positional argument is its output folder
POSITIONAL_OUTPUT = re.compile(r"(?m)^\s*gap-mllm (?:export-llm|convert (?:vggt|official)) [^\s-]\S* ([^\s`'\"()\[\],;|&]+)")
# `make mini` and the commands that made a release write the shipped model and its table on purpose (mini/README.md)
COMMITTED_RELEASE_OUTPUTS = {"mini/gap-mllm-mini", "mini/RESULTS.md", "mini/RESULTS-ablation.md"}


def tracked_documents() -> list[str]:
    done = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True, check=True)
    return [path for path in done.stdout.split("\0")
            if path.endswith(DOCUMENT_SUFFIXES) or PurePosixPath(path).name in DOCUMENT_NAMES]


def is_placeholder(path: str) -> bool:
    """DIR, OUT, CKPT, $OUT/eval, <folder>, ~/x, /abs/path: not a path the command writes as written."""
    first = path.split("/")[0]
    return (not path or path.startswith(("/", "~", "-")) or any(c in path for c in "$<>{}*")
            or (first.isupper() and first.isalpha()))


def documented_outputs(text: str) -> list[str]:
    """The relative output paths named by the commands of one document, in order."""
    found = [m.group(1) for m in OUTPUT_OPTION.finditer(text)] + [m.group(1) for m in POSITIONAL_OUTPUT.finditer(text)]
    return [path.rstrip("/.") for path in found if not is_placeholder(path)]


def demo_default_output() -> str:
    """The folder `gap-mllm demo` writes without --out (its parser's default is None, so that --out beside --space
    is refused: the folder is `DEMO_OUT`)."""
    from gap_mllm.cli import demo
    from gap_mllm.cli.command_arguments import DEMO_OUT

    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    assert parser.get_default("out") is None
    return DEMO_OUT


def ignored(paths: list[str]) -> set[str]:
    """The paths git ignores, asked as a file inside each path (a folder pattern like `/runs/` matches it)."""
    probes = {f"{path}/probe": path for path in paths}
    probes.update({path: path for path in paths if PurePosixPath(path).suffix})  # a file such as results.json
    done = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(probes),
                          capture_output=True, text=True)
    assert done.returncode in (0, 1), done.stderr  # 1: none ignored
    return {probes[line] for line in done.stdout.splitlines()}


def test_the_documents_name_output_paths():
    """The parser still finds the commands (a guard for the test below)."""
    outputs = {path for document in tracked_documents()
               for path in documented_outputs((REPO / document).read_text(encoding="utf-8"))}
    for expected in ("demo_output", "data/mini", "runs/vg", "runs/lmms", "build/gap-mllm-mini-llm", "build/space"):
        assert expected in outputs, expected


def test_every_documented_output_is_ignored_by_git():
    named: dict[str, list[str]] = {}
    for document in tracked_documents():
        for path in documented_outputs((REPO / document).read_text(encoding="utf-8")):
            named.setdefault(path, []).append(document)
    named.setdefault(demo_default_output(), []).append("gap-mllm demo (default --out)")
    outputs = sorted(path for path in named if path not in COMMITTED_RELEASE_OUTPUTS)
    missing = sorted(set(outputs) - ignored(outputs))
    assert not missing, "\n".join(f"{path}: written by {', '.join(sorted(set(named[path])))}" for path in missing)


@pytest.mark.parametrize("text, expected", [
    ("gap-mllm demo --out demo_output", ["demo_output"]),
    ("`gap-mllm predict --images a.png --save-dir runs/predict/`", ["runs/predict"]),
    ("python -m lmms_eval --output_path runs/lmms --log_samples", ["runs/lmms"]),
    ("gap-mllm export-llm mini build/gap-mllm-mini-llm   # any folder", ["build/gap-mllm-mini-llm"]),
    ("unless `gap-mllm export-llm --dtype bfloat16` casts it", []),  # prose, not a command line
    ("gap-mllm evaluate --out DIR --out $OUT/eval --out <folder> --out /tmp/x", []),
    ("python bench/bench_real_size.py --out=results.json", ["results.json"]),
])
def test_the_parser_reads_output_paths(text, expected):
    assert documented_outputs(text) == expected
