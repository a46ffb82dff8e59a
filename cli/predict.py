"""`gap-mllm predict`: one task on a few frames (or a short video, or a bundled synthetic scene);
prints the answer and its parsed form and can save pictures (PNG with boxes, a legend and gate maps,
GLB / PLY scene).

    gap-mllm predict --model org/gap-mllm --images f0.jpg f1.jpg f2.jpg --task detection --save-dir out/
    gap-mllm predict --model DIR --images clip.mp4 --task grounding --query "the chair by the window"
    gap-mllm predict --example "synthetic room A" --task grounding       # the embedded GAP-MLLM-Mini
    gap-mllm predict --model tiny --example "synthetic room A" --task reconstruction --marker 1 120 90

`--model` defaults to "mini", the embedded GAP-MLLM-Mini trained by this package ("tiny": the untrained test
model). On a bundled example, a task input that is not given (query, box, marker) is the example's own.

Generation stops at the end of the answer (the task's stop rule) or at the task's token budget.
"""

from __future__ import annotations

import argparse
import json
import sys

from .loading import UNTRAINED_NOTICE, load_model_and_processor
from .scenes import EXAMPLE_SEEDS, scene_from_frames, synthetic_scene
from .task_names import task_argument
from .tasks import TASKS, TaskRequest, run_task
from .uploads import UploadError, UploadLimits, load_frames


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='a GAP-MLLM folder or Hub id; "mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH", help="frames of one scene in order, or one video / GIF (sampled)")
    source.add_argument("--example", choices=sorted(EXAMPLE_SEEDS), help="a bundled synthetic scene (exact geometry)")

    parser.add_argument("--task", required=True, type=task_argument(TASKS, "gap-mllm predict"), metavar="TASK",
                        help=f"one of {', '.join(TASKS)}")
    parser.add_argument("--query", help="grounding: the text describing the object; spatial_qa: the question")
    parser.add_argument("--box", nargs=9, type=float, metavar="V",
                        help="captioning: the object's box cx cy cz sx sy sz yaw pitch roll (first camera)")
    parser.add_argument("--marker", nargs=3, type=int, metavar=("VIEW", "X", "Y"), help="reconstruction: pixel to mark")
    parser.add_argument("--max-frames", type=int, default=8, help="frames sampled from a video")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="generation budget (default: the task's own; generation stops at the answer's end anyway)")
    parser.add_argument("--save-dir", help="write the pictures here")
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
    report = sys.stderr if args.json else sys.stdout
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print(f"task       : {result.task} on {len(scene.views)} frame(s)")
        print("answer     : " + _indented(result.answer))
        print("parsed     : " + _indented(result.summary()))
        if result.gates:
            print("mean gate  : " + ", ".join(f"level {i}: {g.mean():.3f}" for i, g in enumerate(result.gates)))
    if args.save_dir:
        # here, not at the top: the pictures import the evaluation package, which needs datasets (an optional
        # dependency); a plain `predict` runs without it
        from .visualize import write_visualisations

        written = write_visualisations(scene, result, args.save_dir, formats=tuple(args.formats))
        for kind, path in written.items():
            print(f"saved {kind}: {path}", file=report)
        for kind, why in written.skipped.items():
            print(f"not saved {kind}: {why}", file=report)
        if not scene.calibrated:
            note = "note: uncalibrated frames: boxes are drawn on frame 0 with an assumed 60° pinhole; no point cloud"
            print(note, file=report)
    return 0


def _indented(text: str) -> str:
    """Continuation lines aligned under the first (after the 13-character field names)."""
    return text.replace("\n", "\n" + " " * 13)
