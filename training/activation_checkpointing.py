"""What a recipe's Trainer settings say about activation checkpointing, read where a setting depends on it (the
recipe reader's refusals in training/config.py, the kernel defaults in training/kernels.py)."""

from __future__ import annotations

# the switch and its kwargs under transformers' name and under its deprecated one
CHECKPOINTING = (("activation_checkpointing", "activation_checkpointing_kwargs"),
                 ("gradient_checkpointing", "gradient_checkpointing_kwargs"))


def checkpoints_activations(training: dict) -> bool:
    """Whether the Trainer settings `training` checkpoint activations (either name of the switch)."""
    return any(training.get(switch) for switch, _ in CHECKPOINTING)


def reentrant_checkpointing(training: dict) -> bool:
    """Whether the Trainer settings `training` checkpoint activations with torch's reentrant checkpoint (asked for by
    `use_reentrant: true` in their checkpointing kwargs; transformers' default is the non-reentrant one)."""
    return any(training.get(switch) and (training.get(kwargs) or {}).get("use_reentrant") is True
               for switch, kwargs in CHECKPOINTING)
