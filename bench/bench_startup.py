"""Start-up of the `gap-mllm` command: `--help`, `predict --help`, and `predict` up to the model load, each as a ratio
to `python -c "import torch"`, measured side by side in one run (arms interleaved, medians).

    python bench/bench_startup.py --repeats 7 --out runs/bench_startup.json

Each arm is a fresh interpreter timed from the outside (wall clock, `subprocess.run`):

    import torch          python -c "import torch" (the reference)
    --help                python -m gap_mllm.cli.main --help
    predict --help        python -m gap_mllm.cli.main predict --help
    predict to the model  `gap-mllm predict --example "synthetic room A" --task detection` in a wrapper that exits
                          when `load_model_and_processor` is called: the command's imports, argument parsing and the
                          bundled room's frames, everything before the weights are read

The machine's load average and core count are printed with the figures: a busy machine slows every arm.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# exits (status 0) at the call that would read the weights, so the time is everything before the model load
PREDICT_TO_MODEL_LOAD = """
import os, sys
from gap_mllm.cli import predict
from gap_mllm.cli.main import main


def stop(*args, **kwargs):
    sys.stdout.flush()
    os._exit(0)


if not hasattr(predict, "load_model_and_processor"):
    sys.exit("gap_mllm.cli.predict no longer calls load_model_and_processor: update bench/bench_startup.py")
predict.load_model_and_processor = stop
main(["predict", "--example", "synthetic room A", "--task", "detection"])
sys.exit("predict returned before loading the model")
"""

ARMS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "--help": [sys.executable, "-m", "gap_mllm.cli.main", "--help"],
    "predict --help": [sys.executable, "-m", "gap_mllm.cli.main", "predict", "--help"],
    "predict to the model load": [sys.executable, "-c", PREDICT_TO_MODEL_LOAD],
}
REFERENCE = "import torch"


def time_once(command: list[str]) -> float:
    """Wall-clock seconds of one run of `command` (a failure is an error naming it, with its stderr)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{command[:4]} exited with {done.returncode}: {done.stderr.strip()[-1000:]}")
    return elapsed


def measure(repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """`repeats` timings per arm, the arms interleaved round by round (after `warmup` untimed rounds: file cache)."""
    times = {name: [] for name in ARMS}
    for round_index in range(warmup + repeats):
        for name, command in ARMS.items():
            elapsed = time_once(command)
            if round_index >= warmup:
                times[name].append(elapsed)
    return times


def summary(times: dict[str, list[float]]) -> dict:
    """Median seconds per arm and their ratio to the reference arm's median."""
    reference = statistics.median(times[REFERENCE])
    return {name: {"median_s": statistics.median(values), "ratio_to_import_torch": statistics.median(values) / reference,
                   "runs_s": values} for name, values in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per arm (after one untimed round)")
    parser.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least 1")
    load = os.getloadavg()
    figures = {"cpus": os.cpu_count(), "load_average_1_5_15": load, "repeats": args.repeats,
               "arms": summary(measure(args.repeats))}
    print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}; median of {args.repeats}")
    print("| arm | median s | × import torch |\n|---|---|---|")
    for name, values in figures["arms"].items():
        print(f"| {name} | {values['median_s']:.2f} | {values['ratio_to_import_torch']:.2f} |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
