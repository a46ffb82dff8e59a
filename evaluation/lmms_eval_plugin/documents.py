"""The plugin's documents: one JSON line per annotation record, and the model call each one asks for.

An lmms-eval task reads its documents with `datasets` (a JSONL file here). A document keeps the annotation
record exactly as `gap-mllm evaluate` reads it, as JSON text (Arrow would otherwise unify the records' schemas:
a key absent from one record would come back as null, an int list as floats), and what is needed to turn it
into model calls and scores:

    {"id": sample id, "index": position in the annotation file, "task": benchmark name (evaluation.tasks),
     "official_compat": bool, "meteor": bool (captioning: score METEOR, which needs Java),
     "data_root": absolute data root, "annotation_file": absolute path, "record": the annotation record as JSON text}

`request_for(doc, stage, previous_texts)` is `Benchmark.request` (evaluation/tasks.py, the one definition of
every benchmark's prompts, frames and budgets) with the frame paths made absolute, exactly what
`gap-mllm evaluate` sends to the model for the same record.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scannet_layout import media_path, posed_images_dir

from ..generation import Request
from ..tasks import Benchmark, check_sample_limit, get_task, sample_id

DOCUMENT_KEYS = ("id", "index", "task", "official_compat", "meteor", "data_root", "annotation_file", "record")


def documents_for(task_name: str, data_dir, split: str = "val", annotation_file=None, official_compat: bool = False,
                  meteor: bool | None = None, limit: int | None = None) -> list[dict]:
    """The documents of one benchmark's annotation file, in file order (the order `gap-mllm evaluate` scores).
    `meteor=None`: METEOR unless `official_compat`, as `gap-mllm evaluate`."""
    check_sample_limit(limit)
    task = get_task(task_name, official_compat)
    data_root = Path(data_dir).resolve()
    path = Path(annotation_file) if annotation_file else find_annotation_file(data_root, task.annotation_task, split)
    path = path.resolve()
    records = load_annotation_file(path)
    if limit is not None:
        records = records[:limit]
    ids = [sample_id(record, index) for index, record in enumerate(records)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: sample ids are not unique")
    meteor = (not official_compat) if meteor is None else bool(meteor)
    return [{"id": sid, "index": index, "task": task.name, "official_compat": official_compat, "meteor": meteor,
             "data_root": str(data_root),
             "annotation_file": str(path), "record": json.dumps(record)}
            for index, (sid, record) in enumerate(zip(ids, records))]


def check_document(doc) -> None:
    """ValueError naming the document when it is not one of this plugin's (another task's, or a bad export)."""
    missing = [key for key in DOCUMENT_KEYS if key not in doc]
    if missing:
        raise ValueError(f"document {doc.get('id', '?')!r} is not a GAP-MLLM document (no {', '.join(missing)}): the "
                         "gap_mllm model answers the tasks written by `gap-mllm export-lmms`")


@lru_cache(maxsize=16)
def benchmark_named(name: str, official_compat: bool) -> Benchmark:
    """The benchmark (evaluation.tasks) of a benchmark name, shared (it keeps no state between calls)."""
    return get_task(name, official_compat)


def benchmark_of(doc) -> Benchmark:
    check_document(doc)
    return benchmark_named(doc["task"], bool(doc["official_compat"]))


@lru_cache(maxsize=4096)
def _record(text: str) -> dict:
    return json.loads(text)


def record_of(doc) -> dict:
    """The annotation record (a fresh copy: callers may not change the cached one)."""
    return json.loads(json.dumps(_record(doc["record"])))


def media_root_of(doc) -> Path:
    return posed_images_dir(doc["data_root"])


def request_for(doc, stage: int, previous: list[str]) -> Request:
    """The model call of `stage` (0-based) for this document, given the answers of the earlier stages."""
    benchmark = benchmark_of(doc)
    if not 0 <= stage < benchmark.stages:
        raise ValueError(f"document {doc['id']!r}: the {benchmark.name} task has {benchmark.stages} stage(s), not a stage {stage}")
    media_root = media_root_of(doc)
    request = benchmark.request(_record(doc["record"]), stage, list(previous), media_root)
    request.images = [str(media_path(media_root, p, doc["id"])) for p in request.images]
    return request


@lru_cache(maxsize=8)
def _annotation_records(path: str, mtime_ns: int) -> list[dict]:
    return load_annotation_file(Path(path))


def records_at(annotation_file, indices: list[int], ids: list[str]) -> list[dict]:
    """The records at `indices` of an annotation file, checked against the ids the documents carried (a file
    changed since `gap-mllm export-lmms` wrote the documents is an error, not a score of other samples)."""
    path = Path(annotation_file)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the annotation file of these documents is gone; export the tasks again")
    records = _annotation_records(str(path), path.stat().st_mtime_ns)
    out = []
    for index, sid in zip(indices, ids):
        if not 0 <= index < len(records) or sample_id(records[index], index) != sid:
            raise ValueError(f"{path}: record {index} is not sample {sid!r} any more; export the tasks again")
        out.append(json.loads(json.dumps(records[index])))
    return out
