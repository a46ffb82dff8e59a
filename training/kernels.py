"""Attention and loss kernels a training run may choose, and the check that refuses those this machine cannot run.

    model.attn_implementation   None (the model's own: sdpa for every model this package builds and loads),
                                "sdpa", "eager", "flash_attention_2" (the flash-attn 2.x package) or
                                "flash_attention_4" (the flash-attn-4 package, Hopper or newer): transformers' names.
                                One choice for the whole GAP-MLLM: the LLM, the Qwen ViT, the VGGT encoder and the
                                fusion all attend through transformers' attention interface.
    kernels.liger_fused_linear_cross_entropy
                                Liger's fused linear cross-entropy (liger-kernel) for the LM head and the loss at the
                                answer tokens (training/geometry_aligned_model.py), instead of logits + cross-entropy.
    kernels.liger_language_model
                                Liger's kernels in the inner language model: RMSNorm (layers, q/k norms, final norm),
                                RoPE and SwiGLU, put in place from Liger's building blocks (`apply_liger_to_qwen3_vl_text`:
                                Liger 0.8.5's own Qwen3-VL patcher fails to import with transformers 5.23); its RoPE
                                replaces Qwen3-VL's module function, so every Qwen3-VL of the process uses it.
    kernels.compile_layers      regional compile: each decoder layer of the language model `torch.compile`d on its
                                own (one small graph reused by every layer), static shapes with `data.length_buckets`.
    kernels.compile_towers      the same for the frozen towers' blocks (VGGT's DINO / frame / global blocks, the ViT's).
    kernels.graph_geometry_encoder
                                the frozen VGGT encoder's forward replayed as one CUDA graph per input shape
                                (training/cuda_graph_forward.py); CUDA only, not under DeepSpeed ZeRO-3 or FSDP.

The five kernel switches are `None` by default: ON on a CUDA run where they can run (liger-kernel installed; torch with
Triton for the compile; compiled layers with `data.length_buckets`) AND the latest GPU figures in the repository earned
them (`earned_switches` reads training/configs/gpu_verdicts.json: finite over 30 steps crossing every bucket, the
loss curve of the plain path, faster than it), OFF on the CPU (inductor's CPU code was not measured to pay here) —
`resolve_kernels` decides and logs it. `true` where the kernel cannot run is refused by name; `false` turns it off
anywhere. A run that checkpoints activations takes the verdicts measured under checkpointing. Measured on an H100 and an
H200 (bench/README.md, the runs of 2026-11-26 and 2026-11-27): compiled layers at buckets, compiled towers (with and
without checkpointing) and Liger's fused cross-entropy earned theirs; Liger's language-model kernels did not (slower
than compiled layers alone, and their loss curve 0.054 away). The graphed VGGT encoder has no GPU figure yet (its arm,
`sdpa_graph_towers_bucketed`, is in the next GPU call): off by default until one earns it.

The verdicts: `verdicts_from_arms` turns the training arms of `bench/gpu_figures.py` into one verdict per switch,
which is copied, with the figures it came from, to training/configs/gpu_verdicts.json; `earned_switches` reads that
file (tests/test_gpu_verdicts.py checks that no shipped recipe turns on a switch, or `data.packing`, it did not earn).

`check_kernels(recipe, plan)` runs before any model is loaded (training/run.py, training/encoder_stage_run.py) and
raises `KernelUnavailableError`, one line naming the option, what is missing (the package, a CUDA device, a recent
enough GPU, half precision) and what to do (`make gpu-venv` installs the GPU extras: setup.py's `gpu` extra and
flash-attn), instead of an ImportError or a kernel's error from deep inside the first forward.

`training.use_liger_kernel` (transformers' own switch) is refused when the recipe is read: transformers applies
Liger only to a `PreTrainedModel` whose model type Liger knows, and the trainer trains a `GeometryAlignedModel`,
which computes the loss itself, so nothing would be applied (transformers logs one warning and trains on).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import MethodType

import torch
from torch import nn

from .activation_checkpointing import checkpoints_activations
from .cuda_graph_forward import graph_geometry_encoder
from .loss_weights import weighted_mix

logger = logging.getLogger(__name__)

GPU_INSTALL = "make gpu-venv"
GPU_REMEDY = f"run on a GPU machine after `{GPU_INSTALL}`"
OLD_GPU_REMEDY = "on this GPU choose an attention it runs (flash_attention_2 from Ampere on, sdpa on any GPU)"
HALF_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class KernelPackage:
    """A pip package that provides a kernel: its distribution name, and the oldest CUDA GPU it runs on
    (compute capability major; None: any CUDA GPU)."""

    distribution: str
    min_capability: int | None = None
    gpu_generation: str = ""


# flash-attn 2.x: Ampere, Ada and Hopper (sm80+, its README); flash-attn-4: Hopper or newer (transformers'
# FLASH_ATTENTION_COMPATIBILITY_MATRIX: cuda_min_major_version 9). Both compute in bf16 / fp16 only.
FLASH_PACKAGES = {
    "flash_attention_2": KernelPackage("flash-attn", 8, "Ampere"),
    "flash_attention_4": KernelPackage("flash-attn-4", 9, "Hopper"),
}
ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager", *FLASH_PACKAGES)
LIGER_PACKAGE = KernelPackage("liger-kernel")  # Triton kernels: a CUDA device
LIGER_OPTION = "kernels.liger_fused_linear_cross_entropy"
LIGER_LM_OPTION = "kernels.liger_language_model"
COMPILE_OPTION = "kernels.compile_layers"
COMPILE_TOWERS_OPTION = "kernels.compile_towers"
GRAPH_OPTION = "kernels.graph_geometry_encoder"
LLM_STAGES = ("pretrain", "finetune")


class KernelUnavailableError(ValueError):
    """A chosen kernel this machine or this run cannot use; the message names the option and the remedy."""


def installed_version(distribution: str) -> str | None:
    """The installed version of a pip distribution, None when it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_capability() -> tuple[int, int] | None:
    """The compute capability of the current CUDA device, None without one."""
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def check_attention_name(name: str | None) -> None:
    """`model.attn_implementation` is None or one of `ATTENTION_IMPLEMENTATIONS` (any machine)."""
    if name is not None and name not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(f"model.attn_implementation={name!r}; choose from {ATTENTION_IMPLEMENTATIONS} "
                         "(or leave it unset: the model's own, sdpa)")


def compute_dtype(weights_dtype: str, training: dict) -> str | None:
    """What the matrix products compute in: half weights, else the bf16 / fp16 autocast, else the weights' dtype
    ("auto": not known before the model is loaded, None)."""
    if weights_dtype in HALF_DTYPES:
        return weights_dtype
    if training.get("bf16"):
        return "bfloat16"
    if training.get("fp16"):
        return "float16"
    return None if weights_dtype == "auto" else weights_dtype


def _refusal(option: str, missing: list[str], package: KernelPackage, device: str) -> KernelUnavailableError:
    return KernelUnavailableError(f"{option} needs {' and '.join(missing)}; {remedy(package, device)}")


def gpu_too_old(package: KernelPackage) -> str | None:
    """What the current CUDA GPU lacks for `package` (an older generation than its kernels need), or None."""
    capability = cuda_capability() if package.min_capability is not None else None
    if capability is None or capability[0] >= package.min_capability:
        return None
    return (f"a {package.gpu_generation} or newer GPU (compute capability {package.min_capability}.0+; this one is "
            f"{capability[0]}.{capability[1]})")


def package_problems(package: KernelPackage, device: str, reason: str) -> list[str]:
    """What is missing to run `package`'s kernels on `device` ("cpu" / "cuda"; `reason`: why not CUDA)."""
    missing = []
    if installed_version(package.distribution) is None:
        missing.append(f"the {package.distribution} package (not installed)")
    if device != "cuda":
        missing.append(f"a CUDA device ({reason})")
    elif too_old := gpu_too_old(package):
        missing.append(too_old)
    return missing


def remedy(package: KernelPackage, device: str) -> str:
    """What to do when `package_problems` lists something: on the CPU, move to a GPU machine with the GPU extras; on
    a GPU too old for the kernel, choose another attention (installing cannot help there); else install them."""
    if device != "cuda":
        return GPU_REMEDY
    if gpu_too_old(package):
        return OLD_GPU_REMEDY
    return f"install the GPU extras with `{GPU_INSTALL}`"


def attention_precision_problem(name: str | None, dtype: str | None) -> str | None:
    """Why attention `name` cannot compute in `dtype` (None: it can, or the dtype is not known yet)."""
    if name in FLASH_PACKAGES and dtype is not None and dtype not in HALF_DTYPES:
        return (f"model.attn_implementation={name!r} computes in bfloat16 or float16 only, and this run computes in "
                f"{dtype}; set model.dtype: bfloat16 or training.bf16: true")
    return None


def cpu_reason(plan) -> str:
    """Why a run's device plan is not CUDA, in the words of the refusals."""
    return f"this run trains on the CPU; device plan: {plan.reason}"


def check_kernels(recipe, plan) -> None:
    """Refuse (`KernelUnavailableError`) the recipe's kernels that cannot run under its device `plan`
    (training/device.py); `recipe` is the planned one (`apply_device_plan`)."""
    name = recipe.model.attn_implementation
    check_attention_name(name)
    if name in FLASH_PACKAGES:
        missing = package_problems(FLASH_PACKAGES[name], plan.device, cpu_reason(plan))
        if missing:
            raise _refusal(f"model.attn_implementation={name!r}", missing, FLASH_PACKAGES[name], plan.device)
        problem = attention_precision_problem(name, compute_dtype(plan.dtype, recipe.training))
        if problem:
            raise KernelUnavailableError(problem)
    for option, wanted in ((LIGER_OPTION, recipe.kernels.liger_fused_linear_cross_entropy),
                           (LIGER_LM_OPTION, recipe.kernels.liger_language_model)):
        missing = package_problems(LIGER_PACKAGE, plan.device, cpu_reason(plan)) if wanted else []
        if missing:
            raise _refusal(f"{option}=true", missing, LIGER_PACKAGE, plan.device)
    for option, wanted in ((COMPILE_OPTION, recipe.kernels.compile_layers),
                           (COMPILE_TOWERS_OPTION, recipe.kernels.compile_towers)):
        if wanted and (problem := compile_problem(plan.device)):
            raise KernelUnavailableError(f"{option}=true needs {problem}; set it to false (or leave it unset: "
                                         "compiled on CUDA only)")
    if recipe.kernels.graph_geometry_encoder and plan.device != "cuda":
        raise KernelUnavailableError(f"{GRAPH_OPTION}=true needs a CUDA device ({cpu_reason(plan)}): a CUDA graph "
                                     "replays GPU kernels; set it to false (or leave it unset)")


def compile_problem(device: str) -> str | None:
    """What `torch.compile`'s inductor lacks on `device` ("cuda": Triton; "cpu": a C++ compiler), or None."""
    if device == "cuda":
        from torch.utils._triton import has_triton

        return None if has_triton() else f"Triton for inductor's GPU kernels (torch {torch.__version__} has none)"
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as error:  # inductor raises its own error types when no compiler is found
        return f"a C++ compiler for inductor's CPU code ({str(error).splitlines()[0]})"
    return None


def resolve_kernels(recipe, plan):
    """`recipe` with every kernel switch decided (module docstring): an unset (None) switch is on for a CUDA run of an
    LLM stage where it can run and the committed GPU figures earned it (`earned_switches`; measured under
    activation checkpointing where the recipe checkpoints; compiled layers with `data.length_buckets` only, the
    shapes they were measured at), off elsewhere (Liger's fused cross-entropy also off
    with `data.task_loss_weights`); what is decided is logged. Given switches are kept (`check_kernels` refuses those
    that cannot run)."""
    settings = recipe.kernels
    cuda = plan.device == "cuda" and recipe.stage in LLM_STAGES
    checkpointed = checkpoints_activations(recipe.training)
    earned = earned_switches(checkpointing=checkpointed) if cuda else {}
    liger = cuda and not package_problems(LIGER_PACKAGE, plan.device, cpu_reason(plan))
    compiles = cuda and compile_problem(plan.device) is None
    # compiled layers were measured (and earned their default) at length buckets' static shapes only; a compiled
    # layer takes no checkpoint context, which packed rows under activation checkpointing need (training/config.py)
    compiled = (compiles and bool(recipe.data.length_buckets)
                and not (recipe.data.packing and checkpointed))
    # Liger's fused cross-entropy takes no per-token weight: off with data.task_loss_weights (training/loss_weights.py)
    weighted = weighted_mix(recipe.data.task_loss_weights)
    decided = {"liger_fused_linear_cross_entropy": liger and earned["liger_fused_linear_cross_entropy"] and not weighted,
               "liger_language_model": liger and earned["liger_language_model"],
               "compile_layers": compiled and earned["compile_layers"],
               "compile_towers": compiles and earned["compile_towers"],
               "graph_geometry_encoder": cuda and earned["graph_geometry_encoder"]}
    values = {name: decided[name] if getattr(settings, name) is None else getattr(settings, name) for name in decided}
    chosen = [f"kernels.{name}={str(value).lower()}" for name, value in values.items() if getattr(settings, name) is None]
    if chosen:
        logger.info("kernels (%s run): %s", plan.device, ", ".join(chosen))
    return dataclasses.replace(recipe, kernels=dataclasses.replace(settings, **values))


def apply_liger_language_model(gap_model) -> None:
    """Liger's Qwen3-VL RMSNorm, RoPE and SwiGLU in `gap_model`'s inner language model (not its LM head or loss:
    the answer-token loss is `GeometryAlignedModel`'s, with `kernels.liger_fused_linear_cross_entropy`)."""
    counts = apply_liger_to_qwen3_vl_text(gap_model.model.language_model)
    logger.info("kernels.liger_language_model: Liger's RMSNorm in %d norms, SwiGLU in %d MLPs, RoPE", counts["rms_norm"],
                counts["swiglu"])


def compile_decoder_layers(gap_model, dynamic: bool | None = None, backend="inductor") -> int:
    """Regional compile: each decoder layer of `gap_model`'s language model compiled on its own (`nn.Module.compile`,
    so the module, its weights and its state-dict names stay what they are). `dynamic=False`: one graph per sequence
    shape (with length buckets, a few); None: torch's default (a dynamic graph after the second shape). Returns the
    number of layers compiled."""
    layers = gap_model.model.language_model.layers
    for layer in layers:
        layer.compile(dynamic=dynamic, backend=backend)
    return len(layers)


# the frozen towers' repeated blocks (module paths inside a GAP-MLLM): each compiled on its own, as the decoder layers
TOWER_BLOCKS = ("model.geometry_encoder.aggregator.patch_embed.blocks", "model.geometry_encoder.aggregator.frame_blocks",
                "model.geometry_encoder.aggregator.global_blocks", "model.visual.blocks")


def tower_blocks(gap_model) -> list:
    """The blocks of `TOWER_BLOCKS` in `gap_model` (a list a tower lacks is left out)."""
    blocks = []
    for path in TOWER_BLOCKS:
        try:
            blocks.extend(gap_model.get_submodule(path))
        except AttributeError:
            continue
    return blocks


def compile_frozen_towers(gap_model, dynamic: bool | None = None, backend="inductor") -> int:
    """Regional compile of the frozen towers (`kernels.compile_towers`): each block of `TOWER_BLOCKS` compiled on its
    own (`nn.Module.compile`: names and weights unchanged). Returns the number of blocks compiled."""
    blocks = tower_blocks(gap_model)
    for block in blocks:
        block.compile(dynamic=dynamic, backend=backend)
    return len(blocks)


def uncompile_frozen_towers(gap_model) -> None:
    for block in tower_blocks(gap_model):
        block._compiled_call_impl = None


def uncompile_decoder_layers(gap_model) -> None:
    """Back to eager layers (`nn.Module.compile` keeps the compiled call in `_compiled_call_impl`)."""
    for layer in gap_model.model.language_model.layers:
        layer._compiled_call_impl = None


def apply_kernels(gap_model, settings, length_buckets=None) -> None:
    """The decided kernel switches `settings` (`resolve_kernels`) applied to `gap_model` (after LoRA: the compiled
    layers hold the adapters): Liger in the language model, then the compiled layers (static shapes with buckets)."""
    if settings.liger_language_model:
        apply_liger_language_model(gap_model)
    if settings.compile_layers:
        compile_decoder_layers(gap_model, dynamic=False if length_buckets else None)
    if settings.compile_towers:
        compile_frozen_towers(gap_model)
    if settings.graph_geometry_encoder:  # after the compile: the first capture of each shape compiles, then records
        graph_geometry_encoder(gap_model)


def kernel_context(settings, length_buckets=None) -> str:
    """The kernel settings that are on (compiled layers, Liger, length buckets), as a divergence line names them
    (training/divergence.py); "" when none is."""
    on = [f"kernels.{name}=true" for name in ("compile_layers", "compile_towers", "graph_geometry_encoder",
                                              "liger_language_model", "liger_fused_linear_cross_entropy")
          if getattr(settings, name, None)]
    if length_buckets:
        on.append(f"data.length_buckets={list(length_buckets)}")
    return f"kernel settings on: {', '.join(on)}" if on else ""


def apply_attention_implementation(model, name: str | None, training: dict) -> None:
    """Switch `model` (a GAP-MLLM: LLM, ViT, VGGT, fusion) to attention `name` (None: leave it as it is), after the
    precision of the loaded weights is checked (`training`: the TrainingArguments values, for the autocast)."""
    if name is None:
        return
    check_attention_name(name)
    weights = str(model.dtype).removeprefix("torch.")
    problem = attention_precision_problem(name, compute_dtype(weights, training))
    if problem:
        raise KernelUnavailableError(problem)
    if model.config._attn_implementation != name:
        model.set_attn_implementation(name)


def under_zero3(trainer) -> bool:
    """Whether `trainer` runs under DeepSpeed ZeRO-3."""
    return bool(trainer.is_deepspeed_enabled) and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3


def graph_distribution_problem(trainer) -> str | None:
    """Why the VGGT encoder cannot be captured as CUDA graphs under `trainer`'s distribution (None: it can): ZeRO-3
    and FSDP gather its partitioned weights in hooks around its forward, on the host, which a replay would skip."""
    if under_zero3(trainer):
        return "DeepSpeed ZeRO-3"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "FSDP"
    return None


def check_liger_distribution(trainer) -> None:
    """Liger's fused kernel reads the LM head's weight outside the module's forward; under DeepSpeed ZeRO-3 that
    weight is a partitioned placeholder there (DeepSpeed gathers it only inside the module's own forward)."""
    if under_zero3(trainer):
        raise KernelUnavailableError(f"{LIGER_OPTION}=true does not run under DeepSpeed ZeRO-3 (the LM head's weight "
                                     "is partitioned outside its module's forward); use ZeRO-2, FSDP or DDP, or set it "
                                     "to false")


TRANSFORMERS_LIGER_REFUSAL = (
    "training.use_liger_kernel: transformers applies Liger only to a PreTrainedModel of a model type Liger knows, and "
    "GAP-MLLM trains through GeometryAlignedModel, which computes the answer-token loss itself "
    "(training/geometry_aligned_model.py): nothing would be applied. Set kernels.liger_fused_linear_cross_entropy: "
    "true instead (Liger's fused linear cross-entropy at the answer tokens)")


def kernel_report(device: str | None = None) -> list[str]:
    """One line per optional kernel: ready on this machine, or what is missing (`make gpu-venv` ends with it).
    `device`: "cuda" / "cpu"; default: CUDA when torch sees a device."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    reason = f"torch {torch.__version__} sees none"
    lines = []
    for option, package in [*((f"model.attn_implementation={name}", package) for name, package in FLASH_PACKAGES.items()),
                            (f"{LIGER_OPTION}=true", LIGER_PACKAGE)]:
        missing = package_problems(package, device, reason)
        version = installed_version(package.distribution)
        state = f"needs {' and '.join(missing)}" if missing else "ready"
        lines.append(f"{option}: {package.distribution} {version or '-'}: {state}")
    return lines


# ------------------------------------------------------------------------------------------ defaults the GPU figures earned
# A default that never met a GPU corrupted runs (compiled layers + length buckets wrote NaN weights on an H100) and
# another made steps slower (Liger). So a switch is on by default on CUDA only when the committed verdict file says its
# arm earned it (`arm_verdict`). `SWITCH_ARMS` names each switch's arm and baseline; a `<switch>_checkpointed` entry is
# the same switch measured under activation checkpointing, which a checkpointing run needs as well
# (`earned_switches(checkpointing=True)`: the recompute runs the switch's kernels again).

VERDICT_FILE = Path(__file__).resolve().parent / "configs" / "gpu_verdicts.json"
MIN_STEPS = 30  # an arm that compiles or buckets: enough steps to cross every bucket and recompile
MIN_STEPS_PLAIN = 10  # an arm without either (nothing recompiles)
LOSS_TOLERANCE = 0.01  # packed rows moved the loss by 0.0026-0.0034 (bf16 rounding); the NaN-free default_packed by 0.054
SPEED_MARGIN = 0.97  # 3 % faster at least: step times of one arm vary by ~1-2 % between runs on one warm GPU


@dataclass(frozen=True)
class SwitchArm:
    """The training-arm (bench/bench_train_arms.py `ARMS`) that measures a switch, and the arm it must beat."""

    arm: str
    baseline: str = "sdpa"


SWITCH_ARMS = {
    "packing": SwitchArm("sdpa_packed"),
    "compile_layers": SwitchArm("sdpa_compile_bucketed"),
    "liger_fused_linear_cross_entropy": SwitchArm("sdpa_liger"),
    "liger_language_model": SwitchArm("default", baseline="sdpa_compile_bucketed"),
    "compile_towers": SwitchArm("sdpa_compile_towers_bucketed", baseline="sdpa_compile_bucketed"),
    "graph_geometry_encoder": SwitchArm("sdpa_graph_towers_bucketed", baseline="sdpa_compile_towers_bucketed"),
    # under activation checkpointing (the real-size recipes), measured as such a recipe runs on CUDA: towers compiled
    "compile_towers_checkpointed": SwitchArm("sdpa_compile_towers_checkpointed", baseline="sdpa_checkpointed"),
    "packing_checkpointed": SwitchArm("sdpa_packed_compile_towers_checkpointed",
                                      baseline="sdpa_compile_towers_checkpointed"),
    "compile_layers_checkpointed": SwitchArm("sdpa_compile_bucketed_checkpointed", baseline="sdpa_checkpointed"),
}
# a switch whose arm no GPU call has measured yet: its entry in the verdict file has no source and is not earned
NOT_MEASURED = "its arm has not been measured on a GPU yet"
CHECKPOINTED = "_checkpointed"  # the suffix of a switch's verdict under activation checkpointing
# Liger's fused cross-entropy is the LM head and the loss, outside every checkpointed layer: checkpointing changes
# nothing it computes, so its one verdict holds with or without. Every other switch works inside the checkpointed
# layers (the recompute runs its kernels again, packed rows recompute per sample): its verdict without checkpointing
# says nothing of a checkpointed run (the H200's packed rows: 0.67x plain without, 1.14x with towers compiled, with).
CHECKPOINT_NEUTRAL = frozenset({"liger_fused_linear_cross_entropy"})


def arm_verdict(arm: dict | None, baseline: dict | None) -> dict:
    """`{"earned": bool, "why": str}` for one arm's record of bench_train_arms.py (`arm_<name>`) against its
    baseline's record: earned when the arm is

        finite       it trained every step (the package's divergence guard stopped none), over at least `MIN_STEPS`
                     steps with compile or buckets (every bucket crossed), `MIN_STEPS_PLAIN` without
        same curve   its losses stay within `LOSS_TOLERANCE` of its baseline arm's, step by step
        faster       its median step is at most `SPEED_MARGIN` × its baseline's
    """
    if not arm or "skipped" in arm:
        return {"earned": False, "why": f"not measured{': ' + arm['skipped'] if arm else ''}"}
    if "error" in arm:
        return {"earned": False, "why": f"failed: {arm['error'][:200]}"}
    if not baseline or "losses" not in baseline:
        return {"earned": False, "why": "its baseline arm was not measured"}
    losses = arm.get("losses", [])
    needed = MIN_STEPS if arm.get("compile") or arm.get("buckets") else MIN_STEPS_PLAIN
    if len(losses) < needed:
        return {"earned": False, "why": f"{len(losses)} steps measured, fewer than {needed}"}
    if arm.get("buckets") and arm.get("buckets_crossed") is False:
        return {"earned": False, "why": "not every length bucket was crossed"}
    gap = max(abs(a - b) for a, b in zip(losses, baseline["losses"]))
    if gap > LOSS_TOLERANCE:
        return {"earned": False, "why": f"losses {gap:.4f} away from {baseline['name']}'s (tolerance {LOSS_TOLERANCE})"}
    ratio = arm["median_step_s"] / baseline["median_step_s"]
    if ratio > SPEED_MARGIN:
        return {"earned": False, "why": f"median step {ratio:.2f}× {baseline['name']}'s (needs ≤ {SPEED_MARGIN})"}
    return {"earned": True, "why": f"finite over {len(losses)} steps, losses within {gap:.4f}, step {ratio:.2f}× "
                                   f"{baseline['name']}'s"}


def verdicts_from_arms(measurements: dict) -> dict:
    """Per switch: its arm's verdict, from bench_train_arms.py's `measurements` (`arm_<name>` records)."""
    return {switch: {"arm": pair.arm, "baseline": pair.baseline,
                     **arm_verdict(measurements.get(f"arm_{pair.arm}"), measurements.get(f"arm_{pair.baseline}"))}
            for switch, pair in SWITCH_ARMS.items()}


def load_verdicts(path: Path = VERDICT_FILE) -> dict:
    """The committed verdict file: `{"device", "date", "source", "switches": {switch: {"earned", "why", ...}}}`."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def earned_switches(path: Path = VERDICT_FILE, checkpointing: bool = False) -> dict[str, bool]:
    """Switch name → whether the committed GPU figures earned it for a run that checkpoints activations or not
    (`checkpointing`): with it, a switch needs its `<switch>_checkpointed` verdict too (none: not earned), unless it is
    `CHECKPOINT_NEUTRAL`. A switch the file does not name is not earned. The names are the kernel and data switches
    (`packing`, `compile_layers`, ...), never the `_checkpointed` verdicts themselves."""
    switches = load_verdicts(path).get("switches", {})

    def earned(name: str) -> bool:
        return bool(switches.get(name, {}).get("earned"))

    return {name: earned(name) and (not checkpointing or name in CHECKPOINT_NEUTRAL or earned(name + CHECKPOINTED))
            for name in SWITCH_ARMS if not name.endswith(CHECKPOINTED)}


# ------------------------------------------------------------------------------------------ Liger in Qwen3-VL's text model
# Not Liger's own `apply_liger_kernel_to_qwen3_vl`: in liger-kernel 0.8.5 it imports its fused-loss forward for
# Qwen3-VL first, whatever is asked, and that module needs `Qwen3VLCausalLMOutputWithPast`, which transformers 5.23 no
# longer defines, so every call fails with an ImportError (seen on the first GPU run of `kernels.liger_language_model`).
# It also leaves Qwen3-VL's MLP as it is (its `swiglu` argument is unused). Liger's kernels are Triton, so they run on
# CUDA only; the CPU tests put plain-torch stand-ins of the three pieces in place and check that the patched model
# computes what the unpatched one does.

# Qwen3's RMSNorm multiplies by the weight (no 1 + w offset) and casts like Llama: Liger's "llama" mode
QWEN3_RMS_NORM = {"offset": 0.0, "casting_mode": "llama", "in_place": True}
SWIGLU_ACTIVATIONS = ("silu", "swish")


def text_norms(text_model) -> list[tuple[nn.Module, str]]:
    """(parent, attribute) of every RMSNorm of `text_model` (a `Qwen3VLTextModel`): per layer input, post-attention,
    q and k norms, then the final norm."""
    places = []
    for layer in text_model.layers:
        places += [(layer, "input_layernorm"), (layer, "post_attention_layernorm")]
        attention = layer.self_attn
        places += [(attention, name) for name in ("q_norm", "k_norm") if getattr(attention, name, None) is not None]
    return places + [(text_model, "norm")]


def liger_norm_like(norm: nn.Module, rms_norm_class) -> nn.Module:
    """A `rms_norm_class` (Liger's `LigerRMSNorm`) computing what `norm` computes, sharing its weight `Parameter`."""
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    liger = rms_norm_class(norm.weight.shape[0], eps=eps, **QWEN3_RMS_NORM)
    liger.weight = norm.weight  # the same Parameter: the optimizer, LoRA and the state dict see no change
    return liger


def apply_liger_to_qwen3_vl_text(text_model) -> dict[str, int]:
    """Liger's RMSNorm, RoPE and SwiGLU in `text_model` (a `Qwen3VLTextModel`), from Liger's public pieces
    (`LigerRMSNorm`, `liger_rotary_pos_emb`, `LigerSwiGLUMLP`) put where Liger's own patcher would, plus the MLP:

    - RMSNorm: every RMSNorm of the text model (each layer's input and post-attention norms, the q/k norms, the final
      norm) is replaced by a `LigerRMSNorm` holding the same weight `Parameter` (Qwen3's casting: "llama", offset 0),
      so state-dict names, the optimizer's parameters and LoRA's targets stay what they are.
    - RoPE: Qwen3-VL's module function `apply_rotary_pos_emb` becomes Liger's. It is a module global of transformers'
      modeling file, so every Qwen3-VL text model of the process uses it from then on (as with Liger's own patcher);
      the vision tower's RoPE is left alone (frozen tower).
    - SwiGLU: each decoder layer's MLP computes `down(silu(gate(x)) * up(x))` with Liger's fused kernel, its Linear
      layers untouched.

    Returns how many of each were put in place ({"rms_norm": n, "swiglu": n, "rope": 1}); raises ImportError naming
    liger-kernel when its pieces do not import, and ValueError when an MLP's activation is not SiLU (Liger's SwiGLU
    computes SiLU only)."""
    try:
        from liger_kernel.transformers.rms_norm import LigerRMSNorm
        from liger_kernel.transformers.rope import liger_rotary_pos_emb
        from liger_kernel.transformers.swiglu import LigerSwiGLUMLP
    except ImportError as error:
        raise ImportError(f"kernels.liger_language_model: liger-kernel's RMSNorm, RoPE or SwiGLU does not import "
                          f"({error})") from error
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    activation = getattr(text_model.config, "hidden_act", None)
    if activation not in SWIGLU_ACTIVATIONS:
        raise ValueError(f"kernels.liger_language_model: the text model's MLP activation is {activation!r}; Liger's "
                         f"SwiGLU computes {' / '.join(SWIGLU_ACTIVATIONS)} only: set kernels.liger_language_model: "
                         "false")
    norms = text_norms(text_model)
    for parent, name in norms:
        setattr(parent, name, liger_norm_like(getattr(parent, name), LigerRMSNorm))
    for layer in text_model.layers:
        layer.mlp.forward = MethodType(LigerSwiGLUMLP.forward, layer.mlp)
    modeling_qwen3_vl.apply_rotary_pos_emb = liger_rotary_pos_emb
    return {"rms_norm": len(norms), "swiglu": len(text_model.layers), "rope": 1}
