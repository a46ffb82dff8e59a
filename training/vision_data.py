"""Stage 0, vision: SynthRooms frames with what each visual token shows (the ViT's semantic task).

There is no pretrained tiny Qwen ViT; the miniature stands one in by training its ViT on the semantics
of SynthRooms frames, read from the exact instance masks and the scene ground truth:

    category    per visual token (one per 32×32-pixel cell after the 2×2 merge), the share of its pixels
                showing each of floor / wall / ceiling / the 13 furniture categories (a distribution)
    colour      the share of its object pixels of each object colour (tokens without object pixels: none)
    texture     likewise for the four surface textures
    marker      whether the token holds the centre of the red "+" visual prompt (docs/method.md §3.6), painted on
                `marker_probability` of the frames exactly as the processor paints it, so the frozen ViT can
                later show the LLM where the marker is
    position    the token's cell centre (column, row) in [-1, 1] of the image (left/top = -1): where the
                token lies, which the real Qwen ViT knows and every 3D answer needs (training/encoder_stage_run.py)

`SemanticFrames(data_root, split, processor)[i]` is one frame (frame `i` of the split's frames in a fixed
order); `SemanticCollator(processor)` turns frames into the ViT input (`pixel_values`, `image_grid_thw`)
and the per-token targets, tokens in the ViT's output order (images in order, row-major).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gap_mllm.image_utils_gap_mllm import draw_marker
from gap_mllm.processing.scannet_layout import posed_images_dir, read_color
from gap_mllm.processing.synth.categories import CATEGORY_NAMES
from gap_mllm.processing.synth.palette import COLOUR_NAMES, TEXTURES
from gap_mllm.processing.synth.writer import read_instance_mask

from .geometry_data import split_scene_ids

STRUCTURE_CLASSES = ("floor", "wall", "ceiling")
CATEGORY_CLASSES = STRUCTURE_CLASSES + tuple(CATEGORY_NAMES)
_STRUCTURE_INDEX = {0: 0, -1: 1, -2: 2}  # scene instance id → class index


class SemanticFrames(torch.utils.data.Dataset):
    """Every frame of a SynthRooms split with its instance mask and object attributes.

    Args:
        data_root: SynthRooms output (needs `synthrooms/instance/` masks and `synthrooms/<scene>.json`).
        split: "train", "val", ...
        marker_probability: share of frames that get the red "+" at a random pixel.
        seed: marker positions depend only on (seed, frame index).
    """

    def __init__(self, data_root, split: str, marker_probability: float = 0.5, seed: int = 0):
        root = Path(data_root)
        self.media_root = posed_images_dir(root)
        self.frames: list[tuple[str, str]] = []
        self.objects: dict[str, list[dict]] = {}
        for scene in split_scene_ids(root, split):
            truth = root / "synthrooms" / f"{scene}.json"
            if not truth.is_file():
                raise FileNotFoundError(f"{truth} is missing: the vision stage needs SynthRooms ground truth (gap-mllm synth)")
            self.objects[scene] = json.loads(truth.read_text(encoding="utf-8"))["objects"]
            stems = sorted((p.stem for p in (self.media_root / scene).glob("*.jpg")), key=int)
            self.frames.extend((scene, stem) for stem in stems)
        self.mask_root = root / "synthrooms" / "instance"
        self.marker_probability = marker_probability
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> dict:
        scene, stem = self.frames[index]
        image = read_color(self.media_root / scene / f"{stem}.jpg")
        instance = read_instance_mask(self.mask_root / scene / f"{stem}.png")
        if instance.shape != (image.height, image.width):
            raise ValueError(f"instance mask of {scene}/{stem} is {instance.shape}, the frame {(image.height, image.width)}")
        rng = np.random.default_rng([self.seed, index])
        marker = None
        if rng.random() < self.marker_probability:
            marker = (int(rng.integers(image.width)), int(rng.integers(image.height)))
            image = draw_marker(image, *marker)
        return {"image": image, "instance": instance, "objects": self.objects[scene], "marker": marker}


def pixel_classes(instance: np.ndarray, objects: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: category class `[H, W]`, colour class and texture class (-1 where no object)."""
    category = np.zeros(instance.shape, dtype=np.int64)
    colour = np.full(instance.shape, -1, dtype=np.int64)
    texture = np.full(instance.shape, -1, dtype=np.int64)
    for structure, index in _STRUCTURE_INDEX.items():
        category[instance == structure] = index
    for object_index, obj in enumerate(objects):
        where = instance == object_index + 1
        category[where] = CATEGORY_CLASSES.index(obj["category"])
        colour[where] = COLOUR_NAMES.index(obj["colour"])
        texture[where] = TEXTURES.index(obj["texture"])
    return category, colour, texture


def cell_distributions(classes: np.ndarray, num_classes: int, grid: tuple[int, int]) -> np.ndarray:
    """`[h·w, num_classes]`: per grid cell (row-major) the share of its pixels in each class; pixels of class
    -1 are left out (a cell without any labelled pixel sums to 0)."""
    height, width = classes.shape
    h, w = grid
    rows = (np.arange(height) * h // height)[:, None]
    cols = (np.arange(width) * w // width)[None, :]
    cell = (rows * w + cols).ravel()
    flat = classes.ravel()
    keep = flat >= 0
    counts = np.zeros((h * w, num_classes))
    np.add.at(counts, (cell[keep], flat[keep]), 1.0)
    pixels = np.bincount(cell, minlength=h * w)[:, None]
    return counts / pixels


def cell_centres(grid: tuple[int, int]) -> np.ndarray:
    """`[h·w, 2]`: per grid cell (row-major) its centre's (column, row) in [-1, 1] (image left/top = -1)."""
    h, w = grid
    rows, cols = np.meshgrid((np.arange(h) + 0.5) / h * 2 - 1, (np.arange(w) + 0.5) / w * 2 - 1, indexing="ij")
    return np.stack([cols.ravel(), rows.ravel()], axis=-1)


class SemanticCollator:
    """Frames → ViT inputs + per-token targets.

    Returns `pixel_values`, `image_grid_thw` (the image processor of `processor`, as GAP-MLLM sees them)
    and, per merged token: `category [N, C]`, `colour [N, K]`, `texture [N, T]` (pixel shares),
    `object_share [N]` (share of object pixels: the weight of the colour and texture terms) and
    `marker [N]` (1 where the marker's centre lies), `position [N, 2]` (cell centre column, row in [-1, 1]).
    """

    def __init__(self, processor):
        self.image_processor = processor.image_processor
        self.merge = self.image_processor.merge_size

    def __call__(self, examples: list[dict]) -> dict:
        inputs = self.image_processor(images=[e["image"] for e in examples], return_tensors="pt")
        targets = {"category": [], "colour": [], "texture": [], "object_share": [], "marker": [], "position": []}
        for example, (_, h, w) in zip(examples, inputs["image_grid_thw"].tolist()):
            grid = (h // self.merge, w // self.merge)
            category, colour, texture = pixel_classes(example["instance"], example["objects"])
            targets["category"].append(cell_distributions(category, len(CATEGORY_CLASSES), grid))
            colours = cell_distributions(colour, len(COLOUR_NAMES), grid)
            share = colours.sum(axis=1)
            targets["object_share"].append(share)
            targets["colour"].append(colours / np.maximum(share, 1e-9)[:, None])
            textures = cell_distributions(texture, len(TEXTURES), grid)
            targets["texture"].append(textures / np.maximum(share, 1e-9)[:, None])
            marker = np.zeros(grid[0] * grid[1])
            if example["marker"] is not None:
                x, y = example["marker"]
                height, width = example["instance"].shape
                marker[(y * grid[0] // height) * grid[1] + x * grid[1] // width] = 1.0
            targets["marker"].append(marker)
            targets["position"].append(cell_centres(grid))
        batch = {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
        batch.update({key: torch.from_numpy(np.concatenate(values)).float() for key, values in targets.items()})
        return batch
