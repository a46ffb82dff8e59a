"""Device and precision of a training run, picked from what the machine has, and logged.

The shipped recipes are written for GPUs (bf16 weights and autocast, 4 data-loader workers). With
`device: auto` (the default; `gap-mllm train --device auto|cpu|cuda`) the same recipe runs anywhere:

    CUDA   use_cpu off; precision as the recipe says when the GPU supports it; with no precision in the
           recipe: bf16 autocast if the GPU supports bf16, else fp16; bf16 asked on a GPU without bf16:
           fp16 autocast with float32 weights.
    CPU    use_cpu on; float32 weights (a bfloat16 / float16 `model.dtype` becomes float32); no bf16 /
           fp16 autocast (the GPU recipes' `bf16: true` is turned off), unless the recipe asks for
           `cpu_bf16_autocast: true`: bf16 autocast on the CPU, which needs a CPU with native bfloat16
           (AVX512-BF16 or AMX: oneDNN runs the matrix products in bf16; elsewhere the option is refused,
           since emulated bf16 is slower than float32); no tf32; data-loader workers capped at half the CPU
           cores (the main process needs the rest for the model); no pinned memory. Activation
           checkpointing is left as is.

`device: cuda` on a machine where torch sees no CUDA device is an error (with what torch reports).
Every value the plan changes from the recipe is logged as a warning naming it; the summary line
("device: cpu (...); precision: ...") is logged at INFO level.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field

import torch

logger = logging.getLogger(__name__)

HALF_DTYPES = ("bfloat16", "float16")


@dataclass
class DevicePlan:
    """What a run uses: `device` ("cpu" / "cuda"), the model `dtype`, the TrainingArguments values
    the plan sets (`training`), why this device (`reason`), and the recipe values it changed (`changes`)."""

    device: str
    dtype: str
    reason: str
    training: dict = field(default_factory=dict)
    changes: list = field(default_factory=list)

    def summary(self) -> str:
        if self.device == "cpu":
            precision = "float32 weights, " + ("bf16 autocast" if self.training.get("bf16") else "no autocast")
        else:
            autocast = "bf16 autocast" if self.training.get("bf16") else "fp16 autocast" if self.training.get("fp16") else "no autocast"
            precision = f"{self.dtype} weights, {autocast}"
        workers = self.training.get("dataloader_num_workers")
        return f"device: {self.device} ({self.reason}); precision: {precision}" + (
            f"; data-loader workers: {workers}" if workers is not None else "")


def _cuda_missing_message() -> str:
    return (f"device=cuda, but torch sees no CUDA device (torch {torch.__version__}, built with CUDA "
            f"{torch.version.cuda or 'none'}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
            "use --device auto (or cpu) to train on the CPU")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 matrix products natively (oneDNN's check: AVX512-BF16 or AMX)."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def plan_device(requested: str, training: dict, dtype: str, cuda_available: bool | None = None,
                bf16_supported: bool | None = None, cpu_count: int | None = None, cpu_bf16_autocast: bool = False,
                cpu_bf16_supported: bool | None = None) -> DevicePlan:
    """The device plan for a recipe's `device`, `training` values, `model.dtype` and `cpu_bf16_autocast`.

    `cuda_available`, `bf16_supported` (the GPU's), `cpu_count` and `cpu_bf16_supported` default to what this
    machine reports (tests pass them to plan for machines they do not run on).

    Raises:
        ValueError: device=cuda without a CUDA device, or cpu_bf16_autocast on a CPU without native bf16.
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device={requested!r}; choose from auto, cpu, cuda")
    cuda_available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if requested == "cuda" and training.get("use_cpu"):
        raise ValueError("device=cuda contradicts training.use_cpu=true; drop one of them")
    if requested == "cuda" and not cuda_available:
        raise ValueError(_cuda_missing_message())
    if requested == "cpu":
        device, reason = "cpu", "asked for"
    elif requested == "cuda":
        device, reason = "cuda", "asked for"
    elif training.get("use_cpu"):
        device, reason = "cpu", "training.use_cpu=true"
    elif cuda_available:
        device, reason = "cuda", "auto: a CUDA device is visible"
    else:
        device, reason = "cpu", "auto: torch sees no CUDA device"
    plan = DevicePlan(device=device, dtype=dtype, reason=reason)

    def set_value(key, value, why=None):
        if key in training and training[key] != value and why:
            plan.changes.append(f"training.{key}={training[key]!r} -> {value!r}: {why}")
        plan.training[key] = value

    if device == "cpu":
        set_value("use_cpu", True, "training on the CPU")
        if cpu_bf16_autocast:
            native = cpu_has_native_bf16() if cpu_bf16_supported is None else cpu_bf16_supported
            if not native:
                raise ValueError("cpu_bf16_autocast=true, but this CPU has no native bfloat16 (AVX512-BF16 or AMX), "
                                 "where bf16 autocast would be slower than float32; drop the option to train in float32")
            set_value("bf16", True, "cpu_bf16_autocast: bf16 autocast on the CPU")
        else:
            set_value("bf16", False, "no bf16 autocast on the CPU (float32 training; cpu_bf16_autocast turns it on)")
        set_value("fp16", False, "no fp16 autocast on the CPU (float32 training)")
        if training.get("tf32"):
            set_value("tf32", False, "tf32 is a CUDA setting")
        set_value("dataloader_pin_memory", False)
        cores = cpu_count if cpu_count is not None else (os.cpu_count() or 1)
        asked = training.get("dataloader_num_workers", 0)
        cap = max(0, cores // 2)
        if isinstance(asked, int) and asked > cap:
            set_value("dataloader_num_workers", cap, f"{cores} CPU core(s): at most half go to data loading")
        if dtype != "float32":
            if dtype in HALF_DTYPES:
                plan.changes.append(f"model.dtype={dtype!r} -> 'float32': the CPU trains in float32")
            plan.dtype = "float32"
        return plan

    bf16_ok = torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported
    set_value("use_cpu", False, "training on CUDA")
    if "bf16" not in training and "fp16" not in training:
        set_value("bf16", bf16_ok)
        set_value("fp16", not bf16_ok)
    elif training.get("bf16") and not bf16_ok:
        set_value("bf16", False, "this GPU has no bf16")
        set_value("fp16", True, "this GPU has no bf16: fp16 autocast instead")
    if dtype == "bfloat16" and not bf16_ok:
        plan.changes.append("model.dtype='bfloat16' -> 'float32': this GPU has no bf16 (fp16 autocast keeps float32 weights)")
        plan.dtype = "float32"
    return plan


def apply_device_plan(recipe, **machine):
    """`(recipe with the plan's dtype and TrainingArguments values, plan)`; logs the plan."""
    plan = plan_device(recipe.device, recipe.training, recipe.model.dtype, cpu_bf16_autocast=recipe.cpu_bf16_autocast,
                       **machine)
    for change in plan.changes:
        logger.warning("device plan changes %s", change)
    logger.info(plan.summary())
    new_recipe = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, dtype=plan.dtype),
                                     training={**recipe.training, **plan.training})
    return new_recipe, plan
