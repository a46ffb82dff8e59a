"""Stop a run at the first optimizer step whose gradient norm is not finite, before the step writes it.

A NaN or inf gradient turns every trained weight into NaN at the optimizer step; Trainer would go on
for the rest of the schedule (its `logging_nan_inf_filter` even hides the loss), save NaN checkpoints
and a NaN final model, and the run would end "successfully". Measured: both arms of a stage-2 run on an
H100 (bf16 autocast) went non-finite in the same 20-step window and trained 800 more steps on NaN
(mini/README.md), and the GPU bench's own loop, which had no check, reported figures of NaN steps (issue 61).

One check for every training loop: `check_gradient_norm` raises `TrainingDivergedError`, and

- `DivergenceGuard` is mixed into this package's trainers: it reads the gradient norm Trainer computes anyway
  (global under DDP / FSDP / DeepSpeed, so every process stops at the same step);
- `StepGuard` is the same check for a hand-written loop (bench/): the global norm of the trained parameters'
  gradients, between `backward()` and `optimizer.step()`.

The line names the step, the batch (`describe_batch`: rows × width, which side is padded and how much, or packed
segments) and the kernel settings that were on (compiled layers, length buckets, Liger), so a report of a diverged
run points at what to bisect. The weights and the checkpoints already written stay finite.
"""

from __future__ import annotations

import math

import torch

from gap_mllm.processing.errors import RunFailed

from .checkpoints import find_resumable_checkpoint


class TrainingDivergedError(RunFailed):
    """The gradient norm of an optimizer step is NaN or infinite (the step was not applied); one line on the command
    line (cli/errors.py), naming the step and the run's folder."""


REMEDY = ("The same batches follow on a resume, so change what diverged first: a lower training.learning_rate, a "
          "longer training.warmup_steps, or float32 instead of half-precision autocast (--set training.bf16=false "
          "--set training.fp16=false)")


def describe_batch(batch: dict | None) -> str:
    """What a diverging batch looked like: `rows × width tokens`, then the padding (side and tokens) of padded rows or
    the segments of packed rows. "" without a batch."""
    if not batch or not isinstance(batch.get("input_ids"), torch.Tensor):
        return ""
    rows, width = batch["input_ids"].shape[0], batch["input_ids"].shape[-1]
    text = f"batch {rows} × {width} tokens"
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        padding = int((mask == 0).sum())
        left = int((mask[:, 0] == 0).sum())  # rows that start with padding
        text += f", padded rows ({padding} padding tokens, {left} rows padded on the left)" if padding else ", no padding"
        if left:
            text += " (left-padded rows have fully masked attention rows)"
    elif batch.get("packed_segments") is not None:
        text += f", packed rows ({len(batch['packed_segments'])} segments)"
    return text


def divergence_message(step: int, grad_norm: float, output_dir: str | None, context: str = "") -> str:
    """The one line of a diverged step: where, the norm, the batch / kernel `context`, what was kept, the remedy.
    `output_dir`: the run's folder (None: a loop that writes no checkpoints, e.g. a bench arm)."""
    if output_dir is None:
        kept = "the step was not applied"
        where = ""
    else:
        checkpoint = find_resumable_checkpoint(output_dir)
        resume = (f"the newest checkpoint, {checkpoint}, holds the finite weights before it and resumes the run"
                  if checkpoint else f"no checkpoint was written yet in {output_dir}")
        kept = f"the step was not applied and nothing after it was saved; {resume}"
        where = f" in the run writing {output_dir}"
    return (f"training diverged at optimizer step {step}: the gradient norm is {grad_norm} (a NaN or infinite loss "
            f"or gradient){where}{'; ' + context if context else ''}; {kept}. {REMEDY}")


def check_gradient_norm(step: int, grad_norm, output_dir: str | None, context=lambda: "") -> float:
    """`grad_norm` as a float; `TrainingDivergedError` (`divergence_message`) when it is NaN or infinite.

    `context`: a callable giving the line's batch / kernel context, called only for a diverged step (describing a
    batch reads the device, which a finite step must not pay: tests/test_train_host_syncs.py)."""
    value = float(grad_norm) if grad_norm is not None else 0.0
    if not math.isfinite(value):
        raise TrainingDivergedError(divergence_message(step, value, output_dir, context()))
    return value


def join_context(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


class DivergenceGuard:
    """Mixin for a `transformers.Trainer` subclass (before `Trainer` in the bases): raises
    `TrainingDivergedError` instead of applying an optimizer step with a non-finite gradient norm.

    `kernel_context`: the kernel settings named in the line (set by training/run.py where compile, buckets or Liger
    are on); the batch of the step's last micro-batch is described (`describe_batch`)."""

    kernel_context = ""
    _last_batch = None

    def training_step(self, model, inputs, *args, **kwargs):
        self._last_batch = inputs  # kept, described only if the step diverges
        return super().training_step(model, inputs, *args, **kwargs)

    def _get_grad_norm(self, model, grad_norm=None):
        # Trainer's own hook between gradient clipping and `optimizer.step()` (transformers 5.x): the norm is
        # the pre-clip global norm, computed even when max_grad_norm is 0
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        check_gradient_norm(self.state.global_step + 1, grad_norm, self.args.output_dir,
                            lambda: join_context(describe_batch(self._last_batch), self.kernel_context))
        return grad_norm


class StepGuard:
    """The same check for a hand-written training loop (bench/): call `check(step, batch)` after `backward()` and
    before `optimizer.step()`; it raises `TrainingDivergedError` when the global gradient norm of `parameters` (or the
    loss) is not finite, naming `where` and `kernel_context`."""

    def __init__(self, parameters, where: str, kernel_context: str = ""):
        self.parameters = [p for p in parameters if p.requires_grad]
        self.where, self.kernel_context = where, kernel_context

    def check(self, step: int, batch: dict | None = None, loss: torch.Tensor | None = None) -> float:
        grads = [p.grad for p in self.parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
        if loss is not None:
            norm = norm + loss.detach().float() * 0  # a non-finite loss makes the norm non-finite too
        return check_gradient_norm(step, norm, None,
                                   lambda: join_context(self.where, describe_batch(batch), self.kernel_context))
