"""The `datasets` cache key of a task builder: task, builder options, code and data content.

`datasets` stores a prepared builder under `<cache_dir>/<dataset_name>/<config_id>/<version>/<hash>`.
Left to itself it names every builder of `processing/builders.py` after the module ("builders") and
keys the config only by the options passed, so two tasks read from one data root would share one
folder (the second task silently loading the first one's samples), and edited annotations or images
would be served from the stale cache. `builder_cache_key` gives each builder its own name and a hash
that changes whenever anything that goes into its samples changes:

    task            the builder's TASK (also the `dataset_name`)
    options         every field of its `MultiViewConfig` (data root, annotation files, depth/poses, ...)
    code            the source of the modules that turn files into samples
    annotations     the bytes of each annotation file
    media           the CONTENT (size + xxh3-128 of the bytes) of every file a sample reads: colour frames
                    and, when loaded, depth maps, poses and intrinsics

Content, not (size, mtime): a frame replaced by another of the same size whose modification time was
restored (`cp -p`, `rsync -t`, `touch -r`, an archive extracted again) has the same stat and would be
served stale; its bytes differ. A file that is only touched keeps its entry. The cost is one read of
the referenced files each time a builder is made. Measured with `python bench/bench_builder_fingerprint.py`
on `gap-mllm synth --preset mini --scenes 20` output (2-core CPU, warm page cache): 4-15 ms per builder
for the whole key (80-302 referenced files, 0.6-2.2 MB), against 0.6-2.6 ms for a stat-only key and
0.19-0.74 s to prepare the builder, i.e. 0.6-7 % of preparing. xxh3 hashes at ~28 GB/s here, so on
larger data the read itself is the cost: at most one more pass over bytes that preparing reads and
decodes anyway. To prepare again without any change to the data, pass `download_mode="force_redownload"`
to `download_and_prepare`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import xxhash  # a dependency of datasets, which every builder needs

from gap_mllm import tasks_gap_mllm
from gap_mllm.files import open_regular_file, read_regular_bytes

from .json_files import loads_json

# Modules whose code decides what a sample holds (or whether it is refused): a change there must not serve an old cache.
_CODE_MODULES = ("builders", "record_schema", "scannet_layout", "features", "coordinates", "errors", "detection_record")
_SKIPPED_OPTIONS = {"name", "version", "data_dir", "data_files", "description"}


def _update(digest, label: str, value) -> None:
    digest.update(label.encode())
    digest.update(b"\0")
    digest.update(value if isinstance(value, bytes) else str(value).encode())
    digest.update(b"\1")


def _options(config) -> dict:
    values = {}
    for field in dataclasses.fields(config):
        if field.name in _SKIPPED_OPTIONS:
            continue
        value = getattr(config, field.name)
        values[field.name] = list(value) if isinstance(value, tuple) else value
    return values


def _code_bytes() -> bytes:
    folder = Path(__file__).parent
    parts = [(folder / f"{name}.py").read_bytes() for name in _CODE_MODULES]
    parts += [path.read_bytes() for path in sorted((folder / "tasks").glob("*.py"))]  # the task modules' fields
    # targets are parsed from the answer texts by the task registry's parsers; prompt text is checked by control_tokens
    parts += [Path(module.__file__).read_bytes() for module in (tasks_gap_mllm,)]
    return b"\0".join(parts)


_CHUNK = 1 << 20


def file_content_digest(path) -> str:
    """`size:xxh3-128` of the file's bytes; "missing" / "unreadable:<errno>" when it cannot be read (the builder
    then raises, or skips, with the sample named; the key stays stable). Regular files only
    (gap_mllm.processing_gap_mllm): a FIFO is "unreadable", never waited on. Also what an evaluation records of each
    frame an answer was made from (evaluation/run_fingerprint.py)."""
    digest = xxhash.xxh3_128()
    size = 0
    try:
        with open_regular_file(path) as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        return "missing"
    except OSError as error:  # a symbolic link loop, a folder, a FIFO, no permission
        return f"unreadable:{error.errno}"
    return f"{size}:{digest.hexdigest()}"


def _media_files(media_root: Path, records: list, load_depth: bool, load_poses: bool) -> list[Path]:
    """Every file the samples of `records` read, once, in a stable order."""
    images: set[str] = set()
    for record in records:
        paths = record.get("images") if isinstance(record, dict) else None
        if isinstance(paths, list):
            images.update(p for p in paths if isinstance(p, str))
    files: set[Path] = set()
    for relative in images:
        path = media_root / relative
        files.add(path)
        if load_depth:
            files.update((path.with_suffix(".npy"), path.with_suffix(".png")))
        if load_poses:
            files.update((path.with_suffix(".txt"), path.parent / "intrinsic.txt", path.parent / "depth_intrinsic.txt"))
    return sorted(files)


def builder_cache_key(task: str, config, annotation_files: dict, media_root) -> str:
    """Hex digest over the task, the builder options, the code and the data (see the module docstring).

    Args:
        task: the builder's task name.
        config: its `MultiViewConfig`.
        annotation_files: `{split: path}` of the annotation JSONs it reads.
        media_root: the folder image paths are relative to.
    """
    digest = hashlib.blake2b(digest_size=12)
    _update(digest, "task", task)
    _update(digest, "options", json.dumps(_options(config), sort_keys=True, default=str))
    _update(digest, "code", hashlib.blake2b(_code_bytes(), digest_size=16).hexdigest())
    media_root = Path(media_root)
    for split, path in sorted(annotation_files.items()):
        path = Path(path)
        try:
            raw = read_regular_bytes(path)
        except OSError:  # missing, unreadable or no regular file: the builder names the file when it reads it
            raw = b""
        _update(digest, f"annotations:{split}", hashlib.blake2b(raw, digest_size=16).hexdigest())
        try:
            records = loads_json(raw, path) if raw else []
        except ValueError:  # not UTF-8, not JSON, nested too deep (processing/json_files.py)
            records = []  # the builder reports the bad file by name when it reads it
        if not isinstance(records, list):
            records = []
        for file in _media_files(media_root, records, config.load_depth, config.load_poses):
            name = file.relative_to(media_root) if file.is_relative_to(media_root) else file
            _update(digest, f"file:{name}", file_content_digest(file))
    return digest.hexdigest()
