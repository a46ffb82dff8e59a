"""Seconds per stage-2 training sample, side by side: today's recipe vs the feature cache vs cache + packing.

    .venv/bin/python bench/bench_stage2_sample_time.py --data runs/mini/data [--model DIR] [--steps 14] [--warmup 2]

Each arm trains the same samples in the same order through `build_trainer` (the Trainer, its DataLoader worker,
the collator chain, forward, backward, AdamW): GAP-MLLM-Mini's stage-2 recipe (training/recipes/mini_stage2.yaml:
batches of 16 from its five-task mix, encoders frozen) with only the arm's switches changed:

    today           cache off, padded rows: every step decodes the views, runs the processor, the ViT and VGGT
    cached          cache.enabled: tokens and the frozen towers' outputs read from disk, padded rows
    cached+packed   the same, samples packed into rows without padding (data.packing)
    +bf16           cached+packed with bf16 autocast on the CPU (cpu_bf16_autocast; float32 weights), on a CPU with
                    native bfloat16 (AVX512-BF16 or AMX); elsewhere the arm is skipped, with the reason printed

The time per sample is measured from the end of step `--warmup` to the end of the last step (the DataLoader's
fetches included). The cached arms first fill their cache: that one-off cost per sample is reported apart, with
the time per sample over E epochs, (fill + E · step) / E. The share of padding is counted over the same batches.
Arms run one after another in one process: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import gap_mllm.training
from gap_mllm.mini import default_model_path
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data import load_split
from gap_mllm.training.device import cpu_has_native_bf16
from gap_mllm.training.feature_cache import sample_key
from gap_mllm.training.run import build_trainer
from gap_mllm.training.sample_tensors import collate_samples

RECIPE = Path(gap_mllm.training.__file__).resolve().parent / "recipes" / "mini_stage2.yaml"
# "today": the recipe as the fourth release trained it (no cache, padded rows); the recipe now turns both on
ARMS = {"today": ["cache.enabled=false", "data.packing=false"], "cached": ["cache.enabled=always", "data.packing=false"],
        "cached+packed": ["cache.enabled=always", "data.packing=true"],
        "cached+packed+bf16": ["cache.enabled=always", "data.packing=true", "cpu_bf16_autocast=true"]}


class StepClock(TrainerCallback):
    """Wall-clock time at the end of every optimizer step."""

    def __init__(self):
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def padding_shares(trainer, steps: int) -> dict:
    """Share of padding in the padded and the packed layout (rows as the packed arm makes them) of the first `steps`
    batches the trainer draws."""
    collator = trainer.data_collator
    slots = {"padded": 0, "packed": 0}
    tokens = 0
    for index, batch_indices in enumerate(trainer.get_train_dataloader().batch_sampler):
        if index == steps:
            break
        samples = [collator.cache.load(sample_key(trainer.train_dataset[i])) for i in batch_indices]
        tokens += sum(s["input_ids"].numel() for s in samples)
        pad = collator.layout["pad_token_id"]
        slots["padded"] += collate_samples(samples, pad)["input_ids"].numel()
        slots["packed"] += collate_samples(samples, pad, packing=True, row_tokens=collator.layout["row_tokens"])["input_ids"].numel()
    return {layout: 1.0 - tokens / count for layout, count in slots.items()}


def timing_settings(data, work: Path, output: Path, cache: Path, steps: int, device: str = "cpu") -> list[str]:
    """The recipe settings of a timed bench run: its data (the datasets' cache shared in `work`), its own output and
    feature-cache folders, `steps` steps, and no checkpoint, log line or evaluation among them."""
    return [f"data.data_root={data}", f"data.cache_dir={work / 'hf'}", f"training.output_dir={output}",
            f"cache.directory={cache}", f"training.max_steps={steps}", "training.save_steps=100000",
            "training.logging_steps=100000", "evaluation.tasks=[]", "evaluation.best_metric=null", f"device={device}"]


def timed_training(recipe, dataset):
    """(the trainer's set-up, its seconds: the model, the data and a feature cache's fill, the end time of every
    optimizer step) of training `recipe` on `dataset`."""
    started = time.perf_counter()
    setup = build_trainer(recipe, train_dataset=dataset)
    prepared = time.perf_counter() - started
    clock = StepClock()
    setup.trainer.add_callback(clock)
    setup.trainer.train()
    return setup, prepared, clock.ends


def run_arm(name: str, switches: list[str], options, dataset, work: Path) -> dict:
    recipe = load_recipe(RECIPE, [f"model.name_or_path={options.model}",
                                  *timing_settings(options.data, work, work / name.replace("+", "_"), work / "cache",
                                                   options.steps), *switches])
    setup, prepared, ends = timed_training(recipe, dataset)
    batch = int(recipe.training["per_device_train_batch_size"])
    timed = ends[options.warmup :]
    per_step = [(b - a) for a, b in zip(timed, timed[1:])]
    result = {"arm": name, "seconds_per_sample": (timed[-1] - timed[0]) / ((len(timed) - 1) * batch),
              "median_step_s": statistics.median(per_step), "setup_s": prepared}
    if setup.cache is not None:
        result["padding"] = padding_shares(setup.trainer, options.steps)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="SynthRooms mini data (gap-mllm synth --preset mini)")
    parser.add_argument("--model", default=None, help="stage-2 start (default: the embedded GAP-MLLM-Mini)")
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per arm")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 4, 16], help="epochs to amortise the cache fill over")
    parser.add_argument("--out", default=None, help="also write the results here as JSON")
    options = parser.parse_args()
    if options.steps - options.warmup < 2:
        parser.error("--steps must exceed --warmup by at least 2")
    options.model = options.model or str(default_model_path())
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        recipe = load_recipe(RECIPE, [f"data.data_root={options.data}", f"data.cache_dir={work / 'hf'}"])
        mix = load_split(recipe.data, "train", recipe.aux, task_max_samples=recipe.data.task_max_samples, seed=0)
        batch = int(recipe.training["per_device_train_batch_size"])
        # the samples the arms train on: a random draw of the mix, one batch per step
        dataset = mix.shuffle(seed=0).select(range(options.steps * batch))
        arms = dict(ARMS)
        if not cpu_has_native_bf16():
            print("cached+packed+bf16 skipped: this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
            del arms["cached+packed+bf16"]
        results = [run_arm(name, switches, options, dataset, work) for name, switches in arms.items()]

    today = results[0]["seconds_per_sample"]
    fill = results[1]["setup_s"] - results[0]["setup_s"]  # the cache fill: the cached arm's extra set-up
    fill_per_sample = fill / (options.steps * batch)
    print(f"\nstage-2 seconds per sample, {options.steps - options.warmup - 1} timed steps of {batch} (mini_stage2.yaml)\n")
    print("| arm | s / sample | × fewer than today | median step s |")
    print("|---|---|---|---|")
    for result in results:
        print(f"| {result['arm']} | {result['seconds_per_sample']:.4f} | {today / result['seconds_per_sample']:.2f} | "
              f"{result['median_step_s']:.3f} |")
    print(f"\ncache fill, once per sample: {fill_per_sample:.4f} s")
    for epochs in options.epochs:
        cells = [f"{name}: {today / (fill_per_sample / epochs + r['seconds_per_sample']):.2f}×"
                 for name, r in ((r["arm"], r) for r in results[1:])]
        print(f"over {epochs} epoch(s), fill included: " + ", ".join(cells))
    padding = results[1]["padding"]
    print(f"padding share of the token slots: padded {padding['padded']:.1%}, packed {padding['packed']:.1%}")
    if options.out:
        Path(options.out).write_text(json.dumps({"results": results, "cache_fill_s_per_sample": fill_per_sample}, indent=1))


if __name__ == "__main__":
    main()
