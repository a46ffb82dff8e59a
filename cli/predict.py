"""`gap-mllm predict`: one task on a few frames (or a short video, or a bundled synthetic scene);
prints the answer and its parsed form and can save pictures (PNG with boxes, a legend and gate maps,
GLB / PLY scene).

    gap-mllm predict --model org/gap-mllm --images f0.jpg f1.jpg f2.jpg --task detection --save-dir out/
    gap-mllm predict --model DIR --images clip.mp4 --task grounding --query "the chair by the window"
    gap-mllm predict --example "synthetic room A" --task grounding       # the embedded GAP-MLLM-Mini
    gap-mllm predict --model tiny --example "synthetic room A" --task reconstruction --marker 1 120 90

`--model` defaults to "mini", the embedded GAP-MLLM-Mini trained by this package ("tiny": the untrained test
model). On a bundled example, a task input that is not given (query, box, marker) is the example's own, and the
answer is printed next to the exact one with the model's held-out score of the task against a trivial baseline
(from the model folder's evaluation_results.json; a folder without one prints none).

With `--save-dir`, the user's own frames are also reconstructed when the model's geometry encoder has VGGT's
camera and depth heads (GAP-MLLM-Mini has them): the depth fused with the estimated cameras is a coloured point
cloud in frame 0's camera (normalised scale, not metres), written into the GLB / PLY with the answer's boxes,
and the boxes are drawn with the estimated camera. A model without heads gets no cloud, and the output says why.

Generation stops at the end of the answer (the task's stop rule) or at the task's token budget.
"""

from __future__ import annotations

import argparse
import json
import sys

from .argument_types import positive_int
from .example_reference import reference_lines, request_text
from .loading import TINY, UNTRAINED_NOTICE, load_model_and_processor, resolve_model_source
from .model_scores import held_out_scores
from .scenes import (
    CAMERA_ESTIMATED,
    EXAMPLE_SEEDS,
    POINT_CLOUD_HOWTO,
    can_reconstruct,
    reconstructed_scene,
    scene_from_frames,
    synthetic_scene,
)
from .task_names import task_argument
from .tasks import TASKS, TaskRequest, run_task
from .uploads import UploadError, UploadLimits, load_frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='a GAP-MLLM folder or Hub id; "mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="frames of one scene in order, or one video / GIF (sampled)")
    source.add_argument("--example", choices=sorted(EXAMPLE_SEEDS),
                        help="a bundled held-out SynthRooms room (exact geometry): the answer is shown next to the "
                             "exact one and the model's held-out score of the task")

    parser.add_argument("--task", required=True, type=task_argument(TASKS, "gap-mllm predict"), metavar="TASK",
                        help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--query", help="grounding: the text describing the object; spatial_qa: the question")
    parser.add_argument("--box", nargs=9, type=float, metavar="V",
                        help="captioning: the object's box cx cy cz sx sy sz yaw pitch roll (first camera)")
    parser.add_argument("--marker", nargs=3, type=int, metavar=("VIEW", "X", "Y"), help="reconstruction: pixel to mark")
    parser.add_argument("--max-frames", type=positive_int, default=8, help="frames sampled from a video")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="generation budget (default: the task's own; generation stops at the answer's end anyway)")
    parser.add_argument("--save-dir", help="write the pictures here, and for your own frames the point cloud the "
                                           "model's depth and camera heads reconstruct (GLB / PLY)")
    parser.add_argument("--formats", nargs="+", default=["png", "glb", "ply"], choices=["png", "glb", "ply"])
    parser.add_argument("--json", action="store_true", help="print the parsed answer as JSON instead of text")


def main(args: argparse.Namespace) -> int:
    try:
        example = {}
        if args.example:
            scene = synthetic_scene(EXAMPLE_SEEDS[args.example])
            example = scene.example_inputs.get(TaskRequest(task=args.task).task, {})
        else:
            # local files of the user's own choosing: no folder restriction, only the type/size checks
            limits = UploadLimits(max_files=max(len(args.images), 1), max_frames=args.max_frames)
            scene = scene_from_frames(load_frames(args.images, limits))
        marker = tuple(args.marker) if args.marker else example.get("marker")
        box = args.box if args.box is not None else (example.get("box") if args.task == "captioning" else None)
        request = TaskRequest(task=args.task, query=args.query or example.get("query"), box=box, marker=marker)
        request.validate(len(scene.views))
    except (UploadError, ValueError) as error:
        print(f"gap-mllm predict: {error}", file=sys.stderr)
        return 2

    model, processor, is_tiny = load_model_and_processor(args.model)  # progress bars (stderr) end here
    if is_tiny:
        print(UNTRAINED_NOTICE, file=sys.stderr, flush=True)
    result = run_task(model, processor, scene.views, request, max_new_tokens=args.max_new_tokens)
    comparison = _comparison(args, scene, request, result) if args.example else {}
    report = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps({**result.to_dict(), **comparison}, indent=2))
    else:
        print(f"task       : {result.task} on {len(scene.views)} frame(s)")
        if args.example:
            print(f"input      : {request_text(request)}")
        print("answer     : " + _indented(result.answer))
        print("parsed     : " + _indented(result.summary()))
        for name, text in comparison.get("reference", {}).items():
            print(f"{name:<11}: " + _indented(text))
        if comparison.get("held_out"):
            print(comparison["held_out"])
        if result.gates:
            print("mean gate  : " + ", ".join(f"level {i}: {g.mean():.3f}" for i, g in enumerate(result.gates)))
    if args.save_dir:
        _save(args, model, processor, scene, result, report)
    return 0


def _comparison(args, scene, request, result) -> dict:
    """On a bundled room: `{"reference": {"truth": ..., "score": ...}, "held_out": line}` (entries that do not
    apply left out; no held-out line for a model folder without evaluation_results.json)."""

    comparison = {"reference": dict(reference_lines(scene, request, result))}
    scores = None if args.model == TINY else held_out_scores(resolve_model_source(args.model))
    if scores is not None:
        comparison["held_out"] = scores.line(request.task)
    return comparison


def _save(args, model, processor, scene, result, report) -> None:
    """The pictures, and for uncalibrated frames the point cloud the model's heads reconstruct, if it has them."""
    from .visualize import write_visualisations

    three_d = {"glb", "ply"} & set(args.formats)
    if not scene.calibrated and can_reconstruct(model):
        scene = reconstructed_scene(model, processor, scene.views)
    written = write_visualisations(scene, result, args.save_dir, formats=tuple(args.formats))
    for kind, path in written.items():
        print(f"saved {kind}: {path}", file=report)
    for kind, why in written.skipped.items():
        print(f"not saved {kind}: {why}", file=report)
    if scene.calibrated:
        return
    if scene.camera == CAMERA_ESTIMATED:
        kinds = " and ".join(sorted(k for k in three_d if k in written))
        where = f"in the {kinds}" if kinds else "not written (--formats has no glb or ply)"
        print(f"point cloud: {len(scene.points):,} points {where} (your frames' depth fused with the cameras "
              "the model's heads estimated, in frame 0's camera; normalised scale, not metres, so the answer's "
              "metric boxes need not match it in size); boxes drawn with the estimated camera", file=report)
        return
    note = "note: uncalibrated frames: boxes are drawn on frame 0 with an assumed 60° pinhole; no point cloud"
    print(note + (f" ({scene.note})" if scene.note else f". {POINT_CLOUD_HOWTO}"), file=report)


def _indented(text: str) -> str:
    """Continuation lines aligned under the first (after the 13-character field names)."""
    return text.replace("\n", "\n" + " " * 13)
