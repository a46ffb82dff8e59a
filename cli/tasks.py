"""One demo/CLI inference call: task → prompt → generate → parsed answer + fusion gates.

Shared by `gap-mllm predict`, `gap-mllm demo` and the Gradio Space, so all show exactly the same
thing. Everything about a task (prompt, parser, token budget, stop rule) comes from the registry
(`gap_mllm.tasks_gap_mllm`) through the processor: `processor(task=...)`, `processor.generation_kwargs`,
`processor.post_process`.

Tasks a front end runs (one model call each; `task_names.front_end_tasks()`): each task with a package module
(gap_mllm.processing.tasks), its answer shown from its facts (`PackageTask.answer_fields`, `written_fields`,
`shown`); the shipped ones:
    detection       3D video object detection; answer: list of labelled boxes.
    grounding       3D visual grounding of a text query; answer: one box. One call asks the official
                    stage-2 prompt on the given frames directly (no stage-1 frame selection; the
                    two-stage pipeline is `gap-mllm evaluate --task grounding`).
    captioning      describe the object inside a given 3D box; answer: a caption.
    reconstruction  3D point (+ label) of a pixel marked with a red "+" (the pre-training task).

What makes a parsed answer no success for a front end, beyond its parser's own reason (`task_answer`, `run_task`):
the parsers are tolerant for scoring, and a front end reports an answer as the task's (exit status 0 of
`gap-mllm predict`) only when it is whole and describes something.

- `other_task_format`: an answer written in another task's format (grounding's dict for a detection, JSON for a
  caption). The parsers would read grounding's dict as one unlabelled detection box, or any text as a caption.
- `zero_size_box`: a box of size 0x0x0 is no object's box. The grammar admits it (sizes are numbers >= 0), and a
  model whose prompt nearly filled its context writes one (`-0.0, -0.0, -0.0`).
- `budget_cut`: an answer that its token budget ended. Cut mid-way, it used the whole budget without reaching its
  end (the task's stop rule or a stop token); a constrained list answer (detection) that came within its list's
  `reserve` of the budget was closed by the grammar for the budget, and may lack entries the model would have
  written.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from gap_mllm.checks import check_memory_for_request, context_limit, positions_after
from gap_mllm.generation import generate
from gap_mllm.processing.tasks import package_task, package_task_names
from gap_mllm.speedups import mrope_position_ids
from gap_mllm.tasks_gap_mllm import (
    BOX_KEY,
    BOX_KEYS,
    MAX_TEXT_CHARS,
    Box3D,
    PromptTextError,
    budget_cut_reason,
    parse_literal,
    strip_code_fences,
)

from .scene_store import answer_on_stored_scene
from .task_request import MAX_BOX_VALUE, TaskRequest, check_box  # noqa: F401 - the request's rules, defined light


def readable_answer(raw: str) -> str:
    """The generated text as a person reads it: surrounding whitespace removed, runs of blank lines
    collapsed; an answer of whitespace only says so instead of printing it."""
    text = raw.strip()
    if not text:
        return f"(no answer: the model generated {len(raw)} whitespace character(s))"
    lines = [line.rstrip() for line in text.splitlines()]
    return "\n".join(line for i, line in enumerate(lines) if line or (i and lines[i - 1]))


@dataclass
class TaskResult:
    """Everything a front end shows for one call.

    Attributes:
        raw: the generated answer text (special tokens removed).
        parsed: the typed result of the task's parser (`DetectionResult`, `GroundingResult`, `CaptionResult`,
            `PointmapResult`, or a task module's `TaskSpec.result_type`).
        boxes: boxes to draw (detection boxes, the grounded box, or the captioned input box).
        point: the reconstructed 3D point, if any.
        marker: the marked pixel `(view, x, y)` of a reconstruction request, if any.
        gates: per fusion level (0 = main, then DeepStack), one `[N_visual]` array: the share of the Qwen
            feature in each fused token; empty when the model has no gated fusion.
        token_grids: per view, the `(h, w)` grid of visual tokens after spatial merging (to lay the
            gates out as maps).
        query: the query of the request (a task that takes one), if any: the picture of a bundled room's own
            grounding query marks its object's reference box (visualize.py `answer_picture`).
    """

    task: str
    raw: str
    parsed: object
    boxes: list[Box3D] = field(default_factory=list)
    point: tuple[float, float, float] | None = None
    marker: tuple[int, int, int] | None = None
    gates: list[np.ndarray] = field(default_factory=list)
    token_grids: list[tuple[int, int]] = field(default_factory=list)
    query: str | None = None

    @property
    def answer(self) -> str:
        """The generated answer, readable (`readable_answer`)."""
        return readable_answer(self.raw)

    @property
    def answer_fields(self) -> tuple[str, ...]:
        """The parsed answer's fields a task module shows (`PackageTask.answer_fields`); () for the other tasks."""
        entry = package_task(self.task) if self.task in package_task_names() else None
        return entry.answer_fields if entry is not None else ()

    @property
    def counts_boxes(self) -> bool:
        """Whether the summary counts the boxes first (`PackageTask.counts_boxes`)."""
        entry = package_task(self.task) if self.task in package_task_names() else None
        return entry is not None and entry.counts_boxes

    @property
    def lists_boxes(self) -> bool:
        """Whether the summary lists the boxes (`PackageTask.lists_boxes`: not those of the request)."""
        entry = package_task(self.task) if self.task in package_task_names() else None
        return entry.lists_boxes if entry is not None else True

    @property
    def written_fields(self) -> tuple[str, ...]:
        """The parsed answer's fields a task module writes (`answer_fields`, then `PackageTask.written_fields`)."""
        entry = package_task(self.task) if self.task in package_task_names() else None
        return (*entry.answer_fields, *entry.written_fields) if entry is not None else ()

    def summary(self) -> str:
        """A short human-readable rendering of the parsed answer."""
        reason = getattr(self.parsed, "reason", None)
        lines = []
        for name in self.answer_fields:
            if getattr(self.parsed, name, None) is not None:
                lines.append(f"{name}: {getattr(self.parsed, name)}")
        if self.counts_boxes:
            lines.append(f"{len(self.boxes)} box(es)")
        if self.lists_boxes:
            for box in self.boxes:
                values = ", ".join(f"{v:.2f}" for v in box.to_list())
                lines.append(f"  {box.label or '(no label)'}: [{values}]")
        if self.point is not None:
            label = getattr(self.parsed, "label", None)
            lines.append(f"point: [{', '.join(f'{v:.2f}' for v in self.point)}] label: {label or '(none)'}")
        if reason:
            lines.append(f"parse problem: {reason}")
        return "\n".join(lines) if lines else "nothing parsed"

    def _shows(self, name: str) -> bool:
        """Whether the parsed answer's field `name` is written: when its task module names it (`written_fields`)."""
        return name in self.written_fields

    def to_dict(self) -> dict:
        """JSON-ready form (used by `gap-mllm predict --json` and the Space's parsed-result panel)."""
        return {
            "task": self.task,
            "raw": self.raw,
            "boxes": [{"label": b.label, BOX_KEY: b.to_list()} for b in self.boxes],  # the model's own key
            "point": list(self.point) if self.point is not None else None,
            "label": getattr(self.parsed, "label", None) if self._shows("label") else None,
            "caption": getattr(self.parsed, "caption", None) if self._shows("caption") else None,
            "answer": getattr(self.parsed, "answer", None) if self._shows("answer") else None,
            "reason": getattr(self.parsed, "reason", None),
            "mean_gate_per_level": [float(g.mean()) for g in self.gates],
        }


def task_answer(task: str, raw: str, parsed):
    """The parsed answer the front ends show (`gap-mllm predict`, `demo`, the Space): the task parser's `parsed`, or,
    when `raw` is written in another task's format (`other_task_format`), an empty result of the same
    type whose `reason` names that format: the parsers are tolerant for scoring and would read grounding's dict as
    one unlabelled detection box, or any text as a caption, and the answer is not the task's (predict: exit status 3).
    A box of size 0x0x0 is kept with that reason (`zero_size_box`)."""
    reason = other_task_format(raw, task)
    if reason is not None:
        return type(parsed)(reason=reason)
    zero = zero_size_box(parsed) if parsed.reason is None else None  # no object's box (`zero_size_box`)
    return parsed if zero is None else replace(parsed, reason=zero)


class FramesRefused(ValueError):
    """Frames the model's processor cannot read (`reason`, its own words), all of `size` `(width, height)` as the
    model gets them: a front end names its files."""

    def __init__(self, reason: str, size: tuple[int, int]):
        super().__init__(f"the model's processor cannot read the frames ({size[0]}x{size[1]} px): {reason}")
        self.reason, self.size = reason, size


def check_request(config, processor, views: list, request: TaskRequest, max_new_tokens: int | None = None,
                  device=None, quantize: str | None = None, weights_loaded: bool = False):
    """What `run_task` would refuse or answer wrongly, found with the model's `config` and `processor` alone, so that a
    front end says it before the weights load (cli/loading.py `ModelSource`); returns the processor's output for the
    request (`BatchFeature`, CPU tensors), which `run_task(inputs=...)` generates from. `request` is validated by the
    front end (`TaskRequest.validate`, with the frames' count and size it knows). `device`: where the model will
    answer, whose free memory the request must fit (None: not priced); `quantize`: its `--quantize` choice;
    `weights_loaded`: its weights are on `device` already. A ValueError with one line each:

    * the query holds one of the tokenizer's added tokens (`<image>` ...: `TaskRequest.check_text`);
    * the processor cannot read the frames (`FramesRefused`: a frame past Qwen's aspect-ratio limit, ...);
    * the prompt leaves the answer no room in the model's context: the prompt's highest M-RoPE position (visual
      tokens of a view share positions: modeling_gap_mllm.py, the positions `generate` gives them) plus the answer's
      budget (the task's own, which fits any answer of the task, or `max_new_tokens` when lower) must stay within
      `text_config.max_position_embeddings` (checks.py). `generate` lowers a budget past the context to
      the positions left, which is right for a budget set high, but a query that took those positions would be
      answered in a few tokens (a zero-size box) as if nothing were wrong; so it is refused here, naming the query's
      length and the limit;
    * the request does not fit in the memory left on `device` (`checks.check_memory_for_request`: the weights and
      the frames priced from the config), naming the frame count that would.
    """
    request.check_text(processor.tokenizer)
    inputs = request_inputs(processor, views, request)
    if device is not None:
        check_memory_for_request(config, inputs, device, quantize, weights_loaded)
    limit = context_limit(config)
    if limit is None:
        return inputs
    merge = config.vision_config.spatial_merge_size
    positions, _ = mrope_position_ids(inputs["mm_token_type_ids"], merge, inputs["image_grid_thw"],
                                      attention_mask=inputs.get("attention_mask"))
    highest = int(positions.max())
    own = request.spec.max_new_tokens
    needed = own if max_new_tokens is None else min(int(max_new_tokens), own)
    over = needed - positions_after(limit, highest)
    if over <= 0:
        return inputs
    context = (f"the model's context of {limit:,} positions (text_config.max_position_embeddings): the prompt with "
               f"its {len(views)} frame(s) ends at position {highest:,}, and the {request.task} answer needs up to "
               f"{needed:,} more")
    if "query" in request.spec.parameters:
        tokens = len(processor.tokenizer(request.query, add_special_tokens=False)["input_ids"])
        remedy = (f"shorten it by at least {over:,} tokens" if over < tokens
                  else "no query fits with these frames: give fewer or smaller frames")
        raise ValueError(f"the query is too long for the model: {len(request.query):,} characters, {tokens:,} tokens, "
                         f"do not fit in {context}; {remedy}")
    raise ValueError(f"the request does not fit in {context}; give fewer or smaller frames")


def request_inputs(processor, views: list, request: TaskRequest):
    """The processor's output for `request` on `views` (`BatchFeature`, CPU tensors): the one processor call of a
    request. Frames the image processor refuses are `FramesRefused`."""
    try:
        return processor(images=[list(views)], return_tensors="pt", **request.processor_inputs())
    except ValueError as error:
        if isinstance(error, PromptTextError) or error.__cause__ is None:
            raise
        # a view the image processor refused (its error, wrapped with the view's number: processing_gap_mllm.py)
        raise FramesRefused(str(error.__cause__), tuple(views[0].size)) from error


def checked_inputs(processor, views: list, request: TaskRequest):
    """`request` validated on `views` (`TaskRequest.validate`, `check_text`), then its processor output
    (`request_inputs`): what `run_task` does when its caller gives no `inputs`."""
    request.validate(len(views))
    request.check_text(processor.tokenizer)
    return request_inputs(processor, views, request)


@contextmanager
def prefill_fusion_gates(model):
    """Within the block, the fusion gates of the first image forward the model runs (a `generate` call's prefill):
    yields a list that then holds, per fusion level, the `[N_visual]` gate shares (`GapMllmOutput.fusion_gates`, as
    `output_gates=True` gives them), and stays empty for a model without gated fusion or a `generate` that runs no
    forward. The model's fusion is asked for its gates (hooks on `model.geometry_fusion`), so they come from the one
    forward that answers, not from a second one."""
    gates: list = []
    fusion = getattr(model, "geometry_fusion", None) if getattr(model.config, "use_geometry", False) else None
    if not isinstance(fusion, torch.nn.Module):
        yield gates
        return

    def ask_for_gates(module, args, kwargs):
        if len(args) > 3:  # output_gates given by position
            return (*args[:3], True, *args[4:]), kwargs
        return args, {**kwargs, "output_gates": True}

    def keep_gates(module, args, kwargs, output):
        if not gates and output[1] is not None:
            gates.extend(output[1])

    handles = [fusion.register_forward_pre_hook(ask_for_gates, with_kwargs=True),
               fusion.register_forward_hook(keep_gates, with_kwargs=True)]
    try:
        yield gates
    finally:
        for handle in handles:
            handle.remove()


def _token_grids(image_grid_thw: torch.Tensor, merge: int) -> list[tuple[int, int]]:
    return [(int(h) // merge, int(w) // merge) for _, h, w in image_grid_thw.tolist()]


@torch.no_grad()
def run_task(model, processor, views: list, request: TaskRequest, max_new_tokens: int | None = None, scenes=None,
             session: str | None = None, constrained: bool = True, inputs=None, compile_decoding="off") -> TaskResult:
    """Run one request on one multi-view sample (greedy decoding, stopped at the end of the answer, inside the
    task's answer grammar unless `constrained=False`) and collect what the UI shows. One processor call, one
    geometry-encoder forward: the gates are those of the answer's own prefill (`prefill_fusion_gates`).

    Args:
        model: a `GapMllmForConditionalGeneration` (any loader: AutoModel with trust_remote_code too).
        processor: its `GapMllmProcessor`.
        views: the frames (PIL images or paths), all of one scene.
        request: the task and its input; a query holding a control token of the tokenizer (`<|im_end|>`,
            `<|vision_end|>`, ...) is a ValueError (gap_mllm.tasks_gap_mllm).
        max_new_tokens: generation budget (a positive integer); None: the task's own (tasks_gap_mllm).
        scenes: a `scene_store.SceneStore` (PIL views only): answer from the session's encoded scene when
            it holds these frames and marker, else encode and keep it (same answer either way).
        session: the session the scene is kept for (the Space passes gradio's session hash).
        constrained: decode inside the task's answer grammar (`TaskSpec.logits_processor`), so the answer is in
            the task's format; the front ends' default (`--free` turns it off).
        inputs: the processor's output for this request, when the front end made it to check the request
            (`check_request`, after validating the request); None: the request is validated and processed here.
        compile_decoding: as for `gap_mllm.generation.generate` ("off", "on", "auto").
    """
    spec = request.spec
    if inputs is None:
        inputs = checked_inputs(processor, views, request)
    # on the model's device: the Space moves the model to CUDA inside its GPU call (space_backend.py)
    inputs = inputs.to(model.device)
    if scenes is not None:
        generated, input_ids, gates, image_grid_thw = answer_on_stored_scene(
            model, processor, views, inputs, request.marker, spec.name, max_new_tokens, scenes, session,
            constrained=constrained, compile_decoding=compile_decoding)
    else:
        # Task names, not TaskSpec objects, cross into the processor: its remote code has its own classes.
        with prefill_fusion_gates(model) as gates:
            generated = generate(model, **inputs, compile_decoding=compile_decoding,
                                 **processor.generation_kwargs(spec.name, inputs, max_new_tokens, constrained))
        input_ids, image_grid_thw = inputs["input_ids"], inputs["image_grid_thw"]
        gates = gates or None
    raw = processor.decode_generated(generated, input_ids=input_ids)[0]
    # the text, not the tokens: the budget's reason comes last, with its advice, after the more precise ones
    parsed = task_answer(spec.name, raw, processor.post_process([raw], spec.name)[0])
    budget = spec.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
    cut = budget_cut(spec, processor.tokenizer, generated[0, input_ids.shape[-1]:].tolist(), budget, constrained)
    if cut is not None and parsed.reason is None:  # a whole-looking answer the budget ended is no success
        parsed = replace(parsed, reason=cut)
    result = TaskResult(task=spec.name, raw=raw, parsed=parsed,
                        query=request.query if "query" in spec.parameters else None)
    entry = package_task(spec) if spec.name in package_task_names() else None
    if entry is not None and entry.shown is not None:  # what the task module draws of its answer
        for name, value in entry.shown(result.parsed, request).items():
            setattr(result, name, value)

    if gates is not None:
        result.gates = [gate.detach().float().cpu().numpy() for gate in gates]
    merge = model.config.vision_config.spatial_merge_size
    result.token_grids = _token_grids(image_grid_thw, merge)
    return result


# ---- answer checks: what makes a parsed answer no success for a front end (module docstring)

BUDGET_ADVICE = "give it a larger token budget (--max-new-tokens)"


# the structured answer formats, by the task that writes them
ANSWER_FORMATS = {
    "detection": '[{"label": ..., "bbox_3d": [...]}, ...]',
    "grounding": '{"bbox_3d": [...]}',
    "grounding_stage1": '{"frame": k}',
    "reconstruction": '{"pointmap": [x, y, z], "label": ...}',
}
_FORMAT_OF_TASK = {"grounding_stage2": "grounding"}
_KEY_PATTERN = re.compile(r"""["']([A-Za-z_]\w*)["']\s*:""")  # a quoted dict key


def _answer_keys(body: str) -> set[str]:
    """The dict keys of a structured answer (for one that does not parse, the quoted words before a colon)."""
    value, _ = parse_literal(body, allow_block=False)
    entries = value if isinstance(value, (list, tuple)) else [value]
    if value is not None:
        return {key for entry in entries if isinstance(entry, dict) for key in entry if isinstance(key, str)}
    return set(_KEY_PATTERN.findall(body))


def answer_format(text) -> str | None:
    """The `ANSWER_FORMATS` task whose format `text` is written in (by its keys), or None for plain text."""
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS:
        return None
    body = strip_code_fences(text)
    if not body.startswith(("{", "[")):
        return None
    keys = _answer_keys(body)
    if "pointmap" in keys:
        return "reconstruction"
    if "frame" in keys:
        return "grounding_stage1"
    if keys & set(BOX_KEYS):
        return "detection" if body.startswith("[") or "label" in keys else "grounding"
    return None


# a piece of a structured answer in a caption: a code fence, a brace or bracket, or a quote before a colon
_STRUCTURE_MARK = re.compile(r'```|[{}\[\]]|"\s*:')


def other_task_format(text, task: str) -> str | None:
    """None, or the reason when `text` is written in another task's format than `task`'s (for a caption: holds a
    piece of a structured answer), e.g. `answer in grounding's format {"bbox_3d": [...]}, not detection's`."""
    found = answer_format(text)
    own = _FORMAT_OF_TASK.get(task, task)
    if found is None and own == "captioning" and isinstance(text, str):
        mark = _STRUCTURE_MARK.search(text[:MAX_TEXT_CHARS])
        if mark is not None:
            return f"answer holds {mark.group()!r}, a piece of a structured answer (JSON), not a caption's prose"
    if found is None or found == own:
        return None
    return f"answer in {found}'s format {ANSWER_FORMATS[found]}, not {task}'s"


def zero_size_box(parsed) -> str | None:
    """The reason when a parsed detection or grounding answer holds a box whose three sizes are 0, else None."""
    boxes = list(getattr(parsed, "boxes", None) or []) + [box for box in [getattr(parsed, "box", None)] if box]
    for box in boxes:
        if all(size == 0 for size in box.to_list()[3:6]):
            return f"a box of size 0x0x0 is no object's box: {box.to_list()}"
    return None


def budget_cut(spec, tokenizer, new_ids: list[int], budget: int, constrained: bool) -> str | None:
    """The reason when the answer of `new_ids` (the generated tokens) was ended by the token `budget`, else None
    (module docstring; the processor's `post_process` says the same, `budget_cut_reason`), with the command line's
    advice. `spec`: the task's `TaskSpec`."""
    reason = budget_cut_reason(spec, tokenizer, new_ids, budget, constrained)
    return None if reason is None else f"{reason}; {BUDGET_ADVICE}"
