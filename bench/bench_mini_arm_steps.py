"""Seconds per training step of each ablation arm's model, side by side: what geometry and gated fusion cost.

    .venv/bin/python bench/bench_mini_arm_steps.py --data runs/mini/data --stage0 runs/stage0-sixth/mini/gap-mllm-mini \
        [--steps 8] [--warmup 2] [--device cpu|cuda] [--out FILE]

The ablation (lab/mini/ablation.py) trains three models: gated fusion (gap_gated, its second seed and the arm without
stage 1 are the same model), plain addition (gap_add) and no geometry (no_geometry: no VGGT, no geometry merger or
fusion). Each trains the same samples in the same order through `build_trainer`, as `python -m lab.mini --ablation`
sets it up (lab/mini/arms.py `fresh_model_settings`, the frozen encoders from `--stage0`):

    stage 1   mini_stage1.yaml: no feature cache, so the frozen towers (VGGT and the ViT) run in every step
    stage 2   mini_stage2.yaml with the ablation's settings (feature cache, packed rows, bf16 autocast where the CPU
              has native bfloat16): the towers run once per distinct sample while the cache fills (reported apart,
              per sample: each arm fills its own cache), and every step reads their outputs

The step time runs from the end of step `--warmup` to the end of the last step (the DataLoader's fetches included);
each figure is also given as a ratio to gap_gated's in the same run. Arms run one after another in one process: run
it on an idle machine (bench/README.md, "The ablation's arms"). `--device cuda` answers whether a Mini arm trains
much faster on a GPU (the Mini is small: launch-bound); there the device's own precision applies (training/device.py)
in place of the CPU's bf16 autocast.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import torch

import gap_mllm.training
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data import load_split
from gap_mllm.training.device import cpu_has_native_bf16

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # lab/, the research pipeline (not installed)
from bench_stage2_sample_time import timed_training, timing_settings  # noqa: E402

from lab.mini.ablation import ABLATION_STAGE2_SETTINGS  # noqa: E402
from lab.mini.arms import ARMS, fresh_model_settings  # noqa: E402

RECIPES = Path(gap_mllm.training.__file__).resolve().parent / "recipes"
MODELS = ("gap_gated_s0", "gap_add_s0", "no_geometry_s0")  # one arm of each model the ablation trains
STAGES = {"stage1": ("mini_stage1.yaml", []), "stage2": ("mini_stage2.yaml", list(ABLATION_STAGE2_SETTINGS))}


def time_stage(arm: str, stage: str, options, work: Path, dataset) -> dict:
    recipe_name, settings = STAGES[stage]
    if "cpu_bf16_autocast=true" in settings and (options.device != "cpu" or not cpu_has_native_bf16()):
        settings = [s for s in settings if s != "cpu_bf16_autocast=true"]  # said in the output: the run's own choice
    folder = work / f"{arm}_{stage}"  # each arm fills its own feature cache: the fill is measured per arm
    recipe = load_recipe(RECIPES / recipe_name, [*fresh_model_settings(ARMS[arm], options.stage0),
                                                 *timing_settings(options.data, work, folder, folder / "cache",
                                                                  options.steps, options.device), *settings])
    setup, prepared, ends = timed_training(recipe, dataset[stage])
    timed = ends[options.warmup:]
    batch = int(recipe.training["per_device_train_batch_size"])
    found = {"arm": arm, "stage": stage, "step_s": (timed[-1] - timed[0]) / (len(timed) - 1), "setup_s": prepared,
             "settings": settings}
    if setup.cache is not None:  # build_trainer filled the cache of the samples the steps draw
        found["cache_fill_s_per_sample"] = prepared / (options.steps * batch)
    return found


def samples(stage: str, options, work: Path):
    """The samples every arm trains on in `stage`: a fixed random draw of its training mix, one batch per step."""
    recipe = load_recipe(RECIPES / STAGES[stage][0], [f"data.data_root={options.data}", f"data.cache_dir={work / 'hf'}"])
    mix = load_split(recipe.data, "train", recipe.aux, task_max_samples=recipe.data.task_max_samples, seed=0)
    return mix.shuffle(seed=0).select(range(options.steps * int(recipe.training["per_device_train_batch_size"])))


def table(results: list[dict]) -> list[str]:
    reference = {r["stage"]: r for r in results if r["arm"] == MODELS[0]}
    lines = ["| arm | stage | step s | × gap_gated | cache fill s / sample | × gap_gated |", "|---|---|---|---|---|---|"]
    for r in results:
        base = reference[r["stage"]]
        fill = r.get("cache_fill_s_per_sample")
        fill_cells = (f"{fill:.3f} | {fill / base['cache_fill_s_per_sample']:.2f}" if fill is not None else "— | —")
        lines.append(f"| {r['arm']} | {r['stage']} | {r['step_s']:.3f} | {r['step_s'] / base['step_s']:.2f} | {fill_cells} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="SynthRooms mini data (gap-mllm synth --preset mini)")
    parser.add_argument("--stage0", required=True, help="the ablation's stage 0 (lab/mini/ablation.py: the sixth release)")
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps per arm and stage")
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the arms train")
    parser.add_argument("--out", default=None, help="also write the results here as JSON")
    options = parser.parse_args()
    if options.steps - options.warmup < 2:
        parser.error("--steps must exceed --warmup by at least 2")
    if options.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        dataset = {stage: samples(stage, options, work) for stage in STAGES}
        results = [time_stage(arm, stage, options, work, dataset) for stage in STAGES for arm in MODELS]
    if options.device == "cpu" and not cpu_has_native_bf16():
        print("stage 2 ran without bf16 autocast: this CPU has no native bfloat16 (AVX512-BF16 or AMX)")
    print(f"\nseconds per training step on {options.device}, {options.steps - options.warmup} timed steps per arm and "
          "stage\n")
    print("\n".join(table(results)))
    if options.out:
        Path(options.out).write_text(json.dumps({"device": options.device, "steps": options.steps,
                                                 "warmup": options.warmup, "results": results},
                                                indent=1))


if __name__ == "__main__":
    main()
