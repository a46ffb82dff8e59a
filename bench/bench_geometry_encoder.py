"""Geometry encoder (VGGT aggregator) time and peak memory vs number of frames (not a test).

CPU, small config (default):
    python bench/bench_geometry_encoder.py                     # frames 1, 4, 16, 32 at 168×224
Real VGGT-1B size on a GPU (random weights; timings do not depend on the values):
    python bench/bench_geometry_encoder.py --real-size --device cuda --dtype bfloat16 --height 336 --width 448
Add `--heads` to time `reconstruct` (camera + depth + point heads) instead of the encoder forward.

Per frame count: median wall time of `--repeats` forwards after one warm-up, and peak memory.
On CUDA the peak is `torch.cuda.max_memory_allocated` (weights included, reset per frame count).
On CPU each frame count runs in a fresh process and the peak is that process's maximum resident
set size (`ru_maxrss`): "peak" is the whole process, "activations" is that minus the RSS after the
model was built (an upper bound on what the forward itself needed).
"""

import argparse
import multiprocessing
import resource
import statistics
import sys
import time

import torch

from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig
from gap_mllm.modeling_geometry_encoder import GapMllmGeometryEncoder

# small: the width/depth of gap_mllm.tiny's "small" geometry encoder, 4 fusion levels
SMALL = dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, patch_embed_num_hidden_layers=4,
             image_size=14 * 8, tapped_layers=[1, 3, 5, 7], camera_head_num_attention_heads=4,
             camera_head_trunk_depth=2, dpt_features=32, dpt_out_channels=[16, 32, 64, 64], dpt_layers=[1, 3, 5, 7])
REAL = dict()  # GapMllmGeometryConfig defaults are VGGT-1B
HEADS = dict(use_camera_head=True, use_depth_head=True, use_point_head=True)


def build_encoder(args) -> GapMllmGeometryEncoder:
    fields = dict(REAL if args.real_size else SMALL)
    if args.heads:
        fields.update(HEADS)
    config = GapMllmGeometryConfig(**fields)
    config._attn_implementation = args.attn
    torch.manual_seed(0)
    with torch.device(args.device):
        encoder = GapMllmGeometryEncoder(config)
    return encoder.to(getattr(torch, args.dtype)).eval()


def _rss_mib() -> float:
    # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(args, encoder, frames: int) -> dict:
    images = torch.rand(1, frames, 3, args.height, args.width, device=args.device)
    run = encoder.reconstruct if args.heads else encoder
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode():
        for index in range(args.repeats + 1):
            _sync(args.device)
            start = time.perf_counter()
            run(images)
            _sync(args.device)
            if index:  # the first run is a warm-up
                times.append(time.perf_counter() - start)
    result = {"frames": frames, "seconds": statistics.median(times)}
    if cuda:
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = _rss_mib()
    return result


def _measure_in_fresh_process(args, frames: int, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = build_encoder(args)
    built = _rss_mib()
    result = measure(args, encoder, frames)
    result["activations_mib"] = result["peak_mib"] - built
    queue.put(result)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1,4,16,32", help="comma-separated frame counts")
    parser.add_argument("--height", type=int, default=168, help="image height (multiple of 14)")
    parser.add_argument("--width", type=int, default=224, help="image width (multiple of 14)")
    parser.add_argument("--real-size", action="store_true", help="VGGT-1B architecture (909 M aggregator parameters)")
    parser.add_argument("--heads", action="store_true", help="time reconstruct() with camera, depth and point heads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--attn", default="sdpa", help="attention implementation (sdpa, eager, flash_attention_2, ...)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    args = parser.parse_args(argv)
    frame_counts = [int(value) for value in args.frames.split(",")]
    if args.height % 14 or args.width % 14:
        parser.error("height and width must be multiples of 14")

    size = "VGGT-1B" if args.real_size else "small"
    patches = (args.height // 14) * (args.width // 14)
    print(f"geometry encoder ({size}{', + heads' if args.heads else ''}), {args.height}x{args.width} "
          f"({patches} patches/frame), {args.device}, {args.dtype}, attention {args.attn}, median of {args.repeats}")
    results = []
    if args.device.startswith("cuda"):
        encoder = build_encoder(args)
        print(f"parameters: {sum(p.numel() for p in encoder.parameters()) / 1e6:.1f} M")
        results = [measure(args, encoder, frames) for frames in frame_counts]
    else:
        context = multiprocessing.get_context("spawn")
        for frames in frame_counts:
            queue = context.Queue()
            process = context.Process(target=_measure_in_fresh_process, args=(args, frames, queue))
            process.start()
            results.append(queue.get())
            process.join()
    header = f"{'frames':>6} {'tokens':>8} {'time (s)':>9} {'s/frame':>8} {'peak (MiB)':>11}"
    header += f" {'activations (MiB)':>18}" if not args.device.startswith("cuda") else ""
    print(header)
    for result in results:
        tokens = result["frames"] * (patches + 5)
        line = (f"{result['frames']:>6} {tokens:>8} {result['seconds']:>9.3f} {result['seconds'] / result['frames']:>8.3f} "
                f"{result['peak_mib']:>11.0f}")
        if "activations_mib" in result:
            line += f" {result['activations_mib']:>18.0f}"
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
