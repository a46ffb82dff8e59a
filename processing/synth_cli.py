"""`gap-mllm synth`: write a SynthRooms dataset (ScanNet layout + official annotation JSONs).

    gap-mllm synth --scenes 20 --out data/synth [--val-scenes 4] [--test-scenes 4] [--seed 0] [--size 480 640]
    gap-mllm synth --preset mini --scenes 1200 --val-scenes 60 --test-scenes 240 --out data/mini_full --workers 2

`--preset` picks a named configuration (processing/synth/presets.py); options given explicitly override it.

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

from .synth.allocator import keep_large_allocations_in_heap
from .synth.generator import SynthRooms
from .synth.presets import synth_config
from .synth.writer import write_dataset_folder
from .synth_arguments import add_arguments  # noqa: F401 - the command's add_arguments

_OPTION_FIELDS = {
    "seed": "seed", "size": "image_size", "frames": "num_frames", "min_objects": "min_objects", "max_objects": "max_objects",
    "clip_frames": "clip_frames", "grounding_frames": "grounding_frames", "caption_frames": "caption_frames",
    "qa_frames": "qa_frames", "frame_sampling": "frame_sampling",
}


def config_from_args(args):
    if args.scenes < 0 or args.val_scenes < 0 or args.test_scenes < 0 or args.scenes + args.val_scenes + args.test_scenes == 0:
        raise ValueError("--scenes/--val-scenes/--test-scenes must be >= 0 and not all 0")
    overrides = {field: getattr(args, option) for option, field in _OPTION_FIELDS.items() if getattr(args, option) is not None}
    if "image_size" in overrides:
        overrides["image_size"] = tuple(overrides["image_size"])
    config = synth_config(args.preset, **overrides)
    if config.min_objects > config.max_objects:  # each scene draws its object count from [min, max]
        raise ValueError(f"--min-objects ({config.min_objects}) is above --max-objects ({config.max_objects}); a value "
                         f"not given is the {args.preset!r} preset's")
    # per-sample frame counts cannot exceed the frames of a scene
    for field in ("clip_frames", "grounding_frames", "caption_frames", "qa_frames"):
        setattr(config, field, min(getattr(config, field), config.num_frames))
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
    with tqdm(total=sum(splits.values()), desc="SynthRooms scenes", unit="scene") as bar:
        info = write_dataset_folder(args.out, SynthRooms(config), splits, command="gap-mllm synth",
                                    overwrite=args.overwrite, workers=args.workers,
                                    progress=lambda scene_id: (bar.set_postfix_str(scene_id), bar.update(1)))
    print(json.dumps(info["records"], indent=1))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
