"""Frame render time of SynthRooms: one 640x480 RGB + depth + instance frame on one thread.

    OMP_NUM_THREADS=1 python bench/bench_synth.py [--frames 48] [--scenes 3]

Prints the median and 90th percentile over all frames of a few scenes (layout time excluded).
Not a test: the figure depends on the machine and its load. About half of the time is glibc
returning and re-faulting the ~1 MB temporaries numpy allocates per frame; with
`MALLOC_MMAP_THRESHOLD_=268435456 MALLOC_TRIM_THRESHOLD_=268435456` in the environment the same
frames render about 2x faster.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

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
    times = []
    for index in range(args.scenes):
        scene = generator.layout_scene(index)
        parts = PartArrays(scene.objects)
        render(scene.room, parts, scene.cam_to_room[0], scene.intrinsics, height, width)  # warm the ray cache
        for pose in scene.cam_to_room:
            start = time.perf_counter()
            render(scene.room, parts, pose, scene.intrinsics, height, width)
            times.append(time.perf_counter() - start)
    times_ms = np.array(times) * 1e3
    print(
        f"SynthRooms render {width}x{height} RGB+depth+instance, 1 thread, {len(times)} frames: "
        f"median {np.median(times_ms):.1f} ms, p90 {np.percentile(times_ms, 90):.1f} ms (target < 50 ms)"
    )


if __name__ == "__main__":
    main()
