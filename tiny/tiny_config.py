"""Tiny and small GAP-MLLM configurations, built locally, for tests, the demo and benchmarks.

The shapes keep every structural property of the real model (4 fusion levels, 3 DeepStack levels,
M-RoPE sections, QK-norm VGGT blocks, DINOv2 registers) at a size that runs in milliseconds on a CPU.
"""

from transformers import PreTrainedTokenizerBase, Qwen3VLConfig

from gap_mllm import GapMllmConfig

QWEN_SPECIAL_TOKENS = ("image_token", "video_token", "vision_start_token", "vision_end_token")

# name -> (text hidden, text layers, heads, kv heads, vision hidden, vision depth, geometry hidden,
#          geometry layers, geometry heads, DINOv2 depth, merger hidden)
SIZES = {
    "tiny": (64, 4, 4, 2, 32, 3, 32, 4, 2, 2, 128),
    "small": (256, 4, 4, 2, 128, 4, 128, 8, 4, 4, 512),
}


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict:
    ids = {f"{name}_id": tokenizer.convert_tokens_to_ids(getattr(tokenizer, name)) for name in QWEN_SPECIAL_TOKENS}
    return ids


def build_vlm_config(tokenizer: PreTrainedTokenizerBase, size: str = "tiny") -> Qwen3VLConfig:
    """A Qwen3-VL config of `size` whose special token ids and vocabulary match `tokenizer`."""
    text_hidden, text_layers, heads, kv_heads, vision_hidden, vision_depth, *_ = SIZES[size]
    head_dim = text_hidden // heads
    # mrope_section must sum to head_dim / 2 (t, h, w halves of the rotary channels)
    quarter = head_dim // 8
    mrope_section = [head_dim // 2 - 2 * quarter, quarter, quarter]
    return Qwen3VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": text_hidden,
            "intermediate_size": 2 * text_hidden,
            "num_hidden_layers": text_layers,  # > 3: every DeepStack level (after layers 0-2) feeds later layers, as in the real model
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "head_dim": head_dim,
            "max_position_embeddings": 4096,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0,
                                "mrope_section": mrope_section, "mrope_interleaved": True},
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": vision_depth,
            "hidden_size": vision_hidden,
            "intermediate_size": 2 * vision_hidden,
            "num_heads": 2,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "out_hidden_size": text_hidden,
            "num_position_embeddings": 256,
            "deepstack_visual_indexes": list(range(3)),
        },
        tie_word_embeddings=True,
        **_token_ids(tokenizer),
    )


def build_gap_config(
    tokenizer: PreTrainedTokenizerBase,
    size: str = "tiny",
    fusion_method: str = "gated",
    use_geometry: bool = True,
    **overrides,
) -> GapMllmConfig:
    """A GAP-MLLM config of `size` ("tiny" or "small") for `tokenizer`; `overrides` go to GapMllmConfig."""
    *_, geo_hidden, geo_layers, geo_heads, dino_depth, merger_hidden = SIZES[size]
    geometry = {
        "image_size": 14 * 8,
        "hidden_size": geo_hidden,
        "num_hidden_layers": geo_layers,
        "num_attention_heads": geo_heads,
        "patch_embed_num_hidden_layers": dino_depth,
        # 4 levels like the real model, spread over the encoder depth as 4/11/17/23 spread over 24
        "tapped_layers": [geo_layers // 4 - 1, geo_layers // 2 - 1, 3 * geo_layers // 4 - 1, geo_layers - 1],
    }
    geometry.update(overrides.pop("geometry_config", {}))
    fusion = {"method": fusion_method, "merger_hidden_size": merger_hidden, "cross_attention_num_heads": 4}
    fusion.update(overrides.pop("geometry_fusion_config", {}))
    return GapMllmConfig(
        vlm_config=build_vlm_config(tokenizer, size),
        geometry_config=geometry,
        geometry_fusion_config=fusion,
        use_geometry=use_geometry,
        **overrides,
    )
