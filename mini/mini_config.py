"""The architecture of GAP-MLLM-Mini: every structural property of GAP-MLLM at a size that trains on
SynthRooms in about an hour per stage on 2 CPU cores.

    part                 real GAP-MLLM (Qwen3-VL-2B + VGGT-1B)        GAP-MLLM-Mini
    LLM                  28 layers, hidden 2048, 16/8 heads          MINI_SIZE["text_layers"] layers, hidden 256, 4/2 heads
    Qwen ViT             24 blocks, 1024 wide, DeepStack 5/11/17      4 blocks, 128 wide, DeepStack 0/1/2
    VGGT aggregator      24 frame+global pairs, 1024 wide, 16 heads   8 pairs, 128 wide, 4 heads, DINOv2 embed of 4 blocks
    tapped VGGT layers   4, 11, 17, 23                                1, 3, 5, 7 (same relative depths)
    VGGT heads           camera (trunk 4), DPT depth/point            camera (trunk 2), DPT depth (64 features)
    mergers, fusion      4 levels, merger hidden 4096, gated          4 levels, merger hidden 512, gated (or an ablation arm)

The sizes below were chosen with the measurements in mini/README.md (throughput and learning curves on
the validation split). The geometry encoder keeps its camera and depth heads (stage 0 trains them;
the Space reconstructs uploads with them).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase, Qwen3VLConfig

from gap_mllm import GapMllmConfig, GapMllmForConditionalGeneration
from gap_mllm.tiny.tiny_config import QWEN_SPECIAL_TOKENS

from .mini_tokenizer import build_mini_processor

MINI_SIZE = {
    "text_hidden": 256,
    "text_layers": 4,
    "text_heads": 4,
    "text_kv_heads": 2,
    "text_intermediate": 768,
    "vision_hidden": 128,
    "vision_depth": 4,
    "vision_heads": 4,
    "geometry_hidden": 128,
    "geometry_layers": 8,
    "geometry_heads": 4,
    "dino_layers": 4,
    "merger_hidden": 512,
    "dpt_features": 32,
    "camera_trunk_depth": 2,
}
# The VGGT position embedding's training grid: 10x10 patches of 14 px (the mini frames give 8x10).
MINI_GEOMETRY_IMAGE_SIZE = 140


def build_mini_vlm_config(tokenizer: PreTrainedTokenizerBase, size: dict | None = None) -> Qwen3VLConfig:
    """The Qwen3-VL part of the mini model, with the vocabulary and special-token ids of `tokenizer`."""
    s = {**MINI_SIZE, **(size or {})}
    head_dim = s["text_hidden"] // s["text_heads"]
    quarter = head_dim // 8  # M-RoPE: (t, h, w) sections sum to head_dim / 2, as [24, 20, 20] of 64 in Qwen3-VL
    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": s["text_hidden"],
            "intermediate_size": s["text_intermediate"],
            "num_hidden_layers": s["text_layers"],
            "num_attention_heads": s["text_heads"],
            "num_key_value_heads": s["text_kv_heads"],
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": [head_dim // 2 - 2 * quarter, quarter, quarter], "mrope_interleaved": True},
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": s["vision_depth"],
            "hidden_size": s["vision_hidden"],
            "intermediate_size": 4 * s["vision_hidden"],
            "num_heads": s["vision_heads"],
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": s["text_hidden"],
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": list(range(3)),
        },
        tie_word_embeddings=True,
        **{f"{name}_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, name)) for name in QWEN_SPECIAL_TOKENS},
    )


def build_mini_config(
    tokenizer: PreTrainedTokenizerBase,
    fusion_method: str = "gated",
    use_geometry: bool = True,
    size: dict | None = None,
) -> GapMllmConfig:
    """The GAP-MLLM-Mini configuration (`size` overrides entries of `MINI_SIZE`)."""
    s = {**MINI_SIZE, **(size or {})}
    layers = s["geometry_layers"]
    tapped = [layers // 4 - 1, layers // 2 - 1, 3 * layers // 4 - 1, layers - 1]
    geometry = {
        "image_size": MINI_GEOMETRY_IMAGE_SIZE,
        "hidden_size": s["geometry_hidden"],
        "num_hidden_layers": layers,
        "num_attention_heads": s["geometry_heads"],
        "patch_embed_num_hidden_layers": s["dino_layers"],
        "tapped_layers": tapped,
        "use_camera_head": True,
        "use_depth_head": True,
        "camera_head_trunk_depth": s["camera_trunk_depth"],
        "camera_head_num_attention_heads": s["geometry_heads"],
        "dpt_features": s["dpt_features"],
        "dpt_out_channels": [s["dpt_features"] // 2, s["dpt_features"], 2 * s["dpt_features"], 2 * s["dpt_features"]],
        "dpt_layers": tapped,
    }
    return GapMllmConfig(
        vlm_config=build_mini_vlm_config(tokenizer, s),
        geometry_config=geometry,
        geometry_fusion_config={"method": fusion_method, "merger_hidden_size": s["merger_hidden"]},
        use_geometry=use_geometry,
    )


def build_mini_model(processor=None, fusion_method: str = "gated", use_geometry: bool = True, seed: int = 0, size: dict | None = None):
    """A randomly initialised GAP-MLLM-Mini (weights drawn from `seed`) and its processor."""
    processor = processor or build_mini_processor()
    tokenizer = processor.tokenizer
    config = build_mini_config(tokenizer, fusion_method=fusion_method, use_geometry=use_geometry, size=size)
    torch.manual_seed(seed)
    model = GapMllmForConditionalGeneration(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor
