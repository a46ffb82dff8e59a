"""Every document the repository cites exists in it, and every cited section exists in its document.

Scanned: every file `git ls-files` lists (code, markdown, YAML, notebooks; binary files and this file, whose
own checks write made-up references, skipped), so the check sees what a clone sees, and a document that exists
only in a working tree (not added to git) counts as missing. Checked:

- path references `docs/<...>.md` and `reports/<...>.md`, resolved from the repository root;
- relative links `[text](target)` in markdown files and in notebook markdown cells, resolved from the file's
  folder (web links, `mailto:` and in-page anchors are not checked; a `#anchor` is dropped);
- bare mentions of the background notes the code used to cite instead of its own documents (their names are
  spelt in pieces below, so this file does not mention them): any such name without a `docs/` or `reports/`
  path in front;
- sections: every `§N` / `§N.M` cited right after a `docs/*.md` reference (chains such as `§2.3 / §8.2`,
  `§1.4, §1.5` and ranges such as `§3.2-3.3` included), and every other `§` inside a `docs/*.md` file (a
  reference to that file itself), must be the number of a heading of that document (`## 2.` / `### 2.3`).
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest

REPO = Path(__file__).resolve().parent.parent
# This file is not scanned: its own checks write made-up references (docs/a.md, ...) on purpose.
CHECKER_FILE = "tests/test_docs_references.py"
BINARY_SUFFIXES = {".safetensors", ".bin", ".pt", ".png", ".jpg", ".jpeg", ".gif", ".npy", ".npz", ".pkl", ".glb"}

# docs/x.md or reports/.../x.md, not inside a longer path (../reports/..., a URL) or a word.
DOCUMENT_PATH = re.compile(r"(?<![\w./-])((?:docs|reports)/[\w./-]*?[\w-]+\.md)(?![\w-])")
MARKDOWN_LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
UNCHECKED_LINK = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)  # http:, https:, mailto:, #anchor
# The background notes the package no longer cites, spelt in pieces: "<name>" or "<name>.md".
OLD_NOTE_NAMES = ("method" + ".md", "design" + ".md", "hf" + "-notes", "vggt" + "-reference", "training" + "-notes")
OLD_NOTE = re.compile(
    r"(?<![\w./-])(" + "|".join(re.escape(name) for name in OLD_NOTE_NAMES) + r")(?:\.md)?(?![\w-])"
)
# One cited section after a document reference: "§2", "§2.3", "§3.2-3.3", ", §1.5", " / §8.2", " and §4".
SECTION_LINK = re.compile(r"\s*(?:,|/|;|and)?\s*§\s?(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?(\d+(?:\.\d+)*))?")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)*)(?:\s*[-–]\s*§?(\d+(?:\.\d+)*))?")
NUMBERED_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


class Repository:
    """The tracked files of a repository and the document references they make."""

    def __init__(self, root: Path, files):
        self.root = Path(root)
        self.files = tuple(sorted(file for file in files if file != CHECKER_FILE))
        paths = set()
        for file in self.files:
            parts = PurePosixPath(file).parts
            paths.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
        self.paths = frozenset(paths)  # tracked files and every folder holding one
        self._texts: dict[str, str | None] = {}
        self._headings: dict[str, frozenset[str]] = {}

    @classmethod
    def from_git(cls, root: Path) -> "Repository":
        result = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.fail(f"`git ls-files` failed in {root} (this test needs a git checkout): {result.stderr.strip()}")
        return cls(root, [path for path in result.stdout.split("\0") if path])

    def text(self, path: str) -> str | None:
        if path not in self._texts:
            text = None
            if PurePosixPath(path).suffix.lower() not in BINARY_SUFFIXES:
                try:
                    text = (self.root / path).read_text(encoding="utf-8")
                except (UnicodeDecodeError, FileNotFoundError, IsADirectoryError):
                    text = None
            self._texts[path] = text
        return self._texts[path]

    def markdown(self, path: str) -> str | None:
        """The markdown of a `.md` file, or of a notebook's markdown cells; None for other files."""
        text = self.text(path)
        if text is None:
            return None
        if path.endswith(".md"):
            return text
        if path.endswith(".ipynb"):
            cells = json.loads(text).get("cells", [])
            return "\n\n".join("".join(cell.get("source", [])) for cell in cells if cell.get("cell_type") == "markdown")
        return None

    def headings(self, document: str) -> frozenset[str]:
        """Numbers of the numbered headings of a tracked document (`## 2. Title` -> "2", `### 2.3 ...` -> "2.3")."""
        if document not in self._headings:
            text = self.text(document) if document in self.paths else None
            self._headings[document] = frozenset(NUMBERED_HEADING.findall(text)) if text else frozenset()
        return self._headings[document]

    def references(self):
        """Yield `(file, line, kind, target, sections)` for every document reference of the tracked files.

        kind: "path" (a docs/ or reports/ path, from the root), "link" (a markdown link, from the file's
        folder), "old" (a bare mention of an old note), "self" (sections a docs file cites of itself).
        """
        for file in self.files:
            text = self.text(file)
            if text is None:
                continue
            folder = PurePosixPath(file).parent
            consumed: list[tuple[int, int]] = []
            for match in DOCUMENT_PATH.finditer(text):
                sections, end = cited_sections(text, match.end())
                consumed.append((match.start(), end))
                yield file, line_of(text, match.start()), "path", match.group(1), sections
            link_targets = []
            markdown = self.markdown(file)
            if markdown is not None:
                for match in MARKDOWN_LINK.finditer(markdown):
                    target = match.group(1).split("#", 1)[0]
                    if UNCHECKED_LINK.match(match.group(1)) or not target:
                        continue
                    resolved = normalise(folder / target) or f"{folder}/{target}"
                    sections, end = cited_sections(markdown, match.end())
                    if markdown is text:  # positions in the file itself: remember what the link covers
                        link_targets.append(match.span(1))
                        consumed.append((match.start(), end))
                    yield file, line_of(markdown, match.start()), "link", resolved, sections
            for match in OLD_NOTE.finditer(text):
                if not any(start <= match.start() < end for start, end in link_targets):
                    yield file, line_of(text, match.start()), "old", match.group(0), []
            if file.startswith("docs/") and file.endswith(".md"):
                for match in SECTION.finditer(text):
                    if not any(start <= match.start() < end for start, end in consumed):
                        yield file, line_of(text, match.start()), "self", file, [n for n in match.groups() if n]


def normalise(path: PurePosixPath) -> str | None:
    """`a/b/../c` -> `a/c`; None if it climbs out of the repository."""
    parts: list[str] = []
    for part in path.parts:
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts)


def cited_sections(text: str, start: int) -> tuple[list[str], int]:
    """The chain of sections cited from `start` on (right after a document reference) and where it ends."""
    position = start
    while position < len(text) and text[position] in ")]`*":  # the end of a link or of inline code
        position += 1
    sections: list[str] = []
    while match := SECTION_LINK.match(text, position):
        sections += [number for number in match.groups() if number]
        position = match.end()
    return sections, (position if sections else start)


def line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def check_documents(repository: Repository) -> list[str]:
    """One line per missing document or old note cited."""
    problems = []
    for file, line, kind, target, _ in repository.references():
        if kind == "old":
            problems.append(f"{file}:{line}: cites {target!r}, which is not in the repository (cite docs/... or reports/...)")
        elif kind in ("path", "link") and target not in repository.paths:
            problems.append(f"{file}:{line}: {kind} to {target!r}, which is not a file or folder tracked by git")
    return problems


def check_sections(repository: Repository) -> tuple[list[str], int]:
    """One line per cited section of a docs/*.md file that is not one of its numbered headings; and how many
    section citations were checked."""
    problems, checked = [], 0
    for file, line, _, target, sections in repository.references():
        if not sections or not (target.startswith("docs/") and target.endswith(".md")) or target not in repository.paths:
            continue
        for number in sections:
            checked += 1
            if number not in repository.headings(target):
                problems.append(f"{file}:{line}: {target} §{number} is not a numbered heading of {target}")
    return problems, checked


@pytest.fixture(scope="module")
def repository() -> Repository:
    return Repository.from_git(REPO)


def test_the_documents_exist(repository):
    assert "docs/README.md" in repository.paths, "docs/README.md (the index of docs/) is not tracked by git"
    for document in ("method", "deviations", "design", "transformers-notes", "vggt"):
        assert repository.headings(f"docs/{document}.md"), f"docs/{document}.md is not tracked or has no numbered sections"


def test_every_cited_document_exists_and_no_old_note_is_cited(repository):
    problems = check_documents(repository)
    assert not problems, "\n".join(problems)


def test_every_cited_section_exists(repository):
    problems, checked = check_sections(repository)
    assert not problems, "\n".join(problems)
    assert checked > 100, f"only {checked} section citations found: does the reference pattern still match?"


# ------------------------------------------------------------------------------ the checker itself


def _fake_repository(root: Path, files: dict[str, str]) -> Repository:
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(content, encoding="utf-8")
    return Repository(root, files)


def test_the_checker_reads_paths_chains_links_and_old_names(tmp_path):
    old = "hf" + "-notes"
    repository = _fake_repository(tmp_path, {
        "docs/a.md": "# A\n\n## 1. One\n\n### 1.2 Two\n\nSee §1.2 and [b](../code.py).\n",
        "code.py": f'"""Per docs/a.md §1.2 / §3-4, and ({old} §2); see reports/x/y.md."""\n',
        "notes.md": "[A](docs/a.md#one) §1 and [web](https://example.org/x.md)\n",
    })
    assert sorted(repository.references()) == [
        ("code.py", 1, "old", old, []),
        ("code.py", 1, "path", "docs/a.md", ["1.2", "3", "4"]),
        ("code.py", 1, "path", "reports/x/y.md", []),
        ("docs/a.md", 7, "link", "code.py", []),
        ("docs/a.md", 7, "self", "docs/a.md", ["1.2"]),
        ("notes.md", 1, "link", "docs/a.md", ["1"]),
        ("notes.md", 1, "path", "docs/a.md", []),
    ]
    assert check_documents(repository) == [
        "code.py:1: path to 'reports/x/y.md', which is not a file or folder tracked by git",
        f"code.py:1: cites {old!r}, which is not in the repository (cite docs/... or reports/...)",
    ]
    assert check_sections(repository) == (
        ["code.py:1: docs/a.md §3 is not a numbered heading of docs/a.md",
         "code.py:1: docs/a.md §4 is not a numbered heading of docs/a.md"],
        5,
    )


def test_an_untracked_document_counts_as_missing(tmp_path):
    repository = _fake_repository(tmp_path, {"code.py": "# see docs/b.md §1\n"})
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("## 1. B\n", encoding="utf-8")  # on disk, but not tracked
    assert check_documents(repository) == [
        "code.py:1: path to 'docs/b.md', which is not a file or folder tracked by git"
    ]
    assert check_sections(repository) == ([], 0)
