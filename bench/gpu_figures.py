"""Every GPU figure of the real-size model in one call of at most 8 minutes: `make gpu-figures`.

    python bench/gpu_figures.py --download-wheels            # here, with network: the wheels the GPU machine lacks
    python3 bench/gpu_figures.py --out gpu-figures           # on the GPU machine (no network), from the checkout
    python bench/gpu_figures.py --dry-run --out plan         # anywhere: the plan, nothing run (what the CPU test runs)

The lent GPU machines hold torch 2.11 (CUDA 13), accelerate, peft, pyarrow and huggingface_hub but reach no network. So
the wheels the package needs besides (`WHEELS`: transformers 5.23, datasets with dill and multiprocess, trl, evaluate,
liger-kernel; ≈ 17 MB) are downloaded beforehand into `.whl/` (ignored by git, carried by the device call), and the
run installs them and the package (`pip --no-index --no-deps`) before the arms. Then each arm runs as its own process
with its own time budget (`ARMS`; killed at its budget, a bench's results file keeps what it measured), and every file
lands flat in `--out` (at most 8: one JSON per arm, `gpu_figures.json` with each arm's status, seconds, command and
the end of its output, and `gpu_figures.log`, whose repeated warning lines are kept once with their count). The arms
run by importance: the training arms (30 steps crossing every bucket, each step checked finite; with and without
activation checkpointing), evaluation at scale. The call ends with one table (arm, status, key figure, verdict) and
the kernel verdicts that training/configs/gpu_verdicts.json takes (training/kernels.py: a switch is on by default
on CUDA only where they say EARNED). Arms that cannot run there are recorded as skipped with the reason:
flash-attn-4 (its CUDA 13 libraries, 92 MB, exceed what a device call carries), vLLM (its own multi-GB environment,
`make vllm-venv`), DeepSpeed ZeRO (not installed there). bench/README.md, "One call on a GPU", holds the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from gpu_figures_table import collapse_repeats, figures_table, switch_verdicts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CALL_LIMIT_S = 480  # 8 minutes: the device call's 10-minute limit less the machine's start and the transfers
INSTALL_BUDGET_S = 60
# What the GPU machine lacks, pinned (the versions the package is tested with here); `--download-wheels` fetches them.
WHEELS = ("transformers==5.23.0", "datasets==5.2.0", "dill==0.4.1", "multiprocess==0.70.19", "trl==1.16.0",
          "evaluate==0.4.6", "liger-kernel==0.8.5")
# A device call carries the working tree and `.whl/` together, at most 64 MiB: the tracked tree (≤ 40 MB,
# tests/test_lean_repository.py) leaves room for the wheels only while they stay within their budget; the pinned
# set measured 16.2 MB (15.4 MiB) on 2026-11-28, the transformers wheel 13.3 MB of it. `--download-wheels` refuses
# a set over the budget, naming its largest wheels.
DEVICE_CARRY_BYTES = 64 * 2**20
WHEELS_BUDGET_BYTES = 20 * 2**20
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
                   "manylinux1_x86_64")
MAX_FILES = 8
DATA = "{work}/synth"  # the SynthRooms data the eval-scale and ZeRO arms read, written by the `data` arm


@dataclass(frozen=True)
class GpuArm:
    """One process of the run: `argv` after the Python executable (`{out}` / `{work}` filled in), its budget, the JSON
    it writes (None: none), and what must be importable for it to run (else it is skipped with `skip_reason`)."""

    name: str
    argv: tuple[str, ...]
    budget_s: int
    output: str | None
    needs: tuple[str, ...] = ()
    skip_reason: str = ""


# In the order of importance (correctness first: the training arms over 30 steps that cross every bucket and
# recompile, each step checked finite by the package's guard, which decide the CUDA defaults; then evaluation at
# scale), each budget sized from the H200 calls of 2026-11-27 (training arms 17-42 s for 30 steps, a compiled arm's
# first compilation 18-23 s, 20 s of start; compiled decoding about 30 s per compilation, a few per run; the H100 is
# about 10 % slower) with a margin: 480 s in all with the install. The training arms, in this order (a budget that
# runs out skips the last): the verdict still open (compiled layers under activation checkpointing, against
# checkpointed sdpa), then the best finite arm with its baseline (compiled towers against compiled layers: 30.6 % MFU
# on the H200, not measured on an H100) and the VGGT encoder replayed as CUDA graphs on top of it
# (`kernels.graph_geometry_encoder`: the launches that kept that arm's GPU idle 18 % of its step). Packing, Liger's fused
# loss and the checkpointed compiled towers were decided on the H100 and the H200 (training/configs/gpu_verdicts.json
# keeps their sources). The NaN bisection left the call (its cause, cuDNN's SDPA backward through left padding's fully
# masked rows, showed on both GPUs; bisect_compile_nan.py runs alone), as did inference (bench_real_size.py,
# bench_geometry_encoder.py) and the profile (profile_train_step.py).
# The evaluation reads ScanRefer-shaped data (the default SynthRooms preset: 640×480 frames, 32 at stage 1, the selected
# frame and 9 each way at stage 2; 221 visual tokens a frame through the official inference pipeline), 8 descriptions of
# one scene in one batch, batched with scene reuse as `gap-mllm evaluate` answers; the one-at-a-time arm was measured on
# the H100 and the H200 (bench/README.md) and is left out for time. Its ScanRefer minutes count the views ScanRefer
# encodes at each stage (bench_eval_scale.scanrefer_estimate); the H200 run's 22 minutes came from the Mini's 160×128
# frames, 8 at stage 1 and at most 7 at stage 2.
ARMS = (
    GpuArm("train_arms", ("bench/bench_train_arms.py", "--real-size", "--device", "cuda", "--steps", "30", "--batch", "8",
                          "--arms", "sdpa_checkpointed", "sdpa_compile_bucketed_checkpointed", "sdpa_compile_bucketed",
                          "sdpa_compile_towers_bucketed", "sdpa_graph_towers_bucketed", "--budget", "195",
                          "--out", "{out}/train_arms.json"),
           210, "train_arms.json"),
    GpuArm("data", ("-m", "gap_mllm.cli.main", "synth", "--scenes", "0", "--val-scenes", "1", "--workers", "4",
                    "--out", DATA, "--overwrite"), 20, None),
    # the random real-size model is built once per process (no save / load); decoding compiled as `gap-mllm evaluate`
    # does on CUDA (the arm run once untimed first: about 30 s per compilation, at most 5 of the decode step); the
    # scene's 11 descriptions, stage 1 in batches of 8 and 3: the second batch compiles the decode step's symbolic
    # graph, the one a ScanRefer scan's last batch uses (gap_mllm/generation.py), so the call measures it too
    GpuArm("eval_scale", ("bench/bench_eval_scale.py", "--real-size", "--device", "cuda", "--data", DATA,
                          "--queries", "11", "--batch-size", "8", "--arms", "batched_reuse", "--max-new-tokens", "32",
                          "--compile-decoding", "on", "--out", "{out}/eval_scale.json"), 190, "eval_scale.json"),
    GpuArm("zero_resume", ("bench/bench_zero_resume.py", "--real-size", "--data", DATA, "--steps", "4",
                           "--work", "{work}/zero", "--out", "{out}/zero_resume.json"), 0, "zero_resume.json",
           needs=("deepspeed",), skip_reason="DeepSpeed is not installed on the lent GPU machines (nor carried: its "
                                             "build needs the network)"),
    GpuArm("flash_attention_4", (), 0, None, needs=("flash_attn.cute",),
           skip_reason="flash-attn-4 needs nvidia-cutlass-dsl-libs-cu13 (92 MB): over the 64 MiB a device call carries"),
    GpuArm("vllm", (), 0, None, needs=("vllm",),
           skip_reason="vLLM is several GB in its own environment (make vllm-venv): not on a machine without network"),
)


DATA_ARM = next(arm for arm in ARMS if arm.name == "data")


def install_commands(wheels: Path) -> list[list[str]]:
    """The offline installs that run first: the carried wheels, then the package itself (no dependencies).

    The package is built in place with the machine's own setuptools (`--no-build-isolation`) and installed as a plain
    copy: an editable install runs setuptools' `develop`, which calls pip again with build isolation and so fetches
    setuptools from the network, which the GPU machines do not reach (their first call failed there).
    """
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir",
           "--disable-pip-version-check"]
    return [[*pip, "--upgrade", *map(str, sorted(wheels.glob("*.whl")))],
            [*pip, "--no-build-isolation", str(ROOT)]]


def download_command(wheels: Path) -> list[str]:
    """`pip download` of `WHEELS` for the GPU machine's Python 3.12 on x86-64 Linux, binaries only."""
    platforms = [argument for platform in WHEEL_PLATFORMS for argument in ("--platform", platform)]
    return [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
            "--implementation", "cp", *platforms, "-d", str(wheels), *WHEELS]


def downloaded_wheels(wheels: Path) -> dict[str, int]:
    """The wheel files in `wheels` and their sizes in bytes, by name."""
    return {path.name: path.stat().st_size for path in sorted(wheels.glob("*.whl"))}


def check_wheels_budget(wheels: Path) -> None:
    """Refuse (ValueError, one line) a wheels folder over `WHEELS_BUDGET_BYTES`: with the tree it would not fit the
    64 MiB a device call carries."""
    sizes = downloaded_wheels(wheels)
    total = sum(sizes.values())
    if total > WHEELS_BUDGET_BYTES:
        largest = ", ".join(f"{name} ({size / 2**20:.1f} MiB)" for name, size in
                            sorted(sizes.items(), key=lambda item: -item[1])[:3])
        raise ValueError(f"{wheels}: the wheels take {total / 2**20:.1f} MiB, over their {WHEELS_BUDGET_BYTES / 2**20:.0f} "
                         f"MiB of the {DEVICE_CARRY_BYTES / 2**20:.0f} MiB a device call carries; largest: {largest}")


def arm_command(arm: GpuArm, out: Path, work: Path) -> list[str]:
    return [sys.executable, *(part.format(out=out, work=work) for part in arm.argv)]


def unavailable(arm: GpuArm) -> str | None:
    """Why `arm` cannot run in this environment (its `skip_reason`), None when everything it needs imports."""
    for module in arm.needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return arm.skip_reason
    return None


def check_plan(arms=ARMS) -> None:
    """ValueError when the plan cannot fit one call: budgets over `CALL_LIMIT_S`, more than `MAX_FILES` files out."""
    total = INSTALL_BUDGET_S + sum(arm.budget_s for arm in arms)
    if total > CALL_LIMIT_S:
        raise ValueError(f"the arms' budgets add up to {total} s with the install, over the call's {CALL_LIMIT_S} s")
    files = 2 + sum(arm.output is not None for arm in arms)  # + gpu_figures.json and gpu_figures.log
    if files > MAX_FILES:
        raise ValueError(f"the run writes {files} files, over the {MAX_FILES} a device call brings back")


def run_arm(arm: GpuArm, out: Path, work: Path, log) -> dict:
    """Run one arm as its own process, killed at its budget; its status, seconds and the end of its output."""
    command = arm_command(arm, out, work)
    record = {"command": shlex.join(command), "budget_s": arm.budget_s, "output": arm.output}
    log.write(f"\n=== {arm.name}: {record['command']}\n")
    log.flush()
    start = time.perf_counter()
    try:
        result = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=arm.budget_s, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        text, status = result.stdout, "ok" if result.returncode == 0 else f"failed (exit {result.returncode})"
    except subprocess.TimeoutExpired as stopped:
        text = stopped.stdout.decode(errors="replace") if isinstance(stopped.stdout, bytes) else (stopped.stdout or "")
        status = "stopped at its budget"
    text = collapse_repeats(text)
    log.write(text)
    log.flush()
    if arm.output and not (out / arm.output).exists():
        status += "; no figures written"
    record.update(status=status, seconds=round(time.perf_counter() - start, 1), output_tail=text[-1500:])
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu-figures", help="folder of the JSON files (flat, at most 8 files)")
    parser.add_argument("--wheels", default=str(ROOT / ".whl"), help="folder of the carried wheels (--download-wheels)")
    parser.add_argument("--dry-run", action="store_true", help="write and print the plan; install and run nothing")
    parser.add_argument("--download-wheels", action="store_true", help="download WHEELS into --wheels, then stop")
    parser.add_argument("--arms", nargs="*", choices=[arm.name for arm in ARMS], default=None, help="default: all")
    args = parser.parse_args(argv)
    wheels = Path(args.wheels)
    if args.download_wheels:
        wheels.mkdir(parents=True, exist_ok=True)
        status = subprocess.call(download_command(wheels))
        if status == 0:
            try:
                check_wheels_budget(wheels)
            except ValueError as error:
                print(f"gpu_figures.py: {error}", file=sys.stderr)
                return 2
        return status
    check_plan()
    arms = [arm for arm in ARMS if args.arms is None or arm.name in args.arms]
    if any(DATA in " ".join(arm.argv) for arm in arms if arm.name != "data") and "data" not in [a.name for a in arms]:
        arms.insert(next(i for i, arm in enumerate(arms) if DATA in " ".join(arm.argv)), DATA_ARM)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "gap_mllm_gpu_figures"
    summary = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "dry_run": args.dry_run, "call_limit_s": CALL_LIMIT_S,
               "wheels": list(WHEELS), "install": [shlex.join(c) for c in install_commands(wheels)], "arms": {}}
    if not args.dry_run and not list(wheels.glob("*.whl")):
        print(f"gpu_figures.py: no wheels in {wheels}: run `make gpu-wheels` (or --download-wheels) where there is a "
              "network first, and carry the folder", file=sys.stderr)
        return 2
    with open(out / "gpu_figures.log", "w", encoding="utf-8") as log:
        if not args.dry_run:
            for command in install_commands(wheels):
                log.write(f"=== install: {shlex.join(command)}\n")
                log.flush()
                subprocess.run(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, timeout=INSTALL_BUDGET_S, check=True)
        for arm in arms:
            reason = unavailable(arm)
            if reason is not None or not arm.argv:
                summary["arms"][arm.name] = {"status": "skipped", "reason": reason or arm.skip_reason}
            elif args.dry_run:
                summary["arms"][arm.name] = {"status": "planned", "command": shlex.join(arm_command(arm, out, work)),
                                             "budget_s": arm.budget_s, "output": arm.output}
            else:
                summary["arms"][arm.name] = run_arm(arm, out, work, log)
            if arm.name == "train_arms" and not args.dry_run:
                summary["verdicts"] = switch_verdicts(out)  # what training/configs/gpu_verdicts.json takes
            print(f"{arm.name}: {summary['arms'][arm.name]['status']}", flush=True)
            (out / "gpu_figures.json").write_text(json.dumps(summary, indent=2))
        table = figures_table(summary, out)
        log.write(f"\n{table}\n")
    print(table)
    for switch, verdict in summary.get("verdicts", {}).items():
        print(f"verdict {switch}: {'EARNED' if verdict['earned'] else 'not earned'} ({verdict['why']})")
    return 0


__all__ = ["ARMS", "CALL_LIMIT_S", "DEVICE_CARRY_BYTES", "GpuArm", "WHEELS", "WHEELS_BUDGET_BYTES", "check_plan",
           "check_wheels_budget", "download_command", "downloaded_wheels", "install_commands", "main"]

if __name__ == "__main__":
    sys.exit(main())
