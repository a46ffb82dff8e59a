"""`gap-mllm demo` (also `make demo`): the whole inference path on a tiny, UNTRAINED GAP-MLLM.

1. build a tiny GAP-MLLM + processor locally (no download) and save them as a Hub-style folder (`--out`;
   the README's usage snippet runs on that folder);
2. load that folder back through AutoModel / AutoProcessor with trust_remote_code=True;
3. render a few views of a toy scene and run every task on them (`cli/tasks.py`, as `gap-mllm predict`);
4. print each answer, its parsed (typed) result and the fusion gates per level.

Generation stops at the end of each answer (the task's stop rule) or at `--max-new-tokens`.
`gap-mllm demo --space` launches the Gradio Space instead (same as `gap-mllm space`).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

BANNER = "=" * 78
# One request per task for the toy scene (view 1's marker is on the floor, left of the boxes).
DEMO_INPUTS = {
    "grounding": {"query": "the leftmost box on the floor"},
    "captioning": {"box": [0.0, 0.3, 2.5, 0.4, 0.4, 0.4, 0.0, 0.0, 0.0]},
    "reconstruction": {"marker": (1, 160, 150)},
    "spatial_qa": {"query": "How many boxes are in the room?"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output/gap-mllm-tiny", help="where the Hub-style folder is written")
    parser.add_argument("--model", default=None, help="an existing GAP-MLLM folder or Hub id instead of the tiny model")
    parser.add_argument("--views", type=int, default=4, help="number of views of the toy scene")
    parser.add_argument("--max-new-tokens", type=int, default=64,
                        help="cap on each task's generation budget (the untrained model's noise needs no more)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", action="store_true",
                        help="launch the Gradio Space instead (gap-mllm space; needs the demo environment: make demo-venv)")
    parser.add_argument("--host", default="127.0.0.1", help="with --space: interface to listen on")
    parser.add_argument("--port", type=int, default=7860, help="with --space: port")


def render_toy_views(count: int, height: int = 180, width: int = 240, seed: int = 0) -> list[Image.Image]:
    """A floor, a wall and three coloured boxes seen from a camera panning left to right."""
    rng = np.random.default_rng(seed)
    boxes = [(rng.uniform(0.1, 0.8), rng.uniform(0.45, 0.7), rng.uniform(0.08, 0.18), tuple(rng.integers(40, 230, 3)))
             for _ in range(3)]
    views = []
    for index in range(count):
        shift = index / max(count - 1, 1) * 0.25
        image = Image.new("RGB", (width, height), (205, 200, 190))
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, int(0.55 * height), width, height], fill=(120, 100, 80))
        for x, y, size, colour in boxes:
            left = int((x - shift) * width)
            top = int(y * height)
            draw.rectangle([left, top, left + int(size * width), top + int(size * 1.2 * height)], fill=colour)
        views.append(image)
    return views


def main(args: argparse.Namespace) -> int:
    if args.space:
        from .space import main as space_main

        return space_main(argparse.Namespace(model=args.model or "tiny", host=args.host, port=args.port,
                                             max_new_tokens=args.max_new_tokens, concurrency=1, max_queue=16))
    from transformers import AutoModel, AutoProcessor

    from .tasks import TASKS, TaskRequest, run_task

    folder = args.model
    banner = []
    if folder is None:
        from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

        folder = str(save_tiny_checkpoint(Path(args.out), seed=args.seed))  # progress bars (stderr) end here
        banner = ["GAP-MLLM demo with a TINY, RANDOMLY INITIALISED model: the weights are UNTRAINED,",
                  "so the answers are noise. The demo shows the real pipeline end to end.",
                  f"Saved the Hub-style folder to {folder}"]
    from .model_source import load_pretrained

    model = load_pretrained(AutoModel.from_pretrained, folder, "--model", trust_remote_code=True).eval()
    processor = load_pretrained(AutoProcessor.from_pretrained, folder, "--model", trust_remote_code=True)
    # Printed as one block after the saving and loading progress bars, so they never interleave.
    print("\n".join([BANNER, *banner, BANNER]))
    print(f"Loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{type(processor).__name__} through AutoModel / AutoProcessor with trust_remote_code=True")
    print(f"Fusion: {model.config.geometry_fusion_config.method}, VGGT layers per level "
          f"{model.config.level_geometry_layers} (main, DeepStack 0-2)", flush=True)

    views = render_toy_views(args.views, seed=args.seed)
    for task in TASKS:
        request = TaskRequest(task, **DEMO_INPUTS.get(task, {}))
        result = run_task(model, processor, views, request, max_new_tokens=args.max_new_tokens)
        tokens = [h * w for h, w in result.token_grids]
        print(f"\n--- {task}: {request.spec.title}; {len(views)} views, {tokens[0]} visual tokens per view")
        for name, value in (("input", _request_text(request)), ("answer", result.answer), ("parsed", result.summary())):
            if value:
                print(f"{name:<7}: " + value.replace("\n", "\n" + " " * 9))
        if result.gates:
            shares = ", ".join(f"level {i}: {g.mean():.3f}" for i, g in enumerate(result.gates))
            print(f"mean gate (share of the Qwen feature) per level: {shares}")
    print("\nReminder: untrained weights; load a trained GAP-MLLM folder with --model for real answers.")
    sys.stdout.flush()
    return 0


def _request_text(request) -> str:
    parts = [f"{name}={value!r}" for name, value in
             (("query", request.query), ("box", request.box), ("marker", request.marker)) if value is not None]
    return ", ".join(parts)
