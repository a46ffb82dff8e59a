"""Where a real-size training step spends its time: GPU time by kernel class, launches and host syncs per step, and
the forward time of each tower (the profile of the best finite arm, inside the prepared call).

    python bench/profile_train_step.py --real-size --device cuda --arms sdpa_packed --out profile.json
    python bench/profile_train_step.py --size small --device cpu --steps 3 --out small.json      # what the test runs

Per arm (bench_train_arms.py's `ARMS`, the same batches and initial weights): `--warmup` steps untimed (compilation
included), then `--steps` steps under `torch.profiler`. The summary, per step:

    kernel_classes     device time (CPU time on the CPU) of the leaf kernels, summed by class: matmul, attention,
                       norm, elementwise, optimizer, copy, other (`KERNEL_CLASSES`: the first pattern that matches
                       the kernel's name)
    launches, syncs    kernel launches (cudaLaunchKernel / cuLaunchKernel*) and host synchronisations
                       (cudaStreamSynchronize / cudaDeviceSynchronize / item / nonzero) per step
    towers_forward_s   the forward time of the geometry encoder (VGGT), the vision tower (ViT), the fusion and the
                       language model, each measured with CUDA events around its module
    busy_share         device time of the kernels / wall time of the steps (< 1: the GPU waits on the host)
    top_kernels        the 15 kernels with the most device time
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from bench_real_size import add_size_arguments, apply_size_defaults  # noqa: E402
from bench_train_arms import ARMS, ArmsBench, plain_bench_settings  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402


# kernel class -> name pattern (lower case, first match wins: attention before matmul, since fused attention
# kernels' names hold "gemm"/"wgmma")
KERNEL_CLASSES = (
    ("attention", r"attention|fmha|flash|sdpa|softmax"),
    ("optimizer", r"adam|multi_tensor|foreach"),
    ("matmul", r"gemm|nvjet|cutlass|sm90_xmma|wgmma|aten::mm|aten::addmm|aten::bmm|matmul|_mm_"),
    ("norm", r"layer_norm|rms_?norm|norm_kernel"),
    ("copy", r"memcpy|memset|copy|cat_|catarray|to_copy"),
    ("elementwise", r"elementwise|vectorized|reduce|triton|mul|add|silu|exp|pow|rsqrt|where|index"),
)
LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC")
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::item", "aten::_local_scalar_dense",
         "aten::nonzero")


def kernel_class(name: str) -> str:
    lowered = name.lower()
    for label, pattern in KERNEL_CLASSES:
        if re.search(pattern, lowered):
            return label
    return "other"


class TowerTimer:
    """CUDA events around each tower's forward (forward pre-hook / hook); on the CPU, wall time."""

    def __init__(self, towers: dict, cuda: bool):
        self.cuda, self.times, self.handles, self.open = cuda, {name: [] for name in towers}, [], {}
        for name, module in towers.items():
            self.handles.append(module.register_forward_pre_hook(lambda m, a, name=name: self.start(name)))
            self.handles.append(module.register_forward_hook(lambda m, a, o, name=name: self.stop(name)))

    def start(self, name):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.open[name] = event
        else:
            self.open[name] = time.perf_counter()

    def stop(self, name):
        begun = self.open.pop(name, None)
        if begun is None:
            return
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.times[name].append((begun, end))
        else:
            self.times[name].append(time.perf_counter() - begun)

    def seconds(self, steps: int) -> dict:
        if self.cuda:
            torch.cuda.synchronize()
        return {name: sum((b.elapsed_time(e) / 1000 if self.cuda else b) for b, e in
                          ((pair if self.cuda else (pair, None)) for pair in pairs)) / steps
                for name, pairs in self.times.items()}

    def remove(self):
        for handle in self.handles:
            handle.remove()


class StepProfile(ArmsBench):
    """bench_train_arms' model and batches; `profile_arm` trains `--warmup` + `--steps` batches of one arm."""

    def profile_arm(self, arm) -> dict:
        from torch.profiler import ProfilerActivity, profile

        model = self.model
        batches = self.batches(arm)
        warmup, steps = self.args.warmup_profile, self.args.steps - self.args.warmup_profile
        inner = model.model
        towers = {"geometry_encoder": model.geometry_encoder, "vision_tower": inner.visual,
                  "fusion": model.geometry_fusion, "language_model": inner.language_model}
        with self.arm_session(arm) as (wrapped, optimizer, guard):
            for index, batch in enumerate(batches[:warmup]):
                self.train_step(wrapped, optimizer, guard, index + 1, batch)
            self.sync()
            timer = TowerTimer(towers, self.cuda)
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.cuda else [])
            start = time.perf_counter()
            with profile(activities=activities) as profiler:
                for index, batch in enumerate(batches[warmup:warmup + steps]):
                    self.train_step(wrapped, optimizer, guard, warmup + index + 1, batch)
                self.sync()
            wall = (time.perf_counter() - start) / steps
            towers_s = timer.seconds(steps)
            timer.remove()
        return {"arm": arm.name, "profiled_steps": steps, "wall_s_per_step": wall, "towers_forward_s": towers_s,
                **self.summary(profiler.key_averages(), steps, wall)}

    def summary(self, averages, steps: int, wall: float) -> dict:
        """`averages` (torch.profiler key_averages) summed by kernel class, per step."""
        device = self.cuda
        classes, kernels = {}, []
        for event in averages:
            seconds = (event.self_device_time_total if device else event.self_cpu_time_total) / 1e6
            if seconds <= 0 or (device and event.device_type.name != "CUDA"):
                continue
            if not device and not event.key.startswith("aten::"):
                continue
            label = kernel_class(event.key)
            classes[label] = classes.get(label, 0.0) + seconds / steps
            kernels.append((seconds / steps, event.key[:90], label, event.count // steps))
        counts = {event.key: event.count for event in averages}
        busy = sum(classes.values())
        return {"kernel_classes_s": dict(sorted(classes.items(), key=lambda item: -item[1])),
                "kernel_s_per_step": busy, "busy_share": busy / wall if wall else None,
                "launches_per_step": sum(counts.get(name, 0) for name in LAUNCHES) / steps,
                "syncs_per_step": {name: counts[name] / steps for name in SYNCS if name in counts},
                "top_kernels": [{"s": round(s, 5), "name": name, "class": label, "calls": calls}
                                for s, name, label, calls in sorted(kernels, reverse=True)[:15]]}

    def all(self) -> None:
        if not self.begin("step profile"):
            return
        for arm in ARMS:
            if arm.name in self.args.arms:
                self.run(f"profile_{arm.name}", self.profile_arm, arm)
        self.log(f"done; results in {self.args.out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--arms", nargs="+", choices=[arm.name for arm in ARMS], default=["sdpa_packed"])
    parser.add_argument("--steps", type=int, default=6, help="batches per arm: --warmup untimed, the rest profiled")
    parser.add_argument("--warmup", dest="warmup_profile", type=int, default=3)
    parser.add_argument("--batch", type=int, default=None, help="samples per batch (default: 2 real, 3 small)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="profile_train_step.json")
    parser.add_argument("--budget", type=float, default=None)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    require_cuda(Path(__file__).name, args.device)
    if args.steps <= args.warmup_profile:
        parser.error("--steps must exceed --warmup (the profiled steps are the rest)")
    apply_size_defaults(args)
    args.warmup_steps, args.buckets = 0, None
    plain_bench_settings(args)
    StepProfile(args).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["KERNEL_CLASSES", "kernel_class", "main"]
