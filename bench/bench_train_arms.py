"""Training speed per kernel arm at the real size (Qwen3-VL-2B + VGGT-1B, random weights, bf16, one GPU): model-FLOPs
utilisation (MFU) of each arm and the loss curves of the same steps side by side.

    python bench/bench_train_arms.py --real-size --device cuda --steps 50 --out train_arms.json
    python bench/bench_train_arms.py --real-size --device cuda --steps 15 --batch 8 --arms sdpa sdpa_bucketed default
    python bench/bench_train_arms.py --size small --device cpu --steps 4 --out small.json   # CPU: the arms it can run

Options: `--steps N` (the same N batches for every arm), `--warmup-steps W` (left out of the timing), `--batch B`,
`--arms NAME ...` (default: all; run in the order given, Liger's language-model arms last), `--buckets L ...` (the
bucketed arms' sequence lengths; default: three, from the batches' own padded widths), `--budget S`, `--out FILE`, and
bench_real_size.py's size options (`--real-size`, `--size`, `--device`, `--dtype`).

Every arm starts from the same initial weights and trains the same `--steps` batches in the same order (forward,
backward, AdamW step of `GeometryAlignedModel` with the official freezing: ViT and VGGT frozen; LLM, mergers and gates
trained; the loss is the answer-token mean of the batch). The batches are synthetic (bench/real_size_inputs.py) with
samples of different lengths (views, question and answer lengths drawn from a seed), so packing has padding to save.
Arms (`ARMS`; `--arms` picks some):

    sdpa                           the plain arm: padded rows, torch's sdpa
    eager                          padded, eager attention: the same arithmetic in another order, the reference of
                                   what bf16 rounding alone moves the loss curve by (`noise_reference`)
    sdpa_packed                    the batch in one packed row, one causal sdpa call per sample (training/packed_attention.py)
    flash_attention_2[_packed]     flash-attn 2.x, padded / one packed row (transformers' variable-length path)
    flash_attention_4[_packed]     flash-attn-4 (Hopper+), likewise
    sdpa_liger                     padded sdpa + Liger's fused linear cross-entropy at the answer tokens
    flash_attention_2_packed_liger the kernels together
    sdpa_bucketed                  padded sdpa, each batch padded to a sequence-length bucket (data.length_buckets)
    sdpa_compile                   padded sdpa, each LLM decoder layer `torch.compile`d (regional); CUDA only here
    sdpa_compile_bucketed          the compiled layers at static shapes, one per bucket (the recipes' compile setting)
    sdpa_compile_towers_bucketed   the same, and every block of the frozen towers compiled (`kernels.compile_towers`)
    sdpa_graph_towers_bucketed     the same, and the VGGT encoder's forward replayed as one CUDA graph per input shape
                                   (`kernels.graph_geometry_encoder`, training/cuda_graph_forward.py); CUDA only
    sdpa[_packed]_checkpointed     padded / packed sdpa under activation checkpointing (non-reentrant, as the real-size
                                   recipes train; packed rows recompute per sample: training/packed_attention.py)
    sdpa[_packed]_compile_towers_checkpointed
                                   the same with the towers compiled: what a real-size recipe runs on CUDA
    sdpa_compile_bucketed_checkpointed
                                   compiled layers at buckets, under activation checkpointing
    default                        the training recipes' defaults on CUDA (training/kernels.py `resolve_kernels`):
                                   bucketed padded rows, compiled layers, Liger's Qwen3-VL kernels in the language model
                                   and its fused linear cross-entropy
    default_packed                 the same with the batch in one packed row (one variable-length attention call per
                                   layer: training/packed_attention.py)
Liger's language-model kernels patch the model in place (and Qwen3-VL's RoPE function for the process), so the arms
with them run last.

An arm whose package or device is missing is recorded as skipped with the reason (training/kernels.py's checks).
Per arm: the loss of every step; the steady state over the steps after `--warmup-steps`: `median_step_s` (their
median), `tokens_per_s` and `mfu` from it (model FLOPs of the real tokens per step, padding not counted:
bench/real_size_flops.py; MFU = FLOPs per step / median step time / the GPU's dense bf16 peak), `mean_step_s` and
`mfu_mean` (the mean, which a recompiling step drags: the first H200 table's figures); compilation apart:
`compile_s` (the time above the steady median of every step, warm-up included, that took over twice the median:
compilations and first-time kernel plans), `slow_steps` (those steps) and `graphs_compiled` (Dynamo's count); peak memory; the largest |loss − the plain arm's loss| over the steps, beside the eager arm's
(`within_noise`: at most `NOISE_FACTOR` times it). The run keeps `bench_real_size.py`'s bookkeeping: each arm records
its own error, the results file is rewritten after each arm, `--budget` seconds skip the arms still to come.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from bench_real_size import Bench, add_size_arguments, apply_size_defaults  # noqa: E402
from needs_gpu import arm_unavailable, require_cuda  # noqa: E402
from real_size_flops import forward_flops, training_step_flops  # noqa: E402
from real_size_inputs import QWEN_GRIDS, full_inputs, to_device  # noqa: E402

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX  # noqa: E402
from gap_mllm.training.cuda_graph_forward import graph_geometry_encoder, ungraph_geometry_encoder  # noqa: E402
from gap_mllm.training.data import ONE_ROW, TRAINING_PADDING_SIDE  # noqa: E402
from gap_mllm.training.divergence import StepGuard  # noqa: E402
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel  # noqa: E402
from gap_mllm.training.host_metadata import add_host_metadata  # noqa: E402
from gap_mllm.training.kernels import (  # noqa: E402
    apply_attention_implementation,
    apply_liger_language_model,
    compile_decoder_layers,
    compile_frozen_towers,
    kernel_context,
    uncompile_decoder_layers,
    uncompile_frozen_towers,
)
from gap_mllm.training.length_buckets import pad_to_bucket  # noqa: E402
from gap_mllm.training.sample_tensors import collate_samples, split_batch  # noqa: E402

NOISE_FACTOR = 2.0  # an arm's loss curve is "within bf16 noise" when it stays this close, relative to eager's


@dataclass(frozen=True)
class Arm:
    """One way to run the same training step."""

    name: str
    attention: str = "sdpa"
    packed: bool = False
    liger: bool = False
    compile: bool = False
    buckets: bool = False
    liger_lm: bool = False
    compile_towers: bool = False
    graph_towers: bool = False  # the VGGT encoder replayed as CUDA graphs
    checkpointing: bool = False  # activation checkpointing, as the real-size recipes train (non-reentrant)


ARMS = (
    Arm("sdpa"),
    Arm("eager", attention="eager"),
    Arm("sdpa_packed", packed=True),
    Arm("flash_attention_2", attention="flash_attention_2"),
    Arm("flash_attention_2_packed", attention="flash_attention_2", packed=True),
    Arm("flash_attention_4", attention="flash_attention_4"),
    Arm("flash_attention_4_packed", attention="flash_attention_4", packed=True),
    Arm("sdpa_liger", liger=True),
    Arm("flash_attention_2_packed_liger", attention="flash_attention_2", packed=True, liger=True),
    Arm("sdpa_bucketed", buckets=True),
    Arm("sdpa_compile", compile=True),  # compiled layers are reset afterwards
    Arm("sdpa_compile_bucketed", compile=True, buckets=True),
    Arm("sdpa_compile_towers_bucketed", compile=True, buckets=True, compile_towers=True),
    Arm("sdpa_graph_towers_bucketed", compile=True, buckets=True, compile_towers=True, graph_towers=True),
    # the real-size recipes checkpoint activations: packing earns its place there only against a checkpointed baseline
    Arm("sdpa_checkpointed", checkpointing=True),
    Arm("sdpa_packed_checkpointed", packed=True, checkpointing=True),
    # what the real-size recipes run on CUDA (no length buckets, so no compiled layers; the towers compiled), padded
    # and packed
    Arm("sdpa_compile_towers_checkpointed", compile_towers=True, checkpointing=True),
    Arm("sdpa_packed_compile_towers_checkpointed", packed=True, compile_towers=True, checkpointing=True),
    Arm("sdpa_compile_bucketed_checkpointed", compile=True, buckets=True, checkpointing=True),
    # last: Liger's language-model kernels stay in the model
    Arm("default", compile=True, buckets=True, liger=True, liger_lm=True),
    Arm("default_packed", packed=True, compile=True, buckets=True, liger=True, liger_lm=True),
)
PLAIN, NOISE_REFERENCE = "sdpa", "eager"
SLOW_FACTOR = 2.0  # a step over this many times the steady median is counted as compilation / warm-up
# samples per batch, their views and lengths (drawn per sample), the grid of a view, the optimizer
SETTINGS = {
    "real": dict(batch=2, views=(2, 4), question=(8, 64), answer=(8, 32), grid="train", lr=1e-5),
    "small": dict(batch=3, views=(1, 2), question=(2, 12), answer=(2, 6), grid="small", lr=1e-3),
}


def arms_in_order(names: list[str] | None) -> list[Arm]:
    """The arms named, in the order given (a `--budget` that runs out skips the last ones: the call puts first what
    it needs most), those with Liger's language-model kernels last (they patch the model for good); all of `ARMS`,
    in its order, when none is named."""
    if not names:
        return list(ARMS)
    by_name = {arm.name: arm for arm in ARMS}
    chosen = [by_name[name] for name in dict.fromkeys(names)]
    return [arm for arm in chosen if not arm.liger_lm] + [arm for arm in chosen if arm.liger_lm]


def arm_unavailable_reason(arm: Arm, device: str) -> str | None:
    """Why `arm` cannot run on `device` (None: it can)."""
    if (arm.compile or arm.compile_towers) and not device.startswith("cuda"):
        return "this bench compiles on CUDA only (inductor's CPU code is not what is measured here)"
    if arm.graph_towers and not device.startswith("cuda"):
        return "a CUDA graph replays GPU kernels: CUDA only"
    return arm_unavailable(arm.attention, device) or (arm_unavailable("liger", device) if arm.liger else None)


def arm_kernels(arm: Arm) -> SimpleNamespace:
    """The arm's kernel switches under the recipe's names (training/kernels.py `kernel_context`)."""
    return SimpleNamespace(compile_layers=arm.compile, compile_towers=arm.compile_towers,
                           graph_geometry_encoder=arm.graph_towers,
                           liger_language_model=arm.liger_lm, liger_fused_linear_cross_entropy=arm.liger)


def plain_bench_settings(args) -> None:
    """What bench_real_size.Bench reads and the training benches (this one, bisect_compile_nan.py,
    profile_train_step.py) do not take: the model built in sdpa, every measurement run, Bench's own repeats."""
    args.attn_default, args.only, args.warmup, args.repeats, args.cache_dir = "sdpa", None, None, None, None


def make_samples(config, ids: dict, steps: int, settings: dict, seed: int = 0) -> list[list[dict]]:
    """`steps` batches of per-sample dicts (training/sample_tensors.py's layout), the same for every arm."""
    generator = torch.Generator().manual_seed(seed)

    def draw(bounds):
        return int(torch.randint(bounds[0], bounds[1] + 1, (1,), generator=generator))

    grid = QWEN_GRIDS[settings["grid"]]
    batches = []
    for step in range(steps):
        samples = []
        for index in range(settings["batch"]):
            inputs = full_inputs(config, ids, views=draw(settings["views"]), grid=grid,
                                 question_length=draw(settings["question"]), answer_length=draw(settings["answer"]),
                                 seed=seed + 1000 * step + index)
            samples.append(split_batch(inputs)[0])
        batches.append(samples)
    return batches


def default_buckets(widths: list[int], count: int = 3, multiple: int = 64) -> list[int]:
    """`count` sequence-length buckets for padded widths `widths`: their quantiles (the last: the widest), each
    rounded up to a multiple of `multiple` tokens."""
    ordered = sorted(widths)
    picks = [ordered[min(len(ordered) - 1, (len(ordered) * (i + 1)) // count - (1 if i + 1 == count else 0))]
             for i in range(count)]
    return sorted({-(-width // multiple) * multiple for width in picks})


def steady_state(times: list[float], warmup: int) -> dict:
    """The timing of an arm's steps: steady median over the steps after `warmup`, the mean, and the compilation /
    warm-up time apart (module docstring)."""
    warmup = min(warmup, len(times) - 1)
    timed = times[warmup:]
    steady = statistics.median(timed)
    slow = [index + 1 for index, time in enumerate(times) if time > SLOW_FACTOR * steady]
    return {"median_step_s": steady, "mean_step_s": statistics.fmean(timed), "timed_steps": len(timed),
            "compile_s": sum(times[step - 1] - steady for step in slow), "slow_steps": slow}


def step_flops(model, samples: list[dict], grid) -> float:
    """Model FLOPs of one training step on `samples` (their real tokens; padding is not counted)."""
    views = [int(s["image_grid_thw"].shape[0]) for s in samples]
    lengths = [int(s["input_ids"].shape[0]) for s in samples]
    answers = [int((s["labels"][1:] != IGNORE_INDEX).sum()) for s in samples]
    return sum(training_step_flops(forward_flops(model, views, grid, lengths, answers)).values())


def loss_gaps(losses: dict[str, list[float]]) -> dict[str, dict]:
    """Per arm: the largest and the mean |loss − the plain arm's| over the steps, and whether it stays within
    `NOISE_FACTOR` times the eager arm's largest gap (None without both reference arms)."""
    plain = losses.get(PLAIN)
    if plain is None:
        return {}
    gaps = {}
    for name, curve in losses.items():
        differences = [abs(a - b) for a, b in zip(curve, plain)]
        gaps[name] = {"max_abs_diff": max(differences), "mean_abs_diff": statistics.fmean(differences)}
    reference = gaps.get(NOISE_REFERENCE, {}).get("max_abs_diff")
    for name, gap in gaps.items():
        gap["within_noise"] = None if not reference else gap["max_abs_diff"] <= NOISE_FACTOR * reference
    return gaps


class ArmsBench(Bench):
    """bench_real_size.Bench's bookkeeping (results file, budget, errors recorded per measurement) for the arms."""

    def __init__(self, args):
        super().__init__(args)
        self.train_settings = dict(SETTINGS[args.size])
        if args.batch:
            self.train_settings["batch"] = args.batch
        self.grid = QWEN_GRIDS[self.train_settings["grid"]]
        self.results["meta"]["train_settings"] = {**self.train_settings, "steps": args.steps,
                                                  "warmup_steps": args.warmup_steps}
        self.losses: dict[str, list[float]] = {}

    def prepare(self) -> dict:
        """The batches every arm trains on, and the initial trainable weights each arm starts from."""
        self.samples = make_samples(self.model.config, self.ids, self.args.steps, self.train_settings, self.args.seed)
        self.initial = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        lengths = [int(s["input_ids"].shape[0]) for batch in self.samples for s in batch]
        return {"batches": len(self.samples), "samples": len(lengths), "tokens_mean": statistics.fmean(lengths),
                "tokens_min": min(lengths), "tokens_max": max(lengths)}

    def buckets(self) -> list[int]:
        """The bucketed arms' sequence lengths: `--buckets`, else `default_buckets` of the padded batches' widths."""
        if self.args.buckets:
            return sorted(self.args.buckets)
        return default_buckets([max(int(s["input_ids"].shape[0]) for s in samples) for samples in self.samples])

    def batches(self, arm: Arm) -> list[dict]:
        pad = self.ids["pad"]
        merge = self.model.config.vision_config.spatial_merge_size
        side = TRAINING_PADDING_SIDE  # as a training run pads its batches
        batches = [collate_samples(samples, pad, side, packing=arm.packed, spatial_merge_size=merge,
                                   row_tokens=ONE_ROW if arm.packed else None) for samples in self.samples]
        if arm.buckets:
            buckets = self.buckets()
            batches = [pad_to_bucket(batch, buckets, pad, side) for batch in batches]
        return [to_device(add_host_metadata(batch), self.device, self.dtype) for batch in batches]

    @contextlib.contextmanager
    def arm_session(self, arm: Arm):
        """`(wrapped model, optimizer, guard)` of `arm`: the initial weights, the arm's attention and kernels on; all
        undone afterwards (bench/profile_train_step.py trains its arms through it too)."""
        model = self.model
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    parameter.copy_(self.initial[name])
        apply_attention_implementation(model, arm.attention, {"bf16": self.dtype == torch.bfloat16})
        model.train()
        wrapped = GeometryAlignedModel(model, liger_cross_entropy=arm.liger, packed_rows=arm.packed)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.train_settings["lr"],
                                      weight_decay=0.01, fused=self.cuda)
        guard = StepGuard(model.parameters(), f"bench arm {arm.name}",
                          kernel_context(arm_kernels(arm), self.buckets() if arm.buckets else None))
        try:
            if arm.checkpointing:  # as Trainer's activation_checkpointing=True does (packed rows: recompute per sample)
                wrapped.activation_checkpointing_enable()
            if arm.liger_lm:
                apply_liger_language_model(model)
            if arm.compile:
                compile_decoder_layers(model, dynamic=False if arm.buckets else None)
            if arm.compile_towers:
                compile_frozen_towers(model)
            if arm.graph_towers:
                graph_geometry_encoder(model)
            yield wrapped, optimizer, guard
        finally:
            optimizer.zero_grad(set_to_none=True)
            del optimizer
            model.eval()
            if arm.checkpointing:
                model.activation_checkpointing_disable()
            if arm.compile:
                uncompile_decoder_layers(model)
            if arm.compile_towers:
                uncompile_frozen_towers(model)
            if arm.graph_towers:
                ungraph_geometry_encoder(model)
            apply_attention_implementation(model, self.args.attn_default, {"bf16": self.dtype == torch.bfloat16})

    @staticmethod
    def train_step(wrapped, optimizer, guard, step: int, batch: dict) -> torch.Tensor:
        """One step: the answer-token mean loss, backward, the guard (a non-finite step fails the arm before it
        writes weights), AdamW. Returns the loss (on the device)."""
        out = wrapped(**batch)
        loss = out.lm_loss_sum / out.lm_num_tokens
        loss.backward()
        guard.check(step, batch, loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    def train_arm(self, arm: Arm) -> dict:
        reason = arm_unavailable_reason(arm, self.args.device)
        if reason:
            return {"skipped": reason, **asdict(arm)}
        model = self.model
        batches = self.batches(arm)
        losses, times = [], []
        graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
        with self.arm_session(arm) as (wrapped, optimizer, guard):
            self.reset_peak()
            for batch in batches:
                self.sync()
                start = time.perf_counter()
                losses.append(float(self.train_step(wrapped, optimizer, guard, len(losses) + 1, batch)))
                self.sync()
                times.append(time.perf_counter() - start)
        self.losses[arm.name] = losses
        timing = steady_state(times, self.args.warmup_steps)
        timed_samples = self.samples[len(times) - timing["timed_steps"]:]
        flops = statistics.fmean(step_flops(model, samples, self.grid) for samples in timed_samples)
        tokens = statistics.fmean(sum(int(s["input_ids"].shape[0]) for s in samples) for samples in timed_samples)
        peak = self.results["meta"]["peak_bf16_flops"]
        slots = [int(b["input_ids"].numel()) for b in batches]
        steady, mean = timing["median_step_s"], timing["mean_step_s"]
        return {**asdict(arm), "losses": losses, "times_s": times, **timing,
                "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
                "buckets": self.buckets() if arm.buckets else None,
                "buckets_crossed": (set(self.buckets()) <= {int(b["input_ids"].shape[-1]) for b in batches}
                                    if arm.buckets else None),
                "tokens_per_s": tokens / steady, "model_tflops_per_step": flops / 1e12,
                "achieved_tflops_per_s": flops / steady / 1e12,
                "mfu": None if peak is None else flops / steady / peak,
                "mfu_mean": None if peak is None else flops / mean / peak,
                "padding_share": 1 - sum(int(s["input_ids"].shape[0]) for b in self.samples for s in b) / sum(slots),
                "peak_gib": self.peak()}

    def compare(self) -> dict:
        """The loss curves side by side (step by step) and each arm's gap to the plain arm."""
        gaps = loss_gaps(self.losses)
        for name, gap in gaps.items():
            measurement = self.results["measurements"].get(f"arm_{name}")
            if measurement is not None:
                measurement.update(gap)
        steps = range(len(next(iter(self.losses.values()), [])))
        return {"noise_reference": NOISE_REFERENCE, "noise_factor": NOISE_FACTOR, "gaps": gaps,
                "curves": [{"step": step + 1, **{name: curve[step] for name, curve in self.losses.items()}}
                           for step in steps]}

    def begin(self, what: str) -> bool:
        """Log the run, build the model and the batches; False when either failed (recorded)."""
        self.log(f"GAP-MLLM {self.args.size} on {self.results['meta']['device']}, {self.args.dtype}: {what}")
        self.run("build", self.build)
        if self.model is None:
            return False
        self.run("batches", self.prepare)
        return "error" not in self.results["measurements"]["batches"]

    def all(self) -> None:
        if not self.begin("training arms"):
            return
        for arm in arms_in_order(self.args.arms):
            self.run(f"arm_{arm.name}", self.train_arm, arm)
        self.run("loss_curves", self.compare)
        self.log(f"done; results in {self.args.out}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--steps", type=int, default=50, help="training steps per arm (the same batches for each)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="first steps left out of the timing (not the losses)")
    parser.add_argument("--batch", type=int, default=None, help="samples per batch (default: 2 real, 3 small)")
    parser.add_argument("--arms", nargs="*", choices=[arm.name for arm in ARMS], default=None, help="default: all")
    parser.add_argument("--buckets", nargs="*", type=int, default=None,
                        help="sequence lengths of the bucketed arms (default: three from the batches' padded widths)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_train_arms.json")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds after which the remaining arms are skipped (default: 540 with --real-size)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    require_cuda(Path(__file__).name, args.device)
    if args.steps < 2:
        parser.error("--steps: at least 2 (the first is a warm-up)")
    apply_size_defaults(args)
    plain_bench_settings(args)
    ArmsBench(args).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
