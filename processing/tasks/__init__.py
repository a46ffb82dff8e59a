"""The package side of each task: one module per task in this folder, registered by its task's name.

What a task is to the model (prompt, inputs, answer format, parser, grammar, stop rule) is its `TaskSpec` in the
model folder (`gap_mllm.tasks_gap_mllm`: `TASKS`, `resolve_task`). What it is to the installed package is a
`PackageTask`: its annotation file and dataset fields, its benchmark (how it is scored and which figure a run
reports), its `evaluate` metric, its lmms-eval task, its model-card tag, its plot and how the front ends show its
answer. The front ends, the evaluation, the lmms-eval plugin, the builders, the plots and the model card read these
entries and name no task.

A shipped task is the module `<name>.py` of this folder defining `TASK = PackageTask(name=<name>, ...)`: its name is
known from the file name alone (`package_task_names`, light: `gap-mllm COMMAND --help` lists the names) and the module
is imported on first use (`package_task`). A task of your own is registered from your code: its `TaskSpec` with
`register_task` (into the model folder's registry, the package's copy of it), then its package side with
`register_package_task`.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache

from gap_mllm import tasks_gap_mllm
from gap_mllm.tasks_gap_mllm import DEPRECATED_TASK_NAMES, TaskSpec, grammar_engine, resolve_task
from gap_mllm.tasks_gap_mllm import TASKS as MODEL_TASKS

from ..scoring.reported_scores import ReportedScore


SHIPPED_TASK_NAMES = frozenset({*MODEL_TASKS, *DEPRECATED_TASK_NAMES})  # the shipped tasks' names and aliases


def task_name_problem(name) -> str | None:
    """None for a task name (it names files and lmms-eval tasks: one ASCII word of letters, digits and `_`, not
    starting with a digit), else why not."""
    if isinstance(name, str) and name.isascii() and name.isidentifier():
        return None
    return f"{name!r} is not a task name: one word of ASCII letters, digits and '_', not starting with a digit"


def register_task(spec: TaskSpec) -> TaskSpec:
    """Add a task of your own to the model folder's registry (the package's copy of `gap_mllm.tasks_gap_mllm`):
    `TASKS`, `TASK_NAMES` and its aliases in `DEPRECATED_TASK_NAMES` (`unregister_task` removes it); returns it.

    Raises:
        ValueError: its name or an alias is not a word (`task_name_problem`) or is a name of the registry already,
            or its answer grammar (an `EntryList`'s too) does not compile in llguidance (when installed).
    """
    taken = sorted({spec.name, *spec.aliases} & {*MODEL_TASKS, *DEPRECATED_TASK_NAMES})
    problems = [*map(task_name_problem, (spec.name, *spec.aliases)), taken and f"name(s) {', '.join(taken)} are taken"]
    engine = grammar_engine()
    try:  # the caller's grammar functions, compiled as `GrammarLogitsProcessor` compiles them
        grammars = [spec.grammar_for(num_views=1), *(spec.entry_list.grammar(n) for n in (None, 1) if spec.entry_list)]
        problems += [f"its answer grammar does not compile in llguidance: {message}" for message in
                     (engine.LLMatcher.validate_grammar(engine.grammar_from("grammar", text)) for text in grammars
                      if engine) if message]
    except Exception as error:
        problems.append(f"its answer grammar is refused: {type(error).__name__}: {error}")
    if any(problems):
        raise ValueError(f"task {spec.name!r}: {next(filter(None, problems))}")
    MODEL_TASKS[spec.name] = spec
    DEPRECATED_TASK_NAMES.update(dict.fromkeys(spec.aliases, spec.name))
    tasks_gap_mllm.TASK_NAMES = tuple(MODEL_TASKS)
    return spec


def unregister_task(name: str) -> None:
    """Remove a task added with `register_task`, and its aliases (KeyError when there is no task of that name,
    ValueError for a shipped task)."""
    if name in SHIPPED_TASK_NAMES:
        raise ValueError(f"task {name!r} is a shipped task: only a task added with register_task can be removed")
    for alias in MODEL_TASKS.pop(name).aliases:
        DEPRECATED_TASK_NAMES.pop(alias, None)
    tasks_gap_mllm.TASK_NAMES = tuple(MODEL_TASKS)


@dataclass(frozen=True, eq=False)  # one entry per task, known by identity
class PackageTask:
    """The package side of one task of the model folder's registry.

    A task run in stages (grounding) has no data of its own: each stage is an entry of `stages`, with the data
    fields (`annotation_file`, `features`, `fields`, `data_order`, `synth_frames`) and no benchmark.

    Attributes:
        name: the task's name in `gap_mllm.tasks_gap_mllm.TASKS`.
        annotation_file: its annotation file's name, with `{split}` and `{frames}` (processing/annotation_files.py);
            None: it has none (its stages have).
        features: `(class_names) -> {field: datasets feature}`, the builder's features of the task's own fields.
        fields: `(record, answer, num_images, key, builder) -> {field: value}`, those fields of one annotation
            record (`key`: the sample, for a `DataError`; `builder`: the `datasets` builder reading it, whose
            `info.features`, `media_root` and `config` the fields may read).
        data_order: where the task's data comes among the tasks' (its builder in `BUILDERS`, its file in
            `tasks_with_files`, its SynthRooms samples, drawn from a scene's random stream in this order): lower
            first, ties in the registry's order.
        headline: `(key or dotted path in the summary, description)`: the figure an evaluation reports; None: no
            benchmark of its own (a stage).
        logged_metrics: `{logged name: key or dotted path in the summary}`: what a training run logs.
        training_figures: the figures a training run also logs of its answers, by name of evaluation/in_memory.py's
            `TRAINING_FIGURES` ("marker": each marked pixel's point error and label; "identification": on SynthRooms
            data, which object its boxes point at).
        oracle: `(record, media_root) -> [answer text]`: the ground truth written as the model's answer.
        check_ground_truth: `(records, ids, official_compat) -> None`: a `DataError` naming the sample for a record
            whose ground truth `evaluate` cannot score, run before any answer is generated; None: nothing to check.
        request: `(record, stage, previous, media_root, official_compat) -> (images, prompt, pixel_coords)`: the
            model call of one stage of a record (`previous`: the earlier stages' answer texts); None: the record's
            images and human turn, no marked pixel.
        evaluate: `(records, outputs, ids, official_compat=False, **options) -> (rows, summary)`: the score of the
            answers (`outputs`: one `[text per stage]` per record, `ids`: the records' sample ids); each row has `id`,
            `index`, `raw`, `parsed`, `score`.
        stages: the entries of its stages, in order (their names are its `TaskSpec.stages`).
        scoring_packages: `(import name, pip requirement)` of what `evaluate` imports.
        lmms_task: the name of its lmms-eval task (`{name}`: the task's name), None: it has none. A YAML of that
            name in the plugin's `templates/` is its task file; else one is written from these facts.
        lmms_order: where that task comes among the lmms-eval tasks: lower first, ties in the registry's order.
        lmms_metrics: `{metric: key or dotted path in the summary}` of that lmms-eval task (empty: the headline,
            named by its key).
        lmms_aggregators: `{task_functions attribute: metric}`: the aggregations its YAML names, where not
            `aggregator_name(metric)`.
        lmms_option_metrics: `{evaluate option: metric}`: an option of `evaluate` (a costly scorer) that only one
            lmms-eval metric needs: it is on only when that metric is aggregated.
        lmms_title: the first comment line of that task's YAML.
        metric: `(predictions, references, **options) -> dict`: its `evaluate` module's `compute`
            (evaluation/metric_modules/gap_<name>/; None: no module).
        metric_description: that module's description.
        metric_reference: `() -> datasets feature` of one reference of that module; None: a string.
        card: `(Hub task type, benchmark format, task label)` of its results in a model card.
        reported_score: how the front ends and a model card report its held-out score from a model folder's
            `evaluation_results.json` (`ReportedScore`, processing/scoring/reported_scores.py: the row's figures, their
            baselines, the card's name of the task); None: "not scored (the model's evaluation did not cover it)".
        per_category_bars: `(summary) -> (names, {series: values}, title)`, the bars of its per-category chart
            (evaluation/plots.py: `per_category.png`), or None when the summary has none; None: no such chart.
        per_category_shares: whether those bars are shares (the axis ends at 1.05) rather than amounts (the axis
            fits them).
        histogram: `(rows) -> (values, title, threshold lines)`: its per-sample histogram (evaluation/plots.py:
            `iou_hist.png`); None: no such chart.
        sample_boxes: `(record, row) -> (frame index, ground-truth boxes, predicted boxes) or None`: the boxes of a
            sample's figure, in the camera frame of that frame of the record (evaluation/plots.py: `samples/`);
            None: no such figures.
        query_help: what `query` is for this task, in a command's help ("the question"); None: it takes none.
        query_missing: the words of the refusal when the query is missing ("a question about the scene").
        query_problem: `(query) -> problem or None`: a query the task cannot answer (checked before the model runs).
        answer_fields: the fields of the parsed answer that a front end shows (`TaskResult.summary`, one line each)
            and writes (`TaskResult.to_dict`), of "caption", "answer", "label".
        written_fields: the fields of the parsed answer that a front end writes only (`TaskResult.to_dict`).
        shown: `(parsed, request) -> {TaskResult attribute: value}`: what a front end draws of an answer (its
            `boxes`, `point`, `marker`; `request`: the `TaskRequest` answered); None: nothing.
        lists_boxes: whether a front end's summary lists those boxes (not when they are the request's).
        counts_boxes: whether it counts them first ("3 box(es)").
        space_label: the task's label in the Space, which offers every task (None: its `TaskSpec.title`).
        synth_records: `(scene, config, rng) -> [record]`, its SynthRooms samples of one scene (`SynthConfig`;
            processing/synth/samples.py), or `{stage: [record]}` for a task in stages; None: SynthRooms writes none.
        synth_frames: the `SynthConfig` field with the frame count of those samples (their file's `{frames}`).
        exports: `{name: object}` that `gap_mllm.evaluation` exports (the task's metric functions).
        vsibench: its records as VSI-Bench rows for `gap-mllm export-vsibench` (an object with `rows(records,
            scene_centres) -> (rows, skipped)`, `dataset` and `required_types`); None: it has none.
    """

    name: str
    annotation_file: str | None = None
    features: Callable[[tuple], dict] | None = None
    fields: Callable[..., dict] | None = None
    headline: tuple[str, str] | None = None
    logged_metrics: dict[str, str] = field(default_factory=dict)
    training_figures: tuple[str, ...] = ()
    oracle: Callable[..., list] | None = None
    evaluate: Callable[..., tuple] | None = None
    check_ground_truth: Callable[..., None] | None = None
    stages: tuple[PackageTask, ...] = ()
    data_order: int = 1
    request: Callable[..., tuple] | None = None
    scoring_packages: tuple[tuple[str, str], ...] = ()
    lmms_task: str | None = "gap_{name}"
    lmms_order: int = 1
    lmms_metrics: dict[str, str] = field(default_factory=dict)
    lmms_aggregators: dict[str, str] = field(default_factory=dict)
    lmms_option_metrics: dict[str, str] = field(default_factory=dict)
    lmms_title: str = ""
    metric: Callable[..., dict] | None = None
    metric_description: str = ""
    metric_reference: Callable[[], object] | None = None
    card: tuple[str, str, str] | None = None
    reported_score: ReportedScore | None = None
    per_category_bars: Callable[[dict], tuple | None] | None = None
    per_category_shares: bool = True
    histogram: Callable[[list], tuple] | None = None
    sample_boxes: Callable[..., tuple | None] | None = None
    query_help: str | None = None
    query_missing: str | None = None
    query_problem: Callable[[str], str | None] | None = None
    answer_fields: tuple[str, ...] = ()
    written_fields: tuple[str, ...] = ()
    shown: Callable[..., dict] | None = None
    lists_boxes: bool = True
    counts_boxes: bool = False
    space_label: str | None = None
    synth_records: Callable[..., list] | None = None
    synth_frames: str | None = None
    exports: dict[str, object] = field(default_factory=dict)
    vsibench: object | None = None

    @property
    def spec(self) -> TaskSpec:
        """The task's `TaskSpec` (the model folder's registry)."""
        return resolve_task(self.name)

    @property
    def lmms_name(self) -> str | None:
        """The name of its lmms-eval task (`lmms_task` with the task's name), None when it has none."""
        return None if self.lmms_task is None else self.lmms_task.format(name=self.name)

    @property
    def lmms_metric_keys(self) -> dict[str, str]:
        """`{metric: key or dotted path in the summary}` of its lmms-eval task (`lmms_metrics`, or the headline)."""
        return dict(self.lmms_metrics) or {self.headline[0]: self.headline[0]}


_REGISTERED: dict[str, PackageTask] = {}  # tasks registered from code, in registration order
_LOADED: dict[str, PackageTask] = {}  # the shipped modules' tasks, once imported


@cache
def _shipped_names() -> tuple[str, ...]:
    """The shipped tasks (this folder's modules), in the order of the model folder's registry."""
    names = {module.name for module in pkgutil.iter_modules(__path__) if not module.name.startswith("_")}
    unknown = sorted(names - set(MODEL_TASKS))
    if unknown:
        raise ImportError(f"gap_mllm.processing.tasks holds {', '.join(unknown)}, which the model folder's "
                          "TASKS does not name")
    return tuple(name for name in MODEL_TASKS if name in names)


@cache
def _stage_tasks() -> dict[str, str]:
    """`{stage: task}` of the shipped tasks run in stages (their `TaskSpec.stages`)."""
    return {stage: name for name in _shipped_names() for stage in MODEL_TASKS[name].stages}


def package_task_names(stages: bool = False) -> tuple[str, ...]:
    """The names of the tasks with a package side, without importing their modules: the shipped ones, then those
    registered; `stages`: with the stages of a task run in stages (whose entries hold the data), in the model folder's
    order."""
    shipped = [name for name in MODEL_TASKS if name in _shipped_names() or (stages and name in _stage_tasks())]
    return tuple(dict.fromkeys([*shipped, *_REGISTERED]))


def package_task(task: str | TaskSpec) -> PackageTask | None:
    """The `PackageTask` of a task (a name or a `TaskSpec`), or of a stage of a task run in stages (an entry of its
    `stages`), or None when the task has no package side. A deprecated name resolves as `resolve_task` resolves it."""
    names = package_task_names(stages=True)
    name = task if isinstance(task, str) and task in names else resolve_task(task).name
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _stage_tasks():
        return next(stage for stage in package_task(_stage_tasks()[name]).stages if stage.name == name)
    if name not in _LOADED and name in _shipped_names():
        entry = importlib.import_module(f"{__name__}.{name}").TASK
        if entry.name != name or tuple(stage.name for stage in entry.stages) != entry.spec.stages:
            raise ImportError(f"{__name__}.{name} defines the task {entry.name!r} with the stages "
                              f"{[stage.name for stage in entry.stages]}")
        _LOADED[name] = entry
    return _LOADED.get(name)


def package_tasks(stages: bool = False) -> tuple[PackageTask, ...]:
    """Every `PackageTask`, in `package_task_names` order (the shipped modules are imported); `stages`: with the
    entries of the stages."""
    return tuple(package_task(name) for name in package_task_names(stages))


def in_data_order(names) -> list[str]:
    """Task names in the order of their data (`PackageTask.data_order`, then the order given); a name without a
    package side takes the default place."""
    default = PackageTask.__dataclass_fields__["data_order"].default
    known = package_task_names(stages=True)
    return sorted(names, key=lambda name: package_task(name).data_order if name in known else default)


def _owned(entry: PackageTask) -> set[tuple[str, str]]:
    """`{(what, value)}` that no other task may share with `entry`: its lmms-eval task, Space label and annotation
    files (its stages' included)."""
    # the Space's label of a task: its `space_label`, else its title (cli/space_backend.py `TASK_LABELS`)
    owned = {("lmms-eval task", entry.lmms_name), ("Space label", entry.space_label or entry.spec.title)}
    owned |= {("annotation file", stage.annotation_file) for stage in (entry, *entry.stages)}
    return {(what, value) for what, value in owned if value is not None}


def _annotation_file_problem(template: str) -> str | None:
    """Why `template` cannot name an annotation file under `<data root>/annotations/`, or None: it must be one plain
    file name of printable ASCII once its `{split}` and `{frames}` are filled."""
    try:
        name = template.format(split="val", frames=4)
    except (KeyError, IndexError, ValueError) as error:
        return f"its fields are {{split}} and {{frames}} only ({type(error).__name__}: {error})"
    if not (name.isascii() and name.isprintable()) or "/" in name or "\\" in name or name.startswith("."):
        return "it must be one file name of printable ASCII characters, no folder and not starting with '.'"
    return None


def register_package_task(task: PackageTask) -> PackageTask:
    """Register the package side of a task whose `TaskSpec` is in the model folder's `TASKS`; returns it.

    Raises:
        ValueError: the model folder's registry has no such task, a task of that name has a package side already,
            its lmms-eval task name is not a word (`task_name_problem`), an annotation file is not one plain file
            name, or its lmms-eval task, Space label or an annotation file is another task's (a shipped task's
            among them).
    """
    if task.name not in MODEL_TASKS:
        raise ValueError(f"task {task.name!r} is not in the model folder's TASKS: register its TaskSpec there first "
                         "(register_task)")
    if task.name in package_task_names(stages=True):
        raise ValueError(f"task {task.name!r} has a package side already")
    try:
        lmms_name = task.lmms_name
    except (KeyError, IndexError, ValueError) as error:
        lmms_name = f"({type(error).__name__}: {error})"  # a field other than {name}
    if lmms_name is not None and task_name_problem(lmms_name) is not None:
        raise ValueError(f"task {task.name!r}: lmms_task {task.lmms_task!r} gives the lmms-eval task {lmms_name!r}, "
                         "which is not one word of ASCII letters, digits and '_'")
    for stage in (task, *task.stages):
        problem = None if stage.annotation_file is None else _annotation_file_problem(stage.annotation_file)
        if problem is not None:
            raise ValueError(f"task {task.name!r}: annotation_file {stage.annotation_file!r}: {problem}")
    for other in package_tasks():
        shared = sorted(_owned(task) & _owned(other))
        if shared:
            raise ValueError(f"task {task.name!r}: its {shared[0][0]} {shared[0][1]!r} is taken by the task {other.name!r}")
    _REGISTERED[task.name] = task
    return task


def unregister_package_task(name: str) -> None:
    """Remove a task registered with `register_package_task` (KeyError when there is none of that name, ValueError
    for a shipped task)."""
    if name in SHIPPED_TASK_NAMES:
        raise ValueError(f"task {name!r} is a shipped task: only a task added with register_package_task can be "
                         "removed")
    del _REGISTERED[name]


class LiveMapping(Mapping):
    """A read-only mapping computed anew on each use (`items()`: the dict it stands for): a reader's table of the
    tasks (`gap_mllm.evaluation.lmms_eval_plugin.LMMS_TASKS`, the Space's task labels) that holds the tasks
    registered since import."""

    def __init__(self, items: Callable[[], dict]):
        self._items = items

    def __getitem__(self, key):
        return self._items()[key]

    def __iter__(self) -> Iterator:
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __repr__(self) -> str:
        return repr(self._items())


__all__ = ["LiveMapping", "PackageTask", "in_data_order", "package_task", "package_task_names", "package_tasks",
           "register_package_task", "unregister_package_task"]
