"""Run one benchmark end to end: generate (or read) answers, score them, write the report.

    summary = run_evaluation("detection", data_dir="data/synth", out_dir="runs/detection", model_dir="ckpt")
    summary = run_evaluation("detection", data_dir=..., out_dir=..., predictions_file="answers.jsonl")

Data: `<data_dir>/annotations/<official file of the task and split>` (or `annotation_file=`), images
under `<data_dir>/scannet/posed_images`. Generation is batched (left padding, greedy) and resumable:
each finished sample is appended to `raw_outputs.rank<r>.jsonl` and skipped by the next run, if it is the same
run: same model files, annotation file, data and task settings (`run_fingerprint.json`; run_fingerprint.py),
else the run is refused before anything is generated or scored; and if the frames the answer was made from are
the same (the digest in its row): an answer whose frames changed since is answered again (a warning names the
samples). The summary says how many answers were reused (`summary["answers"]`). One run writes into a folder at a
time: a run holds `evaluation.lock` there from before that check to its end, and a second run into the folder is refused
(folder_lock.py: an OS file lock the kernel releases however the run ends, seen across process-id namespaces); the
folder is new, empty or an evaluation's own, never a folder of the user's files (folder_lock.py, the output-folder
rule of every writer), checked before any work. Under
`accelerate launch` the pending samples are dealt to the processes (samples about one scene stay on
one process, which encodes the scene once and answers them all from it); the main process merges
every rank's file (by sample index, so the order is deterministic) and scores. A predictions
file (JSONL lines `{"id": ..., "raw": [text per stage]}`, or `"text": "..."` for one-stage tasks)
replaces the model, e.g. to re-score a run or to check an oracle.

A predictions file is JSON Lines: one object per "\n"-terminated line (other line breaks, such as U+2028
inside a string, are text), in UTF-8. Each id may appear once; `raw` is a list of one string per stage (`text`:
one string; a row with both is refused). A row that breaks this is an error naming the file and the line (and
the id), never a value turned into text and scored. Rows whose id is not among the samples scored are counted and reported
(`summary["predictions_file"]`, and a warning): ids of the annotation file left out by `limit`, and ids
the annotation file does not have. Samples without a row are an error listing their ids. `limit` must be
a positive number of samples, and a run with no sample to score is an error naming the annotation file.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gap_mllm.files import read_regular_bytes
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.dataset_identity import describe_data_root
from gap_mllm.processing.errors import MissingDependency
from gap_mllm.processing.held_out import check_held_out, record_scene_id
from gap_mllm.processing.json_files import loads_json
from gap_mllm.processing.model_paths import quantize_missing
from gap_mllm.processing.output_folder import check_outside_data
from gap_mllm.processing.scannet_layout import media_path, posed_images_dir

from . import reports, scene_generation
from .batched_answers import answer_in_batches
from .folder_lock import check_evaluation_folder, claim_evaluation_folder, evaluation_folder_lock
from .plots import write_plots
from .run_fingerprint import (
    FrameDigests,
    check_resume,
    discard_answers,
    frames_digest,
    local_model_folder,
    model_fingerprint,
    run_fingerprint,
    write_fingerprint,
)
from .tasks import (
    check_batch_size,
    check_markers,
    check_prompt_texts,
    check_records,
    check_sample_limit,
    get_task,
    headline_value,
    sample_id,
)

logger = logging.getLogger(__name__)


def _process_state():
    """(process index, number of processes, device, barrier) from accelerate, or a single CPU process."""
    try:  # accelerate is optional (the eval and train extras): without it, one process
        from accelerate import PartialState
    except ImportError:
        return 0, 1, "cpu", lambda: None
    # PartialState only forms a CPU (gloo) group when told to: without a GPU, or when the launcher
    # says so (ACCELERATE_USE_CPU), each process would otherwise think it is alone.
    use_cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    state = PartialState(cpu=use_cpu)
    return state.process_index, state.num_processes, state.device, state.wait_for_everyone


def _row_texts(row: dict, stages: int) -> list[str] | str:
    """The texts of a predictions row, or what is wrong with them (a row with both 'raw' and 'text' is refused:
    which one to score would be a guess)."""
    if "raw" in row and "text" in row:
        return "the row has both 'raw' and 'text'; give one ('raw': a list of one string per stage, 'text': one string)"
    if "raw" in row:
        texts = row["raw"]
        if not isinstance(texts, list) or len(texts) != stages:
            return f"'raw' must be a list of {stages} string(s) (one per stage), got {json.dumps(texts)[:80]}"
    elif "text" in row:
        if stages != 1:
            return f"'text' holds one answer but the task has {stages} stages: give 'raw' with {stages} strings"
        texts = [row["text"]]
    else:
        return "the row has neither 'raw' nor 'text'"
    wrong = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if wrong:
        return (f"answer {wrong[0]} is {type(texts[wrong[0]]).__name__} {json.dumps(texts[wrong[0]])[:60]}, not a string "
                "(an answer is the model's text)")
    return list(texts)


def read_predictions_file(path, stages: int) -> dict[str, list[str]]:
    """`{id: [text per stage]}` of a JSON Lines predictions file (module docstring); a ValueError naming the
    file, the line and the id for a row that is not an object with a unique string/integer `id` and `stages`
    strings."""
    out: dict[str, list[str]] = {}
    line_of: dict[str, int] = {}
    data = read_regular_bytes(path, "predictions file")  # a FIFO is refused, not waited on
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise ValueError(f"{path}, line {line}: not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start}); "
                         "a predictions file is JSON Lines in UTF-8: save it as UTF-8") from None
    # JSON Lines separates records by "\n" only; str.splitlines() would also split inside a string at U+2028.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = loads_json(line, where)  # nested too deep: JsonTooDeep, naming the line
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not a JSON object ({error})") from error
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{where}: need an object with 'id' and 'raw' (or 'text')")
        sample = row["id"]
        if isinstance(sample, bool) or not isinstance(sample, (str, int)):
            raise ValueError(f"{where}: 'id' must be a string or an integer, got {json.dumps(sample)[:60]}")
        sample = str(sample)
        if sample in line_of:
            raise ValueError(f"{where}: id {sample!r} already has a row (line {line_of[sample]}); each sample needs exactly one")
        texts = _row_texts(row, stages)
        if isinstance(texts, str):
            raise ValueError(f"{where} (id {sample!r}): {texts}")
        out[sample], line_of[sample] = texts, number
    return out


def _unscored_rows(outputs_by_id: dict, ids: list[str], all_ids: list[str]) -> dict:
    """Rows of a predictions file that are not scored: ids left out by `limit`, ids not in the annotations."""
    scored, known = set(ids), set(all_ids)
    after_limit = [sid for sid in outputs_by_id if sid in known and sid not in scored]
    unknown = [sid for sid in outputs_by_id if sid not in known]
    return {"rows": len(outputs_by_id), "scored": len(scored & set(outputs_by_id)), "after_limit": len(after_limit),
            "not_in_annotations": len(unknown), "not_in_annotations_first": unknown[:5]}


def sample_requests(task, records, ids, media_root):
    """`(sample index, stage, previous texts) -> Request` of `task` for `records` (ids `ids`), its image paths
    resolved under `media_root` and the sample named (what `answer_in_batches` asks for; bench_eval_scale.py too)."""

    def request_for(i, stage, previous):
        request = task.request(records[i], stage, previous, media_root)
        # annotation paths are relative to posed_images
        request.images = [str(media_path(media_root, p, ids[i])) for p in request.images]
        request.sample = ids[i]  # named if its prompt is refused (processing/collator.py)
        return request

    return request_for


def answer_frames(task, record, texts: list[str], media_root) -> list[str]:
    """The frames (relative to `media_root`) an answer `texts` (one text per stage) of `record` was made from: the
    images of each stage's request, a later stage's as the earlier answers chose them (grounding's neighbours)."""
    return [image for stage in range(task.stages)
            for image in task.request(record, stage, texts[:stage], media_root).images]


SHOWN_SAMPLES = 5  # samples named in a line about answers answered again


def reuse_answers(task, records, ids, media_root, out_dir, digests: FrameDigests,
                  unrecorded_frames: str = "answer_again") -> dict:
    """Which answers in `out_dir` (of this run's fingerprint: `check_resume`) are reused: those whose row records the
    digest of the frames they were made from and whose frames are still the same (run_fingerprint.py). The rows of
    the others (frames changed, or no digest recorded) are removed, so that they are answered again, with a warning
    naming them; with `unrecorded_frames="take_current"` a row that records no digest (an earlier version wrote it)
    is reused as made from the frames as they are now, and a warning says how many were. Returns
    `{"reused": n, "answered_again": m, "new": k}` (k: samples without an answer before). Main process only, before
    any process reads the answers."""
    rows = reports.read_raw_rows(out_dir)
    changed, unrecorded, reused = [], [], 0
    for index, sid in enumerate(ids):
        row = rows.get(sid)
        if row is None:
            continue
        if not isinstance(row.get("frames"), str) or len(row["raw"]) != task.stages:  # no record, or not of this task
            unrecorded.append(sid)
        elif row["frames"] != frames_digest(answer_frames(task, records[index], row["raw"], media_root), media_root,
                                            digests):
            changed.append(sid)
        else:
            reused += 1
    if unrecorded and unrecorded_frames == "take_current":
        logger.warning("%s: %d answer(s) there record no digest of the frames they were made from (an earlier version "
                       "wrote them): reused as made from the frames as they are now (unrecorded_frames=take_current)",
                       out_dir, len(unrecorded))
        reused, unrecorded = reused + len(unrecorded), []
    again = changed + unrecorded
    if again:
        reports.drop_raw_outputs(out_dir, again)
        for why, stale in (("were made on frames that have changed since", changed),
                           ("record no digest of the frames they were made from (an earlier version wrote them)",
                            unrecorded)):
            if stale:
                more = ", ..." if len(stale) > SHOWN_SAMPLES else ""
                shown = ", ".join(repr(sid) for sid in stale[:SHOWN_SAMPLES]) + more
                logger.warning("%s: %d answer(s) there %s, so they are answered again: %s", out_dir, len(stale), why,
                               shown)
    return {"reused": reused, "answered_again": len(again), "new": len(ids) - reused - len(again)}


# The generator `one_load_per_model` keeps while its block runs: {"key": ..., "generator": ...}, or None outside one.
_kept_generator: dict | None = None


@contextmanager
def one_load_per_model():
    """Within the block, the evaluations of one model (several tasks, several data folders: what `gap-mllm mini`
    evaluates of each model) load it once instead of once per `run_evaluation`. The loaded model is reused only for
    the same folder with the same weights and configuration (`model_fingerprint`), device and compile setting, and
    only one is kept at a time (a full-size model takes gigabytes). A nested block shares the outer one's."""
    global _kept_generator
    outer = _kept_generator
    if outer is None:
        _kept_generator = {}
    try:
        yield
    finally:
        if outer is None:
            _kept_generator = None


def _generator(model_dir, model_identity: dict, device, max_new_tokens, compile_decoding, quantize=None):
    """A `SceneGenerator` of `model_dir`: the one `one_load_per_model` keeps when it is of the same model, else a
    newly loaded one (kept in its place inside such a block)."""
    key = (str(Path(model_dir).resolve()), json.dumps(model_identity, sort_keys=True), str(device), compile_decoding,
           quantize)
    kept = _kept_generator
    if kept is not None and kept.get("key") == key:
        generator = kept["generator"]
        generator.max_new_tokens = max_new_tokens
        # as newly loaded: a scene's key is its name, and names repeat across data folders (the fresh seeds' scenes)
        generator.forget_scenes()
        generator.scenes_encoded = 0
        return generator
    if kept is not None:
        kept.clear()  # the model kept before is let go before this one loads
    generator = scene_generation.SceneGenerator(model_dir, device=device, max_new_tokens=max_new_tokens,
                                                compile_decoding=compile_decoding, quantize=quantize)
    if kept is not None:
        kept.update(key=key, generator=generator)
    return generator


def generate_missing(task, records, ids, media_root, out_dir, model_dir, batch_size, max_new_tokens,
                     rank, world, device, progress=True, scene_reuse=True, compile_decoding="auto",
                     model_identity=None, digests: FrameDigests | None = None, quantize: str | None = None) -> None:
    """Generate every sample whose id is not yet in the raw-output files (this rank's share); each row records the
    digest of the frames its answer was made from (`frames_digest`).

    Samples about one scene (same images and marker at the first stage: ScanRefer's many expressions per
    scene) go to the same process and are answered from one encoding of the scene (scene_generation.py);
    `scene_reuse=False` answers each with a full call (the one-at-a-time protocol, for comparison).
    `model_identity`: the model's `model_fingerprint` (default: computed here), which `one_load_per_model` checks.
    `digests`: the frames' digests known so far (`reuse_answers` read them; default: none). `quantize`: a `--quantize`
    choice (`gap_mllm.processing.model_paths.quantization_kwargs`; None: the weights as saved)."""
    done = reports.read_raw_outputs(out_dir)
    todo = [i for i, sid in enumerate(ids) if sid not in done]
    first_requests = {i: task.request(records[i], 0, [], media_root) for i in todo}
    mine = scene_generation.groups_for_rank(scene_generation.scene_groups(first_requests), rank, world)
    pending = sum(len(group) for group in mine)
    if not pending:
        return
    if model_identity is None:
        model_identity = model_fingerprint(model_dir)
    generator = _generator(model_dir, model_identity, device, max_new_tokens, compile_decoding, quantize)
    request_for = sample_requests(task, records, ids, media_root)
    digests = FrameDigests() if digests is None else digests
    reports.end_torn_line(reports.raw_output_file(out_dir, rank))
    with open(reports.raw_output_file(out_dir, rank), "a", encoding="utf-8") as handle, \
            tqdm(total=pending, desc=f"{task.name} (rank {rank})", disable=not progress or rank != 0) as bar:
        for batch, texts in answer_in_batches(generator, request_for, mine, task.stages, batch_size, scene_reuse):
            for j, i in enumerate(batch):
                frames = frames_digest(answer_frames(task, records[i], texts[j], media_root), media_root, digests)
                reports.append_raw_output(handle, ids[i], i, texts[j], frames)
            bar.update(len(batch))


OTHER_RUN_ANSWERS = ("refuse", "answer_again")
UNRECORDED_FRAMES = ("answer_again", "take_current")


def _other_run(out_dir: Path, fingerprint: dict, other_run_answers: str) -> bool:
    """Whether `out_dir` holds answers of another run that this one answers again; raises the refusal when it
    holds some and `other_run_answers` is "refuse" (run_evaluation)."""
    try:
        check_resume(out_dir, fingerprint)
    except ValueError as refusal:
        if other_run_answers == "refuse":
            raise
        logger.warning("%s: its answers are answered again (other_run_answers=answer_again): %s", out_dir, refusal)
        return True
    return False


def run_evaluation(task_name: str, data_dir, out_dir, model_dir=None, predictions_file=None, split: str = "val",
                   annotation_file=None, batch_size: int = 1, max_new_tokens: int | None = None,
                   official_compat: bool = False, meteor: bool | None = None, limit: int | None = None,
                   plots: bool = True, progress: bool = True, scene_reuse: bool = True,
                   constrained: bool = False, compile_decoding: str = "auto",
                   other_run_answers: str = "refuse", unrecorded_frames: str = "answer_again",
                   quantize: str | None = None) -> dict | None:
    """Evaluate one task; returns the summary on the main process (None on the others).

    Exactly one of `model_dir` (generate) and `predictions_file` (score given texts) is needed.
    `scene_reuse=False` answers every sample with its own full model call (for comparison; same texts).
    `compile_decoding`: "auto" (default: compiled decode steps on CUDA), "on" or "off" (gap_mllm.generation; same texts).
    `constrained=True` decodes every answer inside its task's grammar (the paper's protocol decodes freely).
    `quantize`: a `--quantize` choice, the language model quantized at load (`gap_mllm.processing.model_paths`
    `quantization_kwargs`; recorded in the run's fingerprint); None (default): the weights as saved.
    `other_run_answers`: what becomes of answers in `out_dir` that another run wrote (run_fingerprint.py): "refuse"
    (default: a ValueError naming what differs, nothing changed) or "answer_again" (a warning; they are deleted and
    answered by this run: for a pipeline that owns `out_dir` and keeps a copy of them, as `gap-mllm mini` does).
    `unrecorded_frames`: what becomes of an answer whose row records no digest of its frames (written before rows
    recorded one): "answer_again" (default) or "take_current" (reused as made from the frames as they are now, with a
    warning counting them: for a pipeline that wrote its data folder itself and checks it, as `gap-mllm mini` does).
    """
    if other_run_answers not in OTHER_RUN_ANSWERS:
        raise ValueError(f"other_run_answers={other_run_answers!r}: one of {', '.join(OTHER_RUN_ANSWERS)}")
    if unrecorded_frames not in UNRECORDED_FRAMES:
        raise ValueError(f"unrecorded_frames={unrecorded_frames!r}: one of {', '.join(UNRECORDED_FRAMES)}")
    if (model_dir is None) == (predictions_file is None):
        raise ValueError("pass exactly one of model_dir and predictions_file")
    check_evaluation_folder(out_dir)  # a folder of the user's (or "."): refused before any work (folder_lock.py)
    check_outside_data(out_dir, data_dir, f"--out {out_dir}", f"--data {data_dir}")
    check_sample_limit(limit)
    check_batch_size(batch_size)
    missing = quantize_missing(quantize) if model_dir is not None else None  # before any work
    if missing is not None:
        raise MissingDependency(missing)
    if constrained and predictions_file is not None:
        raise ValueError("constrained decoding applies to generated answers; --predictions are scored as given")
    task = get_task(task_name, official_compat, constrained)
    task.check_scoring_dependencies()  # before the answers are generated
    annotation_file = Path(annotation_file) if annotation_file else find_annotation_file(data_dir, task.annotation_task, split)
    records = load_annotation_file(annotation_file)
    all_ids = [sample_id(r, i) for i, r in enumerate(records)]
    duplicated = sorted(sid for sid, count in Counter(all_ids).items() if count > 1)
    if duplicated:
        raise ValueError(f"{annotation_file}: sample ids are not unique ({len(duplicated)} repeated, e.g. {duplicated[0]!r})")
    if limit is not None:
        records = records[:limit]
    if not records:
        raise ValueError(f"{annotation_file}: no samples to evaluate (the file holds no records)")
    ids = all_ids[: len(records)]
    check_records(records, ids, annotation_file)  # each an object with its frames (`"images": []` has none)
    task.check_ground_truth(records, ids)  # before any answer is generated (a missing detection `boxes`, ...)
    media_root = posed_images_dir(data_dir)
    if model_dir is not None:  # one line when a model is scored on scenes it trained on (processing/held_out.py)
        check_held_out(model_dir, data_dir, {record_scene_id(r) for r in records})
        check_prompt_texts(records, ids, annotation_file)  # no prompt may write chat turns (gap_mllm.tasks_gap_mllm)
        check_markers(task, records, ids, media_root)  # a marked pixel inside its frame, before the model loads
    out_dir = Path(out_dir)
    rank, world, device, barrier = _process_state() if predictions_file is None else (0, 1, "cpu", lambda: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one writer per folder (folder_lock.py): taken before the fingerprint check, held until the summary is written;
    # the main process holds it for every process of a sharded run
    with evaluation_folder_lock(out_dir, take=rank == 0):
        if rank == 0:  # checked again under the lock, and marked as an evaluation's before anything is written
            claim_evaluation_folder(out_dir)
        barrier()  # no process reads the folder before the main one holds it
        return _evaluate_into(task, records, ids, all_ids, annotation_file, data_dir, media_root, out_dir, model_dir,
                              predictions_file, rank, world, device, barrier, batch_size, max_new_tokens,
                              official_compat, meteor, limit, plots, progress, scene_reuse, compile_decoding,
                              other_run_answers, unrecorded_frames, quantize)


def _evaluate_into(task, records, ids, all_ids, annotation_file, data_dir, media_root, out_dir, model_dir,
                   predictions_file, rank, world, device, barrier, batch_size, max_new_tokens, official_compat, meteor,
                   limit, plots, progress, scene_reuse, compile_decoding="auto",
                   other_run_answers="refuse", unrecorded_frames="answer_again", quantize=None) -> dict | None:
    """The answers (generated, resumed or read), their scores and the report of `run_evaluation`, written into
    `out_dir` while this run holds its lock."""
    unscored_rows = answers = None
    if predictions_file is not None:
        outputs_by_id = read_predictions_file(predictions_file, task.stages)
        unscored_rows = _unscored_rows(outputs_by_id, ids, all_ids)
        if unscored_rows["not_in_annotations"]:
            logger.warning("%s: %d row(s) not scored: their ids are not in %s (first: %s)", predictions_file,
                           unscored_rows["not_in_annotations"], annotation_file.name, unscored_rows["not_in_annotations_first"])
        if unscored_rows["after_limit"]:
            logger.info("%s: %d row(s) not scored: left out by limit=%s", predictions_file, unscored_rows["after_limit"], limit)
    else:
        # answers already in out_dir are resumed only if this same run wrote them (run_fingerprint.py); every
        # process reads the same files, so all refuse alike, and none writes before all have checked
        model_dir = local_model_folder(model_dir)  # a Hub id: its snapshot, hashed here and then loaded
        fingerprint = run_fingerprint(task, model_dir, data_dir, annotation_file, max_new_tokens, quantize)
        other_run = _other_run(out_dir, fingerprint, other_run_answers)
        barrier()
        digests = FrameDigests()
        if rank == 0:
            if other_run:
                discard_answers(out_dir)
            write_fingerprint(out_dir, fingerprint)
            answers = reuse_answers(task, records, ids, media_root, out_dir, digests, unrecorded_frames)
        barrier()  # no process reads the answers before the main one removed those answered again
        generate_missing(task, records, ids, media_root, out_dir, model_dir, batch_size, max_new_tokens,
                         rank, world, device, progress, scene_reuse, compile_decoding, fingerprint["model"], digests,
                         quantize)
        barrier()
        outputs_by_id = reports.read_raw_outputs(out_dir)
    if rank != 0:
        return None
    missing = [sid for sid in ids if sid not in outputs_by_id]
    if missing and predictions_file is not None:
        shown = ", ".join(repr(sid) for sid in missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise ValueError(f"{len(missing)} of the {len(ids)} sample(s) of {annotation_file.name} have no row in the "
                         f"predictions file {predictions_file}: {shown}")
    if missing:
        raise RuntimeError(f"{len(missing)} sample(s) have no output (first: {missing[0]}); rerun to resume")

    outputs = [outputs_by_id[sid] for sid in ids]
    rows, metrics = task.evaluate(records, outputs, official_compat=official_compat, meteor=meteor)
    reports.write_jsonl(out_dir / "samples.jsonl", rows)
    key, description = task.headline
    summary = {
        "task": task.name,
        "annotation_file": annotation_file.name,
        "num_samples": len(records),
        "official_compat": official_compat,
        "data": describe_data_root(data_dir),  # what the card may call this data (never guessed)
        "source": "predictions" if predictions_file is not None else "model",
        **({"predictions_file": unscored_rows} if unscored_rows is not None else {"answers": answers}),
        "headline": {"name": key, "description": description, "value": headline_value(metrics, key)},
        "metrics": metrics,
    }
    reports.write_summary(out_dir, summary, f"{task.name}: {annotation_file.name}")
    if plots:
        write_plots(task.name, records, rows, metrics, media_root, out_dir)
    return summary


def write_oracle_predictions(task_name: str, data_dir, path, split: str = "val", annotation_file=None) -> Path:
    """Write the ground truth of every sample as model text (a predictions file that should score 100%) to the new
    file `path`: an existing file is refused, never overwritten, and the file appears whole or not at all (written
    beside it, then linked in place, which fails if another writer made `path` meanwhile)."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: the file exists; oracle predictions go to a new file only (nothing was written)")
    task = get_task(task_name)
    annotation_file = Path(annotation_file) if annotation_file else find_annotation_file(data_dir, task.annotation_task, split)
    records = load_annotation_file(annotation_file)
    check_records(records, [sample_id(r, i) for i, r in enumerate(records)], annotation_file)
    media_root = posed_images_dir(data_dir)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8") as handle:
            for i, record in enumerate(records):
                handle.write(json.dumps({"id": sample_id(record, i), "raw": task.oracle(record, media_root)}) + "\n")
        try:
            os.link(partial, path)
        except FileExistsError:
            raise FileExistsError(f"{path}: the file appeared while the oracle was written; it was left as it is") from None
    finally:
        partial.unlink(missing_ok=True)
    return path
