"""The Space's GPU work: one call per request, wrapped in `@spaces.GPU(duration=...)` for Hugging Face's ZeroGPU.

ZeroGPU lends a GPU only inside functions decorated with the `spaces` package's `@spaces.GPU`; everywhere else (CPU
Basic, a dedicated GPU, a laptop) the decorator returns the function unchanged. The Space loads its model on the CPU
at start and moves it to CUDA inside the decorated call, when CUDA is there (`move_to_gpu`). On ZeroGPU that call
runs in a forked worker that holds the GPU: its arguments and its result are pickled across the process boundary,
and whatever the call leaves on the GPU lives in that worker only (so the session scene store is off there:
space_backend.py). Without the `spaces` package (a local environment that lacks it) the call is the plain function.

Duration: ZeroGPU reserves the GPU for the `duration` the call asks, stops a call that runs longer, and charges the
visitor's daily GPU quota by it. Each request asks for

    ceil(SAFETY * (SETUP_SECONDS + budget / DECODE_TOKENS_PER_SECOND)) seconds

where `budget` is the task's token budget (tasks_gap_mllm.py: detection 1,280, grounding 192, captioning 256,
reconstruction 96), or GAP_MLLM_MAX_TOKENS when that is lower: detection 84 s, captioning 29 s, grounding 26 s,
reconstruction 21 s.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable

import torch

from gap_mllm.tasks_gap_mllm import TaskSpec

# Greedy decoding of the real-size GAP-MLLM (Qwen3-VL-2B + VGGT-1B aggregator, bfloat16, batch 1, 4 views), measured
# on an H100: bench/real_size_h100.json, "generate" (28.0 tokens/s; 0.14 s for the prefill and the first token).
DECODE_TOKENS_PER_SECOND = 28.0
# Moving the 3.2 B parameters to the GPU, the geometry encoder and prefill of up to 8 views, VGGT's reconstruction
# heads on uploads and the gate pass: a round bound on what the decode rate leaves out, not a measurement.
SETUP_SECONDS = 10.0
# ZeroGPU's GPU is a MIG slice of an H200 (3g.71gb: 60 of its 132 SMs), not the H100 the rate was measured on.
SAFETY = 1.5


def gpu_seconds(task: TaskSpec, max_new_tokens: int | None = None) -> int:
    """The ZeroGPU duration (seconds) a request of `task` asks for (module docstring)."""
    budget = task.max_new_tokens if max_new_tokens is None else min(task.max_new_tokens, max_new_tokens)
    return math.ceil(SAFETY * (SETUP_SECONDS + budget / DECODE_TOKENS_PER_SECOND))


def spaces_version() -> str | None:
    """The installed `spaces` package's version, or None without it."""
    if importlib.util.find_spec("spaces") is None:
        return None
    from importlib.metadata import version

    return version("spaces")


def on_zero_gpu() -> bool:
    """Whether this process runs on ZeroGPU hardware (the `spaces` package reads SPACES_ZERO_GPU)."""
    if spaces_version() is None:
        return False
    from spaces.config import Config

    return bool(Config.zero_gpu)


def gpu_function(function: Callable, duration: Callable[..., int]) -> Callable:
    """`function` wrapped in `@spaces.GPU(duration=duration)` (`duration` takes `function`'s arguments and returns
    seconds); the function itself when `spaces` is not installed (then no ZeroGPU can be asked anyway)."""
    if spaces_version() is None:
        return function
    import spaces

    return spaces.GPU(duration=duration)(function)


def move_to_gpu(model) -> torch.device:
    """Move `model` to CUDA when CUDA is available (a no-op once it is there); returns where it is."""
    if torch.cuda.is_available() and model.device.type != "cuda":
        model.to("cuda")
    return model.device


def gpu_line() -> str:
    """One line for the server log: where this Space's GPU work runs. Only on ZeroGPU does a request ask for a GPU
    duration (`request_line`); elsewhere the line says which device this process has."""
    version = spaces_version()
    device = "on CUDA" if torch.cuda.is_available() else "on the CPU (no CUDA)"
    if version is None:
        return f"GPU: spaces is not installed; requests run in this process, {device}"
    if on_zero_gpu():
        return (f"GPU: spaces {version}, ZeroGPU: every request runs inside @spaces.GPU with the duration its line "
                "states (cli/space_gpu.py)")
    return f"GPU: spaces {version}, not on ZeroGPU: @spaces.GPU is a no-op, requests run in this process, {device}"


def request_line(number: int, task: TaskSpec, max_new_tokens: int | None = None) -> str:
    """The server log's line for request `number` before its model work: its task, and on ZeroGPU the duration it
    asks for (`gpu_seconds`); off ZeroGPU no duration is asked for, so none is stated."""
    if on_zero_gpu():
        return f"request {number}: {task.name}, ZeroGPU duration {gpu_seconds(task, max_new_tokens)} s"
    return f"request {number}: {task.name}"
