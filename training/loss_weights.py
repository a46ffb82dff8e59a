"""Per-task loss weights (`data.task_loss_weights`): every answer token of a task's samples weighs w in the LM loss.

With `loss_normalization: global_token_mean` each answer token of a step weighs the same, so a task's share of the
training signal is its share of the answer tokens: a grounding answer `{"frame": k}` is a handful of tokens next to
detection answers of a few hundred. A weight w multiplies the cross-entropy of every answer token of that task's
samples; the normaliser stays the count of answer tokens, so exact gradient accumulation and the DDP normalisation
are unchanged, and weights of 1 everywhere are today's loss.

How the weight travels with a training sample (every path a batch takes):

    dataset      `load_split` adds a float column `loss_weight` (the task's weight, 1 for a task without one) to the
                 training mix when some weight differs from 1; otherwise no column, and datasets, caches and digests
                 stay as they were
    collator     `LossWeightCollator` (around `GapMllmDataCollator`, inside `BadSampleGuard`, so it sees the samples
                 that are collated) adds `label_weights` `[B, T]`: the sample's weight where `labels` is set, 0
                 elsewhere; without the column it adds nothing
    packing      `label_weights` is a token tensor of `training/sample_tensors.py`: cut per sample, padded with 0 and
                 packed like `labels`; `training/length_buckets.py` pads it like `labels`
    cache        the feature cache stores no weight (entries and keys do not change with it): `CachedCollator` sets
                 each served sample's `label_weights` from its example (`sample_label_weights`)
    loss         `GeometryAlignedModel._lm_loss_sum`: Σ w·CE over the answer tokens; `lm_num_tokens` stays the count
"""

from __future__ import annotations

import torch

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX

LOSS_WEIGHT_COLUMN = "loss_weight"  # a sample's weight in the training mix (absent: every sample weighs 1)
LABEL_WEIGHTS_KEY = "label_weights"  # [B, T] float32 beside `labels`: the weight of each supervised token, else 0
LIGER_WEIGHTS_REFUSAL = ("data.task_loss_weights with kernels.liger_fused_linear_cross_entropy=true: Liger's fused "
                         "linear cross-entropy sums the answer tokens' losses itself and takes no per-token weight; set "
                         "kernels.liger_fused_linear_cross_entropy: false (or leave it unset: off with task weights)")


def weighted_mix(weights: dict[str, float] | None) -> bool:
    """Whether `weights` ({task: w}) changes any sample's weight (a weight other than 1): only then does the training
    mix get its `loss_weight` column."""
    return any(weight != 1 for weight in (weights or {}).values())


def token_weights(labels: torch.Tensor, weights) -> torch.Tensor:
    """`[B, T]` float32: `weights[b]` (one per row) where `labels[b, t]` is supervised, 0 elsewhere (`labels` `[L]`
    of one sample with one weight: `[L]`)."""
    per_row = torch.as_tensor(weights, dtype=torch.float32).reshape(-1, *([1] * (labels.dim() - 1)))
    return torch.where(labels != IGNORE_INDEX, per_row, torch.zeros((), dtype=torch.float32))


def example_weight(example: dict) -> float | None:
    """An example's loss weight (its `loss_weight` field), None when it has none."""
    weight = example.get(LOSS_WEIGHT_COLUMN)
    return None if weight is None else float(weight)


def sample_label_weights(sample: dict, example: dict) -> dict:
    """`sample` (one sample's tensors, `labels` `[L]`) with its `label_weights` from `example`'s weight; as it was
    when the example has none."""
    weight = example_weight(example)
    if weight is not None and "labels" in sample:
        sample[LABEL_WEIGHTS_KEY] = token_weights(sample["labels"], [weight])
    return sample


class LossWeightCollator:
    """Wrap the labels' collator (`GapMllmDataCollator`): its batch with `label_weights` `[B, T]` when the examples
    carry a `loss_weight` (module docstring); the batch as it is otherwise."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]):
        batch = self.collator(examples)
        weights = [example_weight(example) for example in examples]
        if "labels" in batch and any(weight is not None for weight in weights):
            batch[LABEL_WEIGHTS_KEY] = token_weights(batch["labels"], [1.0 if w is None else w for w in weights])
        return batch

    def __getattr__(self, name):  # the wrapped collator's attributes (`processor`, `train`, ...)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)
