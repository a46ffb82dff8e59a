"""Training recipes: one dataclass tree, loadable from YAML, that says everything a run needs.

    recipe = load_recipe("training/recipes/stage1_pretrain.yaml", overrides=["training.max_steps=10"])

A recipe has the model to start from, the data, the freezing policy and learning-rate groups of the
official recipe (docs/method.md §8.3, §8.4), the optional geometry-aligned auxiliary losses (docs/method.md §9,
all off by default), LoRA, the geometry-feature cache, the device, and `training`: keyword arguments
passed to `transformers.TrainingArguments` (batch size, schedule, `report_to`, saving, ...).

Every value, from the YAML file or a `--set section.key=value` override, is checked and converted
against the annotation of the field it fills (`config_types.coerce`; `training.*` against
`TrainingArguments`' own annotations): `training.learning_rate=3e-3` becomes the float 0.003, and
`training.learning_rate=abc` is an error naming `training.learning_rate` and the expected type.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from transformers import TrainingArguments

from gap_mllm.processing.builders import BUILDERS, builder_for_task

from .activation_checkpointing import checkpoints_activations, reentrant_checkpointing
from .config_types import RecipeTypeError, coerce_fields, field_types
from .kernels import LLM_STAGES, TRANSFORMERS_LIGER_REFUSAL, check_attention_name
from .length_buckets import check_buckets
from .loss_weights import LIGER_WEIGHTS_REFUSAL, weighted_mix
from .packed_attention import FLASH_ONE_ROW, is_flash

LOSS_NORMALIZATIONS = ("global_token_mean", "micro_batch_mean")
STAGES = ("pretrain", "finetune", "geometry", "vision")
BAD_SAMPLE_POLICIES = ("raise", "skip")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelSource:
    """Where the weights come from.

    name_or_path: a GAP-MLLM folder / Hub id with its processor (stage 2 default: the stage-1 output).
        Stage 1 starts from a folder built once from Qwen3-VL-2B-Instruct + VGGT-1B weights
        (`GapMllmForConditionalGeneration.from_qwen3_vl` + the VGGT converter, then `save_pretrained`).
    tiny: "tiny" / "small" (test sizes) or "mini" (GAP-MLLM-Mini, mini/): a freshly initialised local model,
        built with `fusion_method`, `use_geometry` and weights drawn from `seed` (ignored with name_or_path).
    encoders_from: a GAP-MLLM folder (e.g. the stage-0 output) whose geometry encoder (with its heads) and
        Qwen ViT weights replace the fresh ones; the LLM, mergers and fusions stay freshly initialised
        (how the miniature's stage 1, and its "stage 2 only" ablation arm, start). `encoders` says which:
        "geometry_encoder" and/or "vision_tower".
    dtype: "float32" / "bfloat16" / "float16" / "auto".
    attn_implementation: None (the model's own: sdpa), "sdpa", "eager", "flash_attention_2" (flash-attn 2.x) or
        "flash_attention_4" (flash-attn-4, Hopper+), for the whole model (LLM, ViT, VGGT, fusion); a flash choice
        needs its package, a CUDA device and bf16 / fp16, checked before the model loads (training/kernels.py).
    """

    name_or_path: str | None = None
    tiny: str | None = None
    fusion_method: str = "gated"
    use_geometry: bool = True
    seed: int = 0
    encoders_from: str | None = None
    encoders: list[str] = field(default_factory=lambda: ["geometry_encoder", "vision_tower"])
    dtype: str = "auto"
    attn_implementation: str | None = None
    trust_remote_code: bool = False


@dataclass
class DataConfig:
    """Which samples to train on.

    data_root: folder with `scannet/posed_images` and `annotations/` (real ScanNet or SynthRooms).
    tasks: names of tasks of the registry with training data (gap_mllm.tasks_gap_mllm; a builder of
        `processing.builders.builder_for_task`); several are concatenated (stage 2).
    on_bad_sample: "raise" stops the run with an error naming the sample; "skip" drops it and counts it
        (reported in the logs as `skipped_samples` and at the end of training).
    max_train_samples / max_eval_samples: keep the first N (smoke runs).
    task_max_samples: {task: N}: at most N training samples of that task, drawn at random (seed
        `training.seed`) before the tasks are concatenated, so one task's size does not set the mix
        (GAP-MLLM-Mini's stage 2 keeps the marker task at about a fifth of its samples).
    task_repeats: {task: k}: that task's (kept) samples appear k times in every epoch of the training mix, so a task
        can get more samples than the others without new data (with the feature cache the repeats cost no encoder
        time: one entry per distinct sample).
    task_loss_weights: {task: w}: every answer token of that task's samples weighs w (finite, > 0) in the LM loss
        (training/loss_weights.py): the loss sums w·cross-entropy and still divides by the count of answer tokens,
        so weights of 1 are the plain loss and gradient accumulation / DDP stay exact. Tasks not named weigh 1.
        With `global_token_mean` a task's share of the signal is otherwise its share of the answer tokens (a
        7-token grounding answer next to 200-token detection answers). Training loss only: the evaluation loss
        stays unweighted. Not with `kernels.liger_fused_linear_cross_entropy: true` (no per-token weights there).
    Sample order: `training.train_sampling_strategy` ("random" / "sequential" / "group_by_length").
    packing: the samples of a batch are packed into as few rows as fit, without padding
        (training/sample_tensors.py); the loss and gradients are those of the padded batch.
        `packing_row_tokens` caps a row's tokens (default: the whole batch in one row with sdpa and flash-attn,
        whose attention is per sample; the batch's longest sample with eager's block mask: training/data.py).
    length_buckets: sequence lengths, e.g. [512, 768, 1024]: every batch (padded or packed) is padded to the smallest
        that holds its longest row (past the last: a multiple of it), so compiled layers and GPU kernel plans are
        made once per bucket, not once per batch (training/length_buckets.py); the padding is masked, so the loss
        is unchanged. The last batch of an epoch may still be smaller (one more shape); `training.dataloader_drop_last:
        true` fixes the batch size, at the price of that batch's samples (a choice of the recipe: it changes what
        trains). None: each batch as long as its longest row.
    """

    data_root: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["reconstruction"])
    train_split: str = "train"
    eval_split: str | None = None
    cache_dir: str | None = None
    on_bad_sample: str = "raise"
    max_train_samples: int | None = None
    max_eval_samples: int | None = None
    task_max_samples: dict[str, int] | None = None
    task_repeats: dict[str, int] | None = None
    task_loss_weights: dict[str, float] | None = None
    marker: bool = True
    packing: bool = False
    packing_row_tokens: int | None = None
    length_buckets: list[int] | None = None


@dataclass
class FreezingPolicy:
    """What trains. Official recipe (docs/method.md §8.3): Qwen ViT and VGGT frozen; LLM, mergers, fusions trained."""

    freeze_vision_tower: bool = True
    freeze_geometry_encoder: bool = True
    freeze_llm: bool = False
    freeze_mergers: bool = False
    freeze_fusions: bool = False


@dataclass
class LearningRates:
    """Learning rate per parameter group; `None` = the base rate (`training.learning_rate`).

    Official: LLM + fusions 5e-6 (base), geometry mergers 1e-5, ViT 1e-6 (unused: frozen).
    `weight_decay` applies to every weight except biases and `nn.LayerNorm` weights (RMSNorm weights
    do get decay, as in the official grouping).
    """

    merger_lr: float | None = 1e-5
    vision_tower_lr: float | None = 1e-6
    geometry_encoder_lr: float | None = None
    aux_heads_lr: float | None = 1e-4


@dataclass
class AuxLossConfig:
    """Optional geometry-aligned auxiliary objectives (docs/method.md §9). A weight of 0 disables a loss
    and its head; heads exist (and are saved) only when their loss is enabled.

    feature_align_weight: 1 - cos between a head on the LLM's visual-token hidden states and the tapped
        VGGT features of each level (GeoVR multi-level; 3DRS = `align_levels=[0]`, `align_llm_layers=[-1]`).
    align_levels: fusion levels to align (0 = last tapped VGGT block, 1-3 = the shallower ones).
    align_llm_layers: hidden-state index per aligned level (0 = embeddings, -1 = last layer); default:
        proportional to the VGGT depth, round((t + 1) / n_vggt * n_llm) for VGGT block t.
    camera_weight: L1 on VGGT's 9-d `absT_quaR_FoV` pose of every view (relative to view 0), from a
        head on the view's pooled hidden states. Targets from the data poses (needs `load_poses`).
    depth_weight: confidence-weighted L1 + gradient term on per-token depth patches (needs depth).
    scale_weight: L1 on log1p of the scene scale (median valid depth) from a pooled head.
    """

    feature_align_weight: float = 0.0
    align_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    align_llm_layers: list[int] | None = None
    align_head_hidden_size: int | None = None
    camera_weight: float = 0.0
    depth_weight: float = 0.0
    depth_patch: int = 4
    depth_gradient_weight: float = 1.0
    depth_confidence_alpha: float = 0.2
    scale_weight: float = 0.0
    head_layer: int = -1

    @property
    def enabled(self) -> list[str]:
        names = {"feature_align": self.feature_align_weight, "camera": self.camera_weight,
                 "depth": self.depth_weight, "scale": self.scale_weight}
        return [name for name, weight in names.items() if weight > 0]

    @property
    def needs_depth(self) -> bool:
        return self.depth_weight > 0 or self.scale_weight > 0

    @property
    def needs_poses(self) -> bool:
        return self.camera_weight > 0


@dataclass
class LoraSettings:
    """LoRA on the LLM only (docs/transformers-notes.md §10); mergers and fusions fully trained and saved with the adapter.
    A deviation from the official recipe (full LLM fine-tuning)."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


@dataclass
class CacheConfig:
    """Feature cache (training/feature_cache.py): the processor and the frozen part of each encoder tower run once
    per sample, before training; every batch is then read from disk. Worth it when a run sees a sample more than
    once: `enabled: true` builds it only when the run's own numbers say so (training/cache_cost.py
    `cache_skip_reason`, decided before any feature is written and logged in one line when it is not built);
    `always` builds it anyway (a shared folder that later runs reuse). `directory`: default `<output_dir>/feature_cache`; "~" is the user's home (a folder outside the run, e.g.
    `~/.cache/gap_mllm/feature_cache`, outlives it, and its fingerprinted subfolders are safe to share). `dtype`: storage of the features ("float16",
    "bfloat16", "float32"). `batch_size`: samples per encoder call while it is built."""

    enabled: bool | Literal["always"] = False
    directory: str | None = None
    dtype: str = "float16"
    batch_size: int = 16


@dataclass
class RunStateConfig:
    """A run state kept outside the output folder (training/run_state.py): after every checkpoint save, the
    checkpoint without what the source model already holds goes to `directory` (a folder a git repository can
    carry), and a run resumed with `--resume auto` on a machine without that checkpoint starts from it.
    `moments_dtype` / `best_dtype`: "float32" (exact) or "bfloat16" (half the bytes) for the optimizer's moments and
    the best model's weights that differ from the checkpoint's (a best of the checkpoint's own step is restored
    exactly, whatever `best_dtype`). None: no run state. `accept_other_data`: continue a resumed run (from its state, or from
    a checkpoint of its output folder) on data other than those it recorded (training/data_sketch.py; a warning names
    the first file that differs), which it records from then on: for a state written before the data sketch (format
    2), or an output folder an earlier version wrote, on data the same command wrote again. `accept_other_settings`:
    continue a resumed run with recipe settings other than those it recorded (training/run_state.py
    `check_same_settings`: a deliberate change, printed in the run's plan and recorded in its training record); the
    settings its checkpoint's optimizer and scheduler carry (the learning rates, weight decay, betas, eps, optimizer)
    are refused even then. Both apply to the one resume given them."""

    directory: str | None = None
    moments_dtype: str = "float32"
    best_dtype: str = "float32"
    accept_other_data: bool = False
    accept_other_settings: bool = False


@dataclass
class GeometryStageConfig:
    """Stage "geometry" (stage 0): the geometry encoder + camera/depth heads on exact ground truth
    (training/encoder_stage_run.py). Clips of `clip_frames` frames spread over `window_fraction` of a scene
    (training clips: a share drawn in [min_window_fraction, window_fraction] when the minimum is set; held-out
    clips always use `window_fraction`). `match_*` and `flow_*`: the cross-view matching terms
    (training/cross_view_matching.py), off at weight 0."""

    clip_frames: int = 4
    window_fraction: float = 0.5
    min_window_fraction: float | None = None
    num_clips: int = 1_000_000
    camera_weight: float = 1.0
    depth_weight: float = 1.0
    point_weight: float = 0.0  # VGGT's pointmap term (training/encoder_stage_run.py); needs use_point_head
    gradient_weight: float = 1.0
    confidence_alpha: float = 0.2
    iteration_gamma: float = 0.6
    match_weight: float = 0.0
    match_layer: int = 3  # global-attention block whose first `match_heads` heads learn to match views
    match_heads: int = 1
    flow_weight: float = 0.0
    flow_layer: int = 5  # global block whose patch tokens the offset read-out reads
    eval_clips: int = 64


@dataclass
class VisionStageConfig:
    """Stage "vision" (stage 0): the Qwen ViT on SynthRooms semantics (training/encoder_stage_run.py)."""

    marker_probability: float = 0.5
    marker_weight: float = 1.0
    position_weight: float = 1.0  # the token-position term (training/encoder_stage_run.py says why); 0 turns it off


@dataclass
class KernelConfig:
    """Optional GPU kernels (training/kernels.py; the attention kernel is `model.attn_implementation`). Each is None by
    default: on for a CUDA run of an LLM stage where it can run and the latest GPU figures earned it, off on the CPU
    (decided and logged when the run starts); true where it cannot run is refused by name; false turns it off.

    liger_fused_linear_cross_entropy: the LM head and the cross-entropy at the answer tokens as Liger's fused
        kernel (liger-kernel; CUDA), which never holds the answer tokens' logits. Needs `make gpu-venv`.
    liger_language_model: Liger's Qwen3-VL kernels (RMSNorm, RoPE, SwiGLU) in the inner language model (liger-kernel;
        CUDA).
    compile_layers: regional `torch.compile` of each decoder layer of the language model (inductor: Triton on CUDA,
        a C++ compiler on the CPU); with `data.length_buckets` at static shapes, one compilation per bucket.
    compile_towers: the same for each block of the frozen towers (the VGGT encoder's DINO, frame and global blocks;
        the ViT's blocks), whose element-wise work and launches were most of a real-size step on an H100 (bench/README.md
        "Where a step goes"); one compilation per number of views.
    graph_geometry_encoder: the frozen VGGT encoder's forward replayed as one CUDA graph per input shape
        (training/cuda_graph_forward.py): its thousands of kernel launches a step become one; CUDA only, not under
        DeepSpeed ZeRO-3 or FSDP (their hooks gather the encoder's weights inside its forward).
    Each is on by default only where the latest GPU figures earned it (training/kernels.py `earned_switches`).
    """

    liger_fused_linear_cross_entropy: bool | None = None
    liger_language_model: bool | None = None
    compile_layers: bool | None = None
    compile_towers: bool | None = None
    graph_geometry_encoder: bool | None = None


@dataclass
class GenerationEvalConfig:
    """Evaluation with generation during training (training/generation_eval.py): every `every_n_steps`
    (and at the end), the first `max_samples` samples of each task in `tasks` (evaluation task names) of
    `split` are answered greedily and scored with the evaluation package's metrics; the figures are logged
    next to the loss as `gen_<task>_<metric>`. Empty `tasks`: off.

    best_metric: keep the best model: after each evaluation whose `best_metric` (a logged `gen_*` name) is at
        least as good as the best so far (`greater_is_better`; ties go to the later, longer-trained model), the
        model is saved to `<output_dir>/best` with `best.json` (step and figures); at the end of training the run's
        final model is that one (training/generation_eval.py). None: the final model is the last step's."""

    tasks: list[str] = field(default_factory=list)
    split: str = "val"
    max_samples: int = 64
    every_n_steps: int = 500
    batch_size: int = 16
    max_new_tokens: int | None = None
    best_metric: str | None = None
    greater_is_better: bool = True


@dataclass
class TrainRecipe:
    """A whole run. `training` holds `transformers.TrainingArguments` keyword arguments.

    loss_normalization: "global_token_mean" (default) divides the summed cross-entropy by the number of
        answer tokens of the whole optimizer step (all accumulation steps, all processes), so gradient
        accumulation and data parallelism give exactly the gradient of the global batch;
        "micro_batch_mean" is the official behaviour (token mean per micro-batch, averaged over steps).
    device: "auto" (CUDA when torch sees one, else the CPU), "cpu" or "cuda"; the precision and the
        CPU settings follow from it (training/device.py), and the choice is logged.
    time_limit_s: stop after this many seconds of training with a checkpoint that `--resume auto`
        continues (training/time_limit.py); None: run to `training.max_steps`.
    cpu_bf16_autocast: on the CPU, train with bf16 autocast (float32 weights) instead of in float32; only on a
        CPU with native bfloat16 (AVX512-BF16 or AMX), refused elsewhere (training/device.py). No effect on CUDA,
        where `training.bf16` / `fp16` decide.
    """

    stage: str = "pretrain"  # "pretrain" / "finetune" (the LLM stages), "geometry" / "vision" (stage 0)
    model: ModelSource = field(default_factory=ModelSource)
    data: DataConfig = field(default_factory=DataConfig)
    freezing: FreezingPolicy = field(default_factory=FreezingPolicy)
    learning_rates: LearningRates = field(default_factory=LearningRates)
    aux: AuxLossConfig = field(default_factory=AuxLossConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    cache: CacheConfig = field(default_factory=CacheConfig)
    run_state: RunStateConfig = field(default_factory=RunStateConfig)
    geometry: GeometryStageConfig = field(default_factory=GeometryStageConfig)
    vision: VisionStageConfig = field(default_factory=VisionStageConfig)
    evaluation: GenerationEvalConfig = field(default_factory=GenerationEvalConfig)
    kernels: KernelConfig = field(default_factory=KernelConfig)
    loss_normalization: str = "global_token_mean"
    device: str = "auto"
    time_limit_s: float | None = None
    cpu_bf16_autocast: bool = False
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"stage={self.stage!r}; choose from {STAGES}")
        if self.device not in DEVICES:
            raise ValueError(f"device={self.device!r}; choose from {DEVICES}")
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization={self.loss_normalization!r}; choose from {LOSS_NORMALIZATIONS}")
        if self.data.on_bad_sample not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"data.on_bad_sample={self.data.on_bad_sample!r}; choose from {BAD_SAMPLE_POLICIES}")
        unknown = set(self.aux.align_levels) - {0, 1, 2, 3}
        if unknown:
            raise ValueError(f"aux.align_levels has unknown levels {sorted(unknown)} (0-3)")
        check_training_values(self.training)
        check_value_ranges(self)
        check_attention_name(self.model.attn_implementation)
        if self.training.get("use_liger_kernel"):
            raise RecipeTypeError(TRANSFORMERS_LIGER_REFUSAL)
        for name in ("liger_fused_linear_cross_entropy", "liger_language_model", "compile_layers", "compile_towers",
                     "graph_geometry_encoder"):
            if getattr(self.kernels, name) and self.stage not in LLM_STAGES:
                raise ValueError(f"kernels.{name} applies to the LLM stages (pretrain, finetune), not stage={self.stage!r}")
        for name in ("moments_dtype", "best_dtype"):
            if getattr(self.run_state, name) not in ("float32", "bfloat16"):
                raise ValueError(f"run_state.{name}={getattr(self.run_state, name)!r}; choose from ['bfloat16', 'float32']")
        for task, repeats in (self.data.task_repeats or {}).items():
            if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
                raise ValueError(f"data.task_repeats.{task}={repeats!r}: give a whole number of repeats, at least 1")
        if self.evaluation.best_metric is not None and not self.evaluation.tasks:
            raise ValueError(f"evaluation.best_metric={self.evaluation.best_metric!r} needs evaluation.tasks to score")
        if self.data.length_buckets is not None:
            self.data.length_buckets = check_buckets(self.data.length_buckets)
        if self.data.packing and reentrant_checkpointing(self.training) and self.model.attn_implementation in (None, "sdpa"):
            # packed rows attend per sample through training/packed_attention.py, switched on for the forward; the
            # non-reentrant checkpoint recomputes a layer under the same switch (its context_fn), the reentrant one
            # has no such hook and would recompute with plain sdpa, attending across the samples of a row
            raise ValueError("data.packing with training.activation_checkpointing and use_reentrant=true under sdpa: "
                             "a reentrant checkpoint recomputes each layer in the backward without the packed rows' "
                             "per-sample attention; leave training.activation_checkpointing_kwargs.use_reentrant unset "
                             "(false), or turn packing or checkpointing off")
        if self.data.packing and checkpoints_activations(self.training) and self.kernels.compile_layers:
            # packed rows recompute under their attention through the checkpoint's context_fn (training/
            # geometry_aligned_model.py), and torch.compile refuses any context_fn but its own dispatch modes
            raise ValueError("kernels.compile_layers=true with data.packing and training.activation_checkpointing: a "
                             "compiled layer takes no checkpoint context, and packed rows need one to recompute with "
                             "their per-sample attention; turn one of the three off")
        if self.data.packing and self.data.packing_row_tokens is not None and is_flash(self.model.attn_implementation):
            raise ValueError(f"data.packing_row_tokens={self.data.packing_row_tokens} with model.attn_implementation="
                             f"{self.model.attn_implementation!r}: {FLASH_ONE_ROW}")

        # canonical task names (deprecated ones warn); a task without data of its own is an error here
        self.data.tasks = [builder_for_task(task).SPEC.name for task in self.data.tasks]
        if self.stage in ("pretrain", "finetune"):  # the encoder stages read their clips from data_root, not tasks
            check_data_tasks(self.data.tasks)
        if self.data.task_max_samples:
            caps = {builder_for_task(task).SPEC.name: count for task, count in self.data.task_max_samples.items()}
            strangers = sorted(set(caps) - set(self.data.tasks))
            if strangers:
                raise ValueError(f"data.task_max_samples names {strangers}, which data.tasks {self.data.tasks} does not train")
            bad = {task: count for task, count in caps.items() if count < 1}
            if bad:
                raise ValueError(f"data.task_max_samples must be at least 1 per task, got {bad}")
            self.data.task_max_samples = caps
        if self.data.task_repeats:
            repeats = {builder_for_task(task).SPEC.name: count for task, count in self.data.task_repeats.items()}
            strangers = sorted(set(repeats) - set(self.data.tasks))
            if strangers:
                raise ValueError(f"data.task_repeats names {strangers}, which data.tasks {self.data.tasks} does not train")
            self.data.task_repeats = repeats
        if self.data.task_loss_weights:
            weights = {builder_for_task(task).SPEC.name: weight for task, weight in self.data.task_loss_weights.items()}
            strangers = sorted(set(weights) - set(self.data.tasks))
            if strangers:
                raise ValueError(f"data.task_loss_weights names {strangers}, which data.tasks {self.data.tasks} does not train")
            bad = {task: weight for task, weight in weights.items() if not (math.isfinite(weight) and weight > 0)}
            if bad:
                raise ValueError(f"data.task_loss_weights must be finite and above 0 per task, got {bad}")
            if self.kernels.liger_fused_linear_cross_entropy and weighted_mix(weights):
                raise ValueError(LIGER_WEIGHTS_REFUSAL)
            self.data.task_loss_weights = weights

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The ranges of a recipe's numbers, checked where the recipe is read (`check_value_ranges`), after their types: a value
# outside its range is refused naming its key, not met later as a ZeroDivisionError inside Trainer
# (gradient_accumulation_steps=0), an error of the optimizer after the model and the feature cache were built (a
# negative learning rate), or a run that trains on nonsense (a negative loss weight maximises its loss). None, where a
# field allows it, is not a number and is not checked; NaN and infinity never pass the types (config_types.py).
AT_LEAST_ONE = ("at least 1", lambda value: value >= 1)
ABOVE_ZERO = ("above 0", lambda value: value > 0)
NOT_NEGATIVE = ("0 or more", lambda value: value >= 0)
BELOW_ONE = ("in [0, 1)", lambda value: 0 <= value < 1)
SHARE = ("in (0, 1]", lambda value: 0 < value <= 1)
PROBABILITY = ("in [0, 1]", lambda value: 0 <= value <= 1)
SEED = ("in [0, 2**32)", lambda value: 0 <= value < 2**32)  # numpy's seeds

VALUE_RANGES = {
    # TrainingArguments' numbers (transformers checks none of them where the recipe is read)
    "training.per_device_train_batch_size": AT_LEAST_ONE, "training.per_device_eval_batch_size": AT_LEAST_ONE,
    "training.gradient_accumulation_steps": AT_LEAST_ONE, "training.eval_accumulation_steps": AT_LEAST_ONE,
    "training.learning_rate": ABOVE_ZERO, "training.weight_decay": NOT_NEGATIVE, "training.max_grad_norm": NOT_NEGATIVE,
    "training.adam_beta1": BELOW_ONE, "training.adam_beta2": BELOW_ONE, "training.adam_epsilon": NOT_NEGATIVE,
    "training.warmup_steps": NOT_NEGATIVE, "training.label_smoothing_factor": BELOW_ONE,
    "training.logging_steps": ABOVE_ZERO, "training.save_steps": ABOVE_ZERO, "training.eval_steps": ABOVE_ZERO,
    "training.eval_delay": NOT_NEGATIVE, "training.torch_empty_cache_steps": AT_LEAST_ONE,
    "training.dataloader_num_workers": NOT_NEGATIVE, "training.dataloader_prefetch_factor": AT_LEAST_ONE,
    "training.seed": SEED, "training.data_seed": SEED, "training.ddp_timeout": ABOVE_ZERO,
    # the recipe's own sections
    "model.seed": SEED,
    "data.max_train_samples": AT_LEAST_ONE, "data.max_eval_samples": AT_LEAST_ONE,
    "data.packing_row_tokens": AT_LEAST_ONE,
    "learning_rates.merger_lr": NOT_NEGATIVE, "learning_rates.vision_tower_lr": NOT_NEGATIVE,
    "learning_rates.geometry_encoder_lr": NOT_NEGATIVE, "learning_rates.aux_heads_lr": NOT_NEGATIVE,
    "aux.feature_align_weight": NOT_NEGATIVE, "aux.camera_weight": NOT_NEGATIVE, "aux.depth_weight": NOT_NEGATIVE,
    "aux.scale_weight": NOT_NEGATIVE, "aux.depth_gradient_weight": NOT_NEGATIVE,
    "aux.depth_confidence_alpha": NOT_NEGATIVE, "aux.depth_patch": AT_LEAST_ONE,
    "aux.align_head_hidden_size": AT_LEAST_ONE,
    "lora.r": AT_LEAST_ONE, "lora.alpha": ABOVE_ZERO, "lora.dropout": BELOW_ONE,
    "cache.batch_size": AT_LEAST_ONE,
    "geometry.clip_frames": AT_LEAST_ONE, "geometry.window_fraction": SHARE, "geometry.min_window_fraction": SHARE,
    "geometry.num_clips": AT_LEAST_ONE, "geometry.eval_clips": NOT_NEGATIVE, "geometry.match_heads": AT_LEAST_ONE,
    "geometry.camera_weight": NOT_NEGATIVE, "geometry.depth_weight": NOT_NEGATIVE, "geometry.point_weight": NOT_NEGATIVE,
    "geometry.gradient_weight": NOT_NEGATIVE, "geometry.confidence_alpha": NOT_NEGATIVE,
    "geometry.iteration_gamma": ABOVE_ZERO, "geometry.match_weight": NOT_NEGATIVE, "geometry.flow_weight": NOT_NEGATIVE,
    "vision.marker_probability": PROBABILITY, "vision.marker_weight": NOT_NEGATIVE,
    "vision.position_weight": NOT_NEGATIVE,
    "evaluation.max_samples": AT_LEAST_ONE, "evaluation.every_n_steps": NOT_NEGATIVE,  # 0: at the end only
    "evaluation.batch_size": AT_LEAST_ONE, "evaluation.max_new_tokens": AT_LEAST_ONE,
    "time_limit_s": ABOVE_ZERO,
}


def check_value_ranges(recipe: TrainRecipe) -> None:
    """`RecipeTypeError` naming the first number of `recipe` outside its range in `VALUE_RANGES` (or not finite: a
    recipe built in code has not passed the types), with the range in words."""
    for name, (words, within) in VALUE_RANGES.items():
        section, _, key = name.rpartition(".")
        holder = recipe if not section else getattr(recipe, section)
        value = holder.get(key) if isinstance(holder, dict) else getattr(holder, key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(value):
            raise RecipeTypeError(f"{name}={value!r}: give a finite number ({words})")
        if not within(value):
            raise RecipeTypeError(f"{name}={value!r}: must be {words}")


def check_data_tasks(tasks) -> None:
    """ValueError naming `data.tasks` when it names no task: there would be no sample to train on (and datasets
    would only say that it cannot concatenate an empty list)."""
    if not tasks:
        raise ValueError(f"data.tasks is empty: name at least one task with training data ({', '.join(BUILDERS)})")


def recipe_from_dict(values: dict) -> TrainRecipe:
    """Build a recipe from nested dicts. Unknown keys are errors (a typo must not be ignored) and every
    value is checked and converted against its field's type (`training.*`: `TrainingArguments`' types);
    a `RecipeTypeError` names the field."""
    values = dict(values or {})
    types_by_name = field_types(TrainRecipe)
    for name, annotation in types_by_name.items():
        # An empty YAML section ("lora:") reads as None: it means "all defaults".
        if values.get(name, 0) is None and (dataclasses.is_dataclass(annotation) or name == "training"):
            values[name] = {}
    kwargs = coerce_fields(TrainRecipe, values, "")
    if "training" in kwargs:
        kwargs["training"] = check_training_arguments(kwargs["training"])
    return TrainRecipe(**kwargs)


def check_training_arguments(values: dict) -> dict:
    """`training` values checked against `transformers.TrainingArguments`' fields and their types."""
    if not isinstance(values, dict):
        raise RecipeTypeError(f"training: expected a mapping of TrainingArguments fields, got {type(values).__name__}")
    return coerce_fields(TrainingArguments, values, "training")


def check_training_values(values: dict) -> None:
    """`training` values of the right type that TrainingArguments would still read as something else than
    asked: `max_steps` other than a positive number or -1 (transformers reads any value <= 0 as "train for
    num_train_epochs", so `max_steps: -5` would silently run whole epochs), and `num_train_epochs` <= 0 when
    the epochs decide the length. A `RecipeTypeError` naming the field."""
    max_steps = values.get("max_steps", -1)
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps <= 0 and max_steps != -1:
        raise RecipeTypeError(f"training.max_steps: {max_steps} is not a number of steps; give a positive number of "
                              "optimizer steps, or -1 to train for training.num_train_epochs")
    epochs = values.get("num_train_epochs")
    if max_steps == -1 and isinstance(epochs, (int, float)) and not isinstance(epochs, bool) and epochs <= 0:
        raise RecipeTypeError(f"training.num_train_epochs: {epochs} trains nothing; give a positive number "
                              "(or a positive training.max_steps)")


class DuplicateKey(yaml.YAMLError):
    """A mapping of a recipe's YAML writes `key` twice, at lines `first` and `second` (1-based)."""

    def __init__(self, key, first: int, second: int):
        super().__init__(f"the key {key!r} is written twice (lines {first} and {second})")
        self.key, self.first, self.second = key, first, second


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a mapping with a key written twice (`DuplicateKey`): PyYAML itself keeps the
    last value silently, so a recipe with `stage:` twice trained with the later one. A key given by a merge
    (`<<: *defaults`) may still be overridden, as YAML defines merges."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise DuplicateKey(key, lines[key], line)
                    lines[key] = line
                except TypeError:  # an unhashable key: PyYAML's own error names it
                    break
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str):
    """`text` parsed as YAML by `RecipeLoader` (safe, and a key written twice is a `DuplicateKey`)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - RecipeLoader is a SafeLoader


def apply_overrides(values: dict, overrides: list[str] | None) -> dict:
    """`section.key=value` strings applied in order. The value is read as YAML (numbers, booleans,
    lists: `[a, b]`); its type is then checked against the field by `recipe_from_dict`."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for override in overrides or []:
        if "=" not in override:
            raise RecipeTypeError(f"override {override!r} must look like section.key=value")
        dotted, raw = override.split("=", 1)
        *path, key = dotted.strip().split(".")
        if not key or not all(path):
            raise RecipeTypeError(f"override {override!r}: empty name in {dotted!r}")
        target = values
        for part in path:
            if target.get(part) is None:
                target[part] = {}
            target = target[part]
            if not isinstance(target, dict):
                raise RecipeTypeError(f"override {override!r}: {part!r} is not a section")
        try:
            target[key] = read_yaml(raw)
        except yaml.YAMLError as error:
            raise RecipeTypeError(f"override {override!r}: the value is not valid YAML ({error})") from error
    return values


def load_recipe(path, overrides: list[str] | None = None) -> TrainRecipe:
    """Read a YAML recipe (see training/recipes/) and apply `section.key=value` overrides. A `RecipeTypeError` naming
    the file when it is empty, is not YAML, writes a key twice (the later value would silently win) or is not a
    mapping of sections."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {str(path)!r} not found (see training/recipes/ for the shipped ones)")
    try:
        values = read_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKey as error:
        raise RecipeTypeError(f"recipe {str(path)!r}: {error}; the later value would silently replace the first: keep "
                              "one") from None
    except yaml.YAMLError as error:
        raise RecipeTypeError(f"recipe {str(path)!r} is not valid YAML: {error}") from error
    if values is None or values == {}:
        raise RecipeTypeError(f"recipe {str(path)!r} is empty: it sets no training.output_dir (the folder the run "
                              "writes), stage or data; start from a recipe of training/recipes/")
    if not isinstance(values, dict):
        raise RecipeTypeError(f"recipe {str(path)!r} must be a mapping of sections, got {type(values).__name__}")
    return recipe_from_dict(apply_overrides(values, overrides))


# TrainingArguments settings this package needs whatever the recipe says: the collators read dataset columns
# (images, prompt, answer, ...) that the model's forward does not name, so Trainer must not drop them.
REQUIRED_ARGUMENTS = {"remove_unused_columns": False}


def _json_value(value):
    """`value` as a run state records settings (JSON, anything else as its text: training/run.py `run_definition`)."""
    return json.loads(json.dumps(value, default=str))


def training_default(name: str):
    """The value `TrainingArguments` gives its field `name` when the recipe leaves it out (JSON, as recorded), or
    `NO_DEFAULT` for a field without a plain default (a factory) or no such field."""
    found = next((f for f in dataclasses.fields(TrainingArguments) if f.name == name), None)
    if found is None or found.default is dataclasses.MISSING:
        return NO_DEFAULT
    return _json_value(found.default)


NO_DEFAULT = object()  # `training_default` of a field without one


def without_defaults(settings: dict) -> dict:
    """Flat run settings (`"training.weight_decay": 0.0`, training/run.py `run_definition`) without the `training.*`
    ones given at `TrainingArguments`' own default: the resolved recipe is the same with or without them, so a
    setting written out at its default is the same run as one left out."""
    return {name: value for name, value in settings.items()
            if not (name.startswith("training.") and training_default(name[len("training."):]) == value)}


def training_arguments(recipe: TrainRecipe) -> TrainingArguments:
    """The run's `TrainingArguments`: the recipe's `training` values and `REQUIRED_ARGUMENTS`."""
    output_dir_of(recipe)
    return TrainingArguments(**{**recipe.training, **REQUIRED_ARGUMENTS})


def output_dir_of(recipe: TrainRecipe) -> str:
    """The run's `training.output_dir`; a `RecipeTypeError` naming it when the recipe sets none."""
    output_dir = recipe.training.get("output_dir")
    if output_dir is None:
        raise RecipeTypeError("training.output_dir is not set: name the folder the run writes (training.output_dir in "
                              "the recipe, or gap-mllm train --out)")
    return output_dir
