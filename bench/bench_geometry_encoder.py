"""Geometry encoder (VGGT aggregator) time and peak memory vs number of frames, per attention kernel (not a test).

CPU, small config (default):
    python bench/bench_geometry_encoder.py                     # frames 1, 4, 16, 32 at 168×224
Real VGGT-1B size on a GPU (random weights; timings do not depend on the values):
    python bench/bench_geometry_encoder.py --real-size --device cuda --dtype bfloat16 --height 336 --width 448
VGGT's published H100 figures (518×518, FlashAttention-3) beside each attention kernel, at 50-200 frames:
    python bench/bench_geometry_encoder.py --real-size --device cuda --dtype bfloat16 --height 518 --width 518 \
        --frames 50,100,200 --attn sdpa,sdpa_cudnn,flash_attention_2,flash_attention_4 --repeats 2 --out vggt_attention.json
Add `--heads` to time `reconstruct` (camera + depth + point heads) instead of the encoder forward.

Attention kernels (`--attn`, comma-separated; each a column): the transformers attention implementations the
encoder's blocks call (`sdpa`, `eager`, `flash_attention_2`, `flash_attention_4`: training/kernels.py), and sdpa with
one of torch's own backends forced (`sdpa_flash`: torch's built-in FlashAttention-2 kernel, `sdpa_cudnn`: cuDNN's
fused attention, `sdpa_efficient`: memory-efficient; CUDA only). Plain `sdpa` lets torch pick; for bf16 / fp16
without a mask on CUDA that is its built-in flash kernel where it applies. A kernel whose package or device is
missing is reported as skipped; the whole run is refused without a CUDA device for `--device cuda`.

Per frame count: median wall time of `--repeats` forwards after one warm-up, and peak memory.
On CUDA the peak is `torch.cuda.max_memory_allocated` (weights included, reset per frame count).
On CPU each frame count runs in a fresh process and the peak is that process's maximum resident
set size (`ru_maxrss`): "peak" is the whole process, "activations" is that minus the RSS after the
model was built (an upper bound on what the forward itself needed).
"""

import argparse
import contextlib
import json
import multiprocessing
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from bench_real_size import VGGT_PUBLISHED  # noqa: E402
from needs_gpu import arm_unavailable, require_cuda  # noqa: E402

from gap_mllm.configuration_gap_mllm import GapMllmGeometryConfig  # noqa: E402
from gap_mllm.modeling_vggt import GapMllmGeometryEncoder  # noqa: E402
from gap_mllm.training.kernels import ATTENTION_IMPLEMENTATIONS  # noqa: E402

# small: the width/depth of gap_mllm.tiny's "small" geometry encoder, 4 fusion levels
SMALL = dict(hidden_size=128, num_hidden_layers=8, num_attention_heads=4, patch_embed_num_hidden_layers=4,
             image_size=14 * 8, tapped_layers=[1, 3, 5, 7], camera_head_num_attention_heads=4,
             camera_head_trunk_depth=2, dpt_features=32, dpt_out_channels=[16, 32, 64, 64], dpt_layers=[1, 3, 5, 7])
REAL = dict()  # GapMllmGeometryConfig defaults are VGGT-1B
HEADS = dict(use_camera_head=True, use_depth_head=True, use_point_head=True)
# sdpa with one of torch's backends forced (torch.nn.attention.SDPBackend member names)
SDPA_BACKENDS = {"sdpa_flash": "FLASH_ATTENTION", "sdpa_cudnn": "CUDNN_ATTENTION", "sdpa_efficient": "EFFICIENT_ATTENTION"}
ARMS = (*ATTENTION_IMPLEMENTATIONS, *SDPA_BACKENDS)


def implementation(arm: str) -> str:
    """The transformers attention implementation of an arm (a forced torch backend is sdpa's)."""
    return "sdpa" if arm in SDPA_BACKENDS else arm


def backend_context(arm: str):
    """The arm's forced sdpa backend (torch.nn.attention.sdpa_kernel), or nothing."""
    if arm not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, SDPA_BACKENDS[arm])])


def unavailable(arm: str, device: str) -> str | None:
    """Why `arm` cannot run on `device` (None: it can)."""
    if arm in SDPA_BACKENDS and not device.startswith("cuda"):
        return "a forced torch sdpa backend is a CUDA kernel"
    return arm_unavailable(implementation(arm), device)


def build_encoder(args, attn: str = "sdpa") -> GapMllmGeometryEncoder:
    fields = dict(REAL if args.real_size else SMALL)
    if args.heads:
        fields.update(HEADS)
    config = GapMllmGeometryConfig(**fields)
    config._attn_implementation = attn
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


def measure(args, encoder, frames: int, arm: str = "sdpa") -> dict:
    images = torch.rand(1, frames, 3, args.height, args.width, device=args.device)
    run = encoder.reconstruct if args.heads else encoder
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with torch.inference_mode(), backend_context(arm):
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


def _measure_in_fresh_process(args, frames: int, arm: str, queue) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    encoder = build_encoder(args, implementation(arm))
    built = _rss_mib()
    result = measure(args, encoder, frames, arm)
    result["activations_mib"] = result["peak_mib"] - built
    queue.put(result)


def measure_arm(args, arm: str, frame_counts: list[int], encoder=None) -> list[dict]:
    """Every frame count with one attention arm: on CUDA on `encoder` (switched to the arm's implementation),
    on the CPU in a fresh process per frame count. A failing frame count is recorded, and the larger ones skipped."""
    results = []
    if encoder is not None:
        encoder.config._attn_implementation = implementation(arm)
    for frames in frame_counts:
        try:
            if encoder is not None:
                results.append(measure(args, encoder, frames, arm))
                continue
            context = multiprocessing.get_context("spawn")
            queue = context.Queue()
            process = context.Process(target=_measure_in_fresh_process, args=(args, frames, arm, queue))
            process.start()
            results.append(queue.get())
            process.join()
        except (RuntimeError, torch.OutOfMemoryError) as error:  # e.g. a forced backend that cannot run this shape
            results.append({"frames": frames, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"})
            break
    return results


def published(frames: int, height: int, width: int) -> float | None:
    """VGGT's published H100 seconds (aggregator, FlashAttention-3) for this frame count at 518×518."""
    return VGGT_PUBLISHED[frames][0] if (height, width) == (518, 518) and frames in VGGT_PUBLISHED else None


def table(args, frame_counts: list[int], by_arm: dict) -> list[str]:
    """Seconds per arm side by side, each with its ratio to VGGT's published figure where there is one."""
    arms = list(by_arm)
    lines = ["| frames | tokens | " + " | ".join(f"{arm} s" for arm in arms) + " | VGGT published s (FA3) | "
             + " | ".join(f"{arm} / published" for arm in arms) + " |"]
    lines.append("|" + "---|" * (3 + 2 * len(arms)))
    patches = (args.height // 14) * (args.width // 14)
    for frames in frame_counts:
        reference = published(frames, args.height, args.width)
        cells, ratios = [], []
        for arm in arms:
            row = by_arm[arm] if isinstance(by_arm[arm], dict) else next((r for r in by_arm[arm] if r["frames"] == frames), None)
            seconds = None if row is None or "skipped" in row else row.get("seconds")
            cells.append(f"{seconds:.3f}" if seconds else "skipped" if row and "skipped" in row else "error" if row else "—")
            ratios.append(f"{seconds / reference:.2f}" if seconds and reference else "—")
        lines.append(f"| {frames} | {frames * (patches + 5)} | " + " | ".join(cells) + f" | {reference or '—'} | "
                     + " | ".join(ratios) + " |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1,4,16,32", help="comma-separated frame counts")
    parser.add_argument("--height", type=int, default=168, help="image height (multiple of 14)")
    parser.add_argument("--width", type=int, default=224, help="image width (multiple of 14)")
    parser.add_argument("--real-size", action="store_true", help="VGGT-1B architecture (909 M aggregator parameters)")
    parser.add_argument("--heads", action="store_true", help="time reconstruct() with camera, depth and point heads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--attn", default="sdpa", help=f"comma-separated attention arms, from {', '.join(ARMS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    frame_counts = [int(value) for value in args.frames.split(",")]
    arms = [arm.strip() for arm in args.attn.split(",") if arm.strip()]
    if args.height % 14 or args.width % 14:
        parser.error("height and width must be multiples of 14")
    unknown = [arm for arm in arms if arm not in ARMS]
    if unknown:
        parser.error(f"--attn {','.join(unknown)}: choose from {', '.join(ARMS)}")
    require_cuda(Path(__file__).name, args.device)

    size = "VGGT-1B" if args.real_size else "small"
    patches = (args.height // 14) * (args.width // 14)
    print(f"geometry encoder ({size}{', + heads' if args.heads else ''}), {args.height}x{args.width} "
          f"({patches} patches/frame), {args.device}, {args.dtype}, attention {', '.join(arms)}, median of {args.repeats}")
    encoder = None
    if args.device.startswith("cuda"):
        encoder = build_encoder(args)
        print(f"parameters: {sum(p.numel() for p in encoder.parameters()) / 1e6:.1f} M")
    by_arm = {}
    for arm in arms:
        reason = unavailable(arm, args.device)
        by_arm[arm] = {"skipped": reason} if reason else measure_arm(args, arm, frame_counts, encoder)
        if reason is None:
            header = f"{arm}: {'frames':>6} {'tokens':>8} {'time (s)':>9} {'s/frame':>8} {'peak (MiB)':>11}"
            header += f" {'activations (MiB)':>18}" if not args.device.startswith("cuda") else ""
            print(header)
            for result in by_arm[arm]:
                if "error" in result:
                    print(f"{arm}: {result['frames']:>6} {result['error']}")
                    continue
                tokens = result["frames"] * (patches + 5)
                line = (f"{arm}: {result['frames']:>6} {tokens:>8} {result['seconds']:>9.3f} "
                        f"{result['seconds'] / result['frames']:>8.3f} {result['peak_mib']:>11.0f}")
                if "activations_mib" in result:
                    line += f" {result['activations_mib']:>18.0f}"
                print(line, flush=True)
        else:
            print(f"{arm}: skipped, {reason}")
    print("\n".join(table(args, frame_counts, by_arm)))
    if args.out:
        Path(args.out).write_text(json.dumps({"settings": vars(args), "arms": by_arm,
                                              "published_s": {f: published(f, args.height, args.width) for f in frame_counts}},
                                             indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
