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

The tokenizer and processor are built locally and deterministically (no downloads). There is no tiny pretrained Qwen
tokenizer, and a generic one would cut SynthRooms' words into bytes (the tiny test tokenizer spends 45 tokens on a
20-word referring expression). The mini tokenizer is the same Qwen-style byte-level BPE (Qwen2 pre-tokenisation: every
digit is its own token, as in Qwen3-VL) trained on the language of SynthRooms itself: every task prompt, referring
expressions and captions of layout-only scenes, and the answer texts in the official formats. Building it takes about
a second.

    tokenizer = build_mini_tokenizer()
    processor = build_mini_processor()      # pixel limits that keep the mini preset's 160x128 frames as is
    model, processor = build_mini_model()   # weights drawn from `seed`
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase, Qwen3VLConfig

from gap_mllm import GapMllmConfig
from gap_mllm.loading import build_model
from gap_mllm.processing.synth.categories import CATEGORY_NAMES
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.language import captions, describe
from gap_mllm.processing.synth.palette import COLOUR_NAMES, TEXTURES
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.samples import camera_boxes
from gap_mllm.processing_gap_mllm import GapMllmProcessor
from gap_mllm.tasks_gap_mllm import (
    CAPTIONING,
    DETECTION,
    FRAME_LABEL,
    GROUNDING_STAGE1,
    GROUNDING_STAGE2,
    RECONSTRUCTION,
    Box3D,
    serialize_detection,
    serialize_frame_selection,
    serialize_grounding,
    serialize_pointmap,
)
from gap_mllm.tiny.tiny_config import QWEN_SPECIAL_TOKENS
from gap_mllm.tiny.tiny_tokenizer import train_bpe_tokenizer

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
    model = build_model(config)
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, processor


# ------------------------------------------------------------------------------------------ tokenizer and processor

MINI_VOCAB_SIZE = 768
# The pixel normalisation every GAP-MLLM-Mini release was trained with: the CLIP mean/std that
# `GapMllmProcessor.from_tokenizer` used before it took Qwen3-VL's 0.5/0.5. Its frozen stage-0 ViT learned
# on these inputs, so the mini keeps them (they are saved in its processor_config.json).
MINI_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
MINI_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)
CORPUS_SCENES = 12  # layout-only scenes whose sentences and answers train the BPE merges
CORPUS_SEED = 12345  # a seed no dataset of the pipeline uses: the tokenizer never sees a test scene


@functools.lru_cache(maxsize=2)
def mini_corpus(num_scenes: int = CORPUS_SCENES) -> tuple[str, ...]:
    """Prompts, referring expressions, captions and answers of `num_scenes` layout-only mini scenes (built
    once per process: every fresh mini model of a pipeline run needs the same tokenizer)."""
    generator = SynthRooms(synth_config("mini", seed=CORPUS_SEED))
    texts = [
        DETECTION.task_text(),
        RECONSTRUCTION.task_text(),
        "".join(FRAME_LABEL.format(index=i) for i in range(8)),
        # every word of the vocabulary often enough to become one token, with and without a leading space
        *[" ".join(CATEGORY_NAMES + COLOUR_NAMES + TEXTURES + ("floor", "wall", "ceiling"))] * 24,
        *["\n".join(CATEGORY_NAMES + COLOUR_NAMES + TEXTURES + ("floor", "wall", "ceiling"))] * 8,
        " ".join(str(d) for d in range(100)) + " -0.0 0.5 1.25 [ ] { } , : \" ' ``` \t",
    ]
    for index in range(num_scenes):
        scene = generator.layout_scene(index)
        rng = np.random.default_rng(index)
        reference = int(rng.integers(len(scene.cam_to_room)))
        boxes = camera_boxes(scene, range(len(scene.objects)), reference)
        labelled = [Box3D.from_list(b, label=o.category) for b, o in zip(boxes, scene.objects)]
        texts.append(serialize_detection(labelled))
        for obj_index, (box, obj) in enumerate(zip(boxes, scene.objects)):
            description = describe(scene, obj_index, rng)
            if description is not None:
                texts.append(GROUNDING_STAGE1.task_text(query=description))
                texts.append(GROUNDING_STAGE2.task_text(query=description))
            texts.append(CAPTIONING.task_text(box=box))
            texts.extend(captions(scene, obj_index))
            texts.append(serialize_grounding(Box3D.from_list(box)))
            texts.append(serialize_pointmap(box[:3], obj.category))
        texts.append(serialize_frame_selection(reference % 8))
    return tuple(texts)


def build_mini_tokenizer(save_dir: str | os.PathLike | None = None):
    """Train the mini BPE on `mini_corpus()`; saved to `save_dir` when given."""
    tokenizer = train_bpe_tokenizer(list(mini_corpus()), MINI_VOCAB_SIZE)
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer


def build_mini_processor(save_dir: str | os.PathLike | None = None, image_size: tuple[int, int] | None = None):
    """A `GapMllmProcessor` with the mini tokenizer whose pixel limits keep frames of the mini preset
    (`image_size` = (height, width), default the preset's) at their own size: 160x128 → a 10×8 grid of
    16-px Qwen patches, 20 visual tokens per view, VGGT input 140×112."""
    height, width = image_size or synth_config("mini").image_size
    processor = GapMllmProcessor.from_tokenizer(build_mini_tokenizer(), min_pixels=height * width, max_pixels=height * width,
                                                image_mean=list(MINI_IMAGE_MEAN), image_std=list(MINI_IMAGE_STD))
    if save_dir is not None:
        processor.save_pretrained(save_dir)
    return processor
