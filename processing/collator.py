"""Batch builder samples into GAP-MLLM processor inputs (and a lazy tensor transform).

`GapMllmDataCollator(processor)` takes the examples of any task builder (fields `images`, `prompt`
with one `<image>` per view, `answer`, optional `pixel_coords`) and returns the processor's
`BatchFeature` (input_ids, attention_mask, pixel_values, image_grid_thw, geometry_pixel_values,
geometry_views_per_sample, ...) plus `labels` for training.

Chat layout (official, method.md §2.3 / §3.1): system "You are a helpful assistant.", one user turn
whose content interleaves the prompt's text pieces with the views in order (so `Frame-i: <image>`
becomes a text item before each image), then the assistant answer. Labels are -100 everywhere
except the answer and the closing `<|im_end|>` + newline; `<|im_start|>assistant\\n` is masked.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import DataError
from .prompts import IMAGE_PLACEHOLDER, split_image_placeholders

IGNORE_INDEX = -100
SYSTEM_PROMPT = "You are a helpful assistant."
ASSISTANT_HEADER = "<|im_start|>assistant\n"


def chat_messages(prompt: str, num_images: int, answer: str | None = None, sample: str | None = None) -> list[dict]:
    """Messages for the chat template: the prompt's `<image>` placeholders become image items."""
    pieces = split_image_placeholders(prompt)
    if len(pieces) - 1 != num_images:
        raise DataError(f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given", sample=sample)
    content = []
    for index, piece in enumerate(pieces):
        if piece:
            content.append({"type": "text", "text": piece})
        if index < num_images:
            content.append({"type": "image"})
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def _find_last(row: list[int], pattern: list[int]) -> int:
    for start in range(len(row) - len(pattern), -1, -1):
        if row[start : start + len(pattern)] == pattern:
            return start
    return -1


class GapMllmDataCollator:
    """Collate builder examples for the model.

    Args:
        processor: a `GapMllmProcessor`.
        train: append the answer and return `labels` (else: generation prompt, no labels).
        marker: paint the red "+" of `pixel_coords` (pre-training samples) through the processor.
        **processor_kwargs: forwarded to the processor call (e.g. `padding_side`).
    """

    def __init__(self, processor, train: bool = True, marker: bool = True, **processor_kwargs):
        self.processor = processor
        self.train = train
        self.marker = marker
        self.processor_kwargs = processor_kwargs
        self._header_ids = processor.tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)

    def __call__(self, examples: list[dict]):
        texts, images, point_prompts = [], [], []
        for index, example in enumerate(examples):
            views = list(example["images"])
            sample = example.get("id", index)
            messages = chat_messages(example["prompt"], len(views), example["answer"] if self.train else None, sample=sample)
            texts.append(
                self.processor.tokenizer.apply_chat_template(
                    messages, chat_template=self.processor.chat_template, tokenize=False, add_generation_prompt=not self.train
                )
            )
            images.append(views)
            coords = example.get("pixel_coords") if self.marker else None
            point_prompts.append(tuple(int(v) for v in coords) if coords is not None else None)
        batch = self.processor(images=images, text=texts, point_prompts=point_prompts, return_tensors="pt", **self.processor_kwargs)
        if self.train:
            batch["labels"] = self._labels(batch["input_ids"], batch["attention_mask"])
        return batch

    def _labels(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row in range(input_ids.shape[0]):
            ids = input_ids[row].tolist()
            start = _find_last(ids, self._header_ids)
            if start < 0:
                raise ValueError(f"batch row {row}: no assistant turn found in the chat text")
            begin = start + len(self._header_ids)
            labels[row, begin:] = input_ids[row, begin:]
        labels[attention_mask == 0] = IGNORE_INDEX
        return labels


def views_to_tensors(batch: dict) -> dict:
    """`with_transform` helper: PIL views -> float tensors `[V, 3, H, W]` in [0, 1]; depth /
    intrinsics / poses -> tensors. Works on the batched dicts `datasets` passes to transforms."""
    out = dict(batch)
    out["pixel_views"] = [
        torch.stack([torch.from_numpy(np.asarray(view.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1) for view in views])
        for views in batch["images"]
    ]
    for key in ("depth", "intrinsics", "cam_to_world"):
        if key in batch:
            out[key] = [torch.as_tensor(np.asarray(value)) for value in batch[key]]
    return out
