"""Stop a run at the first optimizer step whose gradient norm is not finite, before the step writes it.

A NaN or inf gradient turns every trained weight into NaN at the optimizer step; Trainer would go on
for the rest of the schedule (its `logging_nan_inf_filter` even hides the loss), save NaN checkpoints
and a NaN final model, and the run would end "successfully". Measured: both arms of a stage-2 run on an
H100 (bf16 autocast) went non-finite in the same 20-step window and trained 800 more steps on NaN
(mini/README.md). `DivergenceGuard` is mixed into this package's trainers: it reads the gradient norm
Trainer computes anyway (global under DDP / FSDP / DeepSpeed, so every process stops at the same step)
and raises `TrainingDivergedError`; the weights and the checkpoints already written stay finite.
"""

from __future__ import annotations

import math

from gap_mllm.processing.errors import RunFailed

from .checkpoints import find_resumable_checkpoint


class TrainingDivergedError(RunFailed):
    """The gradient norm of an optimizer step is NaN or infinite (the step was not applied); one line on the command
    line (cli/errors.py), naming the step and the run's folder."""


def divergence_message(step: int, grad_norm: float, output_dir: str) -> str:
    checkpoint = find_resumable_checkpoint(output_dir)
    resume = (f"the newest checkpoint, {checkpoint}, holds the finite weights before it and resumes the run"
              if checkpoint else f"no checkpoint was written yet in {output_dir}")
    return (f"training diverged at optimizer step {step}: the gradient norm is {grad_norm} (a NaN or infinite loss "
            f"or gradient) in the run writing {output_dir}; the step was not applied and nothing after it was saved; "
            f"{resume}. The same batches follow on a resume, so change what diverged first: a lower "
            "training.learning_rate, a longer "
            "training.warmup_steps, or float32 instead of half-precision autocast (--set training.bf16=false "
            "--set training.fp16=false)")


class DivergenceGuard:
    """Mixin for a `transformers.Trainer` subclass (before `Trainer` in the bases): raises
    `TrainingDivergedError` instead of applying an optimizer step with a non-finite gradient norm."""

    def _get_grad_norm(self, model, grad_norm=None):
        # Trainer's own hook between gradient clipping and `optimizer.step()` (transformers 5.x): the norm is
        # the pre-clip global norm, computed even when max_grad_norm is 0
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        value = float(grad_norm) if grad_norm is not None else 0.0
        if not math.isfinite(value):
            raise TrainingDivergedError(divergence_message(self.state.global_step + 1, value, self.args.output_dir))
        return grad_norm
