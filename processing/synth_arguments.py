"""The arguments of `gap-mllm synth` (processing/synth_cli.py runs it). Light to import (no torch, no transformers):
`gap-mllm synth --help` reads only this."""

from __future__ import annotations

import argparse

from .argument_types import non_negative_int, positive_int, worker_count


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scenes", type=non_negative_int, required=True,
                        help="number of training scenes (at most 10,000 with the validation and test ones)")
    parser.add_argument("--val-scenes", type=non_negative_int, default=0, help="number of validation scenes (after the training ones)")
    parser.add_argument("--test-scenes", type=non_negative_int, default=0, help="number of test scenes (after the validation ones)")
    parser.add_argument("--out", required=True, help="output folder (gets scannet/posed_images, annotations, synthrooms); "
                                                     "a folder of other files or other scenes is refused")
    parser.add_argument("--overwrite", action="store_true", help="replace --out even if it holds other files or other "
                                                                 "scenes (they are deleted)")
    parser.add_argument("--preset", default="default", help="named configuration: default (ScanNet-like) or mini (GAP-MLLM-Mini)")
    parser.add_argument("--workers", type=worker_count, default=1,
                        help="processes rendering scenes in parallel (same output; at most the machine's CPUs)")
    parser.add_argument("--seed", type=non_negative_int, default=None, help="dataset seed; scene i depends only on (seed, i)")
    parser.add_argument("--size", type=positive_int, nargs=2, default=None, metavar=("HEIGHT", "WIDTH"), help="frame size in pixels")
    parser.add_argument("--frames", type=positive_int, default=None, help="frames per scene (named every 10th raw frame)")
    parser.add_argument("--min-objects", type=positive_int, default=None,
                        help="fewest objects asked for in a scene (an object that finds no free spot is left out)")
    parser.add_argument("--max-objects", type=positive_int, default=None,
                        help="most objects asked for in a scene (at most what a room can hold)")
    # a sample's frames are frames of its scene: a count above --frames is refused (a preset's own is lowered to it)
    parser.add_argument("--clip-frames", type=positive_int, default=None,
                        help="frames of reconstruction / detection samples (at most --frames)")
    parser.add_argument("--grounding-frames", type=positive_int, default=None,
                        help="frames of grounding stage-1 samples (at most --frames)")
    parser.add_argument("--caption-frames", type=positive_int, default=None,
                        help="frames of captioning samples (at most --frames)")
    parser.add_argument("--qa-frames", type=positive_int, default=None,
                        help="frames of spatial-QA samples (at most --frames)")
    parser.add_argument("--frame-sampling", choices=("uniform", "space_aware"), default=None, help="how clip frames are chosen")
