"""`GeometryAlignedTrainer`: `transformers.Trainer` for GAP-MLLM pre-training and fine-tuning.

What it adds to Trainer (docs/transformers-notes.md §9):

- the loss: the official answer-only cross-entropy (labels from `GapMllmDataCollator`), plus the enabled
  auxiliary losses times their weights (docs/method.md §9); every part logged separately (`lm_loss`,
  `feature_align_loss`, `camera_loss`, `depth_loss`, `scale_loss`, and `skipped_samples`);
- exact gradient accumulation: with `loss_normalization="global_token_mean"` the summed cross-entropy
  is divided by the answer tokens of the whole optimizer step (Trainer's `num_items_in_batch`, counted
  over all accumulation steps and processes), so GA and data parallelism give the gradient of the
  global batch; the auxiliary losses (means per micro-batch) are divided by the accumulation steps;
- the optimizer groups of the official recipe (training/param_groups.py);
- saving: the GAP-MLLM (or its LoRA adapter) as a normal Hub folder, and the auxiliary heads beside it
  (`aux_heads.safetensors`) only when some are enabled; resuming restores both;
- checkpoints that are never half there: each is written under `tmp-checkpoint-N/` and renamed to
  `checkpoint-N` once every process has finished writing it (training/checkpoints.py); a full disk
  during a save is one `CheckpointDiskFull` error saying which device, how much to free and where
  `--resume auto` continues, not a torch traceback.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import defaultdict

import safetensors.torch
import torch
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .bad_samples import SKIPPED_KEY, skipped_samples_warning
from .checkpoints import (
    CheckpointDiskFull,
    check_resume_checkpoint,
    disk_full_error,
    find_resumable_checkpoint,
    is_disk_full,
    names_size_limit,
    newest_checkpoint_size,
    size_limit_error,
    staging_root,
)
from .config import LOSS_NORMALIZATIONS, AuxLossConfig, LearningRates
from .divergence import DivergenceGuard
from .geometry_aligned_model import GeometryAlignedModel
from .log_lines import print_numbers
from .param_groups import build_parameter_groups

logger = logging.getLogger(__name__)

AUX_HEADS_WEIGHTS = "aux_heads.safetensors"
AUX_HEADS_CONFIG = "aux_heads_config.json"


class GeometryAlignedTrainer(DivergenceGuard, Trainer):
    """Trainer for a [`GeometryAlignedModel`].

    Args:
        model: the wrapped GAP-MLLM (+ auxiliary heads).
        learning_rates: per-group rates (merger, vision tower, ...); the base rate is `args.learning_rate`.
        loss_normalization: "global_token_mean" (exact GA/DDP) or "micro_batch_mean" (official).
        **kwargs: everything `Trainer` takes (args, datasets, data_collator, processing_class, callbacks).
            `args.remove_unused_columns` must be False (the geometry columns are not forward arguments
            Trainer can see).
    """

    # compute_loss below does all the scaling for gradient accumulation itself.
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model: GeometryAlignedModel,
        *args,
        learning_rates: LearningRates | None = None,
        loss_normalization: str = "global_token_mean",
        **kwargs,
    ):
        if not isinstance(model, GeometryAlignedModel):
            raise TypeError("GeometryAlignedTrainer trains a GeometryAlignedModel: wrap the GAP-MLLM first")
        if loss_normalization not in LOSS_NORMALIZATIONS:
            raise ValueError(f"loss_normalization={loss_normalization!r}; choose from {LOSS_NORMALIZATIONS}")
        super().__init__(model, *args, **kwargs)
        print_numbers(self)  # loss lines with numbers, not quoted strings (log_lines.py)
        if self.args.remove_unused_columns:
            raise ValueError("set remove_unused_columns=False: Trainer would drop the images and geometry columns")
        self.learning_rates = learning_rates or LearningRates()
        self.loss_normalization = loss_normalization
        self.aux: AuxLossConfig = model.aux
        # Ask Trainer to count the answer tokens of each optimizer step (`num_items_in_batch`); they are
        # consumed here, never passed to the model. Labels are shifted by the LM loss.
        self.model_accepts_loss_kwargs = loss_normalization == "global_token_mean"
        self._loss_shifts_labels = True
        self._component_values: dict[str, list[float]] = defaultdict(list)
        self._skipped_samples = 0

    # ------------------------------------------------------------------ loss
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        skipped = inputs.pop(SKIPPED_KEY, None)  # an int from the collator (training/host_metadata.py): no device read
        if skipped is not None and model.training:
            self._skipped_samples += int(skipped)
        outputs = model(**inputs)
        weights = {"feature_align": self.aux.feature_align_weight, "camera": self.aux.camera_weight,
                   "depth": self.aux.depth_weight, "scale": self.aux.scale_weight}
        aux_total = sum(weights[name] * value for name, value in outputs.aux_losses.items())

        if not model.training:
            loss = outputs.loss + aux_total
        elif self.loss_normalization == "global_token_mean" and num_items_in_batch is not None:
            # sum / tokens of the whole step; DDP averages gradients over processes, so undo that when the
            # count is global. Auxiliary means: one share per accumulation step.
            lm = outputs.lm_loss_sum / num_items_in_batch
            if self.args.average_tokens_across_devices and self.accelerator.num_processes > 1:
                lm = lm * self.accelerator.num_processes
            loss = lm + aux_total / self.current_gradient_accumulation_steps
        else:
            loss = (outputs.loss + aux_total) / self.current_gradient_accumulation_steps

        prefix = "" if model.training else "eval_"
        # kept on the device: read once per logging step (`log`), not once per step (a wait for the GPU each)
        self._component_values[f"{prefix}lm_loss"].append(outputs.loss.detach().float())
        for name, value in outputs.aux_losses.items():
            self._component_values[f"{prefix}{name}_loss"].append(value.detach().float())
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Loss only: generation-based metrics live in gap_mllm.evaluation."""
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ logging
    def component_names(self) -> list[str]:
        """Loss parts logged beside Trainer's `loss`, in a fixed order (same on every process)."""
        return ["lm_loss", *(f"{name}_loss" for name in self.aux.enabled)]

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        is_eval = any(key.startswith("eval_") for key in logs)
        names = [f"eval_{n}" if is_eval else n for n in self.component_names()]
        values = [self._component_values[n] for n in names]
        device = next((v[0].device for v in values if v), torch.device("cpu"))
        zero = torch.zeros((), dtype=torch.float64, device=device)
        sums = [torch.stack(v).double().sum().to(device) if v else zero for v in values]
        counts = torch.tensor([*(len(v) for v in values), float(self._skipped_samples)], dtype=torch.float64,
                              device=device)
        # per part: the sum, then per part the count, then the skipped samples; summed over processes so every rank
        # logs the global figures
        stats = torch.cat([torch.stack(sums), counts]) if sums else counts
        if self.args.world_size > 1:
            stats = self.accelerator.reduce(stats.to(self.args.device), reduction="sum")
        # the one read of the steps' loss values on the host (it must be: the figures are written out here), made
        # once per logging step; the training steps themselves keep them on the device
        stats = stats.tolist()
        totals, counts, skipped = stats[: len(names)], stats[len(names) : 2 * len(names)], stats[-1]
        for name, total, count in zip(names, totals, counts):
            if count:
                logs[name] = round(total / count, 6)
            self._component_values[name].clear()
        if not is_eval and "loss" in logs or "train_loss" in logs:
            logs["skipped_samples"] = int(skipped)
        super().log(logs, start_time)

    @property
    def skipped_samples(self) -> int:
        """Samples dropped by `BadSampleGuard` on this process so far."""
        return self._skipped_samples

    @property
    def skipped_sample_names(self) -> list[str]:
        """The skipped samples known by name in this process: those a feature cache holds as bad (its collator's)."""
        return list(getattr(getattr(self.data_collator, "cache", None), "skipped_names", []))

    def train(self, *args, **kwargs):
        """`Trainer.train`, then a warning naming the bad samples skipped (at least the first few), if any. A checkpoint
        to resume from (`resume_from_checkpoint`, a folder) must be complete (training/checkpoints.py
        `checkpoint_problem`; ValueError naming it and what is missing): Trainer itself resumes without a missing
        optimizer or scheduler file, silently, with a fresh optimizer and a restarted schedule."""
        checkpoint = kwargs.get("resume_from_checkpoint", args[0] if args else None)
        if isinstance(checkpoint, (str, os.PathLike)):
            check_resume_checkpoint(checkpoint, self.args.max_steps)
        output = super().train(*args, **kwargs)
        if self._skipped_samples:
            logger.warning(skipped_samples_warning(self._skipped_samples, self.skipped_sample_names))
        return output

    # ------------------------------------------------------------------ optimizer
    def create_optimizer(self, model=None):
        if self.optimizer is None:
            opt_model = self.model if model is None else model
            groups = build_parameter_groups(opt_model, self.args.learning_rate, self.args.weight_decay, self.learning_rates)
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
            self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ saving and resuming
    def _get_output_dir(self, trial) -> str:
        # While a checkpoint is being written, Trainer's run folder is the staging folder, so that
        # everything it writes lands in tmp-checkpoint-N/checkpoint-N (see _save_checkpoint).
        staging = getattr(self, "_checkpoint_staging", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """Trainer's checkpoint, written under `tmp-checkpoint-N/` and renamed to `checkpoint-N` when
        complete on every process, so a kill during a save never leaves a `checkpoint-N` that looks
        complete; the previous checkpoint is rotated away only after that."""
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging, final = staging_root(run_dir, self.state.global_step), os.path.join(run_dir, name)
        if self.args.should_save and staging.exists():
            shutil.rmtree(staging)  # left by a run killed while saving this step
        self.accelerator.wait_for_everyone()
        self._checkpoint_staging = str(staging)
        try:
            super()._save_checkpoint(model, trial)
        except Exception as error:
            if self.args.should_save and names_size_limit(error):  # `ulimit -f`: torch.save says "unexpected pos"
                shutil.rmtree(staging, ignore_errors=True)  # half written and useless
                raise size_limit_error(run_dir, name) from error
            # the next checkpoint takes about as much as the last one; the first, what its tensors hold
            needed = newest_checkpoint_size(run_dir) or self._checkpoint_tensor_bytes()
            if not (self.args.should_save and is_disk_full(error, staging, needed)):
                raise
            shutil.rmtree(staging, ignore_errors=True)  # half written and useless; the complete ones stay
            raise disk_full_error(run_dir, needed, find_resumable_checkpoint(run_dir), name) from error
        finally:
            self._checkpoint_staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (RNG state, shards)
        if self.args.should_save:
            if os.path.isdir(final):  # the same step saved before (e.g. a resumed run): replace it whole
                shutil.rmtree(final)
            os.replace(staging / name, final)
            staging.rmdir()
            if self.state.best_model_checkpoint == str(staging / name):
                self.state.best_model_checkpoint = final
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()

    def _checkpoint_tensor_bytes(self) -> int:
        """Bytes of the tensors a checkpoint writes: the model's state and the optimizer's."""
        total = sum(t.numel() * t.element_size() for t in self.accelerator.unwrap_model(self.model).state_dict().values())
        for state in (self.optimizer.state.values() if self.optimizer is not None else ()):
            total += sum(v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor))
        return total

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's `save_model`; a full disk while writing the final model is a `CheckpointDiskFull` naming
        the device and the folder (inside a checkpoint save, `_save_checkpoint` reports it)."""
        try:
            super().save_model(output_dir, _internal_call=_internal_call)
        except Exception as error:
            folder = output_dir if output_dir is not None else self.args.output_dir
            run_dir = self.args.output_dir
            needed = newest_checkpoint_size(run_dir) or self._checkpoint_tensor_bytes()
            if _internal_call or isinstance(error, CheckpointDiskFull) or not is_disk_full(error, folder, needed):
                raise
            raise disk_full_error(folder, needed, find_resumable_checkpoint(run_dir), "the model") from error

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The GAP-MLLM (or its adapter) with `save_pretrained`, the auxiliary heads beside it."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        os.makedirs(output_dir, exist_ok=True)
        wrapper: GeometryAlignedModel = self.accelerator.unwrap_model(self.model)
        inner_state = heads_state = None
        if state_dict is not None:  # gathered by DeepSpeed / FSDP: keys carry the wrapper's prefixes
            inner_state = {k[len("model."):]: v for k, v in state_dict.items() if k.startswith("model.")}
            heads_state = {k[len("aux_heads."):]: v for k, v in state_dict.items() if k.startswith("aux_heads.")}
        if inner_state is not None and hasattr(wrapper.model, "get_base_model"):
            inner_state = None  # PEFT filters its adapter from the live model
        wrapper.model.save_pretrained(output_dir, state_dict=inner_state, is_main_process=True)
        if wrapper.aux_heads is not None:
            save_aux_heads(wrapper, output_dir, heads_state)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        wrapper: GeometryAlignedModel = self.accelerator.unwrap_model(model if model is not None else self.model)
        super()._load_from_checkpoint(resume_from_checkpoint, model=wrapper.model)
        if wrapper.aux_heads is not None:
            load_aux_heads(wrapper, resume_from_checkpoint)


def save_aux_heads(wrapper: GeometryAlignedModel, directory, state_dict: dict | None = None) -> None:
    """Write `aux_heads.safetensors` and the settings that built them."""
    state_dict = state_dict if state_dict else wrapper.aux_heads.state_dict()
    state_dict = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    safetensors.torch.save_file(state_dict, os.path.join(directory, AUX_HEADS_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(directory, AUX_HEADS_CONFIG), "w", encoding="utf-8") as handle:
        json.dump(wrapper.aux.__dict__, handle, indent=2)


def load_aux_heads(wrapper: GeometryAlignedModel, directory) -> None:
    """Load `aux_heads.safetensors` into `wrapper.aux_heads` (strict: the enabled heads must match)."""
    path = os.path.join(directory, AUX_HEADS_WEIGHTS)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} has no {AUX_HEADS_WEIGHTS}, but auxiliary losses {wrapper.aux.enabled} are enabled")
    wrapper.aux_heads.load_state_dict(safetensors.torch.load_file(path, device="cpu"))
