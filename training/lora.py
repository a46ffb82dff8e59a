"""LoRA on the LLM of a GAP-MLLM (docs/transformers-notes.md §10): adapters on the decoder's linear layers only, the
geometry mergers and fusion modules trained in full and saved inside the adapter (`modules_to_save`),
the Qwen ViT and the VGGT encoder frozen and never copied. A deviation from the official recipe
(full LLM fine-tuning), offered as an option.

    peft_model = apply_lora(model, LoraSettings(enabled=True, r=16))
    ... train ...
    peft_model.save_pretrained(adapter_dir)                      # adapter + mergers + fusions
    reloaded = load_lora(GapMllmForConditionalGeneration.from_pretrained(base_dir), adapter_dir)
    merged = merge_lora(reloaded)                                 # a plain GapMllmForConditionalGeneration
"""

from __future__ import annotations

from torch import nn

from .config import LoraSettings
from .param_groups import unwrap_gap_model

# peft is imported in the functions below, not here: it is slow to import and only a LoRA run needs it.


def fully_trained_module_names(model: nn.Module) -> list[str]:
    """Names of the per-level geometry mergers and fusion modules that have parameters
    (`geometry_fusion.mergers.0`, ..., `geometry_fusion.fusions.3`; the parameter-free `add` fusion is left out)."""
    gap = unwrap_gap_model(model)
    names = []
    for group in ("mergers", "fusions"):
        for index, module in enumerate(getattr(gap.geometry_fusion, group)):
            if any(True for _ in module.parameters()):
                names.append(f"model.geometry_fusion.{group}.{index}")
    return names


def gap_lora_config(model: nn.Module, settings: LoraSettings):
    """The `peft.LoraConfig` of `settings` for `model` (LLM-only targets, mergers and fusions saved)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        modules_to_save=fully_trained_module_names(model),
    )


def apply_lora(model: nn.Module, settings: LoraSettings):
    """Wrap a GAP-MLLM in a `PeftModel`; trainable: LoRA weights, mergers, fusions."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, gap_lora_config(model, settings))
    lora_layers = [name for name, _ in peft_model.named_modules() if name.endswith("lora_A")]
    if not lora_layers or any(".visual." in name or "geometry_encoder" in name for name in lora_layers):
        raise ValueError(f"LoRA target_modules {settings.target_modules!r} must match LLM layers only; matched {lora_layers[:4]}")
    return peft_model


def load_lora(base_model: nn.Module, adapter_dir, is_trainable: bool = False):
    """A saved adapter (with its mergers and fusions) on top of `base_model`."""
    from peft import PeftModel

    return PeftModel.from_pretrained(base_model, adapter_dir, is_trainable=is_trainable)


def merge_lora(peft_model) -> nn.Module:
    """Fold the adapter into the LLM weights and the trained mergers/fusions into the model: the result is
    a plain `GapMllmForConditionalGeneration` (save it with `save_pretrained`, load it without PEFT)."""
    return peft_model.merge_and_unload()
