"""Which model, in which state, produced something cached (an encoded scene): checked cheaply before reuse.

A scene's keys and values are only valid for the weights that computed them. A scene handed to another
model of the same layer count, dtype and device would run and answer from foreign keys (logits off by
~0.5 on the tiny model), and one of other head sizes would end in a tensor-size RuntimeError. So a scene
records `model_identity(model)` and `generate(scene=...)` compares it with the model at hand:

    instance  a token of the model object (a copy gets its own, `copy.deepcopy` included)
    config    a digest of the model's configuration (JSON)
    weights   a digest of every parameter and buffer: its shape, dtype, storage address and in-place version
              counter, and a probe of its values (their float32 sum and 16 to 31 elements at
              evenly strided positions; all of a tensor of fewer)
    adapters  a digest of the PEFT state of every adapter layer (`disable_adapter()`, `set_adapter`,
              merged adapters, scaling), read from the layers' attributes

Why the values and not only the version counters: fused optimizer kernels (`torch.optim.AdamW(fused=True)`,
the Trainer's default `adamw_torch_fused`) and writes through `tensor.data` change weights without bumping
the counter. Cost: one read of the weights (about one decoding step of the same model) and a few small
copies to the host per check; on the tiny model, where per-tensor overhead dominates, ~13 ms on a 2-core
CPU (less than half a forward of a 2-view scene prefix).

What remains undetectable (re-encode the scene after such changes): a write that keeps every tensor's
float32 sum and its probed elements (e.g. swapping two unprobed values, or a change below the float32
rounding of the sum at unprobed positions); model state outside parameters, buffers, the configuration and
PEFT's adapter attributes (a replaced `forward`, a hook, a module attribute such as a dropout rate, train
vs eval mode); the values of meta tensors and of dtypes without a sum kernel, e.g. float8 (their address,
counter, shape and dtype only).
"""

from __future__ import annotations

import hashlib
import uuid
from array import array
from dataclasses import dataclass

import torch

_INSTANCE_ATTRIBUTE = "_gap_mllm_identity_token"


@dataclass(frozen=True)
class ModelIdentity:
    """`model_identity`'s answer; equal identities mean the same model object, configuration and weights."""

    instance: str
    config: str
    weights: str
    adapters: str = ""


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


_PROBED_ELEMENTS = 16  # a tensor's elements at this many evenly strided positions (16 to 31 of them)
# PEFT keeps an adapter layer's state in these attributes (BaseTunerLayer, ModulesToSaveWrapper): which adapters
# are active, whether all are disabled (`disable_adapter()`), which are merged, and their scales.
_ADAPTER_ATTRIBUTES = ("_disable_adapters", "_active_adapter", "merged_adapters", "scaling")


def _state_tensors(model):
    """Every parameter and buffer of `model`, from one walk over its modules (a tensor shared by two modules
    comes twice; `named_parameters` + `named_buffers` would walk the modules twice)."""
    for module in model.modules():
        for tensor in (*module._parameters.values(), *module._buffers.values()):
            if tensor is not None:
                yield tensor


def _local(tensor):
    """The tensor whose values this process holds: a sharded DTensor's local shard, else the tensor."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def _counter(tensor) -> int:
    try:
        return tensor._version  # in-place write counter (private, but stable across torch releases)
    except RuntimeError:  # inference-mode tensors keep no counter
        return -1


def _address(tensor) -> int:
    try:
        return tensor.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without one storage
        return -1


@torch.no_grad()
def _weights_digest(model) -> str:
    """Digest of every parameter's and buffer's metadata and value probe (see the module docstring). Two
    tensor operations per tensor (a sum and a strided view) and a few small copies to the host (per device and
    dtype): the check runs before every `generate(scene=...)`."""
    metadata = array("q")
    sums: dict[torch.device, list] = {}
    elements: dict[tuple[str, str], list] = {}  # (device, dtype) -> probed elements, copied to the host together
    for tensor in _state_tensors(model):
        tensor = _local(tensor)
        metadata.extend((_address(tensor), _counter(tensor), hash(tensor.shape), hash(tensor.dtype)))
        if tensor.is_meta or tensor.numel() == 0:  # no values to read here
            continue
        flat = (torch.view_as_real(tensor) if tensor.is_complex() else tensor).reshape(-1)  # a view, in practice
        try:
            total = flat.sum(dtype=torch.float32)
        except (RuntimeError, TypeError, NotImplementedError):  # a dtype without a sum kernel (e.g. float8)
            continue  # its metadata still counts
        sums.setdefault(flat.device, []).append(total)
        elements.setdefault((str(flat.device), str(flat.dtype)), []).append(flat[:: max(1, flat.numel() // _PROBED_ELEMENTS)])
    digest = hashlib.blake2b(metadata.tobytes(), digest_size=16)
    for device in sorted(sums, key=str):
        digest.update(torch.stack(sums[device]).cpu().numpy().tobytes())
    for key in sorted(elements):  # float64 on the host: exact for every dtype here (numpy has no bfloat16)
        digest.update(torch.cat(elements[key]).cpu().double().numpy().tobytes())
    return digest.hexdigest()


def _adapters_digest(model) -> str:
    """Digest of the PEFT adapter state of every module that has one ("" when there is none)."""
    states = []
    for name, module in model.named_modules():
        if hasattr(module, "_active_adapter"):  # an instance or a class attribute (PEFT sets class defaults)
            states.append(f"{name}|" + "|".join(repr(getattr(module, key, None)) for key in _ADAPTER_ATTRIBUTES))
    if not states:
        return ""
    return hashlib.blake2b("\n".join(states).encode(), digest_size=16).hexdigest()


def model_identity(model) -> ModelIdentity:
    """The identity of `model` now (see the module docstring); costs one read of the weights."""
    return ModelIdentity(instance=_instance_token(model), config=_config_digest(model), weights=_weights_digest(model),
                         adapters=_adapters_digest(model))


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
    if recorded.adapters != current.adapters:
        return ("this model's adapters changed after it was encoded (PEFT set_adapter, disable_adapter, merge or "
                "scale)")
    return None


__all__ = ["ModelIdentity", "identity_mismatch", "model_identity"]
