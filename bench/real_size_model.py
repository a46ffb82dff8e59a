"""GAP-MLLM at the real size (Qwen3-VL-2B-Instruct + VGGT-1B aggregator) with random weights, built in code.

No download: the configuration is written out in `gap_mllm.cli.real_size` (Qwen3-VL-2B text and vision
settings, VGGT-1B geometry encoder, the official fusion settings).

`build_model` allocates the weights directly on the target device in the target dtype (a `torch.device`
context and the dtype set by `_from_config`), so the 3.2 B-parameter model never exists in fp32 on the
CPU. The "small" size is the package's small test config (4 M parameters), for CPU runs of the bench.
"""

from __future__ import annotations

from functools import lru_cache

import torch

# The real-size configuration is the package's (gap_mllm.cli.real_size), shared with the notebooks.
from gap_mllm.cli.real_size import QWEN3_VL_2B_PAD as PAD
from gap_mllm.cli.real_size import real_size_config

IM_START, IM_END, NEWLINE = 151644, 151645, 198


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
    vlm = config
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
    return set_generation_ids(model).eval()


def set_generation_ids(model):
    """`model`, its generation config's end and padding ids set to its config's `<|im_end|>` and padding tokens."""
    ids = special_ids(model.config)
    model.generation_config.eos_token_id, model.generation_config.pad_token_id = ids["im_end"], ids["pad"]
    return model


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component (the tied LM head counted once, with the embeddings)."""
    vlm = model.model
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
