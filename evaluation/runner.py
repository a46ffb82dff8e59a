"""Run one benchmark end to end: generate (or read) answers, score them, write the report.

    summary = run_evaluation("detection", data_dir="data/synth", out_dir="runs/detection", model_dir="ckpt")
    summary = run_evaluation("detection", data_dir=..., out_dir=..., predictions_file="answers.jsonl")

Data: `<data_dir>/annotations/<official file of the task and split>` (or `annotation_file=`), images
under `<data_dir>/scannet/posed_images`. Generation is batched (left padding, greedy) and resumable:
each finished sample is appended to `raw_outputs.rank<r>.jsonl` and skipped by the next run. Under
`accelerate launch` the pending samples are dealt to the processes (samples about one scene stay on
one process, which encodes the scene once and answers them all from it); the main process merges
every rank's file (by sample index, so the order is deterministic) and scores. A predictions
file (JSONL lines `{"id": ..., "raw": [text per stage]}`, or `"text": "..."` for one-stage tasks)
replaces the model, e.g. to re-score a run or to check an oracle.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.dataset_identity import describe_data_root
from gap_mllm.processing.held_out import check_held_out, record_scene_id
from gap_mllm.processing.scannet_layout import media_path, posed_images_dir

from . import reports, scene_generation
from .plots import write_plots
from .tasks import get_task, headline_value, sample_id

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


def read_predictions_file(path, stages: int) -> dict[str, list[str]]:
    out = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}, line {number}: not a JSON object ({error})") from error
        if not isinstance(row, dict) or "id" not in row:
            raise ValueError(f"{path}, line {number}: need an object with 'id' and 'raw' (or 'text')")
        texts = row.get("raw", [row["text"]] if "text" in row else None)
        if not isinstance(texts, list) or len(texts) != stages:
            raise ValueError(f"{path}, line {number}: need 'raw' with {stages} text(s) (or 'text' for one stage)")
        out[str(row["id"])] = [str(t) for t in texts]
    return out


def sample_batches(groups: list[list[int]], batch_size: int):
    """`(indices, shared)` batches: a group of several samples (one scene) is sent in batches of its own,
    answered through scene reuse (`shared=True`); single samples are batched together as before."""
    singles = []
    for group in groups:
        if len(group) == 1:
            singles.extend(group)
            if len(singles) == batch_size:
                yield singles, False
                singles = []
            continue
        for start in range(0, len(group), batch_size):
            yield group[start : start + batch_size], True
    if singles:
        yield singles, False


def generate_missing(task, records, ids, media_root, out_dir, model_dir, batch_size, max_new_tokens,
                     rank, world, device, progress=True) -> None:
    """Generate every sample whose id is not yet in the raw-output files (this rank's share).

    Samples about one scene (same images and marker at the first stage: ScanRefer's many expressions per
    scene) go to the same process and are answered from one encoding of the scene (scene_generation.py)."""
    done = reports.read_raw_outputs(out_dir)
    todo = [i for i, sid in enumerate(ids) if sid not in done]
    first_requests = {i: task.request(records[i], 0, [], media_root) for i in todo}
    mine = scene_generation.groups_for_rank(scene_generation.scene_groups(first_requests), rank, world)
    pending = sum(len(group) for group in mine)
    if not pending:
        return
    generator = scene_generation.SceneGenerator(model_dir, device=device, max_new_tokens=max_new_tokens)
    reports.end_torn_line(reports.raw_output_file(out_dir, rank))
    with open(reports.raw_output_file(out_dir, rank), "a", encoding="utf-8") as handle, \
            tqdm(total=pending, desc=f"{task.name} (rank {rank})", disable=not progress or rank != 0) as bar:
        for batch, shared in sample_batches(mine, batch_size):
            texts = [[] for _ in batch]
            for stage in range(task.stages):
                requests = [task.request(records[i], stage, texts[j], media_root) for j, i in enumerate(batch)]
                for j, request in enumerate(requests):  # annotation paths are relative to posed_images
                    request.images = [str(media_path(media_root, p, ids[batch[j]])) for p in request.images]
                answer = generator.generate_on_scenes if shared else generator.generate
                for j, text in enumerate(answer(requests)):
                    texts[j].append(text)
            for j, i in enumerate(batch):
                reports.append_raw_output(handle, ids[i], i, texts[j])
            bar.update(len(batch))


def run_evaluation(task_name: str, data_dir, out_dir, model_dir=None, predictions_file=None, split: str = "val",
                   annotation_file=None, batch_size: int = 1, max_new_tokens: int | None = None,
                   official_compat: bool = False, meteor: bool | None = None, limit: int | None = None,
                   plots: bool = True, progress: bool = True) -> dict | None:
    """Evaluate one task; returns the summary on the main process (None on the others).

    Exactly one of `model_dir` (generate) and `predictions_file` (score given texts) is needed.
    """
    if (model_dir is None) == (predictions_file is None):
        raise ValueError("pass exactly one of model_dir and predictions_file")
    task = get_task(task_name, official_compat)
    task.check_scoring_dependencies()  # before the answers are generated
    annotation_file = Path(annotation_file) if annotation_file else find_annotation_file(data_dir, task.annotation_task, split)
    records = load_annotation_file(annotation_file)
    if limit is not None:
        records = records[:limit]
    ids = [sample_id(r, i) for i, r in enumerate(records)]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{annotation_file}: sample ids are not unique")
    if model_dir is not None:  # a model is never scored on scenes it trained on (processing/held_out.py)
        check_held_out(model_dir, data_dir, {record_scene_id(r) for r in records})
    media_root = posed_images_dir(data_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    if predictions_file is not None:
        rank, outputs_by_id = 0, read_predictions_file(predictions_file, task.stages)
    else:
        rank, world, device, barrier = _process_state()
        generate_missing(task, records, ids, media_root, out_dir, model_dir, batch_size, max_new_tokens,
                         rank, world, device, progress)
        barrier()
        outputs_by_id = reports.read_raw_outputs(out_dir)
    if rank != 0:
        return None
    missing = [sid for sid in ids if sid not in outputs_by_id]
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
        "headline": {"name": key, "description": description, "value": headline_value(metrics, key)},
        "metrics": metrics,
    }
    reports.write_summary(out_dir, summary, f"{task.name}: {annotation_file.name}")
    if plots:
        write_plots(task.name, records, rows, metrics, media_root, out_dir)
    return summary


def write_oracle_predictions(task_name: str, data_dir, path, split: str = "val", annotation_file=None) -> Path:
    """Write the ground truth of every sample as model text (a predictions file that should score 100%)."""
    task = get_task(task_name)
    annotation_file = Path(annotation_file) if annotation_file else find_annotation_file(data_dir, task.annotation_task, split)
    records = load_annotation_file(annotation_file)
    media_root = posed_images_dir(data_dir)
    with open(path, "w", encoding="utf-8") as handle:
        for i, record in enumerate(records):
            handle.write(json.dumps({"id": sample_id(record, i), "raw": task.oracle(record, media_root)}) + "\n")
    return Path(path)
