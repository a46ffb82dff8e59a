"""Which model, in which state, produced something cached (an encoded scene): checked cheaply before reuse.

A scene's keys and values are only valid for the weights that computed them. A scene handed to another
model of the same layer count, dtype and device would run and answer from foreign keys (logits off by
~0.5 on the tiny model), and one of other head sizes would end in a tensor-size RuntimeError. So a scene
records `model_identity(model)` and `generate(scene=...)` compares it with the model at hand:

    instance  a token of the model object (a copy gets its own, `copy.deepcopy` included)
    config    a digest of the model's configuration (JSON)
    weights   a digest of every parameter's storage address, dtype and in-place version counter

Nothing here reads a weight: the version counter of a tensor is bumped by every in-place write through it
(optimizer steps, `load_state_dict`, `param.mul_`), and `.to()` or assigning `.data` changes the storage
address. Writes through `param.data` (which has its own counter) are not seen; re-encode the scene after
such surgery. Parameters whose counter cannot be read (inference-mode tensors) count by address only.
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from dataclasses import dataclass

_INSTANCE_ATTRIBUTE = "_gap_mllm_identity_token"


@dataclass(frozen=True)
class ModelIdentity:
    """`model_identity`'s answer; equal identities mean the same model object, configuration and weights."""

    instance: str
    config: str
    weights: str


def _instance_token(model) -> str:
    """A token unique to this model object. It is kept on the object with the object's `id`, so a copy
    (whose `id` differs) makes its own instead of inheriting the original's."""
    stored = model.__dict__.get(_INSTANCE_ATTRIBUTE)
    if stored is None or stored[0] != id(model):
        stored = (id(model), uuid.uuid4().hex)
        model.__dict__[_INSTANCE_ATTRIBUTE] = stored
    return stored[1]


def _config_digest(model) -> str:
    return hashlib.blake2b(model.config.to_json_string(use_diff=False).encode(), digest_size=16).hexdigest()


def _weights_digest(model) -> str:
    values = array("q")
    for parameter in model.parameters():
        try:
            address = parameter.data_ptr()
        except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage (e.g. DTensor)
            address = -1
        try:
            version = parameter._version  # in-place write counter (private, but stable across torch releases)
        except RuntimeError:  # inference-mode tensors keep no counter
            version = -1
        values.extend((address, version, hash(parameter.dtype) & 0x7FFFFFFFFFFFFFFF, parameter.numel()))
    return hashlib.blake2b(values.tobytes(), digest_size=16).hexdigest()


def model_identity(model) -> ModelIdentity:
    """The identity of `model` now (see the module docstring); costs one pass over the parameter list."""
    return ModelIdentity(instance=_instance_token(model), config=_config_digest(model), weights=_weights_digest(model))


def identity_mismatch(recorded: ModelIdentity, model) -> str | None:
    """What differs between `recorded` and `model` now, as a sentence, or None when they are the same."""
    current = model_identity(model)
    if recorded.instance != current.instance:
        return "it was encoded by another model object"
    if recorded.config != current.config:
        return "this model's configuration changed after it was encoded"
    if recorded.weights != current.weights:
        return ("this model's weights changed after it was encoded (a training step, load_state_dict, a dtype or "
                "device move)")
    return None


__all__ = ["ModelIdentity", "identity_mismatch", "model_identity"]
