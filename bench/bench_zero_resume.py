"""DeepSpeed ZeRO-2 and ZeRO-3 at the real size on one GPU: a few training steps, interrupted and resumed once, with
the losses of every step beside those of the plain run (one process, no DeepSpeed, not interrupted).

    python bench/bench_zero_resume.py --real-size --data data/mini --out zero_resume.json          # GPU, `make gpu-venv`
    python bench/bench_zero_resume.py --size tiny --data DATA --out tiny.json                      # CPU: the plain arms

Every arm is `gap-mllm train` (training/train_cli.py) on the stage-1 recipe (training/recipes/stage1_pretrain.yaml)
with the same overrides: the model (`--real-size`: Qwen3-VL-2B + VGGT-1B with random weights, saved once with the
package processor as bench_eval_scale.py builds it; `--size tiny`: the package's tiny model), the reconstruction task
of `--data` (SynthRooms: `gap-mllm synth --preset mini ...`), no feature cache, `--steps` optimizer steps at a
constant learning rate (so that a run stopped at step k and resumed to N follows the schedule of one run to N), a
checkpoint every k = steps / 2 and the loss logged at every step. Arms (`--arms`):

    plain           one process, no DeepSpeed, N steps in one go: the reference
    plain_resumed   k steps, then `--resume auto` to N (the package's resume on its own)
    zero2_resumed   the same under `accelerate launch --config_file training/configs/accelerate_deepspeed_zero2.yaml`
    zero3_resumed   likewise with ZeRO-3 (deepspeed_zero3.json)

The losses come from the final checkpoint's `trainer_state.json`. Per arm: the largest |Δ loss| and relative gap to
the plain run over the steps, and `within_tolerance` (`--tolerance`: 2e-2 relative in bf16, about five roundings of
2⁻⁸; 1e-6 in float32, where resuming is exact: tests/test_train_resume.py). DeepSpeed's bf16 mode keeps float32
master weights while the plain run updates bf16 weights in place, so a gap beyond rounding there is a finding to write
up, not noise. Each arm runs in its own processes and folder under `--work`; an arm whose folder holds a finished
run is read, not run again, so a machine that limits one command to 10 minutes can run the arms in several calls
(`--arms plain zero2_resumed`, then `--arms zero3_resumed`). The ZeRO arms need CUDA and the deepspeed package here
(on CPU processes they are covered by tests/test_train_deepspeed.py); without them they are recorded as skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from needs_gpu import require_cuda  # noqa: E402

from gap_mllm.training.kernels import GPU_INSTALL, installed_version  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "training" / "recipes" / "stage1_pretrain.yaml"
ACCELERATE_CONFIGS = {2: REPO / "training" / "configs" / "accelerate_deepspeed_zero2.yaml",
                      3: REPO / "training" / "configs" / "accelerate_deepspeed_zero3.yaml"}
ARMS = ("plain", "plain_resumed", "zero2_resumed", "zero3_resumed")
TOLERANCE = {"bfloat16": 2e-2, "float32": 1e-6}


def zero_stage(arm: str) -> int | None:
    """The ZeRO stage of an arm, None for the plain ones."""
    return int(arm[4]) if arm.startswith("zero") else None


def overrides(args, model: str | None, output_dir: Path, steps: int) -> list[str]:
    """The `--set` values every arm shares (module docstring), for a run of `steps` steps into `output_dir`."""
    model_settings = ([f"model.name_or_path={model}", "model.dtype=bfloat16"] if model else
                      ["model.name_or_path=null", f"model.tiny={args.size}", "model.dtype=float32"])
    values = [*model_settings, f"data.data_root={args.data}", "data.tasks=[reconstruction]", "cache.enabled=false",
              f"device={'cuda' if args.device.startswith('cuda') else 'cpu'}",
              f"training.output_dir={output_dir}", f"training.max_steps={steps}", f"training.save_steps={args.steps // 2}",
              "training.save_strategy=steps", "training.save_total_limit=null", "training.logging_steps=1",
              "training.lr_scheduler_type=constant", "training.warmup_steps=0", "training.report_to=none",
              "training.dataloader_num_workers=0", "training.disable_tqdm=true", f"training.seed={args.seed}"]
    if args.lr is not None:
        values.append(f"training.learning_rate={args.lr}")
    return [item for value in values for item in ("--set", value)]


def command(args, arm: str, model: str | None, output_dir: Path, steps: int, resume: bool) -> list[str]:
    """The command of one run of `arm`: `gap-mllm train` in this Python, under `accelerate launch` for ZeRO."""
    train = ["-m", "gap_mllm.training.train_cli", "--config", str(RECIPE), *overrides(args, model, output_dir, steps)]
    if resume:
        train += ["--resume", "auto"]
    stage = zero_stage(arm)
    if stage is None:
        return [sys.executable, *train]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIGS[stage]),
            "--num_processes", "1", "--main_process_port", "0", *train]


def unavailable(arm: str, device: str) -> str | None:
    """Why `arm` cannot run here (None: it can)."""
    if zero_stage(arm) is None:
        return None
    if not device.startswith("cuda"):
        return "the ZeRO arms run on CUDA in this bench (tests/test_train_deepspeed.py runs ZeRO on CPU processes)"
    if installed_version("deepspeed") is None:
        return f"needs the deepspeed package (not installed); install the GPU extras with `{GPU_INSTALL}`"
    return None


def step_losses(output_dir: Path, steps: int) -> list[float]:
    """Trainer's logged loss of steps 1..`steps`, from the final checkpoint's `trainer_state.json`."""
    state = json.loads((output_dir / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    by_step = {entry["step"]: entry["loss"] for entry in state["log_history"] if "loss" in entry}
    missing = [step for step in range(1, steps + 1) if step not in by_step]
    if missing:
        raise RuntimeError(f"{output_dir}: no logged loss for steps {missing}")
    return [by_step[step] for step in range(1, steps + 1)]


def run_arm(args, arm: str, model: str | None) -> dict:
    """Run `arm` (unless its folder holds a finished run) and return its losses and seconds."""
    output_dir = Path(args.work) / arm
    started = time.perf_counter()
    if not (output_dir / f"checkpoint-{args.steps}" / "trainer_state.json").exists():
        parts = [(args.steps, False)] if arm == "plain" else [(args.steps // 2, False), (args.steps, True)]
        log = output_dir.parent / f"{arm}.log"
        output_dir.mkdir(parents=True, exist_ok=True)
        for steps, resume in parts:
            with open(log, "a", encoding="utf-8") as handle:
                done = subprocess.run(command(args, arm, model, output_dir, steps, resume), cwd=REPO, stdout=handle,
                                      stderr=subprocess.STDOUT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if done.returncode != 0:
                tail = log.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(f"{arm}: `gap-mllm train` exited with {done.returncode} ({log}):\n{tail}")
    return {"losses": step_losses(output_dir, args.steps), "seconds": time.perf_counter() - started,
            "output_dir": str(output_dir)}


def compare(plain: list[float], losses: list[float], tolerance: float) -> dict:
    """The gaps of an arm's losses to the plain run's, step by step."""
    differences = [abs(a - b) for a, b in zip(losses, plain)]
    relative = [d / max(abs(b), 1e-12) for d, b in zip(differences, plain)]
    return {"max_abs_diff": max(differences), "max_rel_diff": max(relative), "tolerance": tolerance,
            "within_tolerance": max(relative) <= tolerance}


def real_size_folder(work: Path, device: str) -> str:
    """The real-size random-weight model folder with the package processor (built once, kept in `work`)."""
    folder = work / "model_real"
    if not (folder / "config.json").exists():
        from bench_eval_scale import model_folder

        model_folder("real", device, work)
    return str(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=("tiny", "small", "real"), default="tiny")
    parser.add_argument("--real-size", dest="size", action="store_const", const="real", help="same as --size real")
    parser.add_argument("--data", required=True, help="data root with the reconstruction task (SynthRooms)")
    parser.add_argument("--device", default=None, help="default: cuda with --real-size, else cpu")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps (even: interrupted at half of them)")
    parser.add_argument("--arms", nargs="*", choices=ARMS, default=list(ARMS))
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's (official 5e-6)")
    parser.add_argument("--tolerance", type=float, default=None, help="relative loss gap allowed (module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="bench_zero_resume", help="the runs' folders (kept: finished arms are reused)")
    parser.add_argument("--out", default="bench_zero_resume.json")
    args = parser.parse_args(argv)
    asked = args.device
    args.device = args.device or ("cuda" if args.size == "real" else "cpu")
    require_cuda(Path(__file__).name, args.device, what=None if asked else "--real-size (it trains on cuda)")
    if args.size == "real" and not args.device.startswith("cuda"):
        parser.error("--real-size needs --device cuda")
    if args.steps < 2 or args.steps % 2:
        parser.error(f"--steps {args.steps}: give an even number of at least 2 (the run is interrupted at half)")
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[dtype]
    work = Path(args.work).resolve()
    args.work, args.data = str(work), str(Path(args.data).resolve())
    model = real_size_folder(work, args.device) if args.size == "real" else None
    arms = ["plain", *[arm for arm in args.arms if arm != "plain"]]  # the reference first, always
    results = {"meta": {"command": " ".join([Path(sys.executable).name, *sys.argv]), "size": args.size,
                        "device": args.device, "dtype": dtype, "steps": args.steps, "resumed_at": args.steps // 2,
                        "deepspeed": installed_version("deepspeed")}, "arms": {}}
    for arm in arms:
        reason = unavailable(arm, args.device)
        if reason:
            results["arms"][arm] = {"skipped": reason}
        else:
            try:
                results["arms"][arm] = run_arm(args, arm, model)
            except RuntimeError as error:
                results["arms"][arm] = {"error": str(error)}
        print(f"{arm}: {json.dumps(results['arms'][arm])[:400]}", flush=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    plain = results["arms"]["plain"].get("losses")
    for arm, result in results["arms"].items():
        if plain and "losses" in result:
            result.update(compare(plain, result["losses"], tolerance))
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"done; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
