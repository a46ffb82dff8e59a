"""The benchmarks: how each asks the model (registry tasks), and how it is scored.

A benchmark is a registry task (`gap_mllm.tasks_gap_mllm`: name, prompts, parsers, budgets, stop rules
are defined there); this module adds only what evaluation needs on top. Every benchmark reads the
official evaluation annotation records (docs/method.md §7.3; SynthRooms writes the same schema) and defines:
    spec / stage_specs     the registry task and the task asked at each stage (a task run in stages: its stages)
    headline               (key or dotted path in the summary, description): the figure a run reports
    logged_metrics         {logged name: key or dotted path in the summary}: what a training run logs
                           (evaluation/in_memory.py); the headline is one of them
    stages                 number of model calls per sample (one per stage)
    request(record, stage, previous_outputs, media_root) -> Request
    oracle(record, media_root) -> [text per stage]   the ground truth written as model text
    evaluate(records, outputs, official_compat) -> (per-sample rows, summary)

`evaluate` always re-parses the raw texts of every sample, so the summary after a resumed run is the
same as after an uninterrupted one. Per-sample rows: `{"id", "index", "raw", "parsed", "score", ...}`.
"""

from __future__ import annotations

import importlib.util

from gap_mllm.processing.errors import DataError, MissingDependency
from gap_mllm.processing.record_schema import IMAGES, read_fields
from gap_mllm.processing.scannet_layout import check_marked_pixel
from gap_mllm.processing.tasks import PackageTask, package_task, package_task_names, package_tasks
from gap_mllm.tasks_gap_mllm import DefaultBudget, PromptTextError, refuse_control_tokens, resolve_task

from .benchmark_names import benchmark_tasks
from .generation import Request


def sample_id(record: dict, index: int) -> str:
    """The record's `id`, or its position in the annotation file (official files carry no id; nor does a record that
    is no object, which `check_records` then refuses by this name)."""
    return str(record.get("id", f"{index:06d}")) if isinstance(record, dict) else f"{index:06d}"


def check_sample_limit(limit) -> None:
    """ValueError unless `limit` (the first N records of an annotation file) is None or a positive integer: a
    negative one would slice off the last records and 0 would score nothing, both without notice."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive number of samples (the first N are scored), got {limit!r}")


def check_batch_size(batch_size) -> None:
    """ValueError unless `batch_size` (samples per generate call) is a positive integer: 0 would end in a bare
    `range()` error and a negative one would answer nothing, leaving every sample missing."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive number of samples per generate call, got {batch_size!r}")


def human_prompt(record: dict) -> str:
    return record["conversations"][0]["value"]


def check_prompt_texts(records: list, ids: list[str], path) -> None:
    """DataError naming the annotation file `path` and the sample for a record whose human turn holds chat or
    vision markup (a Qwen control token such as `<|im_start|>`) or text that is not valid Unicode: its prompt
    would write chat turns of its own (gap_mllm.tasks_gap_mllm). Run before a model is loaded, so a benchmark
    is refused before any answer is generated; the collator checks each prompt again with the model's tokenizer.
    A record without a human turn is left to the request that reads it."""
    for record, sid in zip(records, ids, strict=True):
        turns = record.get("conversations") if isinstance(record, dict) else None
        prompt = turns[0].get("value") if isinstance(turns, list) and turns and isinstance(turns[0], dict) else None
        if isinstance(prompt, str):
            try:
                refuse_control_tokens(None, prompt, "the prompt (human turn)")
            except PromptTextError as error:
                raise DataError(str(error), path=path, sample=sid) from None


def check_records(records: list, ids: list[str], path) -> None:
    """DataError naming the annotation file `path` and the sample for a record that is not an object or whose
    `images` is not a non-empty list of paths (record_schema.py IMAGES, as the builders read it): every benchmark's
    requests, its scene grouping and its scoring read them. Run before any other check of the records."""
    for record, sid in zip(records, ids, strict=True):
        try:
            read_fields(record, (IMAGES,), sid)
        except DataError as error:
            raise DataError(str(error).removeprefix(f"sample {sid!r}: "), path=path, sample=sid) from None


def check_markers(task, records: list, ids: list[str], media_root) -> None:
    """DataError naming the sample and the frame for a record whose marked pixel (its first request's
    `pixel_coords`, `(view, x, y)`) names no frame of the request or a pixel outside that upright frame, the pixels
    the processor gets (processing/scannet_layout.py `check_marked_pixel`, as the builders check it). Run before a
    model is loaded: the processor would refuse it mid-run, naming the batch's row rather than the sample."""
    for record, sid in zip(records, ids, strict=True):
        request = task.request(record, 0, [], media_root)
        if request.pixel_coords is not None:
            check_marked_pixel(media_root, request.images, request.pixel_coords, "'pixel_coords'", sid)


def gt_answer(record: dict) -> str:
    return record["conversations"][1]["value"]


class Benchmark:
    """What every benchmark shares: its registry task(s) and how a model call is requested.

    `official_compat=True` also turns off the stop rule (`Request.stop_at_answer_end`): the official
    scripts stop only at EOS or the budget, and a reproduction should read exactly what they read."""

    spec = None  # the registry task
    stage_specs: tuple = ()  # the task asked at each stage
    headline: tuple[str, str]  # (key or dotted path in the summary, description); every benchmark sets it
    logged_metrics: dict[str, str]  # logged name -> key or dotted path in the summary; the headline among them
    # (import name, pip requirement) of what `evaluate` imports when it runs: checked before any answer is
    # generated, so a missing scorer fails at once and not after an evaluation's (or a training run's) work
    scoring_packages: tuple[tuple[str, str], ...] = ()

    def __init__(self, official_compat: bool = False, constrained: bool = False):
        self.official_compat = official_compat
        self.constrained = constrained  # decode inside each stage's answer grammar (`gap-mllm evaluate --constrained`)

    def check_scoring_dependencies(self) -> None:
        """MissingDependency (an ImportError) naming each missing scoring package of this task and how to install it."""
        missing = [requirement for module, requirement in self.scoring_packages if importlib.util.find_spec(module) is None]
        if missing:
            raise MissingDependency(f"scoring the {self.name} task needs {', '.join(missing)}, which is not installed: "
                                    f"pip install 'gap-mllm[eval]' (or {' '.join(missing)}); during training, the task "
                                    "can also be left out of evaluation.tasks")

    def check_ground_truth(self, records: list, ids: list[str]) -> None:
        """DataError naming the sample for a record whose ground truth this benchmark cannot score. Run before any
        answer is generated: refused only at scoring, the answers of the model would already be written, and the
        fixed annotation file, another file for the run fingerprint, could not resume them (run_fingerprint.py).
        Default: nothing this benchmark can check beforehand (its scoring still refuses what it cannot read)."""

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def stages(self) -> int:
        return len(self.stage_specs)

    @property
    def annotation_task(self):
        """The task whose annotation file holds the samples (grounding: stage 1's)."""
        return self.stage_specs[0]

    def make_request(self, stage: int, images, prompt: str, pixel_coords=None) -> Request:
        spec = self.stage_specs[stage]
        # the official budget: the caller chose none (`--max-new-tokens` caps it), so lowering it to the model's
        # context is an INFO line, not a warning (checks.py)
        return Request(images, prompt, pixel_coords, DefaultBudget(spec.official_max_new_tokens), task=spec.name,
                       stop_at_answer_end=not self.official_compat, constrained=self.constrained)


# ------------------------------------------------------------------------------- tasks with a package module


class PackageTaskBenchmark(Benchmark):
    """The benchmark of a task with a package module (gap_mllm.processing.tasks): the model call of each stage
    (`PackageTask.request`; by default one, the record's images and human turn), scored by the module
    (`PackageTask.evaluate`); `package_benchmark` makes one class per task."""

    entry: PackageTask

    def request(self, record, stage, previous, media_root):
        if self.entry.request is None:
            return self.make_request(stage, record["images"], human_prompt(record))
        return self.make_request(stage, *self.entry.request(record, stage, previous, media_root, self.official_compat))

    def oracle(self, record, media_root):
        return self.entry.oracle(record, media_root)

    def check_ground_truth(self, records, ids):
        if self.entry.check_ground_truth is not None:
            self.entry.check_ground_truth(records, ids, self.official_compat)

    def evaluate(self, records, outputs, official_compat=False, **options):
        ids = [sample_id(record, index) for index, record in enumerate(records)]
        return self.entry.evaluate(records, outputs, ids, official_compat=official_compat, **options)


_PACKAGE_BENCHMARKS: dict[PackageTask, type[PackageTaskBenchmark]] = {}


def package_benchmark(entry: PackageTask) -> type[PackageTaskBenchmark]:
    """The benchmark class of a task's `PackageTask` (one class per entry)."""
    if entry not in _PACKAGE_BENCHMARKS:
        name = "".join(part.title() for part in entry.name.split("_")) + "Task"
        stage_specs = tuple(resolve_task(stage) for stage in entry.spec.stages) or (entry.spec,)
        _PACKAGE_BENCHMARKS[entry] = type(name, (PackageTaskBenchmark,), {
            "spec": entry.spec, "stage_specs": stage_specs, "headline": entry.headline,
            "logged_metrics": dict(entry.logged_metrics), "scoring_packages": entry.scoring_packages, "entry": entry,
            "__module__": __name__})
    return _PACKAGE_BENCHMARKS[entry]


# the benchmarks of the shipped tasks; `get_task` also finds those of tasks registered from code
TASKS = {entry.name: package_benchmark(entry) for entry in package_tasks()}


def benchmark_class(name: str) -> type[Benchmark] | None:
    """The benchmark class of a canonical task name, None when the task has none."""
    return package_benchmark(package_task(name)) if name in package_task_names() else None


def __getattr__(name: str):
    """The benchmark class of a task module by its class name (`package_benchmark`: `<Task>Task`)."""
    for entry in package_tasks():
        benchmark = package_benchmark(entry)
        if benchmark.__name__ == name:
            return benchmark
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def get_task(name, official_compat: bool = False, constrained: bool = False) -> Benchmark:
    """The benchmark of a task name (deprecated names such as "det" resolve with a warning); `constrained`: its
    answers are decoded inside their task's grammar (off: the paper's protocol decodes freely)."""
    spec = resolve_task(name)
    benchmark = benchmark_class(spec.name)
    if benchmark is None:
        pipeline = next((name for name in benchmark_tasks() if spec.name in resolve_task(name).stages), None)
        hint = f" (it is a stage of {pipeline!r}, which evaluates both)" if pipeline is not None else ""
        raise ValueError(f"task {spec.name!r} has no benchmark{hint}; choose one of {', '.join(benchmark_tasks())}")
    return benchmark(official_compat, constrained)


def headline_value(summary: dict, key: str):
    """Look up a key, or a dotted path ("aligned.overall"), in a summary."""
    if key in summary:
        return summary[key]
    value = summary
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value
