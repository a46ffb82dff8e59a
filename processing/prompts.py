"""Task prompts in the layout of the official annotation files: the human turn with one `<image>` per view.

The wording of every task, and which of it is official (docs/method.md §3) or ours, is defined once in
`gap_mllm.tasks_gap_mllm`; the functions below only write it the way the annotation JSONs store it
(the collator turns each `<image>` back into a view). `processor(task=...)` builds the same prompt at
inference, so a training sample and an inference call of one task read identically.
"""

from __future__ import annotations

from gap_mllm.chat_format import IMAGE_PLACEHOLDER
from gap_mllm.tasks_gap_mllm import (
    CAPTIONING,
    DETECTION,
    DETECTION_TEMPLATE,
    GROUNDING_STAGE1,
    GROUNDING_STAGE2,
    RECONSTRUCTION,
    RECONSTRUCTION_TEMPLATE,
    SPATIAL_QA,
    extract_query,
)

# The two task texts without parameters, for free-text use (`processor(text=DETECTION_PROMPT)`).
DETECTION_PROMPT = DETECTION_TEMPLATE
RECONSTRUCTION_PROMPT = RECONSTRUCTION_TEMPLATE
extract_description = extract_query  # the referring text of a grounding prompt (official extraction, docs/method.md §3.4)


def detection_prompt(num_images: int) -> str:
    return DETECTION.annotation_prompt(num_images)


def grounding_stage1_prompt(num_images: int, description: str) -> str:
    """`Frame-0: <image>Frame-1: <image>...` then the stage-1 task text on a new line (docs/method.md §3.4)."""
    return GROUNDING_STAGE1.annotation_prompt(num_images, query=description)


def grounding_stage2_prompt(num_images: int, description: str) -> str:
    return GROUNDING_STAGE2.annotation_prompt(num_images, query=description)


def reconstruction_prompt(num_images: int) -> str:
    return RECONSTRUCTION.annotation_prompt(num_images)


def caption_prompt(num_images: int, box_values) -> str:
    """Captioning prompt; `box_values` (9 numbers) are printed with 2 decimals like the targets."""
    return CAPTIONING.annotation_prompt(num_images, box=box_values)


def spatial_qa_prompt(num_images: int, question: str) -> str:
    """The question (with its options and answer instruction) after the views."""
    return SPATIAL_QA.annotation_prompt(num_images, query=question)


__all__ = [
    "DETECTION_PROMPT",
    "IMAGE_PLACEHOLDER",
    "RECONSTRUCTION_PROMPT",
    "caption_prompt",
    "detection_prompt",
    "extract_description",
    "grounding_stage1_prompt",
    "grounding_stage2_prompt",
    "reconstruction_prompt",
    "spatial_qa_prompt",
]
