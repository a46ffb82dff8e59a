"""Build, and optionally save as a Hub-style folder, a randomly initialised tiny GAP-MLLM with its
tokenizer and processor. The weights are untrained: outputs are structurally real, semantically noise."""

from pathlib import Path

import torch

from gap_mllm.loading import build_model

from .tiny_config import build_gap_config
from .tiny_tokenizer import build_tiny_processor


def build_tiny_model(
    processor=None,
    size: str = "tiny",
    fusion_method: str = "gated",
    use_geometry: bool = True,
    seed: int = 0,
    **config_overrides,
) -> tuple:
    """A `size` ("tiny" / "small") GAP-MLLM in eval mode with weights drawn from `seed`, and its processor."""
    processor = processor or build_tiny_processor()
    tokenizer = processor.tokenizer
    config = build_gap_config(tokenizer, size=size, fusion_method=fusion_method, use_geometry=use_geometry,
                              **config_overrides)
    torch.manual_seed(seed)
    model = build_model(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), processor


def save_tiny_checkpoint(save_dir, **build_kwargs) -> Path:
    """Write a tiny GAP-MLLM as a Hub folder (weights, config, remote code, processor, tokenizer)."""
    model, processor = build_tiny_model(**build_kwargs)
    save_dir = Path(save_dir)
    model.save_pretrained(save_dir)
    processor.save_pretrained(save_dir)
    return save_dir
