"""Where a model folder's weights come from, as the folder records it: the lineage a model card states.

A folder's lineage is `{"origin": ..., "weights": [...]}`:

- `origin`: the released model it descends from, `{"name", "version", "license"}`, or None. A released model's own
  training record names it (`model_name`, `version`, `license` in its `gap_mllm_training.json`: GAP-MLLM-Mini's,
  written by its export); a run that starts from it carries it on (`gap-mllm train`, training/run.py
  `training_record`'s `lineage`), and so does every run after that.
- `weights`: the third-party checkpoints whose weights it holds, `{"part", "source"}` each: what its config.json
  names (`geometry_config.source_checkpoint`, the VGGT checkpoint the converter read; `text_config._name_or_path`,
  `vlm_config`'s in the earlier layout, the Qwen3-VL checkpoint `from_pretrained` read) and what its training record carries from the folders it started
  from. `[]` is recorded too: weights trained from random initialisation by this package.

None when nothing is recorded (a folder with neither a lineage in its record nor a source in its config): a card
then says "not recorded", never guesses. Light: json and pathlib only.
"""

from __future__ import annotations

import json
from pathlib import Path

from .dataset_identity import TRAINING_RECORD

LINEAGE = "lineage"  # the key of a training record that holds the lineage
GEOMETRY_PART, LANGUAGE_PART = "geometry encoder", "LLM and vision tower"


def _folder_json(source, name: str) -> dict | None:
    """The JSON object `name` of the local folder `source`, or of the Hub id `source` in the local Hub cache (never the
    network); None when there is none or it is not a JSON object."""
    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        path = folder / name
    else:
        from huggingface_hub import try_to_load_from_cache  # a Hub id only: the local cache, never the network

        try:
            cached = try_to_load_from_cache(str(source), name)
        except ValueError:  # not a valid repo id (a missing local path): nothing recorded
            return None
        path = Path(cached) if isinstance(cached, str) else None
    if path is None or not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    return value if isinstance(value, dict) else None


def _checkpoint_name(name) -> str | None:
    """A checkpoint's name as a card may print it: a Hub id as it is, a local folder by its name (never a path)."""
    if not isinstance(name, str) or not name.strip():
        return None
    return Path(name).name if Path(name).expanduser().exists() or name.startswith(("/", ".", "~")) else name


def config_weights(config: dict | None) -> list[dict]:
    """The third-party checkpoints a GAP-MLLM config.json (as a dict) names: its VGGT source and its Qwen3-VL source."""
    config = config or {}
    named = [(GEOMETRY_PART, (config.get("geometry_config") or {}).get("source_checkpoint")
              if config.get("use_geometry", True) else None),
             (LANGUAGE_PART, (config.get("text_config") or config.get("vlm_config") or {}).get("_name_or_path"))]
    return [{"part": part, "source": _checkpoint_name(name)} for part, name in named if _checkpoint_name(name)]


def merged(*lineages) -> dict | None:
    """One lineage of several (a fresh model and the folder its encoders came from): the first origin, every weight
    source once; None when none is recorded."""
    known = [lineage for lineage in lineages if lineage is not None]
    if not known:
        return None
    weights = []
    for lineage in known:
        weights += [entry for entry in lineage.get("weights") or [] if entry not in weights]
    return {"origin": next((lineage["origin"] for lineage in known if lineage.get("origin")), None), "weights": weights}


def read_record(source) -> dict | None:
    """The training record (`gap_mllm_training.json`) of the model folder or cached Hub id `source`, or None."""
    return _folder_json(source, TRAINING_RECORD)


def released_model(record: dict | None) -> dict | None:
    """`{"name", "version", "license"}` of a released model's own training record (`model_name` in it), else None."""
    if not record or not record.get("model_name"):
        return None
    return {"name": str(record["model_name"]), "version": record.get("version"), "license": record.get("license")}


def folder_lineage(source) -> dict | None:
    """The lineage (module docstring) of the model folder or cached Hub id `source`: its record's (its own name when it
    is a released model, else the lineage it carries) with the checkpoints its config names; None when nothing is
    recorded."""
    record = read_record(source)
    weights = {"origin": None, "weights": config_weights(_folder_json(source, "config.json"))}
    origin = released_model(record)
    if origin is not None:
        return merged({"origin": origin, "weights": []}, (record.get(LINEAGE) or {}), weights)
    carried = (record or {}).get(LINEAGE)
    if isinstance(carried, dict):
        return merged(carried, weights)
    return weights if weights["weights"] else None


def origin_text(origin: dict) -> str:
    """"GAP-MLLM-Mini (version ...)": a lineage's origin in words."""
    return f"{origin['name']}" + (f" (version {origin['version']})" if origin.get("version") else "")


__all__ = ["GEOMETRY_PART", "LANGUAGE_PART", "LINEAGE", "config_weights", "folder_lineage", "merged", "origin_text",
           "read_record", "released_model"]
