"""Frame render time of SynthRooms: one 640x480 RGB + depth + instance frame on one thread.

    OMP_NUM_THREADS=1 python bench/bench_synth.py [--frames 48] [--scenes 3]

Prints the median and 90th percentile over all frames of a few scenes (layout time excluded).
Not a test: the figure depends on the machine and its load. Both allocator settings are timed side
by side on the same frames: glibc's default (freed ~1 MB numpy temporaries are unmapped and
re-faulted every frame) and the heap-reuse setting that `gap-mllm synth` applies
(processing/synth/allocator.py).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from gap_mllm.processing.synth.allocator import keep_large_allocations_in_heap  # noqa: E402
from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms  # noqa: E402
from gap_mllm.processing.synth.renderer import PartArrays, render  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=48)
    parser.add_argument("--scenes", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=2, default=(480, 640))
    args = parser.parse_args()
    generator = SynthRooms(SynthConfig(seed=0, image_size=tuple(args.size), num_frames=args.frames))
    height, width = args.size
    scenes = [generator.layout_scene(index) for index in range(args.scenes)]

    def time_frames() -> np.ndarray:
        times = []
        for scene in scenes:
            parts = PartArrays(scene.objects)
            render(scene.room, parts, scene.cam_to_room[0], scene.intrinsics, height, width)  # warm the ray cache
            for pose in scene.cam_to_room:
                start = time.perf_counter()
                render(scene.room, parts, pose, scene.intrinsics, height, width)
                times.append(time.perf_counter() - start)
        return np.array(times) * 1e3

    default_ms = time_frames()
    applied = keep_large_allocations_in_heap()  # process-wide and one-way: so the default is timed first
    tuned_ms = time_frames()
    for name, times_ms in (("glibc default", default_ms), ("heap reuse (gap-mllm synth)" if applied else "heap reuse unavailable", tuned_ms)):
        print(
            f"SynthRooms render {width}x{height} RGB+depth+instance, 1 thread, {len(times_ms)} frames, {name}: "
            f"median {np.median(times_ms):.1f} ms, p90 {np.percentile(times_ms, 90):.1f} ms (target < 50 ms)"
        )
    print(f"speed-up of the heap-reuse setting: {np.median(default_ms) / np.median(tuned_ms):.2f}x")


if __name__ == "__main__":
    main()
