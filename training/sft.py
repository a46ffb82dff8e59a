"""TRL `SFTTrainer` for GAP-MLLM (docs/transformers-notes.md §11).

TRL's default `compute_loss` calls `model(**inputs, fused_lm_head=True)` and reads
`.last_hidden_state` from the base model, which a wrapper model such as GAP-MLLM does not provide;
`GapSFTTrainer` takes the model's own answer-only loss instead. Use it with the GAP collator
(`GapMllmDataCollator`: TRL's vision collator knows nothing of the geometry inputs) and
`gap_sft_config(...)`, which sets what TRL's defaults get wrong for this model. Optional LoRA:
pass `peft_config=gap_lora_config(model, LoraSettings(enabled=True))`.
"""

from __future__ import annotations

from trl import SFTConfig, SFTTrainer

from gap_mllm.checks import check_batch


def gap_sft_config(output_dir: str, **overrides) -> SFTConfig:
    """`SFTConfig` for GAP-MLLM: keep the geometry columns, skip TRL's text preparation (the collator
    runs the processor), no truncation below the official 12,800 tokens. `overrides` win."""
    settings = {
        "output_dir": output_dir,
        "remove_unused_columns": False,
        "dataset_kwargs": {"skip_prepare_dataset": True},
        "max_length": 12_800,
    }
    settings.update(overrides)
    return SFTConfig(**settings)


class GapSFTTrainer(SFTTrainer):
    """`SFTTrainer` whose loss is the GAP-MLLM forward's (answer tokens only, official masking).
    The model sets `accepts_loss_kwargs = False`, so Trainer divides the loss by the accumulation steps."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        check_batch(self.accelerator.unwrap_model(model), inputs)  # ids, masks, labels named (one host read)
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss
