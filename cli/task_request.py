"""What a front end asks for one model call (`TaskRequest`) and the rules its inputs follow: light to import (no
torch, no transformers), so that `gap-mllm predict` checks a request before its heavy imports (cli/early_checks.py)
with the same rules the model call applies (cli/tasks.py re-exports them)."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from gap_mllm.image_utils_gap_mllm import check_marker_inside
from gap_mllm.processing.box_angles import CENTRE_AND_SIZE, UPRIGHT_LEVEL_ANGLES
from gap_mllm.processing.tasks import package_task, package_task_names
from gap_mllm.tasks_gap_mllm import (
    TaskSpec,
    check_query_text,
    format_box,
    refuse_control_tokens,
    resolve_task,
)

from .task_names import front_end_task_names, front_end_tasks

# A captioning box's numbers (metres; radians for the angles) beyond this bound describe no object of a scene the
# model reads, and drawing such a box overflows (1e308: an OverflowError after the model has run).
MAX_BOX_VALUE = 1e4
# The task inputs a request may carry; each task reads some of them (`TaskRequest.used_inputs`)
INPUT_NAMES = ("query", "box", "marker")


@dataclass
class TaskRequest:
    """What the user asked: the task and its task-specific input (inputs the task does not use are ignored,
    so a front end can pass every field it has).

    Attributes:
        task: one of `front_end_tasks()` (a registry name or `TaskSpec`; stored as the canonical name).
        query: the referring text (grounding), or what a task module's `query_help` says it is.
        box: the 9 numbers `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` of the object to describe
            (captioning only), first-frame camera coordinates; 6 numbers (centre and size) stand for an upright
            object, and take the angles `upright` (`box_with_angles`).
        marker: `(view, x, y)` pixel to mark (reconstruction only), in the view's original pixels.
        upright: the angles `[yaw, pitch, roll]` a 6-number box takes: the model's, from its folder's record of its
            training cameras' tilt (processing/box_angles.py `upright_angles`); None: a level camera's,
            `UPRIGHT_LEVEL_ANGLES`.
    """

    task: str | TaskSpec
    query: str | None = None
    box: list[float] | None = None
    marker: tuple[int, int, int] | None = None
    upright: tuple[float, float, float] | None = field(default=None, repr=False)
    spec: TaskSpec = field(init=False, repr=False)

    def __post_init__(self):
        self.spec = resolve_task(self.task)
        self.task = self.spec.name
        self.box = box_with_angles(self.box, self.upright)

    def validate(self, num_views: int | None, view_size: tuple[int, int] | None = None) -> None:
        """Raise ValueError with a user-facing message when the request is incomplete or its marker lies outside the
        frames (`check_given`). `num_views` / `view_size` None: not known (frames not read, a video not decoded), so
        the marker's view / pixel is not range-checked."""
        if self.spec not in front_end_tasks():
            raise ValueError(f"task {self.task!r} is not run by itself here; choose one of "
                             f"{', '.join(front_end_task_names())}")
        if "query" in self.spec.parameters and not (isinstance(self.query, str) and self.query.strip()):
            what = getattr(self.entry, "query_missing", None) or "a text query describing the object"
            if self.query is not None and not isinstance(self.query, str):
                raise ValueError(f"{self.task} needs {what} as text, got {type(self.query).__name__} {self.query!r:.60}")
            raise ValueError(f"{self.task} needs {what}")
        if "box" in self.spec.parameters and self.box is None:
            check_box(self.box)  # its message for a missing box
        if self.spec.needs_marker and self.marker is None:
            raise ValueError("reconstruction needs a marker (view, x, y)")
        self.check_given(num_views, view_size)

    def check_given(self, num_views: int | None = None, view_size: tuple[int, int] | None = None) -> None:
        """The inputs that were given, checked as `validate` checks them, without asking for the missing ones (on a
        bundled example the room's own fill those: `gap-mllm predict --example`'s early check). The marker's view
        must be one of `num_views` and its pixel inside `view_size` (`(width, height)` of the frames the model gets,
        the processor's rule: gap_mllm.processing_gap_mllm), where they are known."""
        if "query" in self.spec.parameters and isinstance(self.query, str):
            # before any model is loaded: text that is not valid Unicode (`predict --query $'\xff'`) or holds the
            # Qwen markup; `check_text` adds the tokenizer's own added tokens (gap_mllm.tasks_gap_mllm)
            refuse_control_tokens(None, self.query, "the query")
            check_query_text(self.query, "the query")  # `<image>`: the prompt's own placeholder of a view
        problem = getattr(self.entry, "query_problem", None)
        if problem is not None and isinstance(self.query, str) and problem(self.query):
            raise ValueError(problem(self.query))  # a query its task cannot answer (`PackageTask.query_problem`)
        if "box" in self.spec.parameters and self.box is not None:
            check_box(self.box)
        if self.spec.needs_marker and self.marker is not None:
            if len(self.marker) != 3:
                raise ValueError("reconstruction needs a marker (view, x, y)")
            if num_views is not None and not 0 <= int(self.marker[0]) < num_views:
                raise ValueError(f"marker view {self.marker[0]} is out of range: there are {num_views} views")
            if view_size is not None:
                check_marker_inside(int(self.marker[1]), int(self.marker[2]), *view_size, name=f"marker view {self.marker[0]}")

    @property
    def entry(self):
        """The task's `PackageTask` (gap_mllm.processing.tasks), None for a task without a package module."""
        return package_task(self.spec) if self.spec.name in package_task_names() else None

    def used_inputs(self) -> tuple[str, ...]:
        """The names of the inputs ("query", "box", "marker") this task reads; the others are ignored."""
        return tuple(name for name in INPUT_NAMES
                     if name in self.spec.parameters or (name == "marker" and self.spec.needs_marker))

    def missing_inputs(self) -> list[str]:
        """The inputs this task reads that were not given (None, or a blank query): a command line names the option
        that gives each (cli/early_checks.py)."""
        return [name for name in self.used_inputs() if given(getattr(self, name)) is None]

    def unused_inputs(self) -> list[str]:
        """The inputs given (not None) that this task does not read: a command line refuses them (cli/early_checks.py)
        rather than drop them in silence."""
        return [name for name in INPUT_NAMES if getattr(self, name) is not None and name not in self.used_inputs()]

    def check_text(self, tokenizer) -> None:
        """ValueError when the query (user text: a public textbox in the Space) would write chat or vision markup
        (gap_mllm.tasks_gap_mllm). Front ends call it before any model work; `run_task` calls it again, with this
        package's rule, whatever version of the processor the checkpoint carries."""
        if "query" in self.spec.parameters:
            refuse_control_tokens(tokenizer, self.query, "the query")

    def processor_inputs(self) -> dict:
        """Keyword arguments of `processor(images=[views], ...)` for one sample: the task and the inputs it uses."""
        inputs = {"task": self.task}
        if "query" in self.spec.parameters:
            inputs["query"] = self.query
        if "box" in self.spec.parameters:
            inputs["box"] = [float(v) for v in self.box]
        if self.spec.needs_marker:
            inputs["point_prompts"] = [tuple(int(v) for v in self.marker)]
        return inputs


def box_with_angles(box, upright=None):
    """A box given by its centre and size alone (6 numbers) with the angles of an upright object appended, as a list
    of 9 floats: `upright` (the model's: processing/box_angles.py `upright_angles`), else those of a level first
    camera (`UPRIGHT_LEVEL_ANGLES`); any other value as it is (`check_box` judges it). One rule for `gap-mllm predict
    --box`, the Space's box field and the demo."""
    if (isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != CENTRE_AND_SIZE
            or not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box)):
        return box
    return [float(v) for v in box] + [float(v) for v in (upright or UPRIGHT_LEVEL_ANGLES)]


def check_box(box) -> None:
    """ValueError naming the captioning box unless it is 9 finite numbers with sizes > 0 as the prompt writes them
    (its rule, `format_box`: a box with a side of 0 is no object's, as in an answer) each within ±`MAX_BOX_VALUE`."""
    if box is None or isinstance(box, (str, bytes)) or not hasattr(box, "__len__") or len(box) != 9:
        raise ValueError("captioning needs the object's 3D box: 9 numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll], "
                         "or 6 [cx, cy, cz, sx, sy, sz] for an upright object"
                         + ("" if box is None else f", got {box!r:.120}"))
    try:
        format_box(box)
    except ValueError as error:
        raise ValueError(f"captioning {error}") from None  # "captioning box has a negative size ..."
    if any(abs(float(v)) > MAX_BOX_VALUE for v in box):
        raise ValueError(f"captioning box {[float(v) for v in box]}: every number must lie within ±{MAX_BOX_VALUE:g} "
                         "(metres; radians for the angles)")


def given(value):
    """`value`, or None when it says nothing: None, blank text or an empty sequence (a page's empty field)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str) and hasattr(value, "__len__") and len(value) == 0:
        return None
    return value


def example_request(task, example: dict, query=None, box=None, marker=None, upright=None) -> TaskRequest:
    """The request on a bundled room (`example`: the room's own inputs of this task, `scene.example_inputs[task]`):
    each input the user did not give (`given`) is the room's own, so the exact answer the front end compares with
    is the one asked. One rule for `gap-mllm predict --example` and the Space: a page that sends its request before
    its query field filled in asks the room's own query, not an empty one."""
    asked = TaskRequest(task)  # its inputs are set below, all at once
    used = asked.used_inputs()
    mine, values = {"query": query, "box": box, "marker": marker}, {}
    for name in INPUT_NAMES:
        value = given(mine[name])
        values[name] = example.get(name) if value is None and name in used else value
    if values["marker"] is not None:
        values["marker"] = tuple(int(v) for v in values["marker"])
    return TaskRequest(asked.spec, **values, upright=upright)  # a 6-number box: the model's upright angles
