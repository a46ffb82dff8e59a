"""Make docs/images/gap-mllm-mini-demo.png, the picture at the top of the README.

    python docs/images/make_demo_picture.py            # in the activated environment of a checkout

Runs `gap-mllm demo --out <scratch folder>` (the embedded GAP-MLLM-Mini on the bundled held-out room "synthetic
room A") and puts the four answer pictures it saves, `<task>/frames_with_boxes.png`, on one 2 x 2 sheet with the
task above each.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent / "gap-mllm-mini-demo.png"
TASKS = ("detection", "grounding", "captioning", "reconstruction")
TITLES = {"detection": "detection: every object's 3D box", "grounding": "grounding: the box of the described object",
          "captioning": "captioning: the object in a given box", "reconstruction": "marker: 3D point of the red +"}
TITLE_HEIGHT, GAP = 18, 6


def sheet(pictures: list[Image.Image], titles: list[str], columns: int = 2) -> Image.Image:
    """The pictures on a grid, each under its title, on white."""
    width = max(p.width for p in pictures)
    height = max(p.height for p in pictures) + TITLE_HEIGHT
    rows = -(-len(pictures) // columns)
    canvas = Image.new("RGB", (columns * width + (columns - 1) * GAP, rows * height + (rows - 1) * GAP), "white")
    draw = ImageDraw.Draw(canvas)
    for index, (picture, title) in enumerate(zip(pictures, titles)):
        left, top = (index % columns) * (width + GAP), (index // columns) * (height + GAP)
        draw.text((left + 4, top + 3), title, fill="black")
        canvas.paste(picture.convert("RGB"), (left, top + TITLE_HEIGHT))
    return canvas


def main() -> int:
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run(["gap-mllm", "demo", "--out", scratch], check=True, stdout=subprocess.DEVNULL)
        pictures = [Image.open(Path(scratch) / task / "frames_with_boxes.png") for task in TASKS]
        picture = sheet(pictures, [TITLES[task] for task in TASKS])
    picture.save(OUT, optimize=True)
    print(f"wrote {OUT.name}: {picture.width}x{picture.height}, {OUT.stat().st_size // 1024} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
