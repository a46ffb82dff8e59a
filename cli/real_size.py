"""GAP-MLLM at its published size, Qwen3-VL-2B-Instruct + VGGT-1B, as a configuration written out in code (no
download), for the notebooks (a model built on the meta device: its architecture and parameter counts without
allocating a weight) and the real-size bench.

The Qwen3-VL-2B-Instruct settings are those of its Hub config.json: 28 decoder layers, hidden 2048, 16 query /
8 KV heads of 128, MLP 6144, tied embeddings, interleaved M-RoPE; ViT depth 24, width 1024, patch 16, merge 2,
out 2048, DeepStack at ViT blocks 5/11/17. The geometry encoder takes GapMllmGeometryConfig's defaults (VGGT-1B:
24 block pairs of width 1024, DINOv2-L/14 with registers, tapped at 4/11/17/23) and the fusion its defaults
(merger MLP 8192 → 4096 → 2048, RMS norm, gated), the official settings.

    model = build_on_meta_device()      # 3.24 B parameters, none allocated
    model.load_state_dict(...)          # impossible: running it needs the released weights (from_qwen3_vl, convert)
"""

from __future__ import annotations

import torch
from transformers import Qwen3VLConfig

from gap_mllm import GapMllmConfig, GapMllmForConditionalGeneration

# Qwen3-VL-2B-Instruct's special tokens (the stock Qwen3-VL ids) and its text / vision configuration.
QWEN3_VL_2B_TOKENS = {"image_token_id": 151655, "video_token_id": 151656, "vision_start_token_id": 151652,
                      "vision_end_token_id": 151653}
QWEN3_VL_2B_PAD = 151643
QWEN3_VL_2B_TEXT = {
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 28,
    "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "hidden_act": "silu",
    "max_position_embeddings": 262144, "rms_norm_eps": 1e-6, "attention_bias": False, "pad_token_id": QWEN3_VL_2B_PAD,
    "rope_parameters": {"rope_type": "default", "rope_theta": 5_000_000.0, "mrope_section": [24, 20, 20],
                        "mrope_interleaved": True},
}  # fmt: skip
QWEN3_VL_2B_VISION = {
    "depth": 24, "hidden_size": 1024, "intermediate_size": 4096, "num_heads": 16, "in_channels": 3,
    "patch_size": 16, "spatial_merge_size": 2, "temporal_patch_size": 2, "out_hidden_size": 2048,
    "num_position_embeddings": 2304, "deepstack_visual_indexes": [5, 11, 17], "hidden_act": "gelu_pytorch_tanh",
}  # fmt: skip


def real_size_config(attn_implementation: str = "sdpa"):
    """The `GapMllmConfig` of Qwen3-VL-2B + VGGT-1B with the official fusion settings."""


    vlm = Qwen3VLConfig(text_config=dict(QWEN3_VL_2B_TEXT), vision_config=dict(QWEN3_VL_2B_VISION),
                        tie_word_embeddings=True, **QWEN3_VL_2B_TOKENS)
    return GapMllmConfig(vlm_config=vlm, geometry_config={}, geometry_fusion_config={},
                         attn_implementation=attn_implementation)


def build_on_meta_device(dtype: torch.dtype = torch.bfloat16, attn_implementation: str = "sdpa"):
    """The real-size `GapMllmForConditionalGeneration` on the meta device: every module and parameter shape,
    no memory (a meta tensor has no values, so the model cannot run; it counts and prints)."""

    with torch.device("meta"):
        return GapMllmForConditionalGeneration._from_config(real_size_config(attn_implementation), dtype=dtype).eval()
