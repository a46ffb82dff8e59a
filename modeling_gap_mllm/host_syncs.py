"""Count the points where the host would wait for the device, on any device, the CPU included.

On a GPU the host queues kernels and runs ahead; every read of a device value (`.item()`, `int(t)`, `bool(t)`,
`.tolist()`, a copy to the CPU) and every operation whose output size depends on values (`nonzero`, boolean
indexing, `masked_select`, `unique`, `repeat_interleave` without `output_size`) makes it stop until the device has
caught up. A decode step of a few milliseconds with four such stops leaves the GPU idle most of the time (as a
GPU profile shows). On the CPU nothing waits, so the same code paths are *counted* instead:

    with HostSyncCounter() as syncs:
        model.generate(...)
    syncs.total, syncs.counts   # e.g. 17, Counter({"aten._local_scalar_dense": 16, "Tensor.cpu": 1})

Two layers see them: a `TorchDispatchMode` sees the aten operations that read values on the host
(`_local_scalar_dense`, which `.item()`, `int()`, `float()` and `bool()` of a tensor end in) and the
value-dependent shapes (`nonzero` and the operations built on it, indexing with a boolean mask); a `TorchFunctionMode` sees the Python-level
reads that do not pass the dispatcher as such (`Tensor.tolist`, `Tensor.numpy`, `Tensor.cpu`, `.to("cpu")`). A
`.tolist()` is one synchronisation however many elements it reads; `.item()` through `.tolist()` is not counted twice.
CPU copies are counted by intent (on the CPU they copy nothing): a `.cpu()` or `.to("cpu")` of a CPU tensor is one on a
GPU. With `where=True` each count also records the innermost frame outside torch that made it (`places`), for a
failure message that names the line.
"""

from __future__ import annotations

import sys
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# aten operations that make the host wait for the device (value read, or an output size that depends on values)
SYNCING_ATEN = frozenset({
    "aten._local_scalar_dense", "aten.nonzero", "aten.nonzero_static_fallback", "aten.masked_select",
    "aten._unique2", "aten.unique_consecutive", "aten.unique_dim", "aten.is_nonzero", "aten.equal",
    "aten.repeat_interleave",  # counted only without output_size (see _dispatch_sync)
})  # fmt: skip
# indexing with a boolean mask (`x[mask]`, `x[mask] = v`): the CUDA kernels run nonzero on the mask first
_INDEXING = frozenset({"aten.index", "aten.index_put", "aten.index_put_", "aten._index_put_impl_"})
# Python-level reads of device values that do not go through `_local_scalar_dense` (each one synchronisation)
_READS = {torch.Tensor.tolist: "Tensor.tolist", torch.Tensor.numpy: "Tensor.numpy", torch.Tensor.cpu: "Tensor.cpu"}


def _to_cpu(args, kwargs) -> bool:
    """Whether a `Tensor.to(...)` call names the CPU by name (`"cpu"`, `torch.device("cpu")` written out). A device
    taken from another tensor (`.to(input_ids.device)`) is that tensor's device on a GPU, so it is not counted."""
    for value in (*args[1:], kwargs.get("device")):
        if isinstance(value, str) and torch.device(value).type == "cpu":
            return True
    return False


def _caller() -> str:
    """`file:line` of the innermost frame outside torch and this module."""
    frame = sys._getframe(2)
    while frame is not None and (f"{__name__.rsplit('.', 1)[-1]}.py" in frame.f_code.co_filename
                                 or f"{'/'}torch{'/'}" in frame.f_code.co_filename):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


class _Tally:
    """The counts, and where they were made when asked."""

    def __init__(self, where: bool):
        self.counts: Counter = Counter()
        self.places: Counter = Counter()
        self.where = where

    def add(self, name: str) -> None:
        self.counts[name] += 1
        if self.where:
            self.places[(name, _caller())] += 1


class _FunctionReads(TorchFunctionMode):
    def __init__(self, tally: _Tally):
        super().__init__()
        self.tally = tally
        self.inside_read = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _READS.get(func)
        if name is None and func is torch.Tensor.to and _to_cpu(args, kwargs):
            name = "Tensor.to(cpu)"
        if name is None:
            return func(*args, **kwargs)
        self.tally.add(name)
        self.inside_read += 1  # the aten reads a .tolist() makes are this one synchronisation
        try:
            return func(*args, **kwargs)
        finally:
            self.inside_read -= 1


def _boolean_index(args) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class _DispatchReads(TorchDispatchMode):
    def __init__(self, tally: _Tally, function_reads: _FunctionReads):
        super().__init__()
        self.tally = tally
        self.function_reads = function_reads

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = f"aten.{func.overloadpacket.__name__}"
        if self.function_reads.inside_read:
            return func(*args, **kwargs)
        if name in SYNCING_ATEN:
            if name != "aten.repeat_interleave" or kwargs.get("output_size") is None:
                self.tally.add(name)
        elif name in _INDEXING and _boolean_index(args):
            self.tally.add(f"{name}(bool mask)")
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager counting host synchronisations (see the module docstring): `counts` (name → calls) and, with
    `where=True`, `places` ((name, `file:line`) → calls)."""

    def __init__(self, where: bool = False):
        self._tally = _Tally(where)
        self.counts = self._tally.counts
        self.places = self._tally.places

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> "HostSyncCounter":
        self._function = _FunctionReads(self._tally)
        self._dispatch = _DispatchReads(self._tally, self._function)
        self._function.__enter__()
        self._dispatch.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._dispatch.__exit__(*exc)
        self._function.__exit__(*exc)


__all__ = ["HostSyncCounter", "SYNCING_ATEN"]
