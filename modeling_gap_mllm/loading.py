"""How the gap-mllm package loads and builds its models: the model folder's classes, then the package's checks and
batch-wide paths, as explicit calls.

- `load_model(source, ...)`: `from_pretrained` with the checkpoint checks (`gap_mllm.checks.load_checked`: the GAP
  components missing reported and kept as `model.missing_weight_groups`, weights that hold or compute NaN refused),
  then the batch-wide Qwen3-VL paths (`gap_mllm.speedups.use_batched_qwen3_vl`), and the heap the load freed given
  back to the system (`release_freed_memory`).
- `build_model(config)`: a fresh model after the parameter-count and memory checks (`gap_mllm.checks`: a config past
  the sanity bound, or whose weights' lower bound cannot fit, refused before allocating), then the same paths.

A plain `from_pretrained` or `GapMllmForConditionalGeneration(config)` runs transformers' paths, as a folder loaded
with `trust_remote_code` does. Never copied into a model folder.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from . import checks, speedups
from .modeling_gap_mllm import GapMllmForConditionalGeneration


def load_model(source, *args, loader=None, speed_paths: bool = True, **kwargs):
    """`loader(source, *args, **kwargs)` (default `GapMllmForConditionalGeneration.from_pretrained`; e.g.
    `AutoModel.from_pretrained`) with the package's checkpoint checks, then (`speed_paths`) its batch-wide paths.

    Args:
        **kwargs: `from_pretrained`'s, plus `load_checked`'s `require_geometry_weights`, `allow_non_finite_weights`
            and `warn_missing_weights`.

    Returns:
        the model, or `(model, loading info)` with `output_loading_info=True`.

    Raises:
        ValueError: weights that hold or compute NaN, tensors the model has no place for, or (with
            `require_geometry_weights`) missing geometry weights, naming them.
    """
    loaded = checks.load_checked(loader or GapMllmForConditionalGeneration.from_pretrained, source, *args, **kwargs)
    if speed_paths:
        speedups.use_batched_qwen3_vl(loaded[0] if isinstance(loaded, tuple) else loaded)
    release_freed_memory()
    return loaded


@functools.cache
def _malloc_trim():
    """glibc's `malloc_trim`, or None where the C library has none (macOS, musl, Windows)."""
    library = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(library), "malloc_trim", None) if library else None


def release_freed_memory() -> bool:
    """Give the heap memory the process has freed back to the system (glibc's `malloc_trim(0)`); whether it could.

    Why: a load that converts weights (a `--quantize` load reads each bf16 weight, then keeps its int8/int4 copy)
    frees its transients in pieces of the size glibc keeps in its heap, and glibc returns none of it by itself: at the
    real size an int8 load left 7.6 GiB anonymous resident, 1.6 GiB after the trim (bench/README.md, "Quantized
    inference"). Costs milliseconds; a no-op where the C library has no `malloc_trim`."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def build_model(config, speed_paths: bool = True) -> GapMllmForConditionalGeneration:
    """A freshly initialised `GapMllmForConditionalGeneration(config)`, refused before allocating when its parameter
    count passes the sanity bound or its weights cannot fit in the memory left (ValueError naming the sizes), with
    (`speed_paths`) the batch-wide paths."""
    checks.check_parameter_count(config)
    checks.check_memory_for_parameters(config)
    model = GapMllmForConditionalGeneration(config)
    if speed_paths:
        speedups.use_batched_qwen3_vl(model)
    return model


__all__ = ["build_model", "load_model", "release_freed_memory"]
