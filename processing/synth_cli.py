"""`gap-mllm synth`: write a SynthRooms dataset (ScanNet layout + official annotation JSONs).

    gap-mllm synth --scenes 20 --out data/synth [--val-scenes 4] [--seed 0] [--size 480 640] [--frames 48]

The lead CLI calls `add_arguments(subparser)` and `main(args)`.
"""

from __future__ import annotations

import argparse
import json

from tqdm.auto import tqdm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=int, required=True, help="number of training scenes")
    parser.add_argument("--val-scenes", type=int, default=0, help="number of validation scenes (after the training ones)")
    parser.add_argument("--out", required=True, help="output folder (gets scannet/posed_images, annotations, synthrooms)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; scene i depends only on (seed, i)")
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640), metavar=("HEIGHT", "WIDTH"), help="frame size in pixels")
    parser.add_argument("--frames", type=int, default=48, help="frames per scene (named every 10th raw frame)")
    parser.add_argument("--min-objects", type=int, default=8)
    parser.add_argument("--max-objects", type=int, default=14)
    parser.add_argument("--clip-frames", type=int, default=4, help="frames of reconstruction / detection samples")
    parser.add_argument("--grounding-frames", type=int, default=32, help="frames of grounding stage-1 samples")
    parser.add_argument("--caption-frames", type=int, default=32)
    parser.add_argument("--qa-frames", type=int, default=16)
    parser.add_argument("--frame-sampling", choices=("uniform", "space_aware"), default="uniform", help="how clip frames are chosen")


def config_from_args(args):
    from .synth.generator import SynthConfig

    if args.scenes < 0 or args.val_scenes < 0 or args.scenes + args.val_scenes == 0:
        raise ValueError("--scenes/--val-scenes must be >= 0 and not both 0")
    return SynthConfig(
        seed=args.seed,
        image_size=tuple(args.size),
        num_frames=args.frames,
        min_objects=args.min_objects,
        max_objects=args.max_objects,
        clip_frames=min(args.clip_frames, args.frames),
        grounding_frames=min(args.grounding_frames, args.frames),
        caption_frames=min(args.caption_frames, args.frames),
        qa_frames=min(args.qa_frames, args.frames),
        frame_sampling=args.frame_sampling,
    )


def main(args) -> int:
    from .synth.allocator import keep_large_allocations_in_heap
    from .synth.generator import SynthRooms
    from .synth.writer import write_dataset

    keep_large_allocations_in_heap()  # about 2x faster rendering (see allocator.py)

    try:
        config = config_from_args(args)
    except ValueError as err:
        print(f"gap-mllm synth: {err}")
        return 2
    splits = {"train": args.scenes}
    if args.val_scenes:
        splits["val"] = args.val_scenes
    with tqdm(total=sum(splits.values()), desc="SynthRooms scenes", unit="scene") as bar:
        info = write_dataset(args.out, SynthRooms(config), splits, progress=lambda scene_id: (bar.set_postfix_str(scene_id), bar.update(1)))
    print(json.dumps(info["records"], indent=1))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
