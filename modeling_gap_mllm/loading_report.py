"""Loud, grouped reports of weights missing from a checkpoint, and the check that its weights are numbers.

transformers initialises parameters a checkpoint lacks with `_init_weights` and only logs the key list.
For GAP-MLLM a silently re-initialised VGGT or gate is the worst failure (peers' users lost days to
it), so missing keys are summarised by component and raised as a warning a notebook shows.

A checkpoint whose weights hold NaN or an infinity (saved from a diverged run, or damaged) loads without a word
and answers nothing (every box dropped): `first_non_finite_tensor` finds the first such tensor, so that
`from_pretrained` refuses it by name.
"""

import warnings

import torch
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


def first_non_finite_tensor(state_dict) -> str | None:
    """The name of the first floating-point tensor of `state_dict` (in its order) that holds a NaN or an infinity,
    or None. Tensors on the meta device (not loaded) are passed over.

    One pass over the weights, with one host synchronisation per device rather than one per tensor: each tensor's
    sum (in float32: a NaN or an infinity anywhere makes it one) stays on its device until they are stacked. Summing
    reads the weights once without a copy, several times faster than `isfinite(...).all()`; a sum that overflows
    float32 only flags a tensor, which `isfinite` then checks exactly."""
    names, sums = {}, {}
    for position, (name, tensor) in enumerate(state_dict.items()):
        if tensor.is_floating_point() and not tensor.is_meta:
            names.setdefault(tensor.device, []).append((position, name))
            sums.setdefault(tensor.device, []).append(tensor.sum(dtype=torch.float32))
    broken = []
    for device, device_sums in sums.items():
        flagged = (~torch.isfinite(torch.stack(device_sums))).nonzero().flatten().tolist()  # the one synchronisation
        broken.extend(names[device][index] for index in flagged
                      if not torch.isfinite(state_dict[names[device][index][1]]).all())
    return min(broken)[1] if broken else None
