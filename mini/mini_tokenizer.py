"""The tokenizer and processor of GAP-MLLM-Mini, built locally and deterministically (no downloads).

There is no tiny pretrained Qwen tokenizer, and a generic one would cut SynthRooms' words into bytes
(the tiny test tokenizer spends 45 tokens on a 20-word referring expression). The mini tokenizer is the
same Qwen-style byte-level BPE (Qwen2 pre-tokenisation: every digit is its own token, as in Qwen3-VL)
trained on the language of SynthRooms itself: every task prompt, referring expressions and captions of
layout-only scenes, and the answer texts in the official formats. Building it takes about a second.

    tokenizer = build_mini_tokenizer()
    processor = build_mini_processor()      # pixel limits that keep the mini preset's 160x128 frames as is
"""

from __future__ import annotations

import functools
import os

import numpy as np

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
from gap_mllm.tiny.tiny_tokenizer import train_bpe_tokenizer

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
