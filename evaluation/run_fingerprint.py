"""What wrote the answers of an evaluation output folder, so that a rerun resumes only the same run.

A model run appends each finished answer to `<out>/raw_outputs.rank<r>.jsonl`, and a rerun into the same
folder skips the samples already answered. Those answers belong to the run that wrote them: resumed by
another model, other data or other task settings, they would be scored as the new run's. So the folder
also holds `run_fingerprint.json`, written before the first answer:

    task   the benchmark, `official_compat` (it turns the stop rule off), the `max_new_tokens` cap,
           the official token budget of each stage and, when on, constrained decoding (`--constrained`) and the
           quantization of the weights at load (`--quantize`)
    model  sha256 of the weight files of the model folder (*.safetensors, *.bin, *.pt, *.pth, but the
           files Trainer saves beside a model: TRAINER_FILES) and of its configuration, tokenizer and
           processor files (MODEL_CONFIGURATION_FILES); a Hub id is read from its local snapshot (the
           folder that is then loaded)
    data   the annotation file (name, sha256, and a sketch of its decimal numbers) and the data root's
           description (dataset_identity.py)

Each answer also records what it was made from beyond the records: the frames its requests read (every stage's:
grounding's second stage reads the neighbours of the frame its first answer chose), as `frames` in its row, a digest
of their paths and contents (`frames_digest`; each file's bytes hashed once per run, processing/builder_fingerprint.py
`file_content_digest`). A rerun checks the answers it would reuse against the frames as they are now, and answers
again those whose frames changed (a frame repainted, replaced, gone) or whose row records no frames (a version
before this record), saying how many (runner.py); the others are reused, and the run says how many.

A rerun whose fingerprint differs from the recorded one, or that finds answers with no record (written
by a version without it), is refused before anything is generated or scored, naming each part that
differs; nothing in the folder is changed. One difference is not one: an annotation file written again on
another CPU (the same data, some numbers other in their last digits: processing/decimal_numbers.py) has another
sha256 and the same text around its numbers, and numbers within the bound of the recorded sketch's
ANNOTATION_BLOCKS block sums: its answers resume, with a log line. A record without the sketch (written before
it existed) resumes on the same bytes only. The blocks are large (the Mini's test annotation files: up to 9,477
numbers a block) and the record small (1.7 kB); a block's bound grows with its numbers, yet one number moved by
1e-4 in those files keeps all 4 sums with probability under 1e-11 (the odds: processing/decimal_numbers.py), and
numpy's pairwise sum rounds a block's sum by tens of ulp of its absolute sum, far inside REL of it. To start
fresh, give another output folder or delete the answers and the record. A folder without answers takes the new record.

Not recorded, so free to change between a run and its resume: the batch size, the number of processes,
scene reuse and `limit` (they change how or which samples are answered, not what an answer means), the
split name (the annotation file is recorded), frames no answer reads, model files outside the lists above (a model
card, evaluation results), and the base model a LoRA adapter folder names.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np

from gap_mllm.files import open_regular_file
from gap_mllm.processing.builder_fingerprint import file_content_digest
from gap_mllm.processing.dataset_identity import describe_data_root
from gap_mllm.processing.decimal_numbers import REL, block_sums, blocks_beyond_last_digits, text_and_numbers
from gap_mllm.processing.json_files import loads_json

from . import reports

RUN_FINGERPRINT_FILE = "run_fingerprint.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# What transformers' Trainer saves beside a model (its names in transformers.trainer): no weights, nothing that changes
# an answer; training_args.bin holds the run's output_dir, so the same model rebuilt in another folder (a run state
# restored under another --out) was taken for another model and its kept answers refused
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt")
# What a model folder holds besides weights that changes the answers (evaluation_results.json, README.md and
# the training record are written or edited after training, so they are left out).
MODEL_CONFIGURATION_FILES = (
    "config.json", "generation_config.json", "processor_config.json", "preprocessor_config.json",
    "video_preprocessor_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "merges.txt", "chat_template.jinja", "chat_template.json", "adapter_config.json",
)  # fmt: skip
_CHUNK = 16 * 1024 * 1024
# the blocks of an annotation file's numbers sketched in its record: few, so that a record stays a few kB (an
# ablation keeps one per evaluation folder in git), and at least MIN_BLOCK numbers a block
ANNOTATION_BLOCKS = 16
MIN_BLOCK = 64

logger = logging.getLogger(__name__)


def file_sha256(path) -> str:
    """sha256 of a file's bytes, read in chunks (a multi-GB weight file is never held in memory); regular files
    only (gap_mllm.processing_gap_mllm: a FIFO is refused, not waited on)."""
    digest = hashlib.sha256()
    with open_regular_file(path) as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _files_digest(paths: list[Path]) -> str:
    """sha256 over the names and contents of `paths` (sorted by name)."""
    digest = hashlib.sha256()
    for path in sorted(paths, key=lambda p: p.name):
        digest.update(f"{path.name}\0{file_sha256(path)}\0".encode())
    return digest.hexdigest()


def local_model_folder(model_dir) -> Path:
    """The local folder of a model source: the folder itself, or a Hub id's snapshot (downloaded if needed; the
    local cache when offline), which is then what gets loaded."""
    path = Path(model_dir).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(model_dir)))


def model_fingerprint(folder) -> dict:
    """`{"weights": sha256, "configuration": sha256}` of a local model folder (module docstring)."""
    files = [path for path in Path(folder).iterdir() if path.is_file()]
    return {
        "weights": _files_digest([path for path in files if path.name.endswith(WEIGHT_SUFFIXES)
                                  and path.name not in TRAINER_FILES and not path.name.startswith("rng_state")]),
        "configuration": _files_digest([path for path in files if path.name in MODEL_CONFIGURATION_FILES]),
    }


class FrameDigests:
    """`file_content_digest` of each frame file, each file read once however many answers name it (a scene's frames
    serve many samples): call it with a path."""

    def __init__(self):
        self._known: dict[str, str] = {}

    def __call__(self, path) -> str:
        key = str(path)
        if key not in self._known:
            self._known[key] = file_content_digest(path)
        return self._known[key]


def frames_digest(frames, media_root, digests: FrameDigests) -> str:
    """The `frames` record of an answer row (module docstring): sha256 (32 hex digits) over the paths `frames` (as
    the requests name them, relative to `media_root`, in order) and each file's content (`digests`)."""
    digest = hashlib.sha256()
    for frame in frames:
        digest.update(f"{frame}\0{digests(Path(media_root) / frame)}\0".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def annotation_numbers(name: str, content: bytes) -> dict:
    """The sketch of the decimal numbers of annotation file `name` whose bytes are `content` (module docstring):
    `{"text": sha256 of the text around them, "count": n, "block": numbers a block, "sums": [blocks][K] weighted
    sums, "absolute": [blocks] sums of |x|}`; the weights follow the name. JSON keeps each float64 exactly."""
    text, numbers = text_and_numbers(content)
    block = max(MIN_BLOCK, -(-numbers.size // ANNOTATION_BLOCKS))
    sums, absolute = block_sums(name, numbers, block)
    return {"text": text.hex(), "count": int(numbers.size), "block": block, "sums": sums.tolist(),
            "absolute": absolute.tolist()}


def numbers_difference(recorded: dict, current: dict) -> str | None:
    """None when two sketches of `annotation_numbers` are of the same text with numbers within another CPU's last
    digits; else what differs, in words."""
    if recorded.get("text") != current.get("text"):
        return "its text differs (beyond the digits of its decimal numbers)"
    if recorded.get("count") != current.get("count"):
        return f"it holds {current.get('count')} decimal numbers, {recorded.get('count')} then"
    if recorded.get("block") != current.get("block"):
        return (f"the recorded sketch of its numbers has blocks of {recorded.get('block')} numbers, this version's "
                f"{current.get('block')}, which it cannot compare")
    try:
        sums, absolute = ([np.asarray(sketch[key], dtype=np.float64) for sketch in (recorded, current)]
                          for key in ("sums", "absolute"))
        beyond = blocks_beyond_last_digits(*sums, *absolute, int(current["count"]), int(current["block"]))
    except (KeyError, TypeError, ValueError) as error:  # a record edited by hand, or of another shape
        return f"the recorded sketch of its numbers cannot be compared ({type(error).__name__}: {error})"
    if beyond.any():
        return f"its decimal numbers differ by more than another CPU's last digits ({REL:g} relative)"
    return None


def run_fingerprint(task, model_folder, data_dir, annotation_file, max_new_tokens, quantize: str | None = None) -> dict:
    """The fingerprint of an evaluation run (module docstring); JSON-serialisable."""
    data = describe_data_root(data_dir)
    with open_regular_file(annotation_file) as handle:  # read once: its digest and its numbers' sketch
        annotation = handle.read()
    return {
        "task": {
            "name": task.name,
            "official_compat": task.official_compat,
            "max_new_tokens": max_new_tokens,
            "stage_budgets": [spec.official_max_new_tokens for spec in task.stage_specs],
            # only when on: a free run's fingerprint stays the one written before constrained decoding existed
            **({"constrained": True} if getattr(task, "constrained", False) else {}),
            **({"quantize": quantize} if quantize else {}),  # likewise: a run as saved keeps its fingerprint
        },
        "model": model_fingerprint(model_folder),
        "data": {
            "annotation_file": Path(annotation_file).name,
            "annotation_sha256": hashlib.sha256(annotation).hexdigest(),
            "annotation_numbers": annotation_numbers(Path(annotation_file).name, annotation),
            "kind": data["kind"],
            "name": data["name"],
            "details": data["details"],
        },
    }


# what a difference is called in the refusal, per recorded field
_FIELD_WORDS = {
    "task.name": "the task", "task.official_compat": "official_compat", "task.max_new_tokens": "the max_new_tokens cap",
    "task.stage_budgets": "the official token budgets", "task.constrained": "constrained decoding (--constrained)",
    "task.quantize": "the quantization of the weights (--quantize)", "model.weights": "the model weights",
    "model.configuration": "the model's configuration/tokenizer files", "data.annotation_file": "the annotation file name",
    "data.annotation_sha256": "the annotation file's content",
    "data.annotation_numbers": "the annotation file's numbers", "data.kind": "the kind of data", "data.name": "the data",
    "data.details": "the data's scenes/records",
}  # fmt: skip


def _short(value) -> str:
    """A recorded value as shown in a message: digests cut to 12 characters, others as JSON."""
    text = json.dumps(value)
    return text[:13] + '…"' if isinstance(value, str) and len(value) == 64 else text[:80]


def _annotation_fields(before: dict, now: dict) -> tuple[set, list[str]]:
    """(the annotation fields of the data records `before` and `now` that are settled here, what differs in words):
    the same bytes, or the same text and numbers within another CPU's last digits (module docstring), settle both
    fields; other bytes without a recorded sketch, or with one that differs, are one difference."""
    fields = {"annotation_sha256", "annotation_numbers"}
    if before.get("annotation_sha256") == now.get("annotation_sha256"):
        return fields, []  # the same bytes: a record without the sketch (older) is as good
    recorded = before.get("annotation_numbers")
    why = ("no sketch of its numbers was recorded, so only the same bytes resume" if not isinstance(recorded, dict)
           else numbers_difference(recorded, now.get("annotation_numbers") or {}))
    if why is None:
        return fields, []
    words = _FIELD_WORDS["data.annotation_sha256"]
    return fields, [f"{words} (recorded {_short(before.get('annotation_sha256'))}, now "
                    f"{_short(now.get('annotation_sha256'))}: {why})"]


def fingerprint_differences(recorded: dict, current: dict) -> list[str]:
    """`["the model weights (recorded "ab12…", now "cd34…")", ...]`: each field that differs, in words."""
    differences = []
    for part in ("task", "model", "data"):
        before, now = recorded.get(part) or {}, current.get(part) or {}
        settled = set()
        if part == "data":
            settled, found = _annotation_fields(before, now)
            differences += found
        for field in sorted((set(before) | set(now)) - settled):
            if before.get(field) != now.get(field):
                words = _FIELD_WORDS.get(f"{part}.{field}", f"{part} {field}")
                differences.append(f"{words} (recorded {_short(before.get(field))}, now {_short(now.get(field))})")
    return differences


def _answer_files(out_dir) -> list[Path]:
    """This folder's answer files that hold anything."""
    return [path for path in sorted(Path(out_dir).glob(reports.RAW_PATTERN)) if path.stat().st_size]


def check_resume(out_dir, fingerprint: dict) -> None:
    """ValueError unless the answers in `out_dir` (if any) were written by the run of `fingerprint`; reads only."""
    answers = _answer_files(out_dir)
    if not answers:
        return
    record_path = Path(out_dir) / RUN_FINGERPRINT_FILE
    fresh = (f"give another output folder (--out), or delete {', '.join(p.name for p in answers)} and "
             f"{RUN_FINGERPRINT_FILE} in {out_dir} to start fresh")
    try:
        recorded = loads_json(record_path.read_text(encoding="utf-8"), record_path)
    except FileNotFoundError:
        raise ValueError(f"{out_dir} holds answers ({answers[0].name}) but no {RUN_FINGERPRINT_FILE}, so which model, "
                         f"data and settings wrote them is unknown and they are not resumed: {fresh}") from None
    except (OSError, ValueError) as error:  # ValueError: not UTF-8, not JSON, nested too deep (JsonTooDeep)
        raise ValueError(f"{record_path}: the run record cannot be read ({getattr(error, 'reason', error)}); the "
                         "answers beside it are not "
                         f"resumed: {fresh}") from error
    current = json.loads(json.dumps(fingerprint))  # compared as it would be recorded (tuples become lists)
    differences = fingerprint_differences(recorded if isinstance(recorded, dict) else {}, current)
    if differences:
        raise ValueError(f"{out_dir} holds answers of another run, which would be scored as this one's: "
                         f"{'; '.join(differences)}. Rerun with the same settings to resume, or {fresh}")
    before, now = recorded.get("data") or {}, current.get("data") or {}
    if before.get("annotation_sha256") != now.get("annotation_sha256"):
        logger.info("%s: its answers were made on an annotation file %s that differs from this one only in the last "
                    "digits of its numbers (each within %g relative: another CPU's float maths); resuming them",
                    out_dir, now.get("annotation_file"), REL)


def discard_answers(out_dir) -> None:
    """Delete the answers of `out_dir` and their record (a run that answers them again: runner.py)."""
    for path in _answer_files(out_dir):
        path.unlink()
    (Path(out_dir) / RUN_FINGERPRINT_FILE).unlink(missing_ok=True)


def write_fingerprint(out_dir, fingerprint: dict) -> None:
    """Record `fingerprint` in `out_dir` (atomically: a reader sees the old record or the new one, whole)."""
    path = Path(out_dir) / RUN_FINGERPRINT_FILE
    text = json.dumps(fingerprint, indent=1, sort_keys=True) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


__all__ = ["ANNOTATION_BLOCKS", "RUN_FINGERPRINT_FILE", "FrameDigests", "annotation_numbers", "check_resume",
           "discard_answers", "frames_digest", "local_model_folder", "model_fingerprint", "numbers_difference",
           "run_fingerprint", "write_fingerprint"]
