"""One demo/CLI inference call: task → prompt → generate → parsed answer + fusion gates.

Shared by `gap-mllm predict` and the Gradio Space, so both show exactly the same thing. The prompts
are the package's task prompts (processing/prompts.py, method.md §3) without the `<image>`
placeholders: the processor inserts one image per view itself.

Tasks:
    detection       3D video object detection; answer: list of labelled boxes.
    grounding       3D visual grounding of a text query; answer: one box. The demo runs the official
                    stage-2 prompt on the given frames directly (no stage-1 frame selection).
    captioning      describe the object inside a given 3D box; answer: free text.
    reconstruction  3D point (+ label) of a pixel marked with a red "+" (the pre-training task).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from gap_mllm.processing import prompts
from gap_mllm.target_format import Box3D

TASKS = ("detection", "grounding", "captioning", "reconstruction")


@dataclass
class TaskRequest:
    """What the user asked: the task and its one task-specific input.

    Attributes:
        task: one of `TASKS`.
        query: the referring text (grounding only).
        box: the 9 numbers `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]` of the object to describe
            (captioning only), first-frame camera coordinates.
        marker: `(view, x, y)` pixel to mark (reconstruction only), in the view's original pixels.
    """

    task: str
    query: str | None = None
    box: list[float] | None = None
    marker: tuple[int, int, int] | None = None

    def validate(self, num_views: int) -> None:
        """Raise ValueError with a user-facing message when the request is incomplete."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.task == "grounding" and not (self.query and self.query.strip()):
            raise ValueError("grounding needs a text query describing the object")
        if self.task == "captioning":
            if self.box is None or len(self.box) != 9:
                raise ValueError("captioning needs the object's 3D box: 9 numbers [cx, cy, cz, sx, sy, sz, yaw, pitch, roll]")
        if self.task == "reconstruction":
            if self.marker is None or len(self.marker) != 3:
                raise ValueError("reconstruction needs a marker (view, x, y)")
            if not 0 <= int(self.marker[0]) < num_views:
                raise ValueError(f"marker view {self.marker[0]} is out of range: there are {num_views} views")

    def prompt(self) -> str:
        """The task text sent after the images."""
        if self.task == "detection":
            return prompts.DETECTION_PROMPT
        if self.task == "grounding":
            return prompts.GROUNDING_STAGE2_TEMPLATE.format(description=self.query.strip())
        if self.task == "captioning":
            return prompts.caption_prompt(0, self.box)
        return prompts.RECONSTRUCTION_PROMPT


@dataclass
class TaskResult:
    """Everything a front end shows for one call.

    Attributes:
        raw: the generated answer text (special tokens removed).
        parsed: the typed result (`DetectionResult`, `GroundingResult`, `PointmapResult`) or, for
            captioning, the caption string.
        boxes: boxes to draw (detection boxes, the grounded box, or the captioned input box).
        point: the reconstructed 3D point, if any.
        gates: per fusion level (0 = main, then DeepStack), one `[N_visual]` array: the share of the Qwen
            feature in each fused token; empty when the model has no gated fusion.
        token_grids: per view, the `(h, w)` grid of visual tokens after spatial merging (to lay the
            gates out as maps).
    """

    task: str
    raw: str
    parsed: object
    boxes: list[Box3D] = field(default_factory=list)
    point: tuple[float, float, float] | None = None
    gates: list[np.ndarray] = field(default_factory=list)
    token_grids: list[tuple[int, int]] = field(default_factory=list)

    def summary(self) -> str:
        """A short human-readable rendering of the parsed answer."""
        if self.task == "captioning":
            return f"caption: {self.parsed!r}"
        reason = getattr(self.parsed, "reason", None)
        lines = []
        if self.task == "detection":
            lines.append(f"{len(self.boxes)} box(es)")
        for box in self.boxes if self.task != "captioning" else []:
            values = ", ".join(f"{v:.2f}" for v in box.to_list())
            lines.append(f"  {box.label or '(no label)'}: [{values}]")
        if self.point is not None:
            label = getattr(self.parsed, "label", None)
            lines.append(f"point: [{', '.join(f'{v:.2f}' for v in self.point)}] label: {label or '(none)'}")
        if reason:
            lines.append(f"parse problem: {reason}")
        return "\n".join(lines) if lines else "nothing parsed"

    def to_dict(self) -> dict:
        """JSON-ready form (used by `gap-mllm predict --json` and the Space's parsed-result panel)."""
        return {
            "task": self.task,
            "raw": self.raw,
            "boxes": [{"label": b.label, "box_3d": b.to_list()} for b in self.boxes],
            "point": list(self.point) if self.point is not None else None,
            "label": getattr(self.parsed, "label", None) if self.task == "reconstruction" else None,
            "caption": self.parsed if self.task == "captioning" else None,
            "reason": getattr(self.parsed, "reason", None),
            "mean_gate_per_level": [float(g.mean()) for g in self.gates],
        }


def _token_grids(image_grid_thw: torch.Tensor, merge: int) -> list[tuple[int, int]]:
    return [(int(h) // merge, int(w) // merge) for _, h, w in image_grid_thw.tolist()]


@torch.no_grad()
def run_task(model, processor, views: list, request: TaskRequest, max_new_tokens: int = 64, scenes=None,
             session: str | None = None) -> TaskResult:
    """Run one request on one multi-view sample (greedy decoding) and collect what the UI shows.

    Args:
        model: a `GapMllmForConditionalGeneration` (any loader: AutoModel with trust_remote_code too).
        processor: its `GapMllmProcessor`.
        views: the frames (PIL images or paths), all of one scene.
        request: the task and its input.
        max_new_tokens: generation budget.
        scenes: a `scene_store.SceneStore` (PIL views only): answer from the session's encoded scene when
            it holds these frames and marker, else encode and keep it (same answer either way).
        session: the session the scene is kept for (the Space passes gradio's session hash).
    """
    request.validate(len(views))
    if scenes is not None:
        from .scene_store import answer_on_stored_scene

        generated, input_ids, gates, image_grid_thw = answer_on_stored_scene(
            model, processor, views, request.prompt(), request.marker, max_new_tokens, scenes, session)
    else:
        inputs = processor(images=[list(views)], text=[request.prompt()], point_prompts=[request.marker],
                           return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        input_ids, image_grid_thw = inputs["input_ids"], inputs["image_grid_thw"]
        # A second forward pass for the gates: generate() does not return model-specific outputs.
        gates = model(**inputs, output_gates=True).fusion_gates
    raw = processor.decode_generated(generated, input_ids=input_ids)[0]
    result = TaskResult(task=request.task, raw=raw, parsed=None)
    if request.task == "detection":
        result.parsed = processor.post_process_detection(generated, input_ids=input_ids)[0]
        result.boxes = list(result.parsed.boxes)
    elif request.task == "grounding":
        result.parsed = processor.post_process_grounding(generated, input_ids=input_ids)[0]
        result.boxes = [result.parsed.box] if result.parsed.box is not None else []
    elif request.task == "captioning":
        result.parsed = raw.strip()
        result.boxes = [Box3D.from_list(request.box, label="described object")]
    else:
        result.parsed = processor.post_process_pointmap(generated, input_ids=input_ids)[0]
        result.point = result.parsed.point

    if gates is not None:
        result.gates = [gate.detach().float().cpu().numpy() for gate in gates]
    merge = model.config.vlm_config.vision_config.spatial_merge_size
    result.token_grids = _token_grids(image_grid_thw, merge)
    return result
