"""Output files of a run: per-sample JSONL, summary JSON, markdown table.

    <out>/raw_outputs.rank<r>.jsonl   one line per finished sample: {"id", "index", "raw": [text per
                                      stage], "frames": digest of the frames it was made from}; appended and
                                      flushed as samples finish (resume source; run_fingerprint.py)
    <out>/run_fingerprint.json        model, data and task settings of the run that wrote them: a rerun
                                      resumes only when they match (run_fingerprint.py)
    <out>/samples.jsonl               per-sample results after scoring (id, raw, parsed, score, ...)
    <out>/summary.json                task, settings, headline, all metrics
    <out>/summary.md                  the metrics as a markdown table
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterator

from gap_mllm.processing.json_files import loads_json

RAW_PATTERN = "raw_outputs.rank*.jsonl"


def raw_output_file(out_dir, rank: int) -> Path:
    return Path(out_dir) / f"raw_outputs.rank{rank}.jsonl"


def _raw_rows(path) -> Iterator[tuple[str, dict | None]]:
    """`(line, row or None)` of one answer file: None for a line that is no answer row (a torn last line, left by a
    crash mid-write). Lines are split on "\n" only (JSON Lines): `str.splitlines()` would also split at U+2028
    inside a string."""
    for line in Path(path).read_text(encoding="utf-8").split("\n"):
        try:
            row = loads_json(line, path)
            row["id"], row["raw"] = str(row["id"]), list(row["raw"])
        except (ValueError, KeyError, TypeError):  # ValueError: not JSON, or nested too deep (processing/json_files.py)
            row = None
        yield line, row


def read_raw_rows(out_dir) -> dict[str, dict]:
    """`{id: row}` from every rank's file (the last row of an id wins; lines that are no row are ignored)."""
    return {row["id"]: row for path in sorted(Path(out_dir).glob(RAW_PATTERN)) for _, row in _raw_rows(path) if row}


def read_raw_outputs(out_dir) -> dict[str, list[str]]:
    """`{id: [texts]}` from every rank's file (`read_raw_rows`)."""
    return {sid: row["raw"] for sid, row in read_raw_rows(out_dir).items()}


def drop_raw_outputs(out_dir, ids) -> None:
    """Remove the rows of `ids` from every rank's file (answers to be answered again), each file rewritten whole
    beside it and renamed into place: a kill leaves it as it was or without them, never torn."""
    ids = set(ids)
    for path in sorted(Path(out_dir).glob(RAW_PATTERN)):
        lines = list(_raw_rows(path))
        kept = [line for line, row in lines if row is None or row["id"] not in ids]
        if len(kept) == len(lines):
            continue
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        partial.write_text("\n".join(kept), encoding="utf-8")
        os.replace(partial, path)


def end_torn_line(path) -> None:
    """Terminate a last line left unfinished by a crash, so appended rows start on a new line."""
    path = Path(path)
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            torn = handle.read(1) != b"\n"
        if torn:
            with open(path, "a", encoding="utf-8") as handle:
                handle.write("\n")


def append_raw_output(handle, sample_id: str, index: int, texts: list[str], frames: str | None = None) -> None:
    """Append one answer row (`frames`: the digest of the frames it was made from, run_fingerprint.py)."""
    row = {"id": sample_id, "index": index, "raw": texts, **({"frames": frames} if frames is not None else {})}
    handle.write(json.dumps(row) + "\n")
    handle.flush()
    os.fsync(handle.fileno())  # a crash right after must not lose the finished sample


def write_jsonl(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, default=_json_default) + "\n")


def _json_default(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def flatten_metrics(summary: dict, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a summary as `{"dotted.key": value}` (per-sample / per-scene lists skipped)."""
    out = {}
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if key in ("per_scene",):
            continue
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = value
    return out


def format_figure(value) -> str:
    """A figure as the user reads it (summary.md's tables, `gap-mllm evaluate`'s line): a float to 4 decimals, "nan"
    for NaN, anything else as written; the JSON files keep full precision."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(summary: dict, title: str) -> str:
    """A two-column markdown table of the headline, then every numeric metric."""
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines.append(f"| **{summary['headline']['name']}** ({summary['headline']['description']}) | "
                 f"**{format_figure(summary['headline']['value'])}** |")
    for key, value in flatten_metrics(summary["metrics"]).items():
        lines.append(f"| {key} | {format_figure(value)} |")
    return "\n".join(lines) + "\n"


def write_summary(out_dir, summary: dict, title: str) -> None:
    out_dir = Path(out_dir)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=_json_default), encoding="utf-8")
    (out_dir / "summary.md").write_text(markdown_table(summary, title), encoding="utf-8")
