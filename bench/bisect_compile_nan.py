"""Bisect the non-finite update of compiled decoder layers + length buckets in one command.

    python bench/bisect_compile_nan.py --real-size --device cuda --out bisect.json          # ≤ 3 min on an H100
    python bench/bisect_compile_nan.py --size small --device cpu --configs eager_bucketed compile_static --out s.json

What it answers. On an H100 (bench/README.md, the H100 run of 2026-11-26) the arms with regional compile + length
buckets trained finite steps in the first bucket, recompiled for the first batch of the second bucket, and every later
loss was NaN: that step's update wrote non-finite weights. Each configuration below trains the same few batches from the
same initial weights, the bucket boundary crossed at the third step (two batches of a small bucket, then two of a larger
one; `--reverse` configurations the other way round), and checks every step before its optimizer update:

    loss              finite or not
    final hidden      non-finite values in the language model's last hidden states (the final norm's input, an
                      eager module), split by real and padding positions: NaN only at padding positions is the mark
                      of a fully masked attention row (a 0/0 softmax) that the loss cannot see
    gradients         how many trained parameters have a non-finite gradient, which decoder layers, the first names
    update            applied only when every gradient is finite (the guard): so a NaN step does not poison the
                      next, and each step's verdict is its own

The configurations, one question each (`CONFIGS`, in the order they run; `--budget` skips the rest):

    sdpa                      eager layers, no buckets: the reference losses
    eager_bucketed            the same buckets without compile: is it the padding, not the compiler?
    eager_bucketed_right_pad  the same, padded on the right (what training does since: training/data.py)
    eager_bucketed_cudnn / _efficient / _math
                              the same with one SDPA backend allowed: which kernel's backward writes the NaN
    compile_static            the failing setting (dynamic=False, inductor): the reproduction
    compile_static_reverse    the larger bucket first: does the NaN follow the recompile or the shape?
    compile_dynamic           dynamic=None (a dynamic graph after the second shape)
    compile_aot_eager         dynamo + AOT autograd without inductor's code generation
    compile_static_math / _efficient / _cudnn
                              the compiled layers with one SDPA backend allowed (torch.nn.attention.sdpa_kernel)
    compile_static_right_pad  right padding: no query row is fully masked (a padding query sees the real tokens
                              before it), so a finite run here names the fully masked rows
    compile_static_unmasked_rows
                              left padding, but the attention's boolean mask lets a fully masked row attend
                              everywhere (its output is never used: padding rows feed only padding rows, and no loss
                              reads them) — the mechanism's test (unmasked_rows_attention.py)
    compile_static_packed     packed rows (no mask at all) compiled at bucket shapes

First run (one H100, torch 2.11, 2026-11-26; bench/README.md, the H100 run of 2026-11-26): left-padded rows at the
bucket widths 832 / 960 gave non-finite gradients in 345 parameters (every decoder layer, the embeddings, the fusion)
from the FIRST step, with or without compile (eager_bucketed too), under every compiled SDPA backend, dynamo alone
(aot_eager) and dynamic shapes alike, while the last hidden states stayed finite everywhere: the backward, not the
forward. Right padding, unmasked rows and packed rows were finite; plain sdpa without buckets (the longest row unpadded,
widths 697-863) was finite. So the cause is left padding's fully masked query rows in SDPA's backward, and compile only
ever met it at bucket widths. Training batches are padded on the right since (training/data.py).

The result names, per configuration, the first non-finite step and what was non-finite; `verdict` says which
mechanism the pattern points at. Each configuration resets dynamo and starts from the initial weights.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the bench's sibling modules
from bench_real_size import add_size_arguments, apply_size_defaults  # noqa: E402
from bench_train_arms import ArmsBench, plain_bench_settings  # noqa: E402
from needs_gpu import require_cuda  # noqa: E402
from real_size_inputs import to_device  # noqa: E402
from unmasked_rows_attention import SAFE_SDPA, register_safe_sdpa  # noqa: E402

from gap_mllm.training.data import ONE_ROW  # noqa: E402
from gap_mllm.training.divergence import StepGuard, TrainingDivergedError  # noqa: E402
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel  # noqa: E402
from gap_mllm.training.host_metadata import add_host_metadata  # noqa: E402
from gap_mllm.training.kernels import compile_decoder_layers, uncompile_decoder_layers  # noqa: E402
from gap_mllm.training.length_buckets import bucket_length, pad_to_bucket  # noqa: E402
from gap_mllm.training.sample_tensors import collate_samples  # noqa: E402

LAYER = re.compile(r"layers\.(\d+)\.")


@dataclass(frozen=True)
class Config:
    """One way to train the bisection's batches."""

    name: str
    compile: bool = True
    dynamic: bool | None = False
    backend: str = "inductor"
    buckets: bool = True
    reverse: bool = False
    sdpa_backend: str | None = None  # one of torch.nn.attention.SDPBackend's names, lower case
    padding_side: str = "left"
    attention: str = "sdpa"
    packed: bool = False


CONFIGS = (
    Config("sdpa", compile=False, buckets=False),
    Config("eager_bucketed", compile=False),
    Config("eager_bucketed_right_pad", compile=False, padding_side="right"),
    Config("eager_bucketed_cudnn", compile=False, sdpa_backend="cudnn_attention"),
    Config("eager_bucketed_efficient", compile=False, sdpa_backend="efficient_attention"),
    Config("eager_bucketed_math", compile=False, sdpa_backend="math"),
    Config("compile_static"),
    Config("compile_static_reverse", reverse=True),
    Config("compile_static_unmasked_rows", attention=SAFE_SDPA),
    Config("compile_static_right_pad", padding_side="right"),
    Config("compile_dynamic", dynamic=None),
    Config("compile_aot_eager", backend="aot_eager"),
    Config("compile_static_efficient", sdpa_backend="efficient_attention"),
    Config("compile_static_math", sdpa_backend="math"),
    Config("compile_static_cudnn", sdpa_backend="cudnn_attention"),
    Config("compile_static_packed", packed=True),
)


def nonfinite_grads(model) -> dict:
    """The trained parameters whose gradient holds a NaN or inf: their count, decoder layers and first names."""
    names = [name for name, p in model.named_parameters()
             if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
    layers = sorted({int(m.group(1)) for name in names if (m := LAYER.search(name))})
    return {"count": len(names), "layers": layers, "outside_layers": [n for n in names if not LAYER.search(n)][:5],
            "first": names[:5]}


class FinalHiddenProbe:
    """A forward hook on the language model's final norm (an eager module): non-finite values of its input, the last
    decoder layer's hidden states `[R, T, H]`, at real and at padding positions (`attention_mask` `[R, T]`)."""

    def __init__(self, norm):
        self.mask = None
        self.found = None
        self.handle = norm.register_forward_hook(self.hook)

    def hook(self, module, args, output):
        hidden = args[0].detach()
        bad = ~torch.isfinite(hidden).all(dim=-1)  # [R, T]
        if self.mask is None or self.mask.shape != bad.shape:
            self.found = {"nonfinite_positions": int(bad.sum())}
        else:
            real = self.mask.bool()
            self.found = {"nonfinite_real": int((bad & real).sum()), "nonfinite_padding": int((bad & ~real).sum())}

    def remove(self):
        self.handle.remove()


class Bisection(ArmsBench):
    """bench_train_arms' model, batches and bookkeeping; `run_config` trains one configuration's steps."""

    def pick_batches(self) -> tuple[list[int], list[int]]:
        """Two buckets and the steps' batch indices: two batches of the smaller bucket, then two of the larger."""
        widths = [max(int(s["input_ids"].shape[0]) for s in samples) for samples in self.samples]
        multiple = 64 if self.args.size == "real" else 8
        small = -(-min(widths) // multiple) * multiple
        ordered = sorted(range(len(widths)), key=lambda i: widths[i])
        in_small = [i for i in ordered if widths[i] <= small]
        large = [i for i in ordered if widths[i] > small]
        if len(in_small) < 2 or len(large) < 2:  # too few batches: a larger bucket made wider than every batch
            in_small, large = ordered[:2], ordered[2:4]
            small = -(-max(widths[i] for i in in_small) // multiple) * multiple
        buckets = [small, small + 2 * multiple if max(widths) <= small + 2 * multiple
                   else -(-max(widths) // multiple) * multiple]
        return buckets, [*in_small[:2], *large[-2:]]

    def config_batches(self, config: Config) -> list[dict]:
        pad = self.ids["pad"]
        merge = self.model.config.vision_config.spatial_merge_size
        order = self.order[2:] + self.order[:2] if config.reverse else self.order
        batches = []
        for index in order:
            batch = collate_samples(self.samples[index], pad, config.padding_side, packing=config.packed,
                                    spatial_merge_size=merge, row_tokens=ONE_ROW if config.packed else None)
            if config.buckets:
                batch = pad_to_bucket(batch, self.bucket_lengths, pad, config.padding_side)
            batches.append(to_device(add_host_metadata(batch), self.device, self.dtype))
        return batches

    def run_config(self, config: Config) -> dict:
        model = self.model
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if parameter.requires_grad:
                    parameter.copy_(self.initial[name])
        torch._dynamo.reset()
        model.set_attn_implementation(config.attention)
        model.train()
        wrapped = GeometryAlignedModel(model)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=self.train_settings["lr"],
                                      weight_decay=0.01, fused=self.cuda)
        probe = FinalHiddenProbe(model.model.language_model.norm)
        guard = StepGuard(model.parameters(), f"bisection {config.name}")
        backend = contextlib.nullcontext()
        if config.sdpa_backend:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            backend = sdpa_kernel([getattr(SDPBackend, config.sdpa_backend.upper())])
        steps = []
        try:
            if config.compile:
                compile_decoder_layers(model, dynamic=config.dynamic, backend=config.backend)
            with backend:
                for index, batch in enumerate(self.config_batches(config)):
                    probe.mask = batch.get("attention_mask")
                    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
                    self.sync()
                    start = time.perf_counter()
                    out = wrapped(**batch)
                    loss = out.lm_loss_sum / out.lm_num_tokens
                    loss.backward()
                    grads = nonfinite_grads(model)
                    try:  # the package's one guard: a non-finite step is recorded and never applied
                        guard.check(index + 1, batch, loss)
                        applied = True
                    except TrainingDivergedError as error:
                        applied, grads["guard"] = False, str(error)[:400]
                    if applied:
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    self.sync()
                    steps.append({"step": index + 1, "width": int(batch["input_ids"].shape[-1]),
                                  "rows": int(batch["input_ids"].shape[0]), "loss": float(loss.detach()),
                                  "seconds": round(time.perf_counter() - start, 3),
                                  "graphs_compiled": torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs,
                                  "final_hidden": probe.found, "nonfinite_grads": grads, "update_applied": applied})
                    self.log(f"  {config.name} step {index + 1}: width {steps[-1]['width']}, loss "
                             f"{steps[-1]['loss']:.4f}, non-finite grads {grads['count']}, hidden {probe.found}")
        finally:
            probe.remove()
            optimizer.zero_grad(set_to_none=True)
            del optimizer
            model.eval()
            if config.compile:
                uncompile_decoder_layers(model)
            model.set_attn_implementation("sdpa")
        bad = [s["step"] for s in steps if not s["update_applied"]]
        return {**asdict(config), "steps": steps, "first_nonfinite_step": bad[0] if bad else None,
                "finite": not bad}

    def all(self) -> None:
        register_safe_sdpa()
        if not self.begin("compile + buckets bisection"):
            return
        self.bucket_lengths, self.order = self.pick_batches()
        self.results["meta"]["bisection"] = {"buckets": self.bucket_lengths, "batch_order": self.order,
                                             "widths": [bucket_length(max(int(s["input_ids"].shape[0])
                                                                          for s in self.samples[i]),
                                                                      self.bucket_lengths) for i in self.order]}
        wanted = self.args.configs or [config.name for config in CONFIGS]
        for config in CONFIGS:
            if config.name in wanted:
                if config.compile and not self.cuda and not self.args.allow_cpu_compile:
                    self.record(f"config_{config.name}", {"skipped": "compiled configurations run on CUDA "
                                                                      "(--allow-cpu-compile for inductor's C++ code)"})
                    continue
                self.run(f"config_{config.name}", self.run_config, config)
        self.run("verdict", self.verdict)
        self.log(f"done; results in {self.args.out}")

    def verdict(self) -> dict:
        """Which mechanism the configurations' pattern points at (each line a finding of this run)."""
        measured = {name.removeprefix("config_"): value for name, value in self.results["measurements"].items()
                    if name.startswith("config_") and "finite" in value}
        finite = {name: value["finite"] for name, value in measured.items()}
        findings = []

        def says(name, when_finite, when_not):
            if name in finite:
                findings.append(f"{name}: {when_finite if finite[name] else when_not}")

        says("eager_bucketed", "the buckets alone are finite", "the buckets alone give NaN: not the compiler")
        says("compile_static", "compile + buckets finite here (not reproduced)", "compile + buckets reproduced")
        says("compile_static_reverse", "larger bucket first: finite", "larger bucket first: NaN too")
        says("compile_static_right_pad", "right padding (no fully masked row) is finite",
             "right padding also NaN: not the fully masked rows")
        says("compile_static_unmasked_rows", "fully masked rows unmasked: finite (the candidate fix holds)",
             "fully masked rows unmasked: still NaN")
        says("compile_aot_eager", "without inductor's code: finite (inductor's code generation)",
             "without inductor's code: NaN too (dynamo / AOT autograd / the kernels)")
        for backend in ("math", "efficient", "cudnn"):
            says(f"compile_static_{backend}", f"only the {backend} SDPA backend: finite",
                 f"only the {backend} SDPA backend: NaN")
        padding_only = [name for name, value in measured.items()
                        if any((s["final_hidden"] or {}).get("nonfinite_padding") and
                               not (s["final_hidden"] or {}).get("nonfinite_real") for s in value["steps"])]
        return {"finite": finite, "findings": findings,
                "nonfinite_hidden_at_padding_only": padding_only}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_size_arguments(parser)
    parser.add_argument("--configs", nargs="*", choices=[c.name for c in CONFIGS], default=None, help="default: all")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (the H100 report's 8)")
    parser.add_argument("--batches", type=int, default=12, help="batches drawn to pick the two buckets' four from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bisect_compile_nan.json")
    parser.add_argument("--budget", type=float, default=None, help="seconds after which the rest is skipped")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--allow-cpu-compile", action="store_true",
                        help="run the compiled configurations on the CPU too (inductor's C++ code)")
    args = parser.parse_args(argv)
    require_cuda(Path(__file__).name, args.device)
    apply_size_defaults(args)
    if args.size == "real" and args.budget == 540.0:
        args.budget = 170.0  # the bisection's share of a GPU call
    args.steps, args.warmup_steps, args.arms, args.buckets = args.batches, 0, [], None
    plain_bench_settings(args)
    Bisection(args).all()
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["CONFIGS", "Config", "main"]
