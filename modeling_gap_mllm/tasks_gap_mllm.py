"""The GAP-MLLM tasks, each defined once: name, prompt, answer format and parser, generation budget, stop rule.

Everything that asks the model something reads this module: the processor (`processor(task=...)`,
`processor.post_process(..., task=...)`), the training collator and data builders, the evaluation
runners, `gap-mllm predict / evaluate / train` and the Space.

    name              what                                               answer text → parsed result
    detection         3D video object detection                          ```json [{"label", "bbox_3d"}, ...]``` → DetectionResult
    grounding         3D visual grounding of a text query: the two       {"bbox_3d": [9 numbers]} → GroundingResult
                      stages below (`gap-mllm evaluate`); one call
                      (processor, predict, Space) asks the stage-2
                      prompt on the given frames
    grounding_stage1  ScanRefer stage 1: first clear frame of the object {"frame": k} → FrameSelectionResult
    grounding_stage2  ScanRefer stage 2: the object's box                {"bbox_3d": [9 numbers]} → GroundingResult
    captioning        describe the object in a given 3D box              prose → CaptionResult
    reconstruction    3D point + label of the pixel marked with a red +  {"pointmap": [x, y, z], "label"} → PointmapResult
                      (the geometry-aligned pre-training task)
    spatial_qa        a spatial question (VSI-Bench style)               a number or option letter → SpatialAnswerResult

Prompt wording: `official=True` marks templates copied verbatim from the official inference code
(docs/method.md §3.3-3.4: detection and both grounding stages); the others are ours, since the official
wording is not public. Boxes are `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` in the first frame's
OpenCV camera (metres, radians; target_format.py). Old names (`det`, `caption`, `recon`, `qa`,
`pointmap`, `frame_selection`) still resolve, with a deprecation warning naming the new name.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import TYPE_CHECKING

from .answer_grammar import (
    DETECTION_LIST,
    EntryList,
    caption_grammar,
    detection_grammar,
    frame_selection_grammar,
    grounding_grammar,
    pointmap_grammar,
    spatial_answer_grammar,
)
from .answer_stopping import ANSWER_ENDS
from .chat_format import IMAGE_PLACEHOLDER, placeholders_from_segments
from .output_parsing import (
    CaptionResult,
    DetectionResult,
    FrameSelectionResult,
    GroundingResult,
    PointmapResult,
    SpatialAnswerResult,
    box_numbers,
    parse_caption,
    parse_detection,
    parse_frame_selection,
    parse_grounding,
    parse_pointmap,
    parse_spatial_answer,
)
from .target_format import (
    Box3D,
    serialize_caption,
    serialize_detection,
    serialize_frame_selection,
    serialize_grounding,
    serialize_pointmap,
    serialize_spatial_answer,
)

if TYPE_CHECKING:  # generate's types; the registry imports neither torch nor transformers at run time
    from transformers import LogitsProcessorList, StoppingCriteriaList

# ------------------------------------------------------------------------------------------ prompts

# Official (docs/method.md §3.3): the sample's human turn with the `<image>` placeholders removed.
DETECTION_TEMPLATE = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame.\n"
    'Output a json list where each entry contains the object name in "label" and its 3D bounding box in "box_3d".\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
# Official (docs/method.md §3.4), `{query}` = the description; both end with a newline.
GROUNDING_STAGE1_TEMPLATE = (
    "Localize the first clear frame in the video showing the object described in the text.\n"
    "Text: {query}\n"
    'Output a JSON dictionary with the frame index in "frame".\n'
)
GROUNDING_STAGE2_TEMPLATE = (
    "Localize the object described in the text.\n"
    "Text: {query}\n"
    'Output a JSON dictionary with the matched object\'s 3D bounding box in "bbox_3d" in the camera coordinate system of the first frame.\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll].\n"
)
# Ours (docs/method.md §3.5: the official template refers to a Mask3D proposal and is not public); the box
# is printed like the targets, 2 decimals.
CAPTIONING_TEMPLATE = (
    "Describe the object in the 3D bounding box {box} in the camera coordinate system of the first frame.\n"
    "The 3D bounding box format is [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
# Ours (docs/method.md §3.6, §10.1). The marker is the red "+" the processor paints (point_prompts).
RECONSTRUCTION_TEMPLATE = (
    'Estimate the 3D position of the point marked with a red "+" in the camera coordinate system of the first frame, '
    "and name what it lies on.\n"
    'Output a JSON dictionary with the point [x, y, z] in "pointmap" and its semantic label in "label".'
)
# Ours: the question as given, with its options and answer instruction (VSI-Bench style).
SPATIAL_QA_TEMPLATE = "{query}"

FRAME_LABEL = "Frame-{index}: "  # grounding stage 1: a text item before each view (docs/method.md §3.4)
BOX_VALUES = 9


def format_box(values) -> str:
    """`[0.44, 0.08, 2.26, ...]`: 9 finite numbers (Python, numpy or 0-d torch), each through `round(v, 2)` as the
    targets are written. A size (entries 3-5) must be > 0 as written: a negative one is refused as in an answer
    (`output_parsing.box_numbers`), and so is one written 0.0, since a box with a side of 0 is no object's box (an
    answer's box of size 0x0x0 is no success either: cli/answer_checks.py)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__") or len(values) != BOX_VALUES:
        raise ValueError(f"box must be {BOX_VALUES} numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll], got {values!r}")
    try:
        floats = [float(v) for v in values if not isinstance(v, (bool, str, bytes))]
    except (TypeError, ValueError):
        floats = []
    if len(floats) != BOX_VALUES or not all(math.isfinite(v) for v in floats):
        raise ValueError(f"box must hold {BOX_VALUES} finite numbers, got {values!r}")
    _, problem = box_numbers(floats, "box")
    if problem:  # a negative size describes no box: refused, as in an answer or an annotation
        raise ValueError(f"{problem} (sizes, entries 3-5, must be > 0); got {values!r}")
    written = [round(v, 2) for v in floats]
    flat = [axis for axis, size in zip("xyz", written[3:6]) if size <= 0]
    if flat:
        raise ValueError(f"box {written} has a size of 0 along {', '.join(flat)}: a box with a side of 0 is no "
                         "object's box (sizes, entries 3-5, must be at least 0.01 as the prompt writes them)")
    return "[" + ", ".join(repr(v) for v in written) + "]"


def extract_query(prompt: str) -> str:
    """The description of a grounding prompt: the text between `Text:` and `Output a JSON`, stripped (the
    official extraction, docs/method.md §3.4)."""
    start, end = prompt.find("Text:"), prompt.find("Output a JSON")
    if start < 0 or end < 0 or end < start:
        raise ValueError("prompt has no 'Text: ... Output a JSON' description")
    return prompt[start + len("Text:") : end].strip()


# ------------------------------------------------------------------------------------------- tasks


def check_query_text(query: str, what: str = "the query") -> None:
    """ValueError naming `what` when `query` holds `<image>`: the prompt has one such placeholder per view, and a
    query's own would stand for a view that is not there. The rule of every prompt (`TaskSpec.prompt`) and of the
    front ends' checks before a model loads (cli/task_request.py)."""
    if IMAGE_PLACEHOLDER in query:
        raise ValueError(f"{what} must not contain {IMAGE_PLACEHOLDER!r} (the placeholder of a view in the prompt); "
                         "remove it from the text")


class DefaultBudget(int):
    """A token budget the caller did not choose: a task's own (`TaskSpec.generation_kwargs` without
    `max_new_tokens`, the evaluation's official budgets). It is an int everywhere; `generate` only tells it apart
    when the budget would pass the model's context: lowering the task's own budget is logged once at INFO, while
    lowering a budget the caller set is a warning addressed to them (generation_checks.py)."""

    __slots__ = ()


@dataclass(frozen=True)
class TaskSpec:
    """One task.

    Attributes:
        name: canonical name (used by every command, recipe, file lookup and the processor).
        title: one line for people.
        template: the task text sent after the views; `{query}` / `{box}` are its parameters.
        parameters: the parameters `template` needs: `()`, `("query",)` or `("box",)`.
        official: True when `template` is verbatim from the official inference code (docs/method.md §3.2).
        parse: answer text → typed result (`result_type`); never raises.
        result_type: the dataclass `parse` returns.
        serialize: typed result → answer text (the training target; `parse(serialize(r))` gives `r` back,
            numbers rounded to 2 decimals).
        max_new_tokens: a generation budget that fits any answer of the task (predict, demo, Space).
        official_max_new_tokens: the official scripts' budget (evaluation; docs/method.md §3.2).
        answer_end: stop rule (answer_stopping.py): "list", "dict", "paragraph" or "line".
        grammar: `(token budget, num_frames=None, prompt=None)` → the language of `serialize`'s answers in
            GBNF as llguidance reads it, bounded to end within the budget (answer_grammar.py; stage 1 also to the views'
            indices, spatial QA to the options its question offers): what constrained decoding lets the model write
            (`grammar_for`, `logits_processor`, vLLM's `structured_outputs.grammar`); `answer_grammar` is the one of
            the task's own budget.
        entry_list: for a list answer (detection), the list that `generate`'s logits processor closes at the token
            budget (answer_grammar.EntryList), so the answer holds as many entries as the budget allows; an engine
            that cannot count tokens (vLLM) gets `grammar`'s, bounded in bytes.
        grammar_reads_prompt: `grammar` depends on the question (spatial QA's offered options): `logits_processor`
            builds each row's from the row's prompt.
        needs_marker: the prompt refers to a marker painted with `point_prompts=(view, x, y)`.
        frame_labels: a `Frame-i: ` text item precedes each view.
        parse_options: keyword arguments `parse` accepts besides the text (`num_frames` for stage 1).
        stages: for a pipeline, the tasks it runs in order (grounding); one call asks the last stage.
        aliases: deprecated names that still resolve to this task.
    """

    name: str
    title: str
    template: str
    parameters: tuple[str, ...]
    official: bool
    parse: Callable
    result_type: type
    serialize: Callable
    max_new_tokens: int
    official_max_new_tokens: int
    answer_end: str
    grammar: Callable[..., str]
    entry_list: EntryList | None = None
    grammar_reads_prompt: bool = False
    needs_marker: bool = False
    frame_labels: bool = False
    parse_options: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.answer_end not in ANSWER_ENDS:
            raise ValueError(f"task {self.name!r}: unknown answer_end {self.answer_end!r}")

    # ------------------------------------------------------------------------------- prompts

    def task_text(self, query: str | None = None, box=None) -> str:
        """The task text after the views, e.g. the stage-2 text for `query="the chair by the desk"`.

        Raises:
            ValueError: a parameter the task needs is missing or malformed, or one it does not take is given.
        """
        given = {"query": query, "box": box}
        for name, value in given.items():
            if value is not None and name not in self.parameters:
                raise ValueError(f"task {self.name!r} takes no {name} (its parameters: {list(self.parameters) or 'none'})")
            if value is None and name in self.parameters:
                raise ValueError(f"task {self.name!r} needs {name}=: {_PARAMETER_HELP[name]}")
        values = {}
        if query is not None:
            if not isinstance(query, str) or not query.strip():
                raise ValueError(f"task {self.name!r}: query must be a non-empty string, got {query!r}")
            check_query_text(query, f"task {self.name!r}: query")
            values["query"] = query.strip()
        if box is not None:
            values["box"] = format_box(list(box))
        return self.template.format(**values)

    def user_segments(self, num_views: int, query: str | None = None, box=None) -> list[str | None]:
        """The user turn as chat segments (`None` = one view, str = a text item): every view, then the
        task text; with `frame_labels`, `Frame-i: ` before view i and the task text on a new line."""
        if isinstance(num_views, bool) or not isinstance(num_views, int) or num_views < 1:
            raise ValueError(f"task {self.name!r} needs at least one view, got {num_views!r}")
        text = self.task_text(query=query, box=box)
        if not self.frame_labels:
            return [None] * num_views + [text]
        segments: list[str | None] = []
        for index in range(num_views):
            segments += [FRAME_LABEL.format(index=index), None]
        return segments + ["\n" + text]

    def annotation_prompt(self, num_views: int, query: str | None = None, box=None) -> str:
        """The human turn as the official annotation files store it: one `<image>` per view."""
        return placeholders_from_segments(self.user_segments(num_views, query=query, box=box))

    # ------------------------------------------------------------------------------- answers

    @property
    def shortest_answer(self) -> str:
        """The shortest text that is a whole answer of the task (its grammar's): what any budget must hold at the
        least. Detection's empty list is also what its grammar needs to close the list (`entry_list`)."""
        least = {
            DetectionResult: lambda: serialize_detection([]),
            GroundingResult: lambda: serialize_grounding(Box3D.from_list([0.0] * BOX_VALUES)),
            FrameSelectionResult: lambda: serialize_frame_selection(0),
            PointmapResult: lambda: serialize_pointmap((0.0, 0.0, 0.0)),
            CaptionResult: lambda: serialize_caption("I."),  # a one-letter word and the sentence's end
            SpatialAnswerResult: lambda: serialize_spatial_answer("A"),
        }
        return least[self.result_type]()

    def stopping_criteria(self, tokenizer, prompt_length: int) -> StoppingCriteriaList:
        """`stopping_criteria=` for `generate`: stop each row at the end of its answer (`answer_end`). It carries
        the task's `shortest_answer`, so that `generate` refuses a context that cannot hold it (generation_checks.py
        `fit_budget_to_context`)."""
        # imported here: the registry itself stays free of torch and transformers (`gap-mllm --help` reads it)
        from transformers import StoppingCriteriaList

        from .answer_stopping_criteria import AnswerEndCriteria

        return StoppingCriteriaList([AnswerEndCriteria(tokenizer, prompt_length, self.answer_end,
                                                       shortest_answer=(self.name, self.shortest_answer))])

    @property
    def answer_grammar(self) -> str:
        """The answer grammar (GBNF, as llguidance reads it) for the task's own budget `max_new_tokens`."""
        return self.grammar(self.max_new_tokens)

    def grammar_for(self, max_new_tokens: int | None = None, num_views: int | None = None,
                    prompt: str | None = None) -> str:
        """The answer grammar for a budget (default: the task's own), bounded in bytes; for a task whose parser takes
        `num_frames` (stage 1), the sample's number of views; for one whose grammar reads the question (spatial QA),
        the sample's prompt text (None: any answer of the task)."""
        budget = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        return self.grammar(budget, num_views if "num_frames" in self.parse_options else None,
                            prompt if self.grammar_reads_prompt else None)

    def logits_processor(self, tokenizer, prompt_length: int, max_new_tokens: int | None = None,
                         num_views=None) -> LogitsProcessorList:
        """`logits_processor=` for `generate`: every row's answer stays inside the task's grammar and ends within the
        budget `max_new_tokens` (default: the task's own): a list closed at the budget (`entry_list`), the grammar
        of each row's question (`grammar_reads_prompt`), or for stage 1 its views' indices (`num_views`: one int, or
        one per row); llguidance, answer_grammar_processor.py. ImportError naming the install command without
        llguidance."""
        from transformers import LogitsProcessorList

        from .answer_grammar_processor import GrammarLogitsProcessor

        budget = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if self.entry_list is not None:
            grammar = self.entry_list
        elif self.grammar_reads_prompt:
            grammar = partial(self.grammar_for, budget, None)  # called with each row's prompt text
        elif isinstance(num_views, (list, tuple)):
            grammar = [self.grammar_for(budget, int(n)) for n in num_views]
        else:
            grammar = self.grammar_for(budget, None if num_views is None else int(num_views))
        return LogitsProcessorList([GrammarLogitsProcessor(tokenizer, grammar, prompt_length, budget)])

    def generation_kwargs(self, tokenizer, prompt_length: int, max_new_tokens: int | None = None,
                          constrained: bool = False, num_views=None) -> dict:
        """Greedy decoding (official), this task's budget (or `max_new_tokens`, a positive integer) and its
        stop rule; with `constrained`, the answer grammar's logits processor too (`logits_processor`; `num_views`:
        the views of each row, which bound stage 1's frame index).

        Raises:
            ValueError: `max_new_tokens` is not a positive integer (0, -1, 2.5, "8", True), or `constrained` is
                not a bool.
        """
        if not isinstance(constrained, bool):
            raise ValueError(f"constrained must be True or False, got {constrained!r}")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral)
                                           or max_new_tokens < 1):
            raise ValueError(f"max_new_tokens must be a positive integer (tokens to generate), got {max_new_tokens!r}")
        budget = DefaultBudget(self.max_new_tokens) if max_new_tokens is None else int(max_new_tokens)
        kwargs = {"max_new_tokens": budget, "do_sample": False,
                  "stopping_criteria": self.stopping_criteria(tokenizer, prompt_length)}
        if constrained:
            kwargs["logits_processor"] = self.logits_processor(tokenizer, prompt_length, budget, num_views)
        return kwargs


_PARAMETER_HELP = {
    "query": "the text describing the object (grounding) or the question (spatial QA)",
    "box": "the object's 3D box, 9 numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll] in the first camera",
}


def _boxes_text(result: DetectionResult) -> str:
    return serialize_detection(result.boxes)


def _frame_text(result: FrameSelectionResult) -> str:
    return serialize_frame_selection(result.frame)


def _box_text(result: GroundingResult) -> str:
    return serialize_grounding(result.box)


def _caption_text(result: CaptionResult) -> str:
    return serialize_caption(result.caption)


def _point_text(result: PointmapResult) -> str:
    return serialize_pointmap(result.point, result.label)


def _spatial_text(result: SpatialAnswerResult) -> str:
    return serialize_spatial_answer(result.answer)


DETECTION = TaskSpec(
    name="detection", title="3D video object detection", template=DETECTION_TEMPLATE, parameters=(),
    official=True, parse=parse_detection, result_type=DetectionResult, serialize=_boxes_text,
    max_new_tokens=1280, official_max_new_tokens=1280, answer_end="list", grammar=detection_grammar,
    entry_list=DETECTION_LIST, aliases=("det",),
)
GROUNDING_STAGE1 = TaskSpec(
    name="grounding_stage1", title="3D visual grounding, stage 1: the first clear frame of the object",
    template=GROUNDING_STAGE1_TEMPLATE, parameters=("query",), official=True, parse=parse_frame_selection,
    result_type=FrameSelectionResult, serialize=_frame_text, max_new_tokens=64, official_max_new_tokens=4096,
    answer_end="dict", grammar=frame_selection_grammar, frame_labels=True, parse_options=("num_frames",), aliases=("frame_selection",),
)
GROUNDING_STAGE2 = TaskSpec(
    name="grounding_stage2", title="3D visual grounding, stage 2: the object's box",
    template=GROUNDING_STAGE2_TEMPLATE, parameters=("query",), official=True, parse=parse_grounding,
    result_type=GroundingResult, serialize=_box_text, max_new_tokens=192, official_max_new_tokens=4096,
    answer_end="dict", grammar=grounding_grammar,
)
# The pipeline: one call asks its last stage, so everything but its name, title and stages is stage 2's.
GROUNDING = replace(
    GROUNDING_STAGE2, name="grounding", title="3D visual grounding of a text query",
    stages=(GROUNDING_STAGE1.name, GROUNDING_STAGE2.name),
)
CAPTIONING = TaskSpec(
    name="captioning", title="3D dense captioning of the object in a given box", template=CAPTIONING_TEMPLATE,
    parameters=("box",), official=False, parse=parse_caption, result_type=CaptionResult, serialize=_caption_text,
    max_new_tokens=256, official_max_new_tokens=1280, answer_end="paragraph", grammar=caption_grammar,
    aliases=("caption",),
)
RECONSTRUCTION = TaskSpec(
    name="reconstruction", title="3D point and label of a marked pixel (pre-training)",
    template=RECONSTRUCTION_TEMPLATE, parameters=(), official=False, parse=parse_pointmap,
    result_type=PointmapResult, serialize=_point_text, max_new_tokens=96, official_max_new_tokens=1280,
    answer_end="dict", grammar=pointmap_grammar, needs_marker=True, aliases=("recon", "pointmap"),
)
SPATIAL_QA = TaskSpec(
    name="spatial_qa", title="spatial question answering", template=SPATIAL_QA_TEMPLATE, parameters=("query",),
    official=False, parse=parse_spatial_answer, result_type=SpatialAnswerResult, serialize=_spatial_text,
    max_new_tokens=64, official_max_new_tokens=64, answer_end="line", grammar=spatial_answer_grammar,
    grammar_reads_prompt=True, aliases=("qa",),
)

TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (DETECTION, GROUNDING, GROUNDING_STAGE1, GROUNDING_STAGE2, CAPTIONING, RECONSTRUCTION, SPATIAL_QA)
}
TASK_NAMES = tuple(TASKS)
DEPRECATED_TASK_NAMES = {alias: spec.name for spec in TASKS.values() for alias in spec.aliases}


def resolve_task(task: str | TaskSpec) -> TaskSpec:
    """The `TaskSpec` of a canonical name (or a spec, returned as is). A deprecated name resolves with a
    `FutureWarning` naming the new one; anything else raises ValueError listing the names."""
    if isinstance(task, TaskSpec):
        return task
    if type(task).__name__ == "TaskSpec":  # a spec of another copy of this module (package vs remote code)
        task = task.name
    if isinstance(task, str) and task in TASKS:
        return TASKS[task]
    if isinstance(task, str) and task in DEPRECATED_TASK_NAMES:
        new = DEPRECATED_TASK_NAMES[task]
        warnings.warn(f"task name {task!r} is deprecated; use {new!r}", FutureWarning, stacklevel=2)
        return TASKS[new]
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASK_NAMES)}")


__all__ = [
    "CAPTIONING",
    "DEPRECATED_TASK_NAMES",
    "DETECTION",
    "DefaultBudget",
    "GROUNDING",
    "GROUNDING_STAGE1",
    "GROUNDING_STAGE2",
    "RECONSTRUCTION",
    "SPATIAL_QA",
    "TASKS",
    "TASK_NAMES",
    "TaskSpec",
    "check_query_text",
    "extract_query",
    "format_box",
    "resolve_task",
]
