"""Freezing policy and optimizer parameter groups of the official recipe (docs/method.md §8.3).

Groups (each split in a weight-decay and a no-decay half):

    base            the LLM (embeddings, decoder, norm, tied lm_head), the fusion modules, LoRA weights
    merger          the geometry mergers (`geometry_fusion.mergers.*`)          -> `merger_lr`
    vision_tower    Qwen ViT + its mergers, only when unfrozen                  -> `vision_tower_lr`
    geometry_encoder  VGGT aggregator, only when unfrozen                        -> `geometry_encoder_lr`
    aux_heads       heads of the auxiliary losses, only when enabled            -> `aux_heads_lr`

No decay: biases and `nn.LayerNorm` weights. RMSNorm weights are decayed, as in the official
grouping (transformers' old `ALL_LAYERNORM_LAYERS = [nn.LayerNorm]` rule). Frozen parameters are in
no group.
"""

from __future__ import annotations

from torch import nn

from .config import FreezingPolicy, LearningRates

GROUP_NAMES = ("base", "merger", "vision_tower", "geometry_encoder", "aux_heads")


def unwrap_gap_model(model: nn.Module) -> nn.Module:
    """The `GapMllmForConditionalGeneration` inside a PEFT model and/or a GeometryAlignedModel."""
    model = getattr(model, "model", model) if type(model).__name__ == "GeometryAlignedModel" else model
    if hasattr(model, "get_base_model"):  # peft.PeftModel
        model = model.get_base_model()
    return model


def apply_freezing(model: nn.Module, policy: FreezingPolicy) -> None:
    """Set `requires_grad` on a GAP-MLLM (not wrapped in PEFT: LoRA decides its own trainable set)."""
    gap = unwrap_gap_model(model)
    gap.requires_grad_(True)
    gap.apply_freezing_policy(
        freeze_vision_tower=policy.freeze_vision_tower, freeze_geometry_encoder=policy.freeze_geometry_encoder
    )
    language_model = gap.model.language_model
    language_model.requires_grad_(not policy.freeze_llm)
    gap.lm_head.requires_grad_(not policy.freeze_llm)  # tied to embed_tokens: same parameter
    if gap.config.use_geometry:
        gap.geometry_fusion.mergers.requires_grad_(not policy.freeze_mergers)
        gap.geometry_fusion.fusions.requires_grad_(not policy.freeze_fusions)


def parameter_group_of(name: str) -> str:
    """The group of a parameter name of a (wrapped) GAP-MLLM; see the module docstring."""
    if name.startswith("aux_heads."):
        return "aux_heads"
    if ".visual." in f".{name}":
        return "vision_tower"
    if "geometry_encoder." in name:
        return "geometry_encoder"
    if "geometry_fusion.mergers." in name:
        return "merger"
    return "base"


def no_decay_parameter_names(model: nn.Module) -> set[str]:
    """Biases and `nn.LayerNorm` weights (exactly; RMSNorm weights are not in the set)."""
    names = set()
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{param_name}" if module_name else param_name
            if param_name == "bias" or (isinstance(module, nn.LayerNorm) and param_name == "weight"):
                names.add(full)
    return names


def build_parameter_groups(
    model: nn.Module, base_lr: float, weight_decay: float, learning_rates: LearningRates
) -> list[dict]:
    """Optimizer groups over the trainable parameters of `model` (tied parameters appear once).

    Returns dicts with `params`, `lr`, `weight_decay`, and `name` (e.g. "merger" / "merger_no_decay")
    and `param_names` for inspection; torch optimizers keep the extra keys.
    """
    rates = {
        "base": base_lr,
        "merger": learning_rates.merger_lr,
        "vision_tower": learning_rates.vision_tower_lr,
        "geometry_encoder": learning_rates.geometry_encoder_lr,
        "aux_heads": learning_rates.aux_heads_lr,
    }
    no_decay = no_decay_parameter_names(model)
    buckets: dict[tuple[str, bool], list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():  # named_parameters de-duplicates tied weights
        if not param.requires_grad:
            continue
        key = (parameter_group_of(name), name not in no_decay)
        buckets.setdefault(key, []).append((name, param))
    groups = []
    for group in GROUP_NAMES:
        for decay in (True, False):
            members = buckets.get((group, decay))
            if not members:
                continue
            groups.append(
                {
                    "name": group if decay else f"{group}_no_decay",
                    "params": [p for _, p in members],
                    "param_names": [n for n, _ in members],
                    "lr": rates[group] if rates[group] is not None else base_lr,
                    "weight_decay": weight_decay if decay else 0.0,
                }
            )
    return groups
