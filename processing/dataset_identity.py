"""What a data root holds, in words a model card or a summary can state without guessing.

SynthRooms output is recognised by its `synthrooms/dataset_info.json` (written by `gap-mllm synth`). Every
reader of that file goes through `read_dataset_info`, which checks its shape once: a malformed file is a
`DataError` naming the file and what is wrong, never a KeyError or TypeError further on.
Anything else is only known to follow the ScanNet `posed_images` layout and the official annotation
schema: it is described as such, never named "ScanNet" or "EmbodiedScan", since real ScanNet and
any other data written in that layout look the same from here.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import DataError
from .json_files import JsonTooDeep, loads_json

SYNTHROOMS_INFO = Path("synthrooms") / "dataset_info.json"
# Written beside a model by `gap-mllm train` (training/run.py: `training_record`): what it was trained
# on, described by `describe_data_root`; read by the model card and uploaded with the model.
TRAINING_RECORD = "gap_mllm_training.json"
KIND_SYNTHROOMS = "synthrooms"
KIND_SCANNET_LAYOUT = "scannet-layout"


def read_dataset_info(data_root) -> dict | None:
    """The parsed `<data_root>/synthrooms/dataset_info.json`, or None when the root has none (not SynthRooms data).

    Checked here, for every reader: a JSON object whose `splits` maps each split name to a list of scene ids
    (strings), and whose `config` and `records`, when present, are objects.

    Raises:
        DataError: the file is not UTF-8 JSON, or breaks that shape; the message names the file and the fault.
    """
    path = Path(data_root) / SYNTHROOMS_INFO
    if not path.is_file():
        return None
    return parse_dataset_info(path.read_bytes(), path)


def parse_dataset_info(data: bytes, path) -> dict:
    """The dataset_info.json `data` read from `path`, checked (`read_dataset_info`); for a reader that opens the file
    its own way (a writer's ownership check, processing/synth/writer.py, which follows no link).

    Raises:
        DataError: not UTF-8 JSON, or not of that shape; the message names `path` and the fault.
    """
    try:
        info = loads_json(data.decode("utf-8"), path)
    except JsonTooDeep as error:
        raise DataError(f"{error.reason}; write the data again with gap-mllm synth", path=path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"not valid JSON ({error}); write the data again with gap-mllm synth", path=path) from None
    problem = dataset_info_problem(info)
    if problem is not None:
        raise DataError(f"{problem}; write the data again with gap-mllm synth", path=path)
    return info


def dataset_info_problem(info) -> str | None:
    """What is wrong with the shape of a parsed dataset_info.json (`read_dataset_info`), or None."""
    if not isinstance(info, dict):
        return f"expected a JSON object, found {type(info).__name__}"
    splits = info.get("splits")
    if splits is None:
        return "no 'splits' (scene ids per split)"
    if not isinstance(splits, dict):
        return f"'splits' must map split names to lists of scene ids, found {type(splits).__name__}"
    for split, scenes in splits.items():
        if not isinstance(scenes, list) or not all(isinstance(scene, str) for scene in scenes):
            return f"'splits'[{split!r}] must be a list of scene ids (strings), found {json.dumps(scenes)[:60]}"
    for name in ("config", "records"):
        if name in info and not isinstance(info[name], dict):
            return f"{name!r} must be an object, found {type(info[name]).__name__}"
    return None


def describe_data_root(data_root) -> dict:
    """`{"kind", "name", "folder", "details"}` for a data root.

    kind: "synthrooms" or "scannet-layout"; name: a readable name ("SynthRooms (synthetic, N scenes:
    ...)" or "data in the ScanNet posed_images layout"); folder: the root's folder name (not its
    absolute path); details: for SynthRooms, scenes per split and records per task and split.
    """
    root = Path(data_root)
    info = read_dataset_info(root)
    if info is not None:
        scenes = {split: len(ids) for split, ids in info["splits"].items()}
        counts = ", ".join(f"{n} {split}" for split, n in scenes.items())
        return {"kind": KIND_SYNTHROOMS, "name": f"SynthRooms (synthetic rooms from gap-mllm synth; scenes: {counts or 'unknown'})",
                "folder": root.name, "details": {"scenes": scenes, "records": info.get("records") or {}}}
    return {"kind": KIND_SCANNET_LAYOUT, "name": "data in the ScanNet posed_images layout (official annotation schema)",
            "folder": root.name, "details": {}}
