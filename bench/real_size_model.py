"""GAP-MLLM at the real size (Qwen3-VL-2B-Instruct + VGGT-1B aggregator) with random weights, built in code.

No download: the Qwen3-VL-2B text and vision settings are written out here (docs/method.md §1.1: 28 decoder
layers, hidden 2048, 16 query / 8 KV heads of 128, MLP 6144, tied embeddings, M-RoPE; ViT depth 24,
width 1024, patch 16, merge 2, out 2048, DeepStack at ViT blocks 5/11/17), the geometry encoder takes
GapMllmGeometryConfig's defaults (VGGT-1B: 24 block pairs of width 1024, DINOv2-L/14 with registers,
tapped at 4/11/17/23) and the fusion its defaults (merger MLP 8192 → 4096 → 2048, RMS norm, gated).

`build_model` allocates the weights directly on the target device in the target dtype (a `torch.device`
context and the dtype set by `_from_config`), so the 3.2 B-parameter model never exists in fp32 on the
CPU. The "small" size is the package's small test config (4 M parameters), for CPU runs of the bench.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# Qwen3-VL-2B-Instruct's special tokens (the stock Qwen3-VL ids) and its text/vision configuration.
QWEN3_VL_2B_TOKENS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                      "vision_end_token_id": 151653}
IM_START, IM_END, PAD, NEWLINE = 151644, 151645, 151643, 198
QWEN3_VL_2B_TEXT = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "attention_bias": False, "pad_token_id": PAD,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                        "mrope_interleaved": True},
}  # fmt: skip
QWEN3_VL_2B_VISION = {
    "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "in_channels": 3,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
    "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh",
}  # fmt: skip


def real_size_config(attn_implementation: str = "sdpa"):
    """The GapMllmConfig of Qwen3-VL-2B + VGGT-1B (official fusion settings)."""
    from transformers import Qwen3VLConfig

    from gap_mllm import GapMllmConfig

    vlm = Qwen3VLConfig(text_config=dict(QWEN3_VL_2B_TEXT), vision_config=dict(QWEN3_VL_2B_VISION),
                        tie_word_embeddings=True, **QWEN3_VL_2B_TOKENS)
    return GapMllmConfig(vlm_config=vlm, geometry_config={}, geometry_fusion_config={},
                         attn_implementation=attn_implementation)


@lru_cache(maxsize=1)
def tiny_tokenizer():
    """The package's tiny test tokenizer (trained in about a second; built once)."""
    from gap_mllm.tiny.tiny_tokenizer import build_tiny_tokenizer

    return build_tiny_tokenizer()


def small_config(attn_implementation: str = "sdpa"):
    """The package's small test config (text 256 × 4 layers, ViT 128 × 4, VGGT 128 × 8)."""
    from gap_mllm.tiny.tiny_config import build_gap_config

    return build_gap_config(tiny_tokenizer(), size="small", attn_implementation=attn_implementation)


def special_ids(config) -> dict:
    """Token ids the synthetic prompts need, for either size."""
    vlm = config.vlm_config
    ids = {"image": vlm.image_token_id, "vision_start": vlm.vision_start_token_id, "vision_end": vlm.vision_end_token_id}
    if vlm.text_config.vocab_size > IM_END:
        ids.update(im_start=IM_START, im_end=IM_END, pad=PAD, newline=NEWLINE)
    else:  # small config: the tiny tokenizer's ids
        tokenizer = tiny_tokenizer()
        ids.update(im_start=tokenizer.convert_tokens_to_ids("<|im_start|>"),
                   im_end=tokenizer.convert_tokens_to_ids("<|im_end|>"), pad=tokenizer.pad_token_id,
                   newline=tokenizer.encode("\n", add_special_tokens=False)[0])
    # ordinary text ids: Qwen's lie below its special tokens; the tiny tokenizer's above them
    specials = [v for k, v in ids.items() if k != "newline"]
    vocab = vlm.text_config.vocab_size
    ids["text_range"] = (1000, min(specials)) if min(specials) > 1000 else (max(specials) + 1, vocab)
    return ids


def build_model(size: str, device: str, dtype: torch.dtype, attn_implementation: str = "sdpa", seed: int = 0):
    """A randomly initialised GapMllmForConditionalGeneration of `size` ("real" or "small"), in eval mode,
    allocated on `device` in `dtype`; frozen as the official recipe (ViT and VGGT)."""
    from gap_mllm import GapMllmForConditionalGeneration

    config = real_size_config(attn_implementation) if size == "real" else small_config(attn_implementation)
    torch.manual_seed(seed)
    with torch.device(device):
        model = GapMllmForConditionalGeneration._from_config(config, dtype=dtype)
    ids = special_ids(config)
    model.generation_config.eos_token_id = ids["im_end"]
    model.generation_config.pad_token_id = ids["pad"]
    return model.eval()


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component (the tied LM head counted once, with the embeddings)."""
    vlm = model.vlm.model
    counts = {
        "llm": sum(p.numel() for p in vlm.language_model.parameters()),  # layers, final norm, embeddings
        "llm_layers": sum(p.numel() for p in vlm.language_model.layers.parameters()),
        "embeddings": vlm.language_model.embed_tokens.weight.numel(),
        "vision_tower": sum(p.numel() for p in vlm.visual.parameters()),
        "geometry_encoder": sum(p.numel() for p in model.geometry_encoder.parameters()),
        "fusion": sum(p.numel() for p in model.geometry_fusion.parameters()),
    }
    counts["total"] = sum(p.numel() for p in model.parameters())
    counts["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts
