"""`gap-mllm synth`: write a SynthRooms dataset (ScanNet layout + official annotation JSONs).

    gap-mllm synth --scenes 20 --out data/synth [--val-scenes 4] [--test-scenes 4] [--seed 0] [--size 480 640]
    gap-mllm synth --preset mini --scenes 1200 --val-scenes 60 --test-scenes 240 --out data/mini_full --workers 2

`--preset` picks a named configuration (processing/synth/presets.py); options given explicitly override it. A
sample's frame count given above the scene's (`--frames`) is refused; a preset's own is lowered to it.

Limits (processing/synth/generator.py), checked before anything is written or locked: at most 10,000 scenes in all
(ScanNet's four-digit scene ids), and frames the machine can render (`--size` times `--frames`, held in memory
while a scene is written, for each of `--workers`).

`--out` is written beside itself and renamed into place when complete (processing/output_folder.py): a kill leaves
no half data root. A folder holding the same scenes (same settings and split counts, e.g. the same command run
again) is written again; a folder of other scenes, other settings or other files is refused, unless `--overwrite`
(which deletes it).

The lead CLI calls `add_arguments(subparser)` and `main(args)`.
"""

from __future__ import annotations

import argparse
import json
import sys

from tqdm.auto import tqdm

from .output_folder import check_output_folder
from .synth.allocator import keep_large_allocations_in_heap
from .synth.generator import SynthRooms, object_count_problem, scene_count_problem, scene_size_problem
from .synth.presets import synth_config
from .synth.writer import TASK_FRAMES, synthrooms_owner, write_dataset_folder
from .synth_arguments import add_arguments  # noqa: F401 - the command's add_arguments

_OPTION_FIELDS = {
    "seed": "seed", "size": "image_size", "frames": "num_frames", "min_objects": "min_objects", "max_objects": "max_objects",
    "clip_frames": "clip_frames", "grounding_frames": "grounding_frames", "caption_frames": "caption_frames",
    "qa_frames": "qa_frames", "frame_sampling": "frame_sampling",
}


COMMAND = "gap-mllm synth"
# the options of the per-sample frame counts, by SynthConfig field
FRAME_OPTIONS = {field: "--" + option.replace("_", "-") for option, field in _OPTION_FIELDS.items()
                 if field in TASK_FRAMES.values()}


def config_from_args(args):
    """The SynthConfig of the command's options (ValueError for a value it cannot write, in the options' words)."""
    total = args.scenes + args.val_scenes + args.test_scenes
    if args.scenes < 0 or args.val_scenes < 0 or args.test_scenes < 0 or total == 0:
        raise ValueError("--scenes/--val-scenes/--test-scenes must be >= 0 and not all 0")
    problem = scene_count_problem(total)
    if problem is not None:
        raise ValueError(f"--scenes/--val-scenes/--test-scenes: {total:,} scenes {problem}")
    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items() if getattr(args, option) is not None}
    if "image_size" in overrides:
        overrides["image_size"] = tuple(overrides["image_size"])
    config = synth_config(args.preset, **overrides)
    if config.min_objects > config.max_objects:  # each scene draws its object count from [min, max]
        raise ValueError(f"--min-objects ({config.min_objects}) is above --max-objects ({config.max_objects}); a value "
                         f"not given is the {args.preset!r} preset's")
    problem = object_count_problem(config)
    if problem is not None:
        raise ValueError(f"--max-objects {config.max_objects} {problem}")
    # a sample's frames are frames of its scene: a count given above them is refused, a preset's own lowered to them
    frames_named = f"--frames {config.num_frames}" if args.frames is not None else \
        f"the {config.num_frames} frames of a {args.preset!r} scene (--frames)"
    for field, option in FRAME_OPTIONS.items():
        given = overrides.get(field)
        if given is not None and given > config.num_frames:
            raise ValueError(f"{option} {given} is more than {frames_named}: a sample's frames are frames of its "
                             f"scene; give at most {config.num_frames}, or more --frames")
        setattr(config, field, min(getattr(config, field), config.num_frames))
    problem = scene_size_problem(config, min(args.workers, max(args.scenes, args.val_scenes, args.test_scenes)))
    if problem is not None:
        height, width = config.image_size
        raise ValueError(f"{config.num_frames} frames of {height}x{width} pixels (--frames, --size) {problem}")
    return config


def main(args) -> int:
    keep_large_allocations_in_heap()  # about 2x faster rendering (see allocator.py)

    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"gap-mllm synth: error: {err}", file=sys.stderr)  # as argparse and cli/errors.py word it
        return 2
    splits = {"train": args.scenes}
    if args.val_scenes:
        splits["val"] = args.val_scenes
    if args.test_scenes:
        splits["test"] = args.test_scenes
    # before the progress bar, so that a refusal is the one line (write_dataset_folder checks again, under its lock)
    check_output_folder(args.out, COMMAND, overwrite=args.overwrite, owner_check=synthrooms_owner(config, splits))
    with tqdm(total=sum(splits.values()), desc="SynthRooms scenes", unit="scene") as bar:
        info = write_dataset_folder(args.out, SynthRooms(config), splits, command=COMMAND,
                                    overwrite=args.overwrite, workers=args.workers,
                                    progress=lambda scene_id: (bar.set_postfix_str(scene_id), bar.update(1)))
    print(json.dumps(info["records"], indent=1))
    print(written_line(args.out, splits))
    return 0


def written_line(out, splits: dict[str, int]) -> str:
    """The run's last line, as the other commands end theirs: what was written where (the samples of each split and
    task are the JSON block above it), and the commands that read it next: `evaluate` on its held-out split (test,
    else val; none for a train split alone) and `train`."""
    scenes = ", ".join(f"{split} {count}" for split, count in splits.items() if count)
    held_out = next((split for split in ("test", "val") if splits.get(split)), None)
    evaluate = (f"gap-mllm evaluate --task TASK --data {out} --split {held_out} --model MODEL --out runs/eval, or "
                if held_out else "")
    return (f"wrote {sum(splits.values())} scenes ({scenes}) to {out}: the samples of each split and task above; "
            f"next: {evaluate}gap-mllm train --config RECIPE --data {out} (training/README.md)")


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
