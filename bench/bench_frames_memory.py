"""Peak memory against frames at the real size (Qwen3-VL-2B + VGGT-1B, random weights): one answer and one training
step per frame count, each in a fresh process, and a fitted model of memory against frames.

    python bench/bench_frames_memory.py --real-size --device cpu --frames 4 8 16 --out frames_cpu.json
    python bench/bench_frames_memory.py --real-size --device cuda --frames 4 8 16 32 64 128 --out frames_cuda.json
    python bench/bench_frames_memory.py --size small --frames 1 2 3 --out small.json    # seconds: the script's check
    python bench/bench_frames_memory.py --real-size --device cpu --dtype float32 --kinds encoder --frames 2 4 \
        --frames-chunk-size 1 --out encoder_chunked.json                             # the geometry encoder alone

Points (each a subprocess of this script, `--point KIND FRAMES`, so that one point's peak is not another's):

  answer   `generate` on one sample of N frames at the official inference frames (Qwen 416×544, 221 visual tokens a
           frame; VGGT 364×476, 889 tokens a frame): geometry encoder + ViT + fusion + prefill + `--new-tokens` (32)
           greedy tokens, under `torch.inference_mode`
  train    one training step of one sample of N frames at the official training frames (Qwen 384×512, 192 tokens;
           VGGT 336×448, 773 tokens), a 32-token answer, through `GeometryAlignedModel` (the official freezing: ViT and
           VGGT frozen, LLM, mergers and gates trained; logits only at the answer), activation checkpointing as the
           real-size recipes set it (`--checkpointing off` to drop it); `--optimizer adamw` runs two steps of
           AdamW (bf16 states), so that the second step's forward runs beside the optimizer states; `--optimizer
           none` runs forward + backward only and adds AdamW's states as arithmetic (2 × trainable parameters ×
           bytes), the CPU setting when the states do not fit the machine
  encoder  the geometry encoder alone (VGGT-1B's aggregator, its config as the model's, in `--dtype`) on one sample
           of N frames at the answer's VGGT frames, under `torch.inference_mode`: the part that
           `--frames-chunk-size` (`geometry_config.frames_chunk_size`, every kind) bounds, without the model's
           minutes of CPU time; not in the default `--kinds`

What is counted:

  cpu      the process's peak resident set (VmHWM, /proc/self/status) minus its resident set after the imports
           (torch, transformers, gap_mllm): weights, inputs, activations, KV cache, gradients and the allocator's
           slack, everything the process touched; `weights_gib` is the resident set after the build minus the same
           baseline
  cuda     torch.cuda.max_memory_allocated (the tensors of the caching allocator); max_memory_reserved beside it; the
           CUDA context (about 0.5 GiB) is in neither

The fit (per kind, peak GiB against frames N): least squares of `a + b·N`, with its largest residual; with four
points or more also `a + b·N + c·N²`, the quadratic term that an attention holding its N²-token score matrix adds
(eager attention; sdpa's flash and memory-efficient kernels hold none); the frame count that fits each of
`--budgets` (GiB, less `--reserve` for the CUDA context and fragmentation) follows from the linear fit, and is
an estimate wherever it lies beyond the measured frames.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules

GIB = 2**30
KINDS = ("answer", "train", "encoder")
GRIDS = {"real": {"answer": "infer", "train": "train", "encoder": "infer"},
         "small": {"answer": "small", "train": "small", "encoder": "small"}}
# `--quantize` choices this script measures: the CPU ones of `gap-mllm predict --quantize` (optimum-quanto), loaded
# as the command loads them (`from_pretrained` of a saved folder with `quantization_kwargs`: transformers' quantizer
# converts the language model's Linear layers as the weights load), from `--weights-folder`.
QUANTIZED_CHOICES = ("int8", "int4")


# ------------------------------------------------------------------------------------------ one point
def memory_kib(field: str) -> int:
    """A `/proc/self/status` memory field (VmRSS, VmHWM) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


class AnonymousPeak:
    """The largest anonymous resident set (RssAnon) of this process while the `with` block runs (`kib`; `start_kib`: at
    its start), in KiB, sampled every 20 ms on a thread: a load's own need, which VmHWM mixes with the mapped
    checkpoint's file pages (the kernel takes those back when memory is short)."""

    def __enter__(self):
        import threading

        self.start_kib = self.kib = memory_kib("RssAnon")
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._done.wait(0.02):
            self.kib = max(self.kib, memory_kib("RssAnon"))

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()
        self.kib = max(self.kib, memory_kib("RssAnon"))


def reset_peak_rss() -> bool:
    """Reset the process's VmHWM to its resident set now (`5` to /proc/self/clear_refs, Linux 4.0+); whether it was."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def build(args, kind: str):
    """The model of `args` (the geometry encoder alone for an `encoder` point), its frame chunking set."""
    import torch
    from real_size_model import build_model, real_size_config, small_config

    from gap_mllm.modeling_vggt import GapMllmGeometryEncoder

    if kind == "encoder":
        config = (real_size_config if args.size == "real" else small_config)(args.attn).geometry_config
        torch.manual_seed(0)
        with torch.device(args.device):
            model = GapMllmGeometryEncoder(config).to(getattr(torch, args.dtype)).eval()
    elif args.weights_folder:
        model = load_saved(args)
    else:
        model = build_model(args.size, args.device, getattr(torch, args.dtype), args.attn)
    geometry_config(model).frames_chunk_size = args.frames_chunk_size
    return model


def save_weights_folder(args) -> None:
    """Build the random-weight model of `args` (seed 0, `--dtype`) and save it to `--weights-folder`: what a quantized
    point loads, as `--quantize` loads a checkpoint. Run in a process of its own, so that no point counts the build."""
    from real_size_model import build_model

    import torch

    build_model(args.size, "cpu", getattr(torch, args.dtype), args.attn).save_pretrained(args.weights_folder)


def load_saved(args):
    """The model of `--weights-folder` loaded with `--quantize`'s `from_pretrained` arguments (the command line's:
    `gap_mllm.processing.model_paths.quantization_kwargs`; none: a plain load), in `--dtype`, on `--device`, in eval
    mode."""
    from real_size_model import set_generation_ids

    import torch

    from gap_mllm.loading import load_model
    from gap_mllm.processing.model_paths import place_loaded_model, quantization_kwargs

    quantize = None if args.quantize == "none" else args.quantize
    kwargs = dict(quantization_kwargs(quantize, args.device), dtype=getattr(torch, args.dtype),
                  attn_implementation=args.attn)
    return set_generation_ids(place_loaded_model(load_model(args.weights_folder, **kwargs), args.device, kwargs).eval())


def converted_modules(model) -> dict:
    """How many Linear layers the quantizer converted, and under which top-level parts of the model."""
    from optimum.quanto import QModuleMixin

    names = [name for name, module in model.named_modules() if isinstance(module, QModuleMixin)]
    return {"count": len(names), "parts": sorted({".".join(name.split(".")[:2]) for name in names})}


def geometry_config(model):
    """The geometry config a model (or the geometry encoder alone) runs with."""
    return getattr(model.config, "geometry_config", model.config)


def attention_implementations(model) -> dict:
    """The attention implementation each part of the model runs."""
    config = model.config
    if not hasattr(config, "geometry_config"):
        return {"geometry": config._attn_implementation}
    return {"llm": config.text_config._attn_implementation, "vision": config.vision_config._attn_implementation,
            "geometry": config.geometry_config._attn_implementation}


def measure_point(args, kind: str, frames: int) -> dict:
    """Build the model and run one `kind` point at `frames` frames in this process; its memory figures."""
    import torch
    from real_size_inputs import QWEN_GRIDS, full_inputs, to_device
    from real_size_model import parameter_counts, special_ids

    from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel

    cuda = args.device.startswith("cuda")
    if args.quantize != "none":
        import optimum.quanto  # noqa: F401 - imported before the baseline, as torch and transformers are
    peak_reset = reset_peak_rss()  # the imports' own peak is not the point's
    baseline_kib = memory_kib("VmRSS")
    dtype = getattr(torch, args.dtype)
    start = time.perf_counter()
    with AnonymousPeak() as load_anonymous:
        model = build(args, kind)
    build_s = time.perf_counter() - start
    weights_gib = (torch.cuda.memory_allocated() if cuda else (memory_kib("VmRSS") - baseline_kib) * 1024) / GIB
    load_peak_gib = None if cuda else (memory_kib("VmHWM") - baseline_kib) * 1024 / GIB
    grid = QWEN_GRIDS[GRIDS[args.size][kind]]
    row = {"kind": kind, "frames": frames, "grid": list(grid), "visual_tokens_per_frame": grid[0] * grid[1] // 4,
           "geometry_tokens_per_frame": grid[0] * grid[1] + 5, "attn_implementation": attention_implementations(model),
           "frames_chunk_size": args.frames_chunk_size, "build_s": build_s, "weights_gib": weights_gib,
           "baseline_rss_gib": baseline_kib / 2**20, "peak_rss_reset": peak_reset, "quantize": args.quantize}
    if not cuda:  # the process's resident pages after the build or load, by kind: anonymous (tensors it made) and
        # file-backed (weights still mapped from a safetensors file), the baseline included
        row.update({f"rss_{pages.lower()}_after_load_gib": memory_kib(f"Rss{pages}") / 2**20
                    for pages in ("Anon", "File")})
    if args.weights_folder:  # a load's transient (a weight read before it is converted) is not the answer's peak
        row.update(load_peak_gib=load_peak_gib,  # the anonymous peak above the anonymous pages before the load
                   load_anonymous_peak_gib=(load_anonymous.kib - load_anonymous.start_kib) / 2**20)
        row["peak_rss_reset"] = reset_peak_rss()
    if args.quantize != "none":
        row.update(converted=converted_modules(model))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if kind == "encoder":  # the geometry grid is the Qwen grid at VGGT's patch size (14 pixels)
        patch = model.config.patch_size
        images = torch.rand(1, frames, 3, grid[0] * patch, grid[1] * patch, device=args.device, dtype=dtype)
        with torch.inference_mode():
            features = model(images).layer_features
        row.update(geometry_tokens=frames * row["geometry_tokens_per_frame"], tapped_layers=len(features))
    elif kind == "answer":
        ids = special_ids(model.config)
        inputs = to_device(full_inputs(model.config, ids, views=frames, grid=grid), args.device, dtype)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 do_sample=False)
        row.update(prompt_tokens=int(inputs["input_ids"].shape[1]),
                   new_tokens=int(out.shape[1] - inputs["input_ids"].shape[1]))
    else:
        ids = special_ids(model.config)
        inputs = to_device(full_inputs(model.config, ids, views=frames, grid=grid, answer_length=args.answer_tokens),
                           args.device, dtype)
        model.train()
        if args.checkpointing == "on":
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        wrapped = GeometryAlignedModel(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=cuda) if args.optimizer == "adamw" else None
        for _ in range(2 if optimizer is not None else 1):
            loss = wrapped(**inputs).loss
            loss.backward()
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss {loss.item()}")
            if optimizer is not None:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        counts = parameter_counts(model)
        state_gib = 2 * counts["trainable"] * dtype.itemsize / GIB
        row.update(sequence_tokens=int(inputs["input_ids"].shape[1]), optimizer=args.optimizer,
                   checkpointing=args.checkpointing, trainable_parameters=counts["trainable"],
                   adamw_state_gib=state_gib,
                   adamw_state="measured" if optimizer is not None else "added: 2 × trainable × bytes")
    if cuda:
        torch.cuda.synchronize()
    row["seconds"] = time.perf_counter() - start
    if cuda:
        row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
        row["reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    else:
        row["peak_gib"] = (memory_kib("VmHWM") - baseline_kib) * 1024 / GIB
    row["peak_above_weights_gib"] = row["peak_gib"] - weights_gib
    if kind == "train" and args.optimizer == "none":
        row["peak_with_adamw_gib"] = row["peak_gib"] + row["adamw_state_gib"]
    return row


# ------------------------------------------------------------------------------------------ the fit
def fit_memory(frames, peaks) -> dict:
    """Least-squares fits of `peaks` (GiB) against `frames`: linear `a + b·N` (intercept, per-frame slope, largest
    residual) and, with four points or more, quadratic `a + b·N + c·N²`."""
    x, y = np.asarray(frames, dtype=float), np.asarray(peaks, dtype=float)
    if len(x) < 2 or len(set(x.tolist())) < 2:
        raise ValueError(f"a fit needs two different frame counts, got {list(frames)}")
    slope, intercept = np.polyfit(x, y, 1)
    fit = {"points": len(x), "linear": {"intercept_gib": float(intercept), "per_frame_gib": float(slope),
                                        "max_residual_gib": float(np.abs(intercept + slope * x - y).max())}}
    if len(set(x.tolist())) >= 4:
        c, b, a = np.polyfit(x, y, 2)
        fit["quadratic"] = {"intercept_gib": float(a), "per_frame_gib": float(b), "per_frame_squared_gib": float(c),
                            "max_residual_gib": float(np.abs(a + b * x + c * x * x - y).max())}
    return fit


def frames_that_fit(linear: dict, budget_gib: float, reserve_gib: float = 0.0) -> int:
    """The largest frame count whose linear-fit peak stays within `budget_gib - reserve_gib` (0 if none does)."""
    room = budget_gib - reserve_gib - linear["intercept_gib"]
    if linear["per_frame_gib"] <= 0:
        raise ValueError(f"per-frame memory {linear['per_frame_gib']:.4f} GiB is not positive: no frame limit")
    # the fit's last bits differ between BLAS builds (a slope of 0.5 is 0.49999999999999994 on some): a count within
    # 1e-9 of the next whole frame is that frame, so that a budget the line meets exactly gives the same count anywhere
    return max(0, math.floor(room / linear["per_frame_gib"] + 1e-9))


def point_label(row: dict) -> str:
    """A row's kind, with its quantization and its frame chunking when it has them: `encoder`, `encoder@chunk2`,
    `answer[int8]`."""
    quantize, chunk = row.get("quantize", "none"), row.get("frames_chunk_size")
    return (row["kind"] + ("" if quantize == "none" else f"[{quantize}]")
            + ("" if chunk is None else f"@chunk{chunk}"))


def summarise(rows: list[dict], budgets: list[float], reserve: float) -> dict:
    """Per kind, quantization and frame chunking, the fit of the measured points and the frame counts that fit each
    budget."""
    summary = {}
    labels = {point_label(r): r["kind"] for r in rows}
    for label in sorted(labels, key=lambda label: (KINDS.index(labels[label]), label)):
        for key in ("peak_gib", "peak_with_adamw_gib"):
            measured = [r for r in rows if point_label(r) == label and key in r]
            if len({r["frames"] for r in measured}) < 2:
                continue
            fit = fit_memory([r["frames"] for r in measured], [r[key] for r in measured])
            if fit["linear"]["per_frame_gib"] > 0:
                fit["frames_that_fit"] = {f"{budget:g}": frames_that_fit(fit["linear"], budget, reserve)
                                          for budget in budgets}
            else:  # the peaks did not grow with the frames (noise larger than the frames' share): no limit to read
                fit["frames_that_fit"] = "none: the fitted memory does not grow with the frames"
            fit["largest_measured_frames"] = max(r["frames"] for r in measured)
            summary[f"{label}:{key}"] = fit
    return summary


def table(rows: list[dict]) -> str:
    """The measured points as a Markdown table."""
    lines = ["| kind | frames | tokens | peak GiB | weights GiB | above weights GiB | with AdamW states GiB | s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {point_label(r)} | {r['frames']} | | {r['error'][:60]} | | | | |")
            continue
        tokens = r.get("prompt_tokens", r.get("sequence_tokens", r.get("geometry_tokens")))
        with_adamw = r.get("peak_with_adamw_gib", r["peak_gib"] if r.get("adamw_state") == "measured" else None)
        lines.append(f"| {point_label(r)} | {r['frames']} | {tokens} | {r['peak_gib']:.2f} | {r['weights_gib']:.2f} | "
                     f"{r['peak_above_weights_gib']:.2f} | {'' if with_adamw is None else f'{with_adamw:.2f}'} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the run
def saved_rows(path: Path) -> list[dict]:
    """The rows of a run's --out file, or the JSON lines a `--point` process printed."""
    text = path.read_text()
    if text.lstrip().startswith("{\n") or text.lstrip().startswith('{"meta"'):
        return json.loads(text)["rows"]
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"kind"')]


def run_point(args, kind: str, frames: int, remaining: float) -> dict:
    """One point in a fresh process of this script; its row, or the error it ended with."""
    command = [sys.executable, str(Path(__file__).resolve()), "--point", kind, str(frames), *args.forwarded]
    timeout = None if remaining == float("inf") else max(1.0, remaining)
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "frames": frames, "frames_chunk_size": args.frames_chunk_size,
                "error": f"past the time budget ({timeout:.0f} s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"kind": kind, "frames": frames, "frames_chunk_size": args.frames_chunk_size,
                "error": f"exit {done.returncode}: {tail}"[:300]}
    return json.loads(lines[-1])


def parse(argv=None):
    from bench_real_size import add_size_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.set_defaults(dtype="bfloat16")
    parser.add_argument("--frames", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=["answer", "train"])
    parser.add_argument("--attn", default="sdpa", help="attention implementation of every part (default: sdpa)")
    parser.add_argument("--quantize", default="none", choices=("none", *QUANTIZED_CHOICES),
                        help="the language model's Linear layers quantized as --quantize loads them (answer points "
                             "only), from --weights-folder")
    parser.add_argument("--weights-folder", default=None,
                        help="load the model of each point from this folder, as a checkpoint loads (needed by "
                             "--quantize; written first when absent: 6.5 GB at the real size) instead of building it")
    parser.add_argument("--save-weights", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--new-tokens", type=int, default=32, help="greedy tokens of an answer")
    parser.add_argument("--answer-tokens", type=int, default=32, help="answer tokens of a training sample")
    parser.add_argument("--optimizer", choices=("adamw", "none"), default="adamw")
    parser.add_argument("--checkpointing", choices=("on", "off"), default="on")
    parser.add_argument("--frames-chunk-size", type=int, default=None,
                        help="geometry_config.frames_chunk_size: frames of each sample at a time in the VGGT "
                             "aggregator's token-local work (default: all at once)")
    parser.add_argument("--budgets", type=float, nargs="+", default=[24.0, 80.0], help="GPU memory, GiB")
    parser.add_argument("--reserve", type=float, default=1.0, help="GiB of each budget kept for the CUDA context")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run")
    parser.add_argument("--out", default="bench_frames_memory.json")
    parser.add_argument("--rows-from", nargs="+", default=None, metavar="JSON",
                        help="measure nothing: table and fit of the rows of earlier runs' --out files (or of "
                             "a --point's printed line), together")
    parser.add_argument("--point", nargs=2, metavar=("KIND", "FRAMES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quantize != "none" and not (args.point or args.save_weights) and (args.weights_folder is None or set(args.kinds) != {"answer"}):
        parser.error(f"--quantize {args.quantize} measures answer points (--kinds answer) of the model saved in "
                     "--weights-folder FOLDER: name both")
    # what a point's process is given: the model and the point's settings, not the run's own options
    args.forwarded = ["--size", args.size, "--device", args.device, "--dtype", args.dtype, "--attn", args.attn,
                      "--quantize", args.quantize, *(["--weights-folder", args.weights_folder] if args.weights_folder
                                                     else []), "--new-tokens", str(args.new_tokens), "--answer-tokens",
                      str(args.answer_tokens), "--optimizer", args.optimizer, "--checkpointing", args.checkpointing,
                      *(["--frames-chunk-size", str(args.frames_chunk_size)] if args.frames_chunk_size else [])]
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.save_weights:
        save_weights_folder(args)
        return 0
    if args.point:
        kind, frames = args.point[0], int(args.point[1])
        print(json.dumps(measure_point(args, kind, frames)), flush=True)
        return 0
    if args.rows_from:
        rows = [row for path in args.rows_from for row in saved_rows(Path(path))]
        rows.sort(key=lambda row: (row["frames"], KINDS.index(row["kind"]), row.get("frames_chunk_size") or 0))
        print(table(rows))
        print(json.dumps(summarise([r for r in rows if "error" not in r], args.budgets, args.reserve), indent=2))
        return 0
    from needs_gpu import require_cuda

    require_cuda(Path(__file__).name, args.device)
    if args.weights_folder and not Path(args.weights_folder, "config.json").is_file():
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--save-weights", *args.forwarded], check=True)
    start, rows = time.perf_counter(), []
    results = {"meta": {"command": " ".join(["python", "bench/bench_frames_memory.py", *(argv or sys.argv[1:])]),
                        "size": args.size, "device": args.device, "dtype": args.dtype, "attn": args.attn,
                        "quantize": args.quantize, "frames_chunk_size": args.frames_chunk_size, "threads": os.environ.get("OMP_NUM_THREADS"),
                        "counted": "peak RSS (VmHWM) minus RSS after imports" if args.device == "cpu"
                                   else "torch.cuda.max_memory_allocated"}}
    for frames in sorted(args.frames):
        for kind in args.kinds:
            remaining = float("inf") if args.budget is None else args.budget - (time.perf_counter() - start)
            if remaining <= 0:
                row = {"kind": kind, "frames": frames, "error": "skipped: time budget spent"}
            else:
                row = run_point(args, kind, frames, remaining)
            rows.append(row)
            print(json.dumps(row), flush=True)
            results.update(rows=rows, fit=summarise([r for r in rows if "error" not in r], args.budgets, args.reserve))
            Path(args.out).write_text(json.dumps(results, indent=2))
    print(table(rows))
    print(json.dumps(results["fit"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
