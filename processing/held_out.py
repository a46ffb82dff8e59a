"""Which SynthRooms scenes a model trained on, and the check that an evaluation does not score them.

SynthRooms numbers its scenes across the splits (`gap-mllm synth --scenes N --val-scenes V`: training scenes
0..N-1, validation N..N+V-1, then test), and scene i depends only on the generator settings and i. So data written
with more training scenes trains on what smaller data with the same settings holds out: a model trained on
`--scenes 6000` and scored on the validation or test split of `--scenes 1200` data would be scored on scenes it
trained on, with no error anywhere. `gap-mllm train` records the scenes of every SynthRooms split it trained on
(`trained_scenes`, in the model's `gap_mllm_training.json`, carried over from the model it started from; the
shipped GAP-MLLM-Mini's folder holds its own), and `gap-mllm evaluate` warns in one line, naming the overlap, when a
model is scored on any of them (`check_held_out`); a model folder that records no training scenes is said once to
record none, since nothing can then be checked.

Scenes are matched by the generator settings (`dataset_info.json`'s `config`, seed included, hashed) and scene id:
data written with other settings is not compared, and data not written by `gap-mllm synth` is not checked at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from .dataset_identity import TRAINING_RECORD, read_dataset_info

logger = logging.getLogger(__name__)
# the model folders already said to record no training scenes in this process (`check_held_out`): said once each
_UNRECORDED_SAID: set[str] = set()


def record_scene_id(record: dict) -> str:
    """The scene of an annotation record: its `scene_id`, else the folder of its first image (read only then: a
    record with a scene_id needs no image for it; the readers check `images` first, record_schema.py IMAGES)."""
    if "scene_id" in record:
        return str(record["scene_id"])
    return Path(record["images"][0]).parent.name


def generator_fingerprint(config: dict) -> str:
    """sha256 of the generator settings (canonical JSON): equal settings and scene id mean the same scene."""
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode("utf-8")).hexdigest()


def split_scenes(data_root, split: str) -> dict | None:
    """`{"generator": fingerprint, "scenes": [scene ids]}` of a SynthRooms split; None for other data (or a split
    the data does not have)."""
    info = read_dataset_info(data_root)
    if info is None or split not in info["splits"] or "config" not in info:
        return None
    return {"generator": generator_fingerprint(info["config"]), "scenes": sorted(info["splits"][split])}


def trained_scenes(data_root, split: str, started_from=None) -> list[dict]:
    """The SynthRooms scene sets a run trains on: its own split's (if the data is SynthRooms) and those of the
    model it starts from (read from that folder's training record, when it has one)."""
    sets = []
    if started_from is not None:
        record_path = Path(started_from) / TRAINING_RECORD
        if record_path.is_file():
            sets += json.loads(record_path.read_text(encoding="utf-8")).get("trained_scenes") or []
    own = split_scenes(data_root, split) if data_root else None
    if own is not None and own not in sets:
        sets.append(own)
    return sets


class TrainedOnEvaluationScenes(ValueError):
    """The model trained on scenes of the split it would be scored on. No longer raised: `check_held_out` warns
    instead (its line names the overlap); kept for code that catches it."""


def held_out_problem(model_dir, data_root, scene_ids) -> str | None:
    """The line `check_held_out` logs for scoring the model of `model_dir` on `scene_ids` (the scenes of the samples to
    score) of `data_root`, or None: the overlap with the scenes its training record lists for the generator settings
    of `data_root`, or, for a folder without a record, that its training scenes are not recorded. None for data not
    written by `gap-mllm synth` (nothing to compare)."""
    info = read_dataset_info(data_root)
    if info is None or "config" not in info:
        return None
    record_path = Path(model_dir) / TRAINING_RECORD
    if not record_path.is_file():
        return (f"the model {Path(str(model_dir)).name} records no training scenes (no {TRAINING_RECORD}), so whether "
                f"the scenes of {Path(data_root).name} are held out from it is not checked")
    fingerprint = generator_fingerprint(info["config"])
    record = json.loads(record_path.read_text(encoding="utf-8"))
    seen = set()
    for entry in record.get("trained_scenes") or []:
        if entry.get("generator") == fingerprint:
            seen.update(entry.get("scenes") or [])
    overlap = sorted(seen.intersection(scene_ids))
    if not overlap:
        return None
    shown = overlap[0] if len(overlap) == 1 else f"{overlap[0]} to {overlap[-1]}"
    # a released model by the name its record gives (GAP-MLLM-Mini's folder is a cache folder named by a digest)
    named = record.get("model_name") if isinstance(record.get("model_name"), str) else Path(str(model_dir)).name
    return (f"the model {named} was trained on {len(overlap)} of the {len(set(scene_ids))} scenes "
            f"scored ({shown}; its {TRAINING_RECORD}), so these scores are not held-out scores: data written by "
            "`gap-mllm synth` with the same settings and seed numbers its scenes across the splits; write the data "
            "with another --seed")


def check_held_out(model_dir, data_root, scene_ids) -> str | None:
    """Warn in one line (logged) when the model of `model_dir` is scored on scenes its training record lists, for the
    generator settings of `data_root` (`held_out_problem`); a folder without a record is said once per process.
    Returns the line, or None."""
    problem = held_out_problem(model_dir, data_root, scene_ids)
    if problem is None:
        return None
    if not (Path(model_dir) / TRAINING_RECORD).is_file():
        if str(model_dir) in _UNRECORDED_SAID:
            return None
        _UNRECORDED_SAID.add(str(model_dir))
    logger.warning(problem)
    return problem
