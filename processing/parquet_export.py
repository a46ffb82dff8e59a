"""Export a prepared dataset to Parquet data files + a dataset card, ready for the Hub.

datasets 5.x loads Hub datasets from data files only (docs/transformers-notes.md §12). The layout is

    <out>/data/<split>-00000-of-00001.parquet
    <out>/README.md       YAML `configs: [{config_name: default, data_files: [{split, path}]}]`

`datasets.load_dataset(str(out))` (or the Hub repo after `upload_folder`) round-trips the features
exactly, since they are stored in the Parquet metadata; `streaming=True` works too.
"""

from __future__ import annotations

from pathlib import Path

import datasets
from huggingface_hub import DatasetCard, DatasetCardData

CARD_TEMPLATE = """---
{card_data}
---

# {pretty_name}

{description}

## Conventions

- Views: `images` is the list of frames of one sample; view 0 is the reference (first) frame.
- Coordinates: OpenCV camera frame of the first view (x right, y down, z forward), metres.
- Boxes: `[cx, cy, cz, sx, sy, sz, yaw, pitch, roll]`, angles in radians decoded as
  R = Ry(roll) Rx(pitch) Rz(yaw) (scipy `Rotation.from_euler("zxy", [yaw, pitch, roll])`).
  `gt_bbox` (grounding) is in the ScanNet axis-aligned world.
- Poses: `cam_to_world` / `cam2global` are camera-to-world 4x4 in the raw world;
  the axis-aligned world is `axis_align_matrix @ raw world`.
- Prompts keep one `<image>` placeholder per view (official GAP-MLLM annotation schema).

## Splits

{splits}
"""


def export_parquet(dataset, out_dir, pretty_name: str = "GAP-MLLM multi-view data", description: str = "", license: str = "other") -> Path:
    """Write `dataset` (a `DatasetDict` or a single `Dataset`, saved as split "train") to Parquet
    files and a dataset card under `out_dir`; returns the card path."""
    if isinstance(dataset, datasets.Dataset):
        dataset = datasets.DatasetDict({"train": dataset})
    out_dir = Path(out_dir)
    (out_dir / "data").mkdir(parents=True, exist_ok=True)
    data_files = []
    for split, ds in dataset.items():
        path = f"data/{split}-00000-of-00001.parquet"
        ds.to_parquet(str(out_dir / path))
        data_files.append({"split": split, "path": f"data/{split}-*.parquet"})
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license=license,
        configs=[{"config_name": "default", "data_files": data_files}],
    )
    splits = "\n".join(f"- `{split}`: {len(ds)} samples" for split, ds in dataset.items())
    card = DatasetCard(
        CARD_TEMPLATE.format(card_data=card_data.to_yaml(), pretty_name=pretty_name, description=description or pretty_name, splits=splits)
    )
    card_path = out_dir / "README.md"
    card.save(str(card_path))
    return card_path
