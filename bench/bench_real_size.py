"""GAP-MLLM at the real size (Qwen3-VL-2B + VGGT-1B, random weights) on one GPU: one command, one JSON.

    python bench/bench_real_size.py --real-size --device cuda --dtype bfloat16 --out results.json
    python bench/bench_real_size.py --size small --device cpu --out small.json      # seconds; what the test runs

Measurements, in this order (each with warm-ups and timed repeats, synchronised; each catches its own
out-of-memory or other error and records it instead of stopping; results are rewritten to --out after
every measurement, so a run cut short keeps what it measured; progress goes to stdout, flushed):

  build                 weights allocated on the device in the dtype (never fp32 on the CPU first); counts
  geometry_518          VGGT encoder alone at 518×518, frames 1 … 50 (docs/vggt.md §8), beside VGGT's
                        published H100 figures (100 and 200 frames run last, as geometry_518_large; a frame
                        count is skipped when the time budget left looks too short for it)
  geometry_336x448      the same at GAP's training frames
  prefill_<V>views      one prefill forward (encoder, ViT, fusion, LLM; logits of the last token) at 4, 16
                        and 32 views of inference frames (221 visual tokens each): latency, peak memory,
                        achieved model TFLOP/s
  generate              decode tokens/s at 4 views: (t(1 + N new tokens) − t(1 new token)) / N
  generate_compiled     the same with compile_decoding="on" (static cache, decode step as a CUDA graph); the first
                        call's compilation timed apart; whether its tokens equal the uncompiled ones
  scene_reuse_k8        8 questions on one 4-view scene: 8 full generate calls vs encode_scene + 8
                        generate(model, scene=...) calls vs one batched call; ratios and whether answers agree
  train_step_<attn>     forward + backward + AdamW step of GeometryAlignedModel (official freezing: ViT and
                        VGGT frozen; LLM, mergers, gates trained; bf16 weights and optimizer states), batch 2
                        × 4 training frames: step time, tokens/s, peak memory, MFU (real_size_flops.py);
                        in the --attn implementation, and in each flash-attn one whose package and GPU are there
                        (training/kernels.py); bench_train_arms.py compares the arms over 50 steps
  cache_read            geometry-feature cache at this size: recomputing one sample's features on the
                        device vs reading its entry (cold: page cache dropped with posix_fadvise; warm)
  geometry_*_large      the encoder at 100 and 200 frames
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from transformers import CompileConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from real_size_flops import forward_flops, peak_flops, training_step_flops  # noqa: E402
from real_size_inputs import QWEN_GRIDS, full_inputs, image_inputs, question_suffix, scene_prefix, to_device  # noqa: E402
from real_size_model import build_model, parameter_counts, special_ids  # noqa: E402
from needs_gpu import arm_unavailable, require_cuda, require_kernel  # noqa: E402

from gap_mllm.generation import encode_scene, generate  # noqa: E402
from gap_mllm.training.kernels import ATTENTION_IMPLEMENTATIONS, FLASH_PACKAGES  # noqa: E402

# VGGT README, aggregator only, one H100, FlashAttention-3, 518×518 (docs/vggt.md §8): frames → (s, GB)
VGGT_PUBLISHED = {1: (0.04, 1.88), 2: (0.05, 2.07), 4: (0.07, 2.45), 8: (0.11, 3.23), 10: (0.14, 3.63),
                  20: (0.31, 5.58), 50: (1.04, 11.41), 100: (3.12, 21.15), 200: (8.75, 40.63)}
SETTINGS = {
    "real": dict(geometry_sizes={"geometry_518": (518, 518), "geometry_336x448": (336, 448)},
                 geometry_frames=[1, 2, 4, 8, 10, 20, 50], geometry_frames_large=[100, 200],
                 prefill_views=[4, 16, 32], generate_tokens=64,
                 scene_questions=8, scene_tokens=32, train_batch=2, train_views=4, answer_tokens=32, cache_samples=8,
                 warmup=2, repeats=3, train_warmup=2, train_repeats=5, train_grid="train", infer_grid="infer"),
    # the CPU run that keeps the script from rotting: every measurement, tiny shapes, one timed run each
    "small": dict(geometry_sizes={"geometry_518": (56, 56), "geometry_336x448": (56, 84)},
                  geometry_frames=[1, 2], geometry_frames_large=[3], prefill_views=[1, 2], generate_tokens=2, scene_questions=2, scene_tokens=2,
                  train_batch=1, train_views=2, answer_tokens=4, cache_samples=2, warmup=1, repeats=1,
                  train_warmup=1, train_repeats=1, train_grid="small", infer_grid="small"),
}
GIB = 2**30


class Bench:
    """Runs the measurements and keeps the results file current."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.dtype = getattr(torch, args.dtype)
        self.settings = dict(SETTINGS[args.size])
        for key in ("warmup", "repeats"):
            if getattr(args, key) is not None:
                self.settings[key] = getattr(args, key)
        self.start = time.perf_counter()
        self.results = {"meta": self.meta(), "measurements": {}}
        self.model = None

    # ------------------------------------------------------------------ bookkeeping
    def meta(self) -> dict:
        import transformers

        name = torch.cuda.get_device_name(self.device) if self.cuda else "cpu"
        return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "size": self.args.size,
                "device": name, "dtype": self.args.dtype, "torch": torch.__version__,
                "transformers": transformers.__version__, "cuda": torch.version.cuda,
                "peak_bf16_flops": peak_flops(name) if self.cuda else None,
                "kernels": {name: arm_unavailable(name, self.args.device) or "ready" for name in (*FLASH_PACKAGES, "liger")},
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def remaining(self) -> float:
        return float("inf") if self.args.budget is None else self.args.budget - self.elapsed()

    def save(self) -> None:
        self.results["meta"]["elapsed_s"] = round(self.elapsed(), 1)
        path = Path(self.args.out)
        temporary = path.with_suffix(path.suffix + ".tmp")
        temporary.write_text(json.dumps(self.results, indent=2, default=str))
        os.replace(temporary, path)

    def log(self, text: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {text}", flush=True)

    def record(self, name: str, value: dict) -> None:
        self.results["measurements"][name] = value
        self.save()
        shown = {k: v for k, v in value.items() if not isinstance(v, (list, dict))}
        self.log(f"{name}: {json.dumps(shown, default=str)}")

    def run(self, name: str, function, *args) -> None:
        """One measurement: skipped past the budget, out-of-memory and other errors recorded, memory freed."""
        if self.args.only and not any(name.startswith(prefix) for prefix in self.args.only):
            return
        if self.remaining() <= 0:
            self.record(name, {"skipped": "time budget spent"})
            return
        self.log(f"{name} ...")
        try:
            self.record(name, function(*args))
        except torch.OutOfMemoryError as error:
            self.record(name, {"error": "out of memory", "detail": str(error).splitlines()[0][:300]})
        except Exception as error:  # noqa: BLE001 - a bench records every failure and goes on
            self.record(name, {"error": f"{type(error).__name__}: {error}"[:500],
                               "traceback": traceback.format_exc()[-2000:]})
        finally:
            self.free()

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ timing
    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> float:
        """Reset the peak counter; returns the bytes allocated now (GiB), None on the CPU."""
        if not self.cuda:
            return None
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device) / GIB

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else None

    def timed(self, function, warmup: int | None = None, repeats: int | None = None) -> list[float]:
        """Seconds of each timed repeat of `function()` after `warmup` untimed runs (synchronised)."""
        warmup = self.settings["warmup"] if warmup is None else warmup
        repeats = self.settings["repeats"] if repeats is None else repeats
        for _ in range(warmup):
            function()
        times = []
        for _ in range(repeats):
            self.sync()
            start = time.perf_counter()
            function()
            self.sync()
            times.append(time.perf_counter() - start)
        return times

    def inputs(self, **kwargs) -> dict:
        return to_device(full_inputs(self.model.config, self.ids, **kwargs), self.device, self.dtype)

    # ------------------------------------------------------------------ measurements
    def build(self) -> dict:
        start = time.perf_counter()
        self.model = build_model(self.args.size, self.args.device, self.dtype, self.args.attn_default)
        self.sync()
        self.ids = special_ids(self.model.config)
        return {"seconds": time.perf_counter() - start, "parameters": parameter_counts(self.model),
                "memory_gib": self.peak(), "attn_implementation": self.args.attn_default}

    @torch.inference_mode()
    def geometry(self, height: int, width: int, frame_counts: list[int]) -> dict:
        encoder = self.model.geometry_encoder
        rows, published = [], height == width == 518
        for frames in frame_counts:
            if rows and rows[-1].get("seconds") and rows[-1]["seconds"] * 4 * frames / rows[-1]["frames"] > self.remaining():
                rows.append({"frames": frames, "skipped": "time budget"})
                continue
            images = torch.rand(1, frames, 3, height, width, device=self.device, dtype=self.dtype)
            before = self.reset_peak()
            try:
                times = self.timed(lambda: encoder(images), warmup=1, repeats=2 if frames >= 50 else self.settings["repeats"])
            except torch.OutOfMemoryError:
                rows.append({"frames": frames, "error": "out of memory"})
                break
            finally:
                del images
                self.free()
            row = {"frames": frames, "seconds": statistics.median(times), "peak_gib": self.peak(),
                   "peak_above_weights_gib": None if before is None else self.peak() - before}
            if published and frames in VGGT_PUBLISHED:
                row["vggt_published_s"], row["vggt_published_gib"] = VGGT_PUBLISHED[frames]
            rows.append(row)
            self.log(f"  {frames} frames: {row['seconds']:.3f} s")
        patch = self.model.config.geometry_config.patch_size
        return {"height": height, "width": width, "tokens_per_frame": (height // patch) * (width // patch) + 5,
                "rows": rows, "note": "peak_gib includes the whole GAP-MLLM's weights; VGGT's figures are the "
                                      "aggregator alone with FlashAttention-3"}

    @torch.inference_mode()
    def prefill(self, views: int) -> dict:
        grid = QWEN_GRIDS[self.settings["infer_grid"]]
        inputs = self.inputs(views=views, grid=grid)
        before = self.reset_peak()
        times = self.timed(lambda: self.model(**inputs, use_cache=True, logits_to_keep=1))
        seconds = statistics.median(times)
        length = int(inputs["input_ids"].shape[1])
        flops = sum(forward_flops(self.model, [views], grid, [length], [1]).values())
        return {"views": views, "sequence_tokens": length, "visual_tokens": views * grid[0] * grid[1] // 4,
                "seconds": seconds, "times_s": times, "peak_gib": self.peak(),
                "peak_above_weights_gib": None if before is None else self.peak() - before,
                "model_tflops": flops / 1e12, "achieved_tflops_per_s": flops / seconds / 1e12}

    @torch.inference_mode()
    def generate(self) -> dict:
        grid = QWEN_GRIDS[self.settings["infer_grid"]]
        inputs = self.inputs(views=4, grid=grid)
        count = self.settings["generate_tokens"]

        def run(new_tokens):
            return lambda: self.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

        self.reset_peak()
        first = statistics.median(self.timed(run(1)))
        total = statistics.median(self.timed(run(1 + count)))
        return {"views": 4, "prompt_tokens": int(inputs["input_ids"].shape[1]), "new_tokens": count,
                "prefill_and_first_token_s": first, "total_s": total,
                "decode_tokens_per_s": count / (total - first), "end_to_end_tokens_per_s": (1 + count) / total,
                "peak_gib": self.peak()}

    @torch.inference_mode()
    def generate_compiled(self) -> dict:
        """`generate` as above with `compile_decoding="on"` (static cache, the decode step compiled to a CUDA graph):
        the first call's compilation timed apart, then the same decode figure; the tokens beside the uncompiled ones."""
        grid = QWEN_GRIDS[self.settings["infer_grid"]]
        inputs = self.inputs(views=4, grid=grid)
        count = self.settings["generate_tokens"]

        def run(new_tokens, compile_decoding):
            return lambda: generate(self.model, **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                    do_sample=False, compile_decoding=compile_decoding)

        # on the CPU (the small run that keeps this path working) the same capture with Dynamo's eager backend: no
        # inductor build there, and no speed figure is claimed for it
        compiled = "on" if self.cuda else CompileConfig(fullgraph=True, dynamic=False, backend="eager", mode=None)
        self.reset_peak()
        compile_s = self.timed(run(1 + count, compiled), warmup=0, repeats=1)[0]  # compiles the decode step
        first = statistics.median(self.timed(run(1, compiled)))
        total = statistics.median(self.timed(run(1 + count, compiled)))
        compiled_tokens, eager_tokens = run(1 + count, compiled)(), run(1 + count, "off")()
        same = torch.equal(compiled_tokens, eager_tokens)
        # where the two greedy answers part (None: equal): a late parting after a near tie is bf16 rounding (the
        # static cache attends over a padded, masked length); float32 must give equal tokens (the decode_fp32 arm)
        differing = (compiled_tokens != eager_tokens).flatten().nonzero()
        prompt = int(inputs["input_ids"].shape[1])
        return {"views": 4, "new_tokens": count, "first_call_with_compilation_s": compile_s,
                "prefill_and_first_token_s": first, "total_s": total, "decode_tokens_per_s": count / (total - first),
                "end_to_end_tokens_per_s": (1 + count) / total, "tokens_equal_to_uncompiled": same,
                "first_differing_new_token": None if same else int(differing[0]) - prompt,
                "peak_gib": self.peak(),
                "compile_decoding": "on (static cache, reduce-overhead)" if self.cuda else "CPU check: Dynamo eager backend"}

    @torch.inference_mode()
    def scene_reuse(self) -> dict:
        config, ids = self.model.config, self.ids
        grid = QWEN_GRIDS[self.settings["infer_grid"]]
        count, new = self.settings["scene_questions"], self.settings["scene_tokens"]
        generator = torch.Generator().manual_seed(1)
        prefix = scene_prefix(ids, 4, grid, generator)
        images = to_device({**image_inputs(config, 4, grid, generator), "geometry_views_per_sample": torch.tensor([4])},
                           self.device, self.dtype)
        questions = [question_suffix(ids, 8 + 4 * i, generator) for i in range(count)]
        options = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
        scene_inputs = {"input_ids": prefix[None].to(self.device), **images}

        def full():
            answers = []
            for question in questions:
                ids_ = torch.cat([prefix, question])[None].to(self.device)
                out = self.model.generate(input_ids=ids_, attention_mask=torch.ones_like(ids_),
                                          mm_token_type_ids=(ids_ == ids["image"]).int(), **images, **options)
                answers.append(out[0, ids_.shape[1]:])
            return answers

        def one_by_one():
            scene = encode_scene(self.model, **scene_inputs)
            return [generate(self.model, scene=scene, input_ids=q[None].to(self.device), **options)[0, len(q):]
                    for q in questions]

        width = max(len(q) for q in questions)
        batch_ids = torch.full((count, width), ids["pad"])
        batch_mask = torch.zeros((count, width), dtype=torch.long)
        for row, question in enumerate(questions):  # left padding
            batch_ids[row, width - len(question):], batch_mask[row, width - len(question):] = question, 1

        def batched():
            scene = encode_scene(self.model, **scene_inputs)
            out = generate(self.model, scene=scene, input_ids=batch_ids.to(self.device),
                                      attention_mask=batch_mask.to(self.device), **options)
            return list(out[:, width:])

        arms = {"full": full, "scene": one_by_one, "batched": batched}
        answers = {name: arm() for name, arm in arms.items()}  # warm-up, and the answers to compare
        samples = {name: [] for name in arms}
        for _ in range(max(1, self.settings["repeats"] - 1)):
            for name, arm in arms.items():  # interleaved
                samples[name] += self.timed(arm, warmup=0, repeats=1)
        medians = {f"{name}_s": statistics.median(values) for name, values in samples.items()}
        agree = {name: sum(torch.equal(a, b) for a, b in zip(answers["full"], answers[name])) for name in ("scene", "batched")}
        return {"questions": count, "views": 4, "prefix_tokens": len(prefix), "new_tokens": new, **medians,
                "full_over_scene": medians["full_s"] / medians["scene_s"],
                "full_over_batched": medians["full_s"] / medians["batched_s"],
                "answers_equal_to_full": agree,
                "note": "answers can differ in bf16: the prefix is prefilled in a different shape than in the full call"}

    def train_step(self, attn: str) -> dict:
        from gap_mllm.training.divergence import StepGuard
        from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel

        if attn != self.args.attn_default:
            self.model.set_attn_implementation(attn)
        model = self.model.train()
        wrapped = GeometryAlignedModel(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=1e-5, weight_decay=0.01, fused=self.cuda)
        grid = QWEN_GRIDS[self.settings["train_grid"]]
        views, batch = self.settings["train_views"], self.settings["train_batch"]
        inputs = self.inputs(views=views, grid=grid, answer_length=self.settings["answer_tokens"], batch=batch)

        guard = StepGuard(trainable, f"bench train_step_{attn}")
        steps = []

        def step():
            loss = wrapped(**inputs).loss
            loss.backward()
            steps.append(None)
            guard.check(len(steps), inputs, loss)  # never a figure of a non-finite step
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        try:
            self.reset_peak()
            times = self.timed(step, warmup=self.settings["train_warmup"], repeats=self.settings["train_repeats"])
        finally:
            optimizer.zero_grad(set_to_none=True)
            del optimizer
            model.eval()
            if attn != self.args.attn_default:
                self.model.set_attn_implementation(self.args.attn_default)
        seconds = statistics.median(times)
        length = int(inputs["input_ids"].shape[1])
        answers = int((inputs["labels"] != -100).sum())
        flops = training_step_flops(forward_flops(model, [views] * batch, grid, [length] * batch, [answers // batch] * batch))
        peak = self.results["meta"]["peak_bf16_flops"]
        total = sum(flops.values())
        return {"attn_implementation": attn, "batch": batch, "views": views, "sequence_tokens": length,
                "seconds": seconds, "times_s": times, "tokens_per_s": batch * length / seconds,
                "peak_gib": self.peak(), "model_tflops": total / 1e12,
                "tflops_by_part": {k: v / 1e12 for k, v in flops.items()},
                "achieved_tflops_per_s": total / seconds / 1e12,
                "mfu": None if peak is None else total / seconds / peak}

    def cache_read(self) -> dict:
        """Recomputing the frozen VGGT taps vs reading them as the training feature cache stores them (one
        safetensors file per tower input, `geometry.<level>` in float16 storage: training/feature_cache.py)."""
        import safetensors.torch

        from gap_mllm.training.frozen_towers import geometry_fingerprint

        grid = QWEN_GRIDS[self.settings["train_grid"]]
        samples = [self.inputs(views=4, grid=grid, seed=100 + i) for i in range(self.settings["cache_samples"])]
        directory = Path(tempfile.mkdtemp(prefix="gap-cache-bench-", dir=self.args.cache_dir))
        started = time.perf_counter()
        geometry_fingerprint(self.model)  # what the cache hashes of the frozen encoder before it is used
        fingerprint_s = time.perf_counter() - started

        def compute(sample):
            with torch.inference_mode():
                return self.model.get_geometry_features(sample["geometry_pixel_values"], sample["image_grid_thw"], [4])

        recompute = statistics.median(self.timed(lambda: compute(samples[0])))
        paths = [directory / f"sample{index}.safetensors" for index in range(len(samples))]
        for path, sample in zip(paths, samples):
            levels = {f"geometry.{level}": features[0].to(torch.float16).cpu().contiguous()
                      for level, features in enumerate(compute(sample))}
            path.write_bytes(safetensors.torch.save(levels))
        dropped = drop_page_cache(paths)

        def read_all():
            for path in paths:
                [level.to(self.device, non_blocking=True) for level in safetensors.torch.load(path.read_bytes()).values()]

        cold = self.timed(read_all, warmup=0, repeats=1)[0] / len(samples)
        warm = statistics.median(self.timed(read_all, warmup=0, repeats=2)) / len(samples)
        size = paths[0].stat().st_size
        for path in paths:
            path.unlink()
        return {"views": 4, "grid": grid, "bytes_per_sample": size, "fingerprint_s": fingerprint_s,
                "recompute_s_per_sample": recompute, "read_cold_s_per_sample": cold if dropped else None,
                "read_warm_s_per_sample": warm, "cold_mb_per_s": size / cold / 1e6 if dropped else None,
                "page_cache_dropped": dropped, "recompute_over_cold_read": recompute / cold if dropped else None,
                "recompute_over_warm_read": recompute / warm}

    # ------------------------------------------------------------------ the whole run
    def all(self) -> None:
        self.log(f"GAP-MLLM {self.args.size} on {self.results['meta']['device']}, {self.args.dtype}")
        self.run("build", self.build)
        if self.model is None:
            return
        for name, (height, width) in self.settings["geometry_sizes"].items():
            self.run(name, self.geometry, height, width, self.settings["geometry_frames"])
        for views in self.settings["prefill_views"]:
            self.run(f"prefill_{views}views", self.prefill, views)
        self.run("generate", self.generate)
        self.run("generate_compiled", self.generate_compiled)
        self.run(f"scene_reuse_k{self.settings['scene_questions']}", self.scene_reuse)
        self.run(f"train_step_{self.args.attn_default}", self.train_step, self.args.attn_default)
        self.run("cache_read", self.cache_read)
        for name in FLASH_PACKAGES:
            if name != self.args.attn_default and arm_unavailable(name, self.args.device) is None:
                self.run(f"train_step_{name}", self.train_step, name)
        # the longest runs last, so that a short budget still leaves everything above
        for name, (height, width) in self.settings["geometry_sizes"].items():
            self.run(f"{name}_large", self.geometry, height, width, self.settings["geometry_frames_large"])
        self.log(f"done; results in {self.args.out}")


def drop_page_cache(paths) -> bool:
    """Ask the kernel to drop these files' cached pages (posix_fadvise DONTNEED, no root needed)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for path in paths:
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return True


def add_size_arguments(parser: argparse.ArgumentParser) -> None:
    """The model size, device and dtype options shared by the real-size benches."""
    parser.add_argument("--size", choices=sorted(SETTINGS), default="small")
    parser.add_argument("--real-size", dest="size", action="store_const", const="real", help="same as --size real")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                        help="default: bfloat16 on CUDA, float32 on the CPU")


def apply_size_defaults(args) -> None:
    """Fill the defaults that depend on the device and size (dtype, time budget) and set the CPU threads."""
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    if args.budget is None and args.size == "real":
        args.budget = 540.0  # a 10-minute limit per command on the lent GPU machines
    if args.threads:
        torch.set_num_threads(args.threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--out", default="bench_real_size.json")
    parser.add_argument("--attn", dest="attn_default", default="sdpa", choices=ATTENTION_IMPLEMENTATIONS)
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which the remaining measurements are skipped (default: 540 with "
                             "--real-size, for a 10-minute limit; none otherwise)")
    parser.add_argument("--only", nargs="*", default=None, help="run only measurements whose name starts so")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--cache-dir", default=None, help="where the cache_read entries are written (default: tmp)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    require_cuda(Path(__file__).name, args.device)
    require_kernel(Path(__file__).name, "--attn", args.attn_default, args.device)
    apply_size_defaults(args)
    Bench(args).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
