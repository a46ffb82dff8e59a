"""What a data root holds, in words a model card or a summary can state without guessing.

SynthRooms output is recognised by its `synthrooms/dataset_info.json` (written by `gap-mllm synth`).
Anything else is only known to follow the ScanNet `posed_images` layout and the official annotation
schema: it is described as such, never named "ScanNet" or "EmbodiedScan", since real ScanNet and
any other data written in that layout look the same from here.
"""

from __future__ import annotations

import json
from pathlib import Path

SYNTHROOMS_INFO = Path("synthrooms") / "dataset_info.json"
# Written beside a model by `gap-mllm train` (training/run.py: `training_record`): what it was trained
# on, described by `describe_data_root`; read by the model card and uploaded with the model.
TRAINING_RECORD = "gap_mllm_training.json"
KIND_SYNTHROOMS = "synthrooms"
KIND_SCANNET_LAYOUT = "scannet-layout"


def describe_data_root(data_root) -> dict:
    """`{"kind", "name", "folder", "details"}` for a data root.

    kind: "synthrooms" or "scannet-layout"; name: a readable name ("SynthRooms (synthetic, N scenes:
    ...)" or "data in the ScanNet posed_images layout"); folder: the root's folder name (not its
    absolute path); details: for SynthRooms, scenes per split and records per task and split.
    """
    root = Path(data_root)
    info_path = root / SYNTHROOMS_INFO
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        scenes = {split: len(ids) for split, ids in (info.get("splits") or {}).items()}
        counts = ", ".join(f"{n} {split}" for split, n in scenes.items())
        return {"kind": KIND_SYNTHROOMS, "name": f"SynthRooms (synthetic rooms from gap-mllm synth; scenes: {counts or 'unknown'})",
                "folder": root.name, "details": {"scenes": scenes, "records": info.get("records") or {}}}
    return {"kind": KIND_SCANNET_LAYOUT, "name": "data in the ScanNet posed_images layout (official annotation schema)",
            "folder": root.name, "details": {}}
