"""Model FLOPs of a GAP-MLLM forward / training step, for model-FLOPs utilisation (MFU).

Counting rules (matmul FLOPs only, 2 per multiply-add; norms, activations, softmax and RoPE ignored;
attention counted in full, without halving causal masks, as PaLM's MFU does):

    dense part of a module   2 · N · T        N = its weight-matrix parameters, T = tokens it runs on
    attention of a layer     4 · d · Σ_seq L²  (Q·Kᵀ and A·V; d = heads · head_dim, L = sequence length)

    LLM          dense over all T text+visual tokens; attention over each sample's sequence
    LM head      2 · vocab · d_model per token where logits are computed (answer tokens in training,
                 one per sample at a prefill)
    ViT          dense over the patches (its mergers over patches / 4); attention within each image
    VGGT         DINOv2 dense + per-frame attention over 1 + 4 + p tokens; each of the alternating
                 block pairs up to the deepest tapped layer: dense over S·(5 + p) tokens, frame
                 attention per frame, global attention over the S·(5 + p) tokens of a sample
    fusion       mergers and gates dense over the merged visual tokens

A training step (forward + backward) is 3× the forward for the trained parts (LLM, LM head, fusion) and
1× for the frozen ViT and VGGT (no gradient flows into them). MFU = model FLOPs / step time / the
device's dense bf16 peak (`PEAK_BF16_FLOPS`).
"""

from __future__ import annotations

# Dense (no sparsity) bf16 tensor-core peaks, from the vendors' data sheets, by device-name substring.
PEAK_BF16_FLOPS = {"H200": 989.4e12, "H100 PCIe": 756.0e12, "H100": 989.4e12, "A100": 312.0e12}


def peak_flops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_FLOPS.items():  # most specific names first
        if key in device_name:
            return value
    return None


def _matrix_params(module) -> int:
    """Parameters of the weight matrices and convolutions of `module` (learned tokens and position
    tables are looked up, not multiplied, so they are left out)."""
    return sum(p.numel() for name, p in module.named_parameters()
               if p.ndim >= 2 and not name.endswith(("pos_embed", "token", "tokens")))


def forward_flops(model, views_per_sample: list[int], grid: tuple[int, int], text_tokens_per_sample: list[int],
                  logits_per_sample: list[int]) -> dict[str, float]:
    """FLOPs of one forward, by component.

    Args:
        views_per_sample: views of each sample; every view has the Qwen patch grid `grid = (h, w)`.
        text_tokens_per_sample: total sequence length of each sample (text + visual tokens).
        logits_per_sample: positions where the LM head runs.
    """
    config = model.config
    vlm = model.model
    text = config.text_config
    vision = config.vision_config
    geometry = config.geometry_config
    patches = grid[0] * grid[1]
    merged = patches // vision.spatial_merge_size**2
    views = sum(views_per_sample)
    flops = {}

    d_attn = text.num_attention_heads * text.head_dim
    flops["llm"] = (2 * _matrix_params(vlm.language_model.layers) * sum(text_tokens_per_sample)
                    + 4 * d_attn * text.num_hidden_layers * sum(t * t for t in text_tokens_per_sample))
    flops["lm_head"] = 2 * text.vocab_size * text.hidden_size * sum(logits_per_sample)

    visual = vlm.visual
    mergers = _matrix_params(visual.merger) + sum(_matrix_params(m) for m in visual.deepstack_merger_list)
    vit_dense = _matrix_params(visual.blocks) + _matrix_params(visual.patch_embed)
    flops["vision_tower"] = (2 * vit_dense * patches * views + 2 * mergers * merged * views
                             + 4 * vision.hidden_size * vision.depth * patches**2 * views)

    aggregator = model.geometry_encoder.aggregator
    p = patches  # one VGGT patch per Qwen patch (14 px per 16 px)
    dino = aggregator.patch_embed
    dino_tokens = 1 + geometry.patch_embed_num_register_tokens + p
    dino_layers = geometry.patch_embed_num_hidden_layers
    depth = max(geometry.tapped_layers) + 1
    frame_tokens = geometry.num_special_tokens + p
    block_params = sum(_matrix_params(aggregator.frame_blocks[i]) + _matrix_params(aggregator.global_blocks[i]) for i in range(depth))
    global_attention = sum((s * frame_tokens) ** 2 for s in views_per_sample)
    flops["geometry_encoder"] = (
        2 * _matrix_params(dino) * dino_tokens * views
        + 4 * geometry.hidden_size * dino_layers * dino_tokens**2 * views
        + 2 * block_params * frame_tokens * views
        + 4 * geometry.hidden_size * depth * (frame_tokens**2 * views + global_attention)
    )
    flops["fusion"] = 2 * _matrix_params(model.geometry_fusion) * merged * views
    return flops


TRAINED = ("llm", "lm_head", "fusion")


def training_step_flops(forward: dict[str, float]) -> dict[str, float]:
    """Forward + backward: 3× the forward of the trained parts, 1× the frozen encoders."""
    return {name: value * (3 if name in TRAINED else 1) for name, value in forward.items()}
