"""A training step waits for the GPU only where it must: one tiny step (the trainer's `training_step`, forward and
backward, padded and packed, the frozen towers live) counted with `HostSyncCounter` on the CPU, where the same calls
would each be a host-device synchronisation on CUDA. Every place that may read the device has its budget and its
reason below; the training package itself has none (the host values come from the collator:
training/host_metadata.py)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from gap_mllm.host_syncs import HostSyncCounter
from gap_mllm.training import run

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401

# place (the end of a file's path) -> reads allowed in one step, and why they remain
BUDGET = {
    # the frozen Qwen ViT with its grid on the device (transformers' code; a run with the feature cache, the stage-2
    # recipes' default, does not run it): its position and cu_seqlens helpers size tensors from the grid (4
    # repeat_interleave + 1 item), the per-image split of its output (1 tolist)
    "transformers/vision_utils.py": 5,
    "qwen3_vl/modeling_qwen3_vl.py": 2,  # that split, and the image-token count formatted into a check's message
    "utils/import_utils.py": 1,  # transformers' check that image tokens and image features agree
    # once per forward each: the ViT's image lengths, the DeepStack visual-token index
    "modeling_gap_mllm/speedups.py": 2,
}
PADDED_ONLY = {
    "modeling_gap_mllm/speedups.py": 1,  # the M-RoPE positions' consistency check (packed rows bring theirs)
    "transformers/masking_utils.py": 2,  # transformers' "is anything padded?" tests before sdpa's causal mask
}


def step_syncs(tmp_path, dataset, packing: bool) -> HostSyncCounter:
    model, processor = tiny()
    settings = recipe(tmp_path, data={"packing": packing})
    trainer = run.build_trainer(settings, model=model, processor=processor, train_dataset=dataset).trainer
    trainer.create_optimizer_and_scheduler(num_training_steps=2)
    trainer.current_gradient_accumulation_steps = 1  # what Trainer's loop sets before its steps
    batch = trainer.data_collator([dataset[i] for i in range(3)])
    trainer.training_step(trainer.model, dict(batch))  # the first step builds lazily made state
    with HostSyncCounter(where=True) as syncs:
        trainer.training_step(trainer.model, dict(batch))
        trainer.log({"loss": 0.0})  # logging reads the step's loss values: once per logging step
    return syncs


def by_place(syncs: HostSyncCounter) -> Counter:
    places = Counter()
    for (_, where), count in syncs.places.items():
        path = where.rsplit(":", 1)[0].replace("\\", "/")
        known = [place for place in (*BUDGET, *PADDED_ONLY, "training/trainer.py") if path.endswith(place)]
        places[known[0] if known else where] += count
    return places


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_a_training_step_reads_the_device_only_where_it_must(tmp_path, recon_dataset, packing):
    places = by_place(step_syncs(tmp_path, recon_dataset, packing))
    budget = {**BUDGET, "training/trainer.py": 1}  # the logging step's one read of the loss values
    if not packing:
        for place, count in PADDED_ONLY.items():  # a place may hold reads of both kinds (speedups.py does)
            budget[place] = budget.get(place, 0) + count
    over = {place: count for place, count in places.items() if count > budget.get(place, 0)}
    assert not over, f"host reads over the budget (place: count): {over}"
    assert places["training/trainer.py"] == 1  # the logged losses are read at the log, not at every step


def test_the_deepstack_additions_by_index_equal_the_boolean_mask_ones():
    """`GapMllmQwen3VLTextModel._deepstack_process` (indices found once per forward) gives the stock boolean-mask
    result and gradients exactly, and reads the device once for all DeepStack levels of a forward."""
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    model, _ = tiny()
    language_model = model.model.language_model
    assert type(language_model).__name__ == "GapMllmQwen3VLTextModel"
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 9, 8, generator=generator)
    mask = torch.rand(2, 9, generator=generator) > 0.5
    levels = [torch.randn(int(mask.sum()), 8, generator=generator) for _ in range(3)]

    def run_levels(process):
        start = hidden.clone().requires_grad_()
        embeds = [level.clone().requires_grad_() for level in levels]
        out = start
        for level in embeds:
            out = process(language_model, out, mask, level)
        (out * torch.arange(out.numel()).view_as(out)).sum().backward()
        return out.detach(), start.grad, [level.grad for level in embeds]

    with HostSyncCounter() as syncs:
        indexed = run_levels(type(language_model)._deepstack_process)
    assert syncs.total == 1
    stock = run_levels(Qwen3VLTextModel._deepstack_process)
    assert torch.equal(indexed[0], stock[0]) and torch.equal(indexed[1], stock[1])
    assert all(torch.equal(a, b) for a, b in zip(indexed[2], stock[2]))
