"""Whether a model is a GAP-MLLM-Mini, by what the model says of itself, not by the path it was given at.

A Mini knows SynthRooms rooms only, wherever its folder lies: `--model mini`, `--model mini/gap-mllm-mini`, the folder
`default_model_path()` assembles, a copy elsewhere or a Hub repository of it. Its model card names it: every Mini
export writes `model_name: GAP-MLLM-Mini` into the card's front matter (lab/mini/card.py), and the card travels with
the folder (`gap-mllm push --keep-readme` keeps it on the Hub). A Hub id is read from the local Hub cache only (no
download, no network): a card not fetched yet says nothing. Light: no torch, no transformers.

A Mini's `evaluation_results.json` names its own rows: `SHIPPED_ARM` (the free decoding) and `SHIPPED_ARM +
CONSTRAINED_SUFFIX` (decoding inside each task's answer grammar), which the front ends read (cli/model_scores.py).
"""

from __future__ import annotations

from pathlib import Path

MINI_MODEL_NAME = "GAP-MLLM-Mini"  # the card's `model_name` (lab/mini/card.py writes it)
CARD = "README.md"
SHIPPED_ARM = "gap_gated_s0"  # the row of the shipped model in its evaluation_results.json (lab/mini/arms.py MAIN_ARM)
CONSTRAINED_SUFFIX = "_constrained"  # a row's name suffix when its answers were decoded inside the task's grammar


def card_path(source) -> Path | None:
    """The model card of a local folder or of a Hub id in the local Hub cache; None when there is none at hand."""
    folder = Path(str(source)).expanduser()
    if folder.is_dir():
        return folder / CARD if (folder / CARD).is_file() else None
    from huggingface_hub import try_to_load_from_cache  # a Hub id only: the local cache, never the network

    try:
        cached = try_to_load_from_cache(str(source), CARD)
    except ValueError:  # not a valid repo id (a missing local path, say): no card
        return None
    return Path(cached) if isinstance(cached, str) else None


def is_gap_mllm_mini(source) -> bool:
    """Whether the model folder or Hub id `source` is a GAP-MLLM-Mini: its card's front matter names it."""
    path = card_path(source)
    if path is None:
        return False
    from huggingface_hub.repocard import metadata_load

    try:
        metadata = metadata_load(path) or {}
    except Exception:  # noqa: BLE001 - a card whose front matter does not parse (yaml errors) names no model
        return False
    return metadata.get("model_name") == MINI_MODEL_NAME
