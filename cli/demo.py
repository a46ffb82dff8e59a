"""`gap-mllm demo` (also `make demo`): the whole inference path on a tiny, UNTRAINED GAP-MLLM.

1. build a tiny GAP-MLLM + processor locally (no download) and save them as a Hub-style folder;
2. load that folder back through AutoModel / AutoProcessor with trust_remote_code=True;
3. render a few views of a toy scene, mark a point, run multi-view generation for two tasks;
4. print the raw answers, the parsed (typed) results and the fusion gates per level.

`gap-mllm demo --space` launches the Gradio Space instead (same as `gap-mllm space`).
"""

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DETECTION_PROMPT = (
    "Detect the 3D bounding boxes in the camera coordinate system of the first frame.\n"
    'Output a json list where each entry contains the object name in "label" and its 3D bounding box in "box_3d".\n'
    "The 3D bounding box format should be [x_center, y_center, z_center, x_size, y_size, z_size, yaw, pitch, roll]."
)
POINTMAP_PROMPT = (
    "A red marker is drawn in one of the frames. Output a JSON dictionary with the 3D point of the marked pixel "
    'in "pointmap" in the camera coordinate system of the first frame, and its semantic label in "label".'
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output/gap-mllm-tiny", help="where the Hub-style folder is written")
    parser.add_argument("--model", default=None, help="an existing GAP-MLLM folder or Hub id instead of the tiny model")
    parser.add_argument("--views", type=int, default=4, help="number of views of the toy scene")
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--space", action="store_true",
                        help="launch the Gradio Space instead (gap-mllm space; needs the demo environment: make demo-venv)")
    parser.add_argument("--host", default="127.0.0.1", help="with --space: interface to listen on")
    parser.add_argument("--port", type=int, default=7860, help="with --space: port")


def render_toy_views(count: int, height: int = 240, width: int = 320, seed: int = 0) -> list[Image.Image]:
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

    folder = args.model
    print("=" * 78)
    if folder is None:
        from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

        folder = str(save_tiny_checkpoint(Path(args.out), seed=args.seed))
        print("GAP-MLLM demo with a TINY, RANDOMLY INITIALISED model: the weights are UNTRAINED,")
        print("so the answers are noise. The demo shows the real pipeline end to end.")
        print(f"Saved the Hub-style folder to {folder}")
    print("=" * 78)

    from .model_source import load_pretrained

    model = load_pretrained(AutoModel.from_pretrained, folder, "--model", trust_remote_code=True).eval()
    processor = load_pretrained(AutoProcessor.from_pretrained, folder, "--model", trust_remote_code=True)
    print(f"Loaded {type(model).__name__} ({sum(p.numel() for p in model.parameters()):,} parameters) and "
          f"{type(processor).__name__} through AutoModel / AutoProcessor with trust_remote_code=True")
    print(f"Fusion: {model.config.geometry_fusion_config.method}, VGGT layers per level "
          f"{model.config.level_geometry_layers} (main, DeepStack 0-2)")

    views = render_toy_views(args.views, seed=args.seed)
    marker = (1, 160, 150)  # view 1, x = 160, y = 150
    tasks = [
        ("3D video object detection", DETECTION_PROMPT, None, processor.post_process_detection),
        ("marker pointmap (pre-training task)", POINTMAP_PROMPT, marker, processor.post_process_pointmap),
    ]
    for title, prompt, point, parse in tasks:
        inputs = processor(images=[views], text=[prompt], point_prompts=[point], return_tensors="pt")
        generated = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False)
        raw = processor.batch_decode(generated[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
        parsed = parse(generated, input_ids=inputs["input_ids"])[0]
        gates = model(**inputs, output_gates=True).fusion_gates
        print(f"\n--- {title}: {len(views)} views, {int(inputs['image_grid_thw'][0].prod()) // 4} visual tokens per view")
        print(f"raw answer : {raw!r}")
        print(f"parsed     : {parsed}")
        if gates is not None:
            shares = ", ".join(f"level {i}: {g.mean().item():.3f}" for i, g in enumerate(gates))
            print(f"mean gate (share of the Qwen feature) per level: {shares}")
    print("\nReminder: untrained weights; load a trained GAP-MLLM folder with --model for real answers.")
    return 0
