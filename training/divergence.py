"""Stop a run at the first optimizer step whose gradient norm is not finite, before the step writes it.

A NaN or inf gradient turns every trained weight into NaN at the optimizer step; Trainer would go on
for the rest of the schedule (its `logging_nan_inf_filter` even hides the loss), save NaN checkpoints
and a NaN final model, and the run would end "successfully". Measured: both arms of a stage-2 run on an
H100 (bf16 autocast) went non-finite in the same 20-step window and trained 800 more steps on NaN
(mini/README.md), and the GPU bench's own loop, which had no check, reported figures of NaN steps.

One check for every training loop: `check_gradient_norm` raises `TrainingDivergedError`, and

- `DivergenceGuard` is mixed into this package's trainers: it reads the gradient norm Trainer computes anyway
  (global under DDP / FSDP / DeepSpeed, so every process stops at the same step);
- `StepGuard` is the same check for a hand-written loop (bench/): the global norm of the trained parameters'
  gradients, between `backward()` and `optimizer.step()`.

A finite gradient can still make a weight non-finite: the optimizer's own arithmetic (a weight decay or learning rate
whose product with a weight overflows, float32's 3.4e38) writes inf or NaN without a non-finite gradient. So after
every optimizer step, the last one included, `DivergenceGuard` checks the trained weights themselves
(`check_trained_weights`: their global norm, one host read per optimizer step, and one all-reduce of one number
where the weights are sharded): such a step stops the run with `TrainingDivergedError` naming it, before anything of
it is saved (a checkpoint, a run state, the final model).

The line names the step, the batch (`describe_batch`: rows × width, which side is padded and how much, or packed
segments) and the kernel settings that were on (compiled layers, length buckets, Liger), so a report of a diverged
run points at what to bisect. The weights and the checkpoints already written stay finite.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from gap_mllm.processing.errors import RunFailed

from .checkpoints import find_resumable_checkpoint


class TrainingDivergedError(RunFailed):
    """The gradient norm of an optimizer step is NaN or infinite (the step was not applied), or its update made a
    trained weight so; one line on the command line (cli/errors.py), naming the step and the run's folder."""


REMEDY = ("The same batches follow on a resume, so change what diverged first: a lower training.learning_rate or "
          "training.weight_decay, a longer training.warmup_steps, or float32 instead of half-precision autocast "
          "(--set training.bf16=false --set training.fp16=false)")


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


def divergence_message(step: int, grad_norm: float | None, output_dir: str | None, context: str = "",
                       broken_weights: str | None = None) -> str:
    """The one line of a diverged step: where, what went non-finite, the batch / kernel `context`, what was kept, the
    remedy. `output_dir`: the run's folder (None: a loop that writes no checkpoints, e.g. a bench arm).
    `broken_weights`: the weights the step's update made non-finite, in words (then the step was applied in memory,
    and nothing of it is saved); None for a non-finite gradient norm `grad_norm` (the step was not applied)."""
    if broken_weights is None:
        what = f"the gradient norm is {grad_norm} (a NaN or infinite loss or gradient)"
        applied, saved = "the step was not applied", "nothing after it was saved"
    else:
        what = (f"its update made {broken_weights} non-finite (with a finite gradient: the optimizer's update "
                "overflowed)")
        applied, saved = "the run stopped", "nothing of this step or after it was saved"
    if output_dir is None:
        kept, where = applied, ""
    else:
        checkpoint = find_resumable_checkpoint(output_dir)
        resume = (f"the newest checkpoint, {checkpoint}, holds the finite weights before it and resumes the run"
                  if checkpoint else f"no checkpoint was written yet in {output_dir}")
        kept = f"{applied} and {saved}; {resume}"
        where = f" in the run writing {output_dir}"
    context = f"; {context}" if context else ""
    return f"training diverged at optimizer step {step}: {what}{where}{context}; {kept}. {REMEDY}"


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


SHOWN_WEIGHTS = 3  # non-finite weights named in the line


def _local_tensor(param: torch.Tensor) -> torch.Tensor:
    """The part of a trained weight this process holds: a DeepSpeed ZeRO-3 parameter's partition (`ds_tensor`; the
    parameter itself is empty between forwards), an FSDP2 DTensor's local shard, else the weight itself."""
    partition = getattr(param, "ds_tensor", None)
    if partition is not None:
        return partition
    return param.to_local() if hasattr(param, "to_local") else param


def _summed(count: torch.Tensor, accelerator) -> int:
    """`count` (a 0-d tensor) summed over the processes of `accelerator`, read on the host (one read)."""
    if accelerator is not None and accelerator.num_processes > 1:
        count = accelerator.reduce(count.to(accelerator.device), reduction="sum")
    return int(count)


def non_finite_weight_count(parameters: list[torch.Tensor], accelerator=None) -> int:
    """How many of `parameters` hold a NaN or an infinite value, summed over the processes of `accelerator` (where the
    weights are sharded, each process sees its own part).

    A finite run pays one host read (and, on several processes, one all-reduce of one number) per call: the global
    norm of the tensors (`torch.nn.utils.get_total_norm`: fused kernels per device and dtype on CUDA, one pass over
    the weights, 20 times cheaper on a CPU than a per-tensor `isfinite().all()`) is finite exactly when every value is,
    but for weights so large that their squares overflow float32 (1e19); only then are the tensors counted one by one,
    so such weights are not taken for non-finite ones."""
    local = [_local_tensor(p).detach() for p in parameters]
    local = [t for t in local if t.numel()]
    if local:
        suspect = (~torch.isfinite(torch.nn.utils.get_total_norm(local))).long()
    else:
        suspect = torch.zeros((), dtype=torch.long)
    if not _summed(suspect, accelerator):
        return 0
    device = local[0].device if local else torch.device("cpu")
    flags = [torch.isfinite(t).all().to(device) for t in local]
    count = (~torch.stack(flags)).sum() if flags else torch.zeros((), dtype=torch.long, device=device)
    return _summed(count, accelerator)


def non_finite_weight_names(named_parameters) -> list[str]:
    """The names of the trained weights (`requires_grad`) this process holds non-finite values of (the failure path
    only: one host read per weight)."""
    names = []
    for name, param in named_parameters:
        held = _local_tensor(param)
        if param.requires_grad and held.numel() and not bool(torch.isfinite(held).all()):
            names.append(name)
    return names


def check_trained_weights(step: int, model, output_dir: str | None, accelerator=None, context=lambda: "") -> None:
    """`TrainingDivergedError` (`divergence_message`) when optimizer step `step` made any trained weight of `model`
    (`requires_grad`) NaN or infinite; called right after `optimizer.step()`, before anything of the step is saved.

    Cost: `non_finite_weight_count`, one pass over the trained weights and one host read a step; the weights are named
    only for a diverged step."""
    trained = [param for param in model.parameters() if param.requires_grad]
    count = non_finite_weight_count(trained, accelerator)
    if not count:
        return
    names = non_finite_weight_names(model.named_parameters())
    more = len(names) - SHOWN_WEIGHTS
    shown = ", ".join(names[:SHOWN_WEIGHTS]) + (f" and {more} more" if more > 0 else "")
    weights = f"{count} trained weight tensor{'s' if count != 1 else ''}" + (f" ({shown})" if names else "")
    raise TrainingDivergedError(divergence_message(step, None, output_dir, context(), broken_weights=weights))


class _TrainedWeightsCheck(TrainerCallback):
    """`DivergenceGuard`'s check after the optimizer step (`on_optimizer_step`: after `optimizer.step()`, before the
    step's end saves anything)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        check_trained_weights(state.global_step + 1, trainer.model, args.output_dir, trainer.accelerator,
                              lambda: join_context(describe_batch(trainer._last_batch), trainer.kernel_context))


class DivergenceGuard:
    """Mixin for a `transformers.Trainer` subclass (before `Trainer` in the bases): raises
    `TrainingDivergedError` instead of applying an optimizer step with a non-finite gradient norm, and after a step
    whose update made a trained weight non-finite (`check_trained_weights`), before anything of it is saved.

    `kernel_context`: the kernel settings named in the line (set by training/run.py where compile, buckets or Liger
    are on); the batch of the step's last micro-batch is described (`describe_batch`)."""

    kernel_context = ""
    _last_batch = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(_TrainedWeightsCheck(self))

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
