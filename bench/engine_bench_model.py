"""GAP-MLLM folders for bench_engines.py: a random-weight model at the real size (or the small test size) with a
tokenizer an engine can load, and frames of the right size.

The real-size model (Qwen3-VL-2B + VGGT-1B dimensions, real_size_model.py) has no tokenizer of its own, and vLLM
needs one (chat template, placeholder expansion, detokenisation). It gets the package's tiny tokenizer padded with
filler tokens up to Qwen's 151,936 ids, so that every id a random model can emit decodes; its special-token ids
replace Qwen's in the config. With random weights the ids' meaning does not matter, the sizes do.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from real_size_model import real_size_config, small_config, tiny_tokenizer

# official inference frames: Qwen 416×544 (26×34 patches, 221 tokens per view), as bench_real_size.py
REAL_FRAME_SIZE = (416, 544)
REAL_PIXEL_LIMITS = (200_704, 1_605_632)
SPECIAL_TOKEN_FIELDS = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
                        "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>"}


def padded_tokenizer(vocab_size: int):
    """The tiny tokenizer with `<|filler_i|>` tokens up to `vocab_size` ids (nothing added when it has that many).

    The fillers join the BPE vocabulary (no merge makes them, so no text encodes to them; each id decodes), not the
    added tokens: Qwen's 151,936 ids are vocabulary but for a few dozen added tokens, and every prompt path scans the
    added tokens of its tokenizer (modeling_gap_mllm/tasks_gap_mllm.py). 150,000 added fillers made that scan 0.5 s a
    call, 1.5 s of every real-size query on the H200 (bench/README.md), a cost the real tokenizer does not have."""
    from tokenizers import Tokenizer

    from gap_mllm.tiny.tiny_tokenizer import build_tiny_tokenizer, wrap_tokenizer

    tiny = build_tiny_tokenizer()
    if vocab_size < len(tiny):
        raise ValueError(f"vocab_size {vocab_size} is below the tokenizer's {len(tiny)} ids")
    state = json.loads(tiny.backend_tokenizer.to_str())
    state["model"]["vocab"].update({f"<|filler_{i}|>": i for i in range(len(tiny), vocab_size)})
    return wrap_tokenizer(Tokenizer.from_str(json.dumps(state)))  # the tiny one's special tokens and template


def random_gap_folder(folder, size: str, dtype: torch.dtype, device: str, seed: int = 0):
    """Build a random GAP-MLLM of `size` ("real", or the test sizes "small" / "tiny") on `device` in `dtype`, save it
    with its processor as a GAP folder; returns `(model, processor)`."""
    from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
    from gap_mllm.tiny.tiny_config import build_gap_config

    config = {"real": real_size_config, "small": small_config,
              "tiny": lambda: build_gap_config(tiny_tokenizer(), size="tiny")}[size]()
    vlm = config
    tokenizer = padded_tokenizer(vlm.text_config.vocab_size) if size == "real" else tiny_tokenizer()
    for field, token in SPECIAL_TOKEN_FIELDS.items():
        setattr(vlm, field, tokenizer.convert_tokens_to_ids(token))
    vlm.text_config.pad_token_id = tokenizer.pad_token_id
    torch.manual_seed(seed)
    with torch.device(device):
        model = GapMllmForConditionalGeneration._from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    limits = REAL_PIXEL_LIMITS if size == "real" else (32 * 32 * 4, 128 * 128 * 4)
    processor = GapMllmProcessor.from_tokenizer(tokenizer, min_pixels=limits[0], max_pixels=limits[1])
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model.eval(), processor


@lru_cache(maxsize=16)
def scene_frames(seed: int, count: int, size: tuple[int, int] | None):
    """`(frames, object labels)` of a held-out SynthRooms room (`size` = (height, width), None = the mini's 128×160)."""
    from gap_mllm.cli.scenes import synthetic_scene

    scene = synthetic_scene(seed=seed, num_frames=count, size=size)
    return tuple(scene.views), tuple(sorted(set(scene.reference_labels)))


def unique_frames(frames: list[Image.Image], index: int) -> list[Image.Image]:
    """The frames rolled by `index` pixels: distinct pixels per request, so that no engine reuses another request's
    image prefix (vLLM's prefix cache hashes the embeddings) in a throughput run."""
    return [Image.fromarray(np.roll(np.asarray(frame), index, axis=1)) for frame in frames]
