"""The feature cache's tower entries: samples vs distinct tower inputs of a training mix, and fill time and size before
(one entry per sample, the towers run for each) and after (the towers run once per distinct input).

    python bench/bench_cache_tower_inputs.py count --data runs/mini/data [--arm gap_gated_no_gap_s0]
    OMP_NUM_THREADS=1 python bench/bench_cache_tower_inputs.py fill --data SMALL_DATA --before COMMIT [--samples 64]

count   reads the training split's annotation files of the arm's stage-2 mix (training/recipes/mini_stage2.yaml with
        the arm's settings, lab/mini/arms.py: its tasks, `task_max_samples` drawn as `load_split` draws them, and
        `task_repeats`) and counts, per task and over the mix, the samples, the distinct samples (a repeat is one
        cache entry) and the distinct tower inputs: a sample's list of view files, with its marker pixel where the
        recipe paints one (data.marker and a `pixel_coords`). A file name stands for its bytes (SynthRooms writes
        each frame once). Cheap: no image is read.
fill    fills a cache twice with the same samples of `--data` (a few batches of the mix, spread over its tasks and
        scenes) and the shipped GAP-MLLM-Mini (the Mini architecture, frozen towers as the recipe freezes them), in
        float32 on the CPU: once with training/feature_cache.py as it was at `--before` (read from git), once as it
        is. Prints the time per batch, the towers' share of it (VGGT and the ViT, timed around their calls), the
        bytes per entry, and per view the rates the extrapolation to a whole split uses.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import datasets
import torch

import gap_mllm.training
from gap_mllm.mini import default_model_path
from gap_mllm.processing.builders import builder_for_task
from gap_mllm.training import feature_cache
from gap_mllm.training.config import load_recipe
from gap_mllm.training.data import load_split, sample_collator, sample_collator_settings
from gap_mllm.training.model_loading import load_model_and_processor
from gap_mllm.training.param_groups import apply_freezing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # lab/, the research pipeline (not installed)
from lab.mini.arms import ARMS, stage2_arm_settings  # noqa: E402

RECIPE = Path(gap_mllm.training.__file__).resolve().parent / "recipes" / "mini_stage2.yaml"
REPOSITORY = Path(__file__).resolve().parent.parent


def arm_recipe(arm: str, data: str, extra: list[str] | None = None):
    """The stage-2 recipe of `arm` (lab/mini/arms.py) on the data root `data`."""
    settings = stage2_arm_settings(ARMS[arm]) + [f"training.seed={ARMS[arm].seed}", f"data.data_root={data}"]
    return load_recipe(RECIPE, settings + (extra or []))


def drawn(count: int, cap: int | None, seed: int) -> list[int]:
    """The record indices `load_split` keeps of a task of `count` records under `task_max_samples` `cap`: its
    `shuffle(seed).select(range(cap))`, whose permutation depends on the count and the seed only."""
    if cap is None or cap >= count:
        return list(range(count))
    return datasets.Dataset.from_dict({"i": list(range(count))}).shuffle(seed=seed).select(range(cap))["i"]


def count(args) -> dict:
    recipe = arm_recipe(args.arm, args.data)
    data = recipe.data
    rows, inputs_of_mix, views_of_inputs = {}, set(), 0
    samples_total = distinct_total = views_of_samples = 0
    for task in data.tasks:
        builder = builder_for_task(task)(data_root=data.data_root)
        path = builder.annotation_file(data.train_split)
        records = json.loads(path.read_text(encoding="utf-8"))
        kept = [records[i] for i in drawn(len(records), (data.task_max_samples or {}).get(builder.SPEC.name), recipe.training["seed"])]
        repeats = (data.task_repeats or {}).get(builder.SPEC.name, 1)
        inputs = {(tuple(r["images"]), tuple(r["pixel_coords"]) if data.marker and r.get("pixel_coords") else None): len(r["images"])
                  for r in kept}
        rows[task] = {"file": path.name, "records": len(records), "samples": len(kept) * repeats, "distinct_samples": len(kept),
                      "tower_inputs": len(inputs), "views_per_sample": dict(Counter(len(r["images"]) for r in kept))}
        samples_total += len(kept) * repeats
        distinct_total += len(kept)
        views_of_samples += sum(len(r["images"]) for r in kept)
        for key, views in inputs.items():
            if key not in inputs_of_mix:
                inputs_of_mix.add(key)
                views_of_inputs += views
    return {"arm": args.arm, "data": str(args.data), "tasks": rows,
            "mix": {"samples": samples_total, "distinct_samples": distinct_total, "tower_inputs": len(inputs_of_mix),
                    "views_of_distinct_samples": views_of_samples, "views_of_tower_inputs": views_of_inputs}}


def module_at(commit: str, name: str):
    """training/feature_cache.py as it was at `commit`, imported as a module of the installed package (its relative
    imports resolve to today's siblings, whose interfaces it uses unchanged)."""
    source = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{commit}:training/feature_cache.py"],
                            check=True, capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"gap_mllm.training.{name}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "gap_mllm.training"
    sys.modules[spec.name] = module
    exec(compile(source, f"{commit[:12]}:training/feature_cache.py", "exec"), module.__dict__)
    return module


class TowerClock:
    """Wall and CPU seconds spent in each frozen tower's calls of a model (VGGT's `get_geometry_features`, the ViT's
    `get_vision_features`), and the views each was given."""

    def __init__(self, model):
        self.wall, self.cpu, self.views = Counter(), Counter(), Counter()
        inner = model.model  # GapMllmModel: what the towers' callers reach
        for owner, name, tower in ((inner, "get_geometry_features", "vggt"), (inner, "get_vision_features", "vit")):
            setattr(owner, name, self._timed(getattr(owner, name), tower))

    def _timed(self, call, tower: str):
        def timed(pixels, grids, *args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return call(pixels, grids, *args, **kwargs)
            finally:
                self.wall[tower] += time.perf_counter() - wall
                self.cpu[tower] += time.process_time() - cpu
                self.views[tower] += int(grids.shape[0])
        return timed


def subset(dataset, samples: int) -> datasets.Dataset:
    """`samples` samples of `dataset` spread evenly over it (so over its tasks and scenes)."""
    step = len(dataset) / samples
    return dataset.select([int(i * step) for i in range(samples)])


def fill_once(module, recipe, dataset, work: Path) -> dict:
    model, processor = load_model_and_processor(recipe.model)
    apply_freezing(model, recipe.freezing)
    clock = TowerClock(model)
    cache = module.FeatureCache(work, model, processor, sample_collator_settings(recipe.data, recipe.aux), recipe.cache.dtype)
    collator = sample_collator(processor, recipe.data, recipe.aux, model)
    wall, cpu = time.perf_counter(), time.process_time()
    stats = cache.build(model, dataset, collator, batch_size=recipe.cache.batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    sizes = {kind: [p.stat().st_size for p in cache.folder.glob(pattern)]
             for kind, pattern in (("entry", "*.safetensors"), ("sample", "samples/*.safetensors"),
                                   ("tower", "towers/*.safetensors"))}
    batches = -(-len(dataset) // recipe.cache.batch_size)
    views = sum(len(example["images"]) for example in dataset)
    towers = sum(clock.cpu.values())
    return {"samples": len(dataset), "views": views, "batches": batches, "stats": str(stats),
            "wall_s": wall, "cpu_s": cpu, "wall_s_per_batch": wall / batches, "cpu_s_per_batch": cpu / batches,
            "tower_cpu_s": dict(clock.cpu), "tower_wall_s": dict(clock.wall), "tower_views": dict(clock.views),
            # the rates of the extrapolation (CPU seconds: one thread, so the machine's other load does not count)
            "tower_cpu_s_per_view": towers / max(clock.views["vggt"], 1),
            "rest_cpu_s_per_view": (cpu - towers) / views,
            "bytes": {kind: {"files": len(values), "mean": statistics.mean(values) if values else 0, "total": sum(values)}
                      for kind, values in sizes.items()}}


def fill(args) -> dict:
    torch.set_num_threads(1)
    recipe = arm_recipe(args.arm, args.data, [f"model.name_or_path={args.model or default_model_path()}",
                                              f"data.cache_dir={args.work / 'hf'}"])
    dataset = load_split(recipe.data, recipe.data.train_split, recipe.aux)
    dataset = subset(feature_cache.undecoded_images(dataset), args.samples)
    before = module_at(args.before, "feature_cache_before")
    results = {"before_commit": args.before, "samples": args.samples, "threads": torch.get_num_threads()}
    for name, module in (("before", before), ("after", feature_cache)):
        results[name] = fill_once(module, recipe, dataset, args.work / name)
        print(name, json.dumps(results[name], indent=1), flush=True)
    if args.count:
        results["extrapolated"] = extrapolate(results, json.loads(args.count.read_text())["mix"])
        print("extrapolated to the whole split", json.dumps(results["extrapolated"], indent=1))
    return results


def extrapolate(results: dict, mix: dict) -> dict:
    """The fill of a whole split (`mix`: `count`'s figures) from the measured rates, per view: before, the towers and
    the rest run on every view of every distinct sample; after, the rest on those views and the towers on the views
    of the distinct tower inputs only. Feature bytes per view as measured; tokens per sample."""
    before, after = results["before"], results["after"]
    seconds_before = mix["views_of_distinct_samples"] * (before["tower_cpu_s_per_view"] + before["rest_cpu_s_per_view"])
    seconds_after = (mix["views_of_distinct_samples"] * after["rest_cpu_s_per_view"]
                     + mix["views_of_tower_inputs"] * after["tower_cpu_s_per_view"])
    entry = before["bytes"]["entry"]
    view_bytes_before = entry["total"] / before["tower_views"]["vggt"]  # a repeated sample is one entry: rare here
    tower = after["bytes"]["tower"]
    view_bytes_after = tower["total"] / after["tower_views"]["vggt"]
    bytes_before = mix["views_of_distinct_samples"] * view_bytes_before
    bytes_after = mix["views_of_tower_inputs"] * view_bytes_after + mix["distinct_samples"] * after["bytes"]["sample"]["mean"]
    batches = -(-mix["samples"] // 16)
    return {"cpu_hours_before": seconds_before / 3600, "cpu_hours_after": seconds_after / 3600,
            "cpu_s_per_batch_before": seconds_before / batches, "cpu_s_per_batch_after": seconds_after / batches,
            "gb_before": bytes_before / 1e9, "gb_after": bytes_after / 1e9, "batches": batches}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("count", "fill"))
    parser.add_argument("--data", type=Path, required=True, help="a SynthRooms data root (count: the whole split's)")
    parser.add_argument("--arm", default="gap_gated_no_gap_s0", choices=sorted(ARMS))
    parser.add_argument("--before", help="fill: the commit whose training/feature_cache.py is the 'before' layout")
    parser.add_argument("--samples", type=int, default=64, help="fill: samples of the mix to cache")
    parser.add_argument("--model", help="fill: a model folder (default: the shipped GAP-MLLM-Mini)")
    parser.add_argument("--work", type=Path, help="fill: a scratch folder (default: a temporary one)")
    parser.add_argument("--count", type=Path, help="fill: `count`'s JSON of the whole split, to extrapolate to it")
    parser.add_argument("--out", type=Path, help="write the results as JSON here too")
    args = parser.parse_args(argv)
    if args.command == "fill":
        if not args.before:
            parser.error("fill needs --before COMMIT")
        args.work = args.work or Path(tempfile.mkdtemp(prefix="gap-cache-bench-"))
        results = fill(args)
    else:
        results = count(args)
        print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
