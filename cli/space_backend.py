"""What the Space does per request, without gradio (testable in the main environment).

`SpaceBackend.run` takes the raw widget values, checks the upload (uploads.py), runs the task
(tasks.py) and writes the pictures (visualize.py) into a per-request folder of its own work
directory; the UI (space_ui.py) only passes values in and paths out. No file of a request outlives it: once the front
end holds its own copies (gradio's cache, which gradio empties itself: `delete_cache`, space_ui.py),
`SpaceBackend.served` removes the request's folder, and `SpaceBackend.close` (the server's stop) what is left.

Uploaded frames get a point cloud and an estimated camera when the model's geometry encoder has
VGGT's camera and depth heads (scenes.reconstructed_scene): the default GAP-MLLM-Mini has trained ones; the
Space's "tiny" test model is built with small, random heads so that path runs there too. On a bundled room,
the output also holds the exact answer and the model's held-out score of the task (`SpaceOutput.reference`). Every
request is logged (logger `gap_mllm.space`; space_ui.py stamps each line with the local clock time) when it starts and
when it finishes, so the server log shows that the queue runs requests one at a time, and with its task (on ZeroGPU
also the GPU duration it asks for: `gpu_seconds`); a request the user can fix (`USER_ERRORS`: the page shows it as a
toast) is one more line, "request N refused: <message>", without a traceback, which a real bug still gets.

A request's model work is one call, wrapped in `@spaces.GPU(duration=...)` for Hugging Face's ZeroGPU, which lends a
GPU only inside functions the `spaces` package's decorator wraps; everywhere else (CPU Basic, a dedicated GPU, a
laptop) the decorator returns the function unchanged, and without the `spaces` package the call is the plain function
(`gpu_function`). The Space loads its model on the CPU at start and moves it to CUDA inside that call, when CUDA is
there (`move_to_gpu`). On ZeroGPU the call runs in a forked worker that holds the GPU: its arguments and its result are
pickled across the process boundary, and whatever the call leaves on the GPU lives in that worker only, so the session
scene store is off there.
"""

from __future__ import annotations

import importlib.util
import itertools
import logging
import math
import os
import re
import tempfile
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from gap_mllm.mini.identity import is_gap_mllm_mini
from gap_mllm.processing.box_angles import CENTRE_AND_SIZE, read_box_angles, unseen_angles_note, upright_angles
from gap_mllm.processing.tasks import LiveMapping, package_tasks
from gap_mllm.tasks_gap_mllm import TaskSpec
from gap_mllm.tiny.tiny_model import build_tiny_model

from .example_reference import reference_lines, request_text
from .frame_grid import MIN_COLUMNS, frame_caption, frame_order, grid_columns
from .loading import (
    MINI,
    MINI_NOTICE,
    TINY,
    UNTRAINED_NOTICE,
    load_model_and_processor,
    resolve_model_source,
    temporary_model_folder,
)
from .model_scores import held_out_scores
from .scene_store import SceneStore
from .scenes import (
    CAMERA_ESTIMATED,
    EXAMPLE_SEEDS,
    POINT_CLOUD_HOWTO,
    can_reconstruct,
    reconstructed_scene,
    scene_from_frames,
    synthetic_scene,
    unmarked_geometry_images,
)
from .task_request import example_request
from .tasks import TaskRequest, check_request, run_task
from .uploads import UploadError, UploadLimits, load_frames, original_size
from .visualize import answer_picture, frames_with_boxes, gate_heatmap, hidden_point_note, save_scene_glb

# Radio label -> registry task (the page's wording; tasks_gap_mllm defines the tasks): every task the command line
# answers (cli/task_names.py `front_end_tasks`: each task module's), by its module's `PackageTask.space_label`, else its
# `TaskSpec.title` (gap_mllm.processing.tasks)
TASK_LABELS = LiveMapping(lambda: {task.space_label or task.spec.title: task.spec for task in package_tasks()})
NO_EXAMPLE = "(my uploaded files)"


def room_input(given: dict, name: str):
    """The input `name` ("query", "box", "marker") of a bundled room's own request (`given`: its example inputs, by
    task) of the first task that reads it (`TaskRequest.used_inputs`: not the reference box of another task's
    answer), None when none has it."""
    return next((inputs[name] for task, inputs in given.items()
                 if name in TaskRequest(task).used_inputs() and inputs.get(name) is not None), None)
# What `SpaceBackend.run` raises for a request the user can fix (an upload, a task input, a query that is no
# usable text): the page shows its message as a toast (space_ui.py) and the server log one line ("request N refused:
# ..."); anything else is a bug and keeps its traceback.
USER_ERRORS = (UploadError, ValueError)
LOG = logging.getLogger("gap_mllm.space")

# VGGT's camera and depth heads for the Space's tiny model: small, random, untrained (the banner says so);
# they validate against the tiny encoder (hidden 32, 4 layers: camera width 64, DPT layers 0..3).
SPACE_TINY_HEADS = {
    "use_camera_head": True, "use_depth_head": True, "camera_head_trunk_depth": 1,
    "camera_head_num_attention_heads": 4, "camera_head_num_iterations": 2,
    "dpt_features": 16, "dpt_out_channels": [8, 16, 32, 32], "dpt_layers": [0, 1, 2, 3],
}
TINY_FIELD_OF_VIEW_DEGREES = 60.0
POINT_CLOUD_SCALE = ("Uploaded frames: the point cloud and frame 0's camera are estimated by VGGT's camera and "
                     "depth heads; VGGT's scale is normalised, not metric, so the cloud and the (metric) boxes "
                     "need not agree in size.")


def _tiny_fov_bias(model, degrees: float = TINY_FIELD_OF_VIEW_DEGREES) -> None:
    """Bias the random camera head's field-of-view outputs so its estimate sums to about `degrees`.

    The FoV outputs pass a ReLU; an untrained head often gives 0° (an infinite focal length), which
    would make every upload fall back to the assumed camera and leave the reconstruction path unused."""
    head = model.geometry_encoder.camera_head
    with torch.no_grad():
        head.pose_branch.fc2.bias[7:9] = math.radians(degrees) / head.num_iterations


def build_space_tiny(folder=None) -> Path:
    """Save the Space's tiny model: the embedded tiny GAP-MLLM plus small random camera and depth heads."""
    folder = Path(folder) if folder is not None else temporary_model_folder("gap-mllm-space-tiny-")  # removed at exit
    model, processor = build_tiny_model(geometry_config=SPACE_TINY_HEADS)
    _tiny_fov_bias(model)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def load_space_model(name: str = MINI, source: str | None = None, quantize: str | None = None):
    """`(model, processor, is_tiny)` as the Space serves them (Auto classes + trust_remote_code, eval mode);
    "tiny" is the embedded untrained model with reconstruction heads (`build_space_tiny`). `source`: the folder or Hub
    id `name` names, when the caller resolved it (`resolve_model_source`); `quantize`: a `--quantize` choice
    (`gap_mllm.processing.model_paths.quantization_kwargs`)."""
    if name == TINY:
        model, processor, _ = load_model_and_processor(str(build_space_tiny()), quantize=quantize)
        is_tiny = True
    else:
        model, processor, is_tiny = load_model_and_processor(name, source=source, quantize=quantize)
    return model, processor, is_tiny


def space_compile_decoding() -> str:
    """How the Space decodes (`gap_mllm.generation.generate`'s `compile_decoding`): compiled on a dedicated GPU ("auto":
    the compilation is paid once per server), not on ZeroGPU, whose every request runs in a fresh worker that would
    compile again."""
    return "off" if on_zero_gpu() else "auto"


def upload_folder() -> Path:
    """Where gradio stores uploads: GRADIO_TEMP_DIR, else `<tmp>/gradio` (gradio.utils.get_upload_folder)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio").resolve()


def parse_numbers(text: str | None, count: int | tuple[int, ...], what: str) -> list[float] | None:
    """`count` numbers (or any of the counts of a tuple) separated by commas or spaces (brackets allowed); None for
    empty text."""
    if not text or not text.strip():
        return None
    counts = count if isinstance(count, tuple) else (count,)
    expected = " or ".join(str(n) for n in counts)
    parts = [p for p in re.split(r"[\s,;\[\]()]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError as error:
        raise UploadError(f"{what}: expected {expected} numbers, got {text!r}") from error
    if len(values) not in counts:
        raise UploadError(f"{what}: expected {expected} numbers, got {len(values)}")
    if not all(math.isfinite(v) for v in values):  # "inf" / "nan" parse as floats
        raise UploadError(f"{what}: expected {expected} finite numbers, got {text!r}")
    return values


def object_choices(scene) -> list[str]:
    """The captioning objects of a bundled room as the page lists them: `"<index>: <label>"`."""
    return [f"{i}: {label}" for i, label in enumerate(scene.reference_labels)]


def picked_box(scene, choice) -> list[float]:
    """The reference box of the object `choice` names, which must be one of `object_choices(scene)` exactly (an
    index out of range, a negative one, or another label is refused, never read as some other object)."""
    choices = object_choices(scene)
    if not choices:
        raise UploadError(f"captioning object {choice!r}: objects are picked only in a bundled example; give the "
                          "object's box instead")
    if choice not in choices:
        raise UploadError(f"captioning object {choice!r} is not one of this room's objects ({', '.join(choices)})")
    return [float(v) for v in scene.reference_boxes[choices.index(choice)]]


MAX_TOKENS_VARIABLE = "GAP_MLLM_MAX_TOKENS"


def max_new_tokens_from_environment(environ=None) -> int | None:
    """The Space's `GAP_MLLM_MAX_TOKENS`: None when unset or empty (each task's own budget), else a positive
    whole number; anything else is a ValueError naming the variable."""
    value = (os.environ if environ is None else environ).get(MAX_TOKENS_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MAX_TOKENS_VARIABLE}={value!r}: expected a positive whole number of tokens, or unset for "
                         "each task's own budget")
    return int(value)


@dataclass
class SpaceSettings:
    model: str = MINI
    max_new_tokens: int | None = None  # None: each task's own budget (generation stops at the answer's end)
    constrained: bool = True  # answers decoded inside their task's grammar (users want parseable answers)
    concurrency: int = 1
    max_queue: int = 16
    quantize: str | None = None  # a `--quantize` choice (processing/model_paths.py); None: the weights as saved
    limits: UploadLimits = field(default_factory=UploadLimits)
    scene_sessions: int = 8  # sessions whose last encoded scene is kept (0: encode every request anew)
    scene_bytes: int = 2 << 30  # bound on the kept scenes' cached keys/values


@dataclass
class SpaceOutput:
    """Paths and texts for the UI: frames with boxes (one PNG per frame), the 3D scene (GLB), the gate
    heat map (PNG or None), the raw answer, the parsed result (text), a status line, and on a bundled room
    `reference`: the request, the exact answer, how close the answer is and the model's held-out score of
    the task next to a trivial baseline (`model_scores.py`; "" on uploads)."""

    frames: list[Path]
    scene_glb: Path
    gates_png: Path | None
    raw: str
    parsed: str
    status: str
    reference: str = ""
    # the gallery's captions and column count (frame_grid.py): `frames` are in the order shown, the marked view first
    captions: list[str] = field(default_factory=list)
    columns: int = MIN_COLUMNS
    folder: Path | None = None  # the request's own folder, which holds its files until `SpaceBackend.served`


class SpaceBackend:
    """Loads the model once and serves requests (gradio's queue serialises them; the lock guards
    direct callers too, since a model is not safe to run from two threads at once)."""

    # the model folder's record of its training boxes' angles (processing/box_angles.py), set when the model loads;
    # None: none recorded (a 6-number box then takes a level camera's angles, and no box is noted)
    box_angles: dict | None = None

    def __init__(self, settings: SpaceSettings, work_dir=None, loaded=None):
        """`loaded`: an already loaded `(model, processor, is_tiny)`; by default `load_space_model(settings.model)`."""
        self.settings = settings
        # the folder or Hub id settings.model names, resolved once for the server (None: the tiny test model)
        self.source = None if settings.model == TINY else resolve_model_source(settings.model)
        self.model, self.processor, self.is_tiny = loaded or load_space_model(settings.model, self.source,
                                                                              settings.quantize)
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="gap-mllm-space-"))
        self._own_work_dir = work_dir is None  # made here: removed whole by `close`
        self._folders: set[Path] = set()  # the requests' folders not yet removed
        self._lock = threading.Lock()
        self._examples = {}
        self._numbers = itertools.count(1)  # request numbers for the log (next() is atomic in CPython)
        # The next question about the same frames reuses the session's encoded scene (scene_store.py); not on ZeroGPU,
        # where the encoded scene would stay in the worker of one GPU call (module docstring)
        self.scenes = (SceneStore(settings.scene_sessions, settings.scene_bytes)
                       if settings.scene_sessions > 0 and not on_zero_gpu() else None)
        # the model work of a request, inside @spaces.GPU(duration=...) (a no-op off ZeroGPU)
        self._answer_on_gpu = gpu_function(self._answer, self.gpu_seconds)
        LOG.info(gpu_line())
        # The model folder's own evaluation (GAP-MLLM-Mini ships one), for the decoding the Space runs; None: no
        # held-out line is shown.
        self.scores = (None if self.is_tiny or self.source is None
                       else held_out_scores(self.source, settings.constrained))
        # the orientations of its training boxes (GAP-MLLM-Mini records them): a box of another gets a note
        self.box_angles = None if self.is_tiny or self.source is None else read_box_angles(self.source)

    @property
    def notice(self) -> str:
        if self.is_tiny:
            return UNTRAINED_NOTICE
        if self.source is not None and is_gap_mllm_mini(self.source):  # by its card
            return MINI_NOTICE
        return f"Model: `{self.settings.model}`."

    @property
    def reconstructs(self) -> bool:
        """Whether uploads get a point cloud and an estimated camera (the model has camera + depth heads)."""
        return can_reconstruct(self.model)

    @property
    def geometry_notice(self) -> str:
        """What uploads get in 3D with this model, for the page."""
        return POINT_CLOUD_SCALE if self.reconstructs else POINT_CLOUD_HOWTO

    def example(self, name: str):
        if name not in EXAMPLE_SEEDS:
            raise UploadError(f"unknown example {name!r}")
        if name not in self._examples:
            self._examples[name] = synthetic_scene(EXAMPLE_SEEDS[name])
        return self._examples[name]

    def object_choices(self, example_name: str | None) -> list[str]:
        """Pickable objects for captioning: the reference objects of a synthetic example."""
        if not example_name or example_name == NO_EXAMPLE:
            return []
        return object_choices(self.example(example_name))

    def example_defaults(self, example_name: str | None) -> dict:
        """The task inputs of a bundled room's own requests, to prefill the page with (their exact answers are
        known, so the reference panel compares with them): `{"object", "query", "marker"}`; empty values for
        uploads."""
        if not example_name or example_name == NO_EXAMPLE:
            return {"object": None, "query": "", "marker": ""}
        scene = self.example(example_name)
        given = scene.example_inputs
        choices = self.object_choices(example_name)
        box, query, marker = (room_input(given, name) for name in ("box", "query", "marker"))
        found = [c for c, b in zip(choices, scene.reference_boxes) if box is not None and np.allclose(b, box)]
        return {"object": found[0] if found else (choices[0] if choices else None),
                "query": query if query is not None else "",
                "marker": " ".join(str(int(v)) for v in marker) if marker is not None else ""}

    def _scene(self, files, example_name):
        if example_name and example_name != NO_EXAMPLE:
            return self.example(example_name)
        paths = [f if isinstance(f, (str, os.PathLike)) else getattr(f, "name", f) for f in (files or [])]
        return scene_from_frames(load_frames(paths, self.settings.limits, allowed_roots=[upload_folder()]))

    def _request(self, task_label, query, object_choice, box_text, marker_text, scene) -> TaskRequest:
        """The request the page's values ask, checked. On a bundled room an input the page sent empty is the room's
        own (`task_request.example_request`, as `gap-mllm predict --example`): a request sent before the example's
        query filled its field in asks the example's query, not nothing."""
        try:
            task = TaskRequest(TASK_LABELS.get(task_label, task_label)).spec
        except ValueError as error:
            raise UploadError(str(error)) from None
        box = None
        if "box" in task.parameters:
            # 6 numbers: an upright object as the model's training cameras see it (task_request.box_with_angles)
            box = (picked_box(scene, object_choice) if object_choice
                   else parse_numbers(box_text, (CENTRE_AND_SIZE, 9), "object box"))
        marker = self._marker(marker_text, scene, task) if task.needs_marker else None
        request = example_request(task, scene.example_inputs.get(task.name, {}), query=query, box=box, marker=marker,
                                  upright=upright_angles(self.box_angles))  # a 6-number box: as the model's cameras
        # every input is checked here, before the model runs (reconstruction included), so a bad one is the
        # page's message at once rather than an error after the model's time; the query's tokens: `check_request`.
        # The marker names a pixel of its own frame as the model gets it (frames of another shape keep their size)
        marked = request.marker[0] if request.marker is not None else None
        request.validate(len(scene.views), original_size([view.size for view in scene.views], marked))
        return request

    @staticmethod
    def _marker(marker_text, scene, task) -> tuple[int, int, int] | None:
        """The marker field's pixel `(view, x, y)` of a request of `task`, whole numbers (its view and frame are
        checked with the request); empty: the room's own marker of the task on a bundled room (None), else the centre
        of the first frame."""
        values = parse_numbers(marker_text, 3, "marker (view x y)")
        if values is None:
            if scene.example_inputs.get(task.name, {}).get("marker") is not None:
                return None  # example_request takes the room's own
            width, height = scene.views[0].size
            values = [0, width // 2, height // 2]
        if not all(float(v).is_integer() for v in values):
            raise UploadError(f"marker (view x y): whole pixel numbers are needed, got {marker_text!r}")
        return tuple(int(v) for v in values)  # checked against its frame with the request (`_request`)

    def _geometry_status(self, scene) -> str:
        """One or two sentences: where the drawn camera and the 3D view's geometry come from."""
        if scene.calibrated:
            return "exact synthetic geometry (green: reference boxes)."
        if scene.camera == CAMERA_ESTIMATED:
            return (f"uploaded frames: point cloud ({len(scene.points)} points) and frame 0's camera estimated by "
                    "VGGT (normalised scale, not metric); boxes drawn on frame 0 with that camera.")
        fallback = "uploaded frames: boxes drawn on frame 0 with an assumed 60° camera; no point cloud"
        if scene.note:
            return f"{fallback} ({scene.note})."
        return fallback + "." + ("" if self.reconstructs else f" {POINT_CLOUD_HOWTO}")

    def run(self, files, example_name, task_label, query=None, object_choice=None, box_text=None,
            marker_text=None, session: str | None = None) -> SpaceOutput:
        """One request; raises one of `USER_ERRORS` with a user-facing message, before the model runs, for any input
        the user can fix. `session` (gradio's session hash) selects whose encoded scene may be reused."""
        started = time.monotonic()
        number = next(self._numbers)
        LOG.info("request %d started", number)
        try:
            return self._run(files, example_name, task_label, query, object_choice, box_text, marker_text, session, number)
        except USER_ERRORS as error:  # the page shows it as a toast: one log line, no traceback (a bug keeps its own)
            LOG.info("request %d refused: %s", number, " ".join(str(error).split()))
            raise
        finally:
            LOG.info("request %d finished (%.2f s)", number, time.monotonic() - started)

    def gpu_seconds(self, scene, request, inputs=None, session=None) -> int:
        """The ZeroGPU duration of a request (`gpu_seconds`; the arguments are those of the GPU call)."""
        return gpu_seconds(request.spec, self.settings.max_new_tokens)

    def _memory_target(self) -> dict:
        """`check_request`'s memory arguments: the device the answer runs on (`move_to_gpu`'s) and whether the weights
        are there already; none on ZeroGPU, whose GPU is lent inside the GPU call only (asking its memory outside
        would start CUDA in the server's process), so there the request is not priced."""
        if on_zero_gpu():
            return {}
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return {"device": device, "quantize": self.settings.quantize,
                "weights_loaded": self.model.device.type == device.type}

    def _answer(self, scene, request, inputs=None, session=None):
        """The model work of one request (the GPU call): the model on CUDA when there is one, VGGT's reconstruction of
        uploaded frames, the task, from `inputs` (the request's processor output, `check_request`'s; None: made by
        `run_task`). Returns `(scene, TaskResult)`; both cross a process boundary on ZeroGPU (pickled)."""
        move_to_gpu(self.model)
        if not scene.calibrated and self.reconstructs:
            scene = reconstructed_scene(self.model, self.processor, scene.views,
                                        images=unmarked_geometry_images(inputs, request.marker))
        result = run_task(self.model, self.processor, scene.views, request, max_new_tokens=self.settings.max_new_tokens,
                          scenes=self.scenes, session=session, constrained=self.settings.constrained, inputs=inputs,
                          compile_decoding=space_compile_decoding())
        return scene, result

    def _run(self, files, example_name, task_label, query, object_choice, box_text, marker_text,
             session=None, number=0) -> SpaceOutput:
        scene = self._scene(files, example_name)
        request = self._request(task_label, query, object_choice, box_text, marker_text, scene)
        # before the GPU call, as predict does before its load: a query too long for the model's context, frames the
        # processor cannot read, frames past the memory left (cli/tasks.py); its processor output is the one the
        # answer is generated from
        inputs = check_request(self.model.config, self.processor, scene.views, request, self.settings.max_new_tokens,
                               **self._memory_target())
        LOG.info(request_line(number, request.spec, self.settings.max_new_tokens))
        with self._lock:
            scene, result = self._answer_on_gpu(scene, request, inputs, session)
        out = self.work_dir / uuid.uuid4().hex
        out.mkdir(parents=True)
        self._folders.add(out)
        drawn = frames_with_boxes(scene, result.boxes, result.point, marker=result.marker)
        frames = []
        for index, image in enumerate(drawn):
            frames.append(out / f"frame_{index}.png")
            image.save(frames[-1])
        order = frame_order(len(frames), result.marker)  # the marker task: the marked view first
        captions = [frame_caption(index, result.marker) for index in order]
        columns = grid_columns([drawn[index].size for index in order])
        answer_picture(scene, result).save(out / "frames_with_boxes.png")
        glb = save_scene_glb(out / "scene.glb", scene, result.boxes, result.point)
        gates = gate_heatmap(result.gates, result.token_grids, out / "fusion_gates.png")
        status = f"{request.task} on {len(scene.views)} frame(s); {self._geometry_status(scene)}"
        hidden = hidden_point_note(scene, result.point)  # as the picture's legend says it
        status += f"\n{hidden}" if hidden else ""
        unseen = unseen_angles_note(request.box, self.box_angles) if "box" in request.spec.parameters else None
        status += f"\n{unseen}" if unseen else ""
        return SpaceOutput(frames=[frames[index] for index in order], scene_glb=glb, gates_png=gates, raw=result.answer,
                           parsed=result.summary(), status=status, reference=self._reference(scene, request, result),
                           captions=captions, columns=columns, folder=out)

    def served(self, out: SpaceOutput, keep: Callable[[Path], str]) -> SpaceOutput:
        """`out` with each of its files replaced by `keep(path)`, the copy the front end serves (space_ui.py: gradio's
        cache, which gradio deletes on its `delete_cache` schedule and at its stop), then the request's folder removed,
        also when `keep` fails: nothing of the request stays in the backend's work folder once it is answered."""
        try:
            return replace(out, frames=[Path(keep(path)) for path in out.frames], scene_glb=Path(keep(out.scene_glb)),
                           gates_png=None if out.gates_png is None else Path(keep(out.gates_png)), folder=None)
        finally:
            self._remove(out.folder)

    def _remove(self, folder: Path | None) -> None:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
            self._folders.discard(folder)

    def close(self) -> None:
        """Remove every file the backend wrote: the folders of requests not `served` (a request that failed after
        writing, a caller that never served one), and the work folder itself when the backend made it. The server
        calls it at its stop (space_ui.py `launch`)."""
        for folder in list(self._folders):
            self._remove(folder)
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _reference(self, scene, request, result) -> str:
        """On a bundled room: the request, the exact answer and the score of this one, then the model's held-out
        score of the task (when its folder has evaluation_results.json); "" on uploaded frames."""
        if not scene.calibrated:
            return ""
        lines = [("input", request_text(request)), *reference_lines(scene, request, result)]
        text = [f"{name}: {value}" for name, value in lines if value]
        if self.scores is not None:
            text.append(self.scores.line(request.task))
        return "\n".join(text)


# ---- ZeroGPU: the GPU call of a request, its duration and the server log's lines about it

# Greedy decoding of the real-size GAP-MLLM (Qwen3-VL-2B + VGGT-1B aggregator, bfloat16, batch 1, 4 views), measured
# on an H100: bench/real_size_h100.json, "generate" (28.0 tokens/s; 0.14 s for the prefill and the first token).
DECODE_TOKENS_PER_SECOND = 28.0
# Moving the 3.2 B parameters to the GPU, the geometry encoder and prefill of up to 8 views, VGGT's reconstruction
# heads on uploads and the gate pass: a round bound on what the decode rate leaves out, not a measurement.
SETUP_SECONDS = 10.0
# ZeroGPU's GPU is a MIG slice of an H200 (3g.71gb: 60 of its 132 SMs), not the H100 the rate was measured on.
SAFETY = 1.5


def gpu_seconds(task: TaskSpec, max_new_tokens: int | None = None) -> int:
    """The ZeroGPU duration (seconds) a request of `task` asks for.

    ZeroGPU reserves the GPU for the `duration` the call asks, stops a call that runs longer, and charges the
    visitor's daily GPU quota by it. Each request asks for

        ceil(SAFETY * (SETUP_SECONDS + budget / DECODE_TOKENS_PER_SECOND)) seconds

    where `budget` is the task's token budget (tasks_gap_mllm.py: detection 1,280, grounding 192, captioning 256,
    reconstruction 96), or `max_new_tokens` (GAP_MLLM_MAX_TOKENS) when that is lower: detection 84 s, captioning
    29 s, grounding 26 s, reconstruction 21 s.
    """
    budget = task.max_new_tokens if max_new_tokens is None else min(task.max_new_tokens, max_new_tokens)
    return math.ceil(SAFETY * (SETUP_SECONDS + budget / DECODE_TOKENS_PER_SECOND))


def spaces_version() -> str | None:
    """The installed `spaces` package's version, or None without it."""
    if importlib.util.find_spec("spaces") is None:
        return None
    from importlib.metadata import version

    return version("spaces")


def on_zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU hardware (the `spaces` package reads SPACES_ZERO_GPU)."""
    if spaces_version() is None:
        return False
    from spaces.config import Config

    return bool(Config.zero_gpu)


def gpu_function(function: Callable, duration: Callable[..., int]) -> Callable:
    """`function` wrapped in `@spaces.GPU(duration=duration)` (`duration` takes `function`'s arguments and returns
    seconds); the function itself when `spaces` is not installed (then no ZeroGPU can be asked anyway)."""
    if spaces_version() is None:
        return function
    import spaces

    return spaces.GPU(duration=duration)(function)


def move_to_gpu(model) -> torch.device:
    """Move `model` to CUDA when CUDA is available (a no-op once it is there); returns where it is."""
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return model.device


def gpu_line() -> str:
    """One line for the server log: where this Space's GPU work runs. Only on ZeroGPU does a request ask for a GPU
    duration (`request_line`); elsewhere the line says which device this process has."""
    version = spaces_version()
    device = "on CUDA" if torch.cuda.is_available() else "on the CPU (no CUDA)"
    if version is None:
        return f"GPU: spaces is not installed; requests run in this process, {device}"
    if on_zero_gpu():
        return (f"GPU: spaces {version}, ZeroGPU: every request runs inside @spaces.GPU with the duration its line "
                "states (cli/space_backend.py)")
    return f"GPU: spaces {version}, not on ZeroGPU: @spaces.GPU is a no-op, requests run in this process, {device}"


def request_line(number: int, task: TaskSpec, max_new_tokens: int | None = None) -> str:
    """The server log's line for request `number` before its model work: its task, and on ZeroGPU the duration it
    asks for (`gpu_seconds`); off ZeroGPU no duration is asked for, so none is stated."""
    if on_zero_gpu():
        return f"request {number}: {task.name}, ZeroGPU duration {gpu_seconds(task, max_new_tokens)} s"
    return f"request {number}: {task.name}"
