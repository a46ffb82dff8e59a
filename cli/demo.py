"""`gap-mllm demo` (also `make demo`): GAP-MLLM-Mini, trained by this package, answering on a held-out room.

1. load the embedded GAP-MLLM-Mini (gap_mllm.mini.default_model_path; `--model` another folder or Hub id)
   through AutoModel / AutoProcessor with trust_remote_code=True, as a user would;
2. take a bundled SynthRooms example (a room no training split contains, with exact geometry) and run
   every task the model was trained on (`cli/tasks.py`, as `gap-mllm predict`): detection, grounding of a
   referring expression, captioning of an object's box, the marked-pixel point + label;
3. print each answer, its parsed result, the exact answer and its score (IoU, distance), and save one PNG
   per task into `--out`: predicted boxes next to the reference ones, with a legend.

`--model tiny` runs the same on the tiny, randomly initialised test model (its weights are UNTRAINED, its
answers noise); its Hub folder is written to `--out` first. `gap-mllm demo --space` launches the Gradio
Space instead (same as `gap-mllm space`).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from transformers import AutoModel, AutoProcessor

from gap_mllm.evaluation.box_iou import box_iou
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .loading import MINI, TINY, resolve_model_source
from .model_source import load_pretrained
from .scenes import EXAMPLE_SEEDS, synthetic_scene
from .space import main as space_main
from .tasks import TaskRequest, run_task
from .visualize import write_visualisations

BANNER = "=" * 78
# The tasks GAP-MLLM-Mini is trained on (its spatial-QA answers would be untrained noise).
DEMO_TASKS = ("detection", "grounding", "captioning", "reconstruction")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='"mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model; or a folder / Hub id')
    parser.add_argument("--example", default="synthetic room A", choices=sorted(EXAMPLE_SEEDS), help="the bundled room")
    parser.add_argument("--out", default="demo_output", help="where the pictures (and the tiny model's folder) are written")
    parser.add_argument("--max-new-tokens", type=int, default=None,
                        help="cap on each task's generation budget (default: the task's own; answers stop at their end)")
    parser.add_argument("--seed", type=int, default=0, help="weights of --model tiny")
    parser.add_argument("--space", action="store_true",
                        help="launch the Gradio Space instead (gap-mllm space; needs the demo environment: make demo-venv)")
    parser.add_argument("--host", default="127.0.0.1", help="with --space: interface to listen on")
    parser.add_argument("--port", type=int, default=7860, help="with --space: port")


def main(args: argparse.Namespace) -> int:
    if args.space:
        return space_main(argparse.Namespace(model=args.model, host=args.host, port=args.port,
                                             max_new_tokens=args.max_new_tokens, concurrency=1, max_queue=16))

    out = Path(args.out)
    banner = []
    if args.model == TINY:
        folder = str(save_tiny_checkpoint(out / "gap-mllm-tiny", seed=args.seed))  # progress bars (stderr) end here
        banner = ["GAP-MLLM demo with a TINY, RANDOMLY INITIALISED model: the weights are UNTRAINED,",
                  "so the answers are noise. The demo shows the real pipeline end to end.",
                  f"Saved the Hub-style folder to {folder}"]
    else:
        folder = resolve_model_source(args.model)
        if args.model == MINI:
            banner = ["GAP-MLLM demo with GAP-MLLM-Mini, trained by this package on SynthRooms (make mini).",
                      "It knows SynthRooms rooms only: the example below is a held-out one.", f"Model folder: {folder}"]
    model = load_pretrained(AutoModel.from_pretrained, folder, "--model", trust_remote_code=True).eval()
    processor = load_pretrained(AutoProcessor.from_pretrained, folder, "--model", trust_remote_code=True)
    scene = synthetic_scene(EXAMPLE_SEEDS[args.example])
    # Printed as one block after the saving and loading progress bars, so they never interleave.
    print("\n".join([BANNER, *banner, BANNER]))
    print(f"Loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{type(processor).__name__} through AutoModel / AutoProcessor with trust_remote_code=True")
    if model.config.use_geometry:
        print(f"Fusion: {model.config.geometry_fusion_config.method}, VGGT layers per level "
              f"{model.config.level_geometry_layers} (main, DeepStack 0-2)")
    print(f"Example: {args.example}, {len(scene.views)} views of {scene.views[0].size[0]}x{scene.views[0].size[1]} px, "
          f"objects seen: {', '.join(scene.reference_labels)}", flush=True)
    for task in DEMO_TASKS:
        run_demo_task(model, processor, scene, task, out, args.max_new_tokens)
    if args.model == TINY:
        print("\nReminder: untrained weights; the default model (--model mini) gives real answers.")
    sys.stdout.flush()
    return 0


def run_demo_task(model, processor, scene, task: str, out: Path, max_new_tokens=None) -> None:
    """One task on the example: the answer, its parsed form, the exact answer with a score, a PNG."""
    given = scene.example_inputs.get(task, {})
    request = TaskRequest(task, query=given.get("query"), box=given.get("box") if task == "captioning" else None,
                          marker=given.get("marker"))
    result = run_task(model, processor, scene.views, request, max_new_tokens=max_new_tokens)
    tokens = [h * w for h, w in result.token_grids]
    print(f"\n--- {task}: {request.spec.title}; {len(scene.views)} views, {tokens[0]} visual tokens per view")
    lines = [("input", _request_text(request)), ("answer", result.answer), ("parsed", result.summary()),
             ("truth", _truth(scene, task, given)), ("score", _score(scene, task, given, result, box_iou))]
    for name, value in lines:
        if value:
            print(f"{name:<7}: " + value.replace("\n", "\n" + " " * 9))
    written = write_visualisations(scene, result, out / task, formats=("png",))
    for kind, path in written.items():
        print(f"saved  : {path}")


def _truth(scene, task: str, given: dict) -> str:
    if task == "detection":
        return f"{len(scene.reference_boxes)} box(es): " + ", ".join(scene.reference_labels)
    if task == "grounding":
        return f"{given['label']}: [" + ", ".join(f"{v:.2f}" for v in given["box"]) + "]"
    if task == "captioning":
        return " | ".join(given["references"])
    if task == "reconstruction":
        return f"point: [{', '.join(f'{v:.2f}' for v in given['point'])}] label: {given['label']}"
    return ""


def _score(scene, task: str, given: dict, result, box_iou) -> str:
    """How good the answer is against the exact one (IoU in the package's zxy convention, metres)."""
    if task == "detection":
        hits = 0
        for label, truth in zip(scene.reference_labels, scene.reference_boxes):
            ious = [box_iou(b.to_list(), truth) for b in result.boxes if b.label == label]
            hits += bool(ious) and max(ious) > 0.25
        return f"{hits} of {len(scene.reference_boxes)} reference box(es) found at IoU > 0.25"
    if task == "grounding":
        return f"IoU {box_iou(result.boxes[0].to_list(), given['box']):.2f}" if result.boxes else "no box parsed"
    if task == "reconstruction" and result.point is not None:
        distance = float(np.linalg.norm(np.asarray(result.point) - np.asarray(given["point"])))
        label = getattr(result.parsed, "label", None)
        return f"point error {distance:.2f} m; label {'correct' if label == given['label'] else 'wrong'}"
    return ""


def _request_text(request) -> str:
    parts = [f"{name}={value!r}" for name, value in
             (("query", request.query), ("box", request.box), ("marker", request.marker)) if value is not None]
    return ", ".join(parts)
