"""How a GPU bench refuses to run where it cannot: one line on stderr naming what is missing, exit status 2.

    require_cuda("bench_x.py", args.device)              # --device cuda on a machine torch sees no GPU on
    require_kernel("bench_x.py", "--attn", args.attn, args.device)   # flash-attn / Liger not installed, no CUDA, ...
    arm_unavailable("flash_attention_2", "cuda")         # why an arm cannot run here (None: it can), to record

The kernels' requirements are the training package's (training/kernels.py), so a bench refuses exactly what a
training run would.
"""

from __future__ import annotations

import sys

import torch

from gap_mllm.training.kernels import FLASH_PACKAGES, GPU_REMEDY, LIGER_PACKAGE, package_problems, remedy


def refuse(script: str, message: str) -> None:
    """Exit with status 2 after one line `script: message` on stderr."""
    print(f"{script}: {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def require_cuda(script: str, device: str, what: str | None = None, hint: str = "", remedy: str = GPU_REMEDY) -> None:
    """Refuse a CUDA `device` that torch does not see; `what` needs it (default: the `--device` option), `remedy`
    says where to run it instead, `hint` follows the line (e.g. what runs on the CPU instead)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        refuse(script, f"{what or '--device ' + device} needs a CUDA device; {remedy} "
                       f"(torch {torch.__version__} sees none){'; ' + hint if hint else ''}")


def kernel_problems(kernel: str, device: str) -> list[str]:
    """What is missing to run `kernel` (an attention implementation, or "liger") on `device`; [] for sdpa / eager."""
    package = LIGER_PACKAGE if kernel == "liger" else FLASH_PACKAGES.get(kernel)
    if package is None:
        return []
    reason = "this bench runs on the CPU" if not device.startswith("cuda") else ""
    return package_problems(package, "cuda" if device.startswith("cuda") else "cpu", reason)


def require_kernel(script: str, option: str, kernel: str, device: str) -> None:
    """Refuse `option` = `kernel` when its package or device is missing (training/kernels.py)."""
    missing = kernel_problems(kernel, device)
    if missing:
        package = LIGER_PACKAGE if kernel == "liger" else FLASH_PACKAGES[kernel]
        refuse(script, f"{option} {kernel} needs {' and '.join(missing)}; "
                       f"{remedy(package, 'cuda' if device.startswith('cuda') else 'cpu')}")


def arm_unavailable(kernel: str, device: str) -> str | None:
    """Why an arm with `kernel` cannot run on `device` (recorded as skipped), None when it can."""
    missing = kernel_problems(kernel, device)
    return f"needs {' and '.join(missing)}" if missing else None
