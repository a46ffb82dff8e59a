"""Loud, grouped reports of weights missing from a checkpoint.

transformers initialises parameters a checkpoint lacks with `_init_weights` and only logs the key list.
For GAP-MLLM a silently re-initialised VGGT or gate is the worst failure (peers' users lost days to
it), so missing keys are summarised by component and raised as a warning a notebook shows.
"""

import warnings

from transformers.utils import logging

logger = logging.get_logger(__name__)

# (key prefix, human name), most specific first.
WEIGHT_GROUPS = (
    ("geometry_encoder.", "geometry encoder (VGGT aggregator)"),
    ("geometry_fusion.mergers.", "geometry mergers"),
    ("geometry_fusion.fusions.", "fusion modules (gates)"),
    ("vlm.model.visual.", "Qwen3-VL vision tower"),
    ("vlm.model.language_model.", "Qwen3-VL language model"),
    ("vlm.lm_head.", "LM head"),
)
GEOMETRY_GROUPS = frozenset(name for prefix, name in WEIGHT_GROUPS if prefix.startswith("geometry_"))


class MissingWeightsWarning(UserWarning):
    """A checkpoint lacked weights of a GAP-MLLM component; they were randomly initialised."""


def group_missing_keys(missing_keys) -> dict[str, list[str]]:
    """Sort state-dict keys into the named components of `WEIGHT_GROUPS` (others under "other")."""
    groups: dict[str, list[str]] = {}
    for key in sorted(missing_keys):
        name = next((name for prefix, name in WEIGHT_GROUPS if key.startswith(prefix)), "other")
        groups.setdefault(name, []).append(key)
    return groups


def report_missing_weights(missing_keys, source: str) -> dict[str, list[str]]:
    """Warn once, by group, about `missing_keys` of a checkpoint loaded from `source`; returns the groups."""
    groups = group_missing_keys(missing_keys)
    if groups:
        lines = [f"  - {name}: {len(keys)} tensors randomly initialised (e.g. {keys[0]})" for name, keys in groups.items()]
        message = (
            f"The checkpoint at {source!r} lacks the weights of these GAP-MLLM components:\n" + "\n".join(lines)
            + "\nThey are NOT pretrained. Load the matching weights (VGGT converter, a trained GAP-MLLM "
            "checkpoint) before using the model for anything but training from scratch."
        )
        logger.warning(message)
        warnings.warn(message, MissingWeightsWarning, stacklevel=3)
    return groups
