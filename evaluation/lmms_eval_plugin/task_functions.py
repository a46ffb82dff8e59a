"""The functions the plugin's task YAMLs name (`!function gap_mllm.evaluation.lmms_eval_plugin.task_functions.X`).

Prompts and frames: `documents.request_for` (evaluation/tasks.py's `Benchmark.request`). Scores: this package's
scorers, `Benchmark.evaluate`, run once over all the documents of a task in `aggregate_*` (lmms-eval gives an
aggregation the `process_results` value of every document): detection F1 is pooled over samples and CIDEr's IDF
is computed over the set, so no score here is a mean of per-document numbers. A `process_results` value is small
(the answer texts and where the record lives: lmms-eval logs it once per metric and document); the aggregation
reads the records from the annotation file, checking every sample id. The values are the summary of
`gap-mllm evaluate --predictions` on the same texts, key for key (tests/test_lmms_eval_plugin.py).

ScanRefer's two stages are one lmms-eval document with `output_type: generate_until_multi_round`: lmms-eval
0.7.3 lets a multi-round model ask the task, after each round, for the next round's frames and prompt
(`grounding_doc_to_text(doc, previous_output=..., round_idx=...)`); stage 2's frames are those around the
frame stage 1 selected (the official protocol), so they exist only after stage 1 has answered.
"""

from __future__ import annotations

from functools import lru_cache

from gap_mllm.processing.tasks import LiveMapping, package_task, package_task_names, package_tasks

from ..tasks import headline_value
from . import aggregator_name
from .documents import benchmark_named, benchmark_of, check_document, media_root_of, record_of, records_at, request_for

# benchmark -> {lmms-eval metric name -> key (dotted path) in its summary (`Benchmark.evaluate`)} of each task module
# with an lmms-eval task (`PackageTask.lmms_metric_keys`)
METRICS = LiveMapping(lambda: {task.name: task.lmms_metric_keys for task in package_tasks() if task.lmms_name})


# ------------------------------------------------------------------------------------------ requests


def doc_to_visual(doc) -> list[str]:
    """The first model call's frames (absolute paths; the plugin's model reads them itself)."""
    return request_for(doc, 0, []).images


def doc_to_text(doc, lmms_eval_specific_kwargs=None) -> str:
    """The first model call's human-turn prompt, one `<image>` per frame (the official annotation layout)."""
    return request_for(doc, 0, []).prompt


def doc_to_target(doc) -> str:
    """The ground truth written as the last stage's model text (what lmms-eval logs as the target)."""
    return benchmark_of(doc).oracle(record_of(doc), media_root_of(doc))[-1]


def grounding_doc_to_text(doc, lmms_eval_specific_kwargs=None, previous_output=None, round_idx=None,
                          previous_round_info=None):
    """lmms-eval's multi-round protocol for the two ScanRefer stages.

    round_idx None: the stage-1 prompt (frame selection over all frames). round_idx r >= 1, with the answers of
    rounds 0..r-1 in `previous_output`: `(frames, prompt, done, answers so far, None)` for stage r, or done=True
    after the last stage (stage 2 takes the frames around the frame stage 1 selected)."""
    if round_idx is None:
        return doc_to_text(doc)
    previous = [str(text) for text in (previous_output or [])]
    if len(previous) != round_idx:
        raise ValueError(f"document {doc['id']!r}: round {round_idx} needs the {round_idx} earlier answer(s), got {len(previous)}")
    if round_idx >= benchmark_of(doc).stages:
        return None, None, True, previous, None
    request = request_for(doc, round_idx, previous)
    return request.images, request.prompt, False, previous, None


# ------------------------------------------------------------------------------------------- scoring


def process_results(doc, results) -> dict:
    """Every metric of the document's task gets the same value: the answer texts and the document (the scores
    need the whole set, see `aggregate`). `results[0]` is one text (one-stage tasks) or the list of the rounds'
    texts (ScanRefer)."""
    check_document(doc)
    benchmark = benchmark_of(doc)
    answer = results[0]
    texts = [answer] if isinstance(answer, str) else list(answer)
    if len(texts) != benchmark.stages or not all(isinstance(t, str) for t in texts):
        raise ValueError(f"document {doc['id']!r} ({benchmark.name}): need {benchmark.stages} answer text(s), got {answer!r}")
    item = {"id": doc["id"], "index": int(doc["index"]), "task": doc["task"], "official_compat": bool(doc["official_compat"]),
            "meteor": bool(doc["meteor"]), "annotation_file": doc["annotation_file"], "raw": texts}
    return {metric: item for metric in METRICS[benchmark.name]}


def _items_key(items) -> tuple:
    if not items:
        raise ValueError("no documents to score")
    tasks = {(item["task"], item["official_compat"], item["meteor"], item["annotation_file"]) for item in items}
    if len(tasks) != 1:
        raise ValueError(f"one aggregation got documents of several tasks / modes / files: {sorted(tasks)}")
    ordered = sorted(items, key=lambda item: item["index"])
    indices = [item["index"] for item in ordered]
    if len(set(indices)) != len(indices):
        raise ValueError("one aggregation got a document twice")
    return (*tasks.pop(), tuple((item["index"], item["id"], tuple(item["raw"])) for item in ordered))


@lru_cache(maxsize=8)
def _summary(task: str, official_compat: bool, annotation_file: str, rows: tuple, meteor: bool) -> dict:
    """`Benchmark.evaluate` over the documents in annotation order (cached: every metric of a task reads it)."""
    benchmark = benchmark_named(task, official_compat)
    records = records_at(annotation_file, [index for index, _, _ in rows], [sid for _, sid, _ in rows])
    outputs = [list(raw) for _, _, raw in rows]
    _, metrics = benchmark.evaluate(records, outputs, official_compat=official_compat, meteor=meteor)
    return metrics


def aggregate(items, metric: str):
    """The value of one lmms-eval metric over all documents: the summary key `METRICS[task][metric]`."""
    task, official_compat, meteor, annotation_file, rows = _items_key(items)
    # METEOR (Java, seconds of start-up) runs only for the metric that reports it (`PackageTask.lmms_option_metrics`),
    # when the documents ask for it (`gap-mllm export-lmms --no-meteor`: None, as `gap-mllm evaluate --no-meteor`);
    # the task's other scores do not depend on it
    options = package_task(task).lmms_option_metrics if task in package_task_names() else {}
    summary = _summary(task, official_compat, annotation_file, rows, meteor and metric == options.get("meteor"))
    return headline_value(summary, METRICS[task][metric])


def _aggregator(metric: str):
    """The lmms-eval `aggregation` function of one metric (the task YAMLs name it by its module attribute)."""

    def aggregate_metric(items):
        return aggregate(items, metric)

    return aggregate_metric



def __getattr__(name: str):
    """The aggregation of a task module's lmms-eval metric, by the name its YAML gives it
    (`PackageTask.lmms_aggregators`, else `aggregator_name(metric)`)."""
    for task in package_tasks():
        if task.lmms_name and name in task.lmms_aggregators:
            return _aggregator(task.lmms_aggregators[name])
        for metric in task.lmms_metric_keys if task.lmms_name else ():
            if aggregator_name(metric) == name:
                return _aggregator(metric)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
