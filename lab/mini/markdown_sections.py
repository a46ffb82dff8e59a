"""Markdown pieces the miniature's documents share: a section of a document found and replaced by its heading (the
sections other runs add to RESULTS.md are kept and rewritten in place), a block between two comment lines rewritten
in a document another hand writes (the README's quote of the claims), and a paired difference as a table cell."""

from __future__ import annotations


def document_section(document: str, heading: str) -> str | None:
    """The section of `document` (markdown) that starts at the line `heading` and runs to the next "## " heading or
    the end, or None."""
    if heading not in document:
        return None
    after = document.split(heading, 1)[1].split("\n## ", 1)[0]
    return heading + after.rstrip("\n") + "\n"


def with_section(document: str, heading: str, section: str) -> str:
    """`document` with its section `heading` replaced by `section` (which starts with that heading), or `section`
    appended where it has none."""
    current = document_section(document, heading)
    if current is None:
        return document.rstrip("\n") + "\n\n" + section
    return document.replace(current.rstrip("\n"), section.rstrip("\n"), 1)


def _block_span(document: str, begin: str, end: str, source) -> tuple[int, int]:
    """(start, stop) of the text between the lines `begin` and `end` of `document`; a ValueError naming `source`
    where it lacks either line, or has them out of order."""
    start, stop = document.find(begin + "\n"), document.find("\n" + end)
    if start < 0 or stop < start:
        raise ValueError(f"{source} has no block to rewrite: it needs the line {begin!r} and, below it, the line {end!r}")
    return start + len(begin) + 1, stop + 1


def block_between(document: str, begin: str, end: str, source) -> str:
    """The text between the lines `begin` and `end` of `document` (`source` names it in the ValueError raised where
    it lacks either line, or has them out of order)."""
    start, stop = _block_span(document, begin, end, source)
    return document[start:stop]


def with_block(document: str, begin: str, end: str, body: str, source) -> str:
    """`document` with the text between its lines `begin` and `end` replaced by `body` (`block_between`)."""
    start, stop = _block_span(document, begin, end, source)
    return document[:start] + body + ("" if body.endswith("\n") else "\n") + document[stop:]


def signed_cell(found: dict | None, percent: bool, digits: int = 2) -> str:
    """A paired difference as a table cell: "+1.2 [-0.3, +2.8]" (percentage points with `percent`, else `digits`
    decimals), "—" without one."""
    if found is None:
        return "—"
    scale, digits = (100.0, 1) if percent else (1.0, digits)
    low, high = (value * scale for value in found["ci95"])
    return f"{found['difference'] * scale:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
