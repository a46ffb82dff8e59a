"""What a training step reads on the host, computed by the collator while the batch is still in host memory.

A training step on CUDA that reads a device value (`.tolist()` of the views per sample or of the image grids, the
boolean mask of the answer tokens, the skipped-sample count) waits there until the GPU has caught up, and the GPU
then idles while the host queues the next kernels (a profile: 13 `item()`, 19 `nonzero` and 61 stream
synchronisations per step). The collator's batch is on the host, where reading it costs nothing; accelerate then
moves its tensors to the device and leaves Python values as they are. `add_host_metadata` adds, beside the tensors:

    views_per_sample   tuple of ints: `geometry_views_per_sample`
    image_grids        tuple of `(t, h, w)`: `image_grid_thw`
    answer_index       `[N]` long: flat indices into `[B, T - 1]` of the tokens whose next token is supervised (the
                       answer positions the LM head runs at: an index, so gathering them needs no count on the host)
    num_skipped_samples  an int instead of a tensor (training/bad_samples.py)

`GeometryAlignedModel.forward` and `GeometryAlignedTrainer.compute_loss` read these instead of the device tensors;
without them (a batch made by hand) they read the tensors, as before. tests/test_train_host_syncs.py counts what
is left in one step.
"""

from __future__ import annotations

import torch

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX

from .bad_samples import SKIPPED_KEY

HOST_KEYS = ("views_per_sample", "image_grids")


def answer_index(labels: torch.Tensor) -> torch.Tensor:
    """Flat indices into `[B, T - 1]` of the positions whose next token is supervised (`labels[:, 1:] != -100`)."""
    return torch.nonzero((labels[:, 1:] != IGNORE_INDEX).flatten()).flatten()


def add_host_metadata(batch: dict) -> dict:
    """`batch` (host tensors) with the module docstring's host values added."""
    if batch["input_ids"].device.type != "cpu":  # made on the device already: reading it here would wait for it
        return batch
    batch["views_per_sample"] = tuple(int(v) for v in batch["geometry_views_per_sample"].tolist())
    batch["image_grids"] = tuple(tuple(int(v) for v in grid) for grid in batch["image_grid_thw"].tolist())
    if "labels" in batch:
        batch["answer_index"] = answer_index(batch["labels"])
    if isinstance(batch.get(SKIPPED_KEY), torch.Tensor):
        batch[SKIPPED_KEY] = int(batch[SKIPPED_KEY])
    return batch


class HostMetadataCollator:
    """Wrap a training collator: `add_host_metadata` on each of its batches (the last link of the chain)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, examples: list[dict]):
        return add_host_metadata(self.collator(examples))

    def __getattr__(self, name):  # the wrapped chain's attributes (the feature cache: `cache.skipped_names`)
        if name == "collator":
            raise AttributeError(name)
        return getattr(self.collator, name)
