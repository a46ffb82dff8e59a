"""Batch builder samples into GAP-MLLM processor inputs (and a lazy tensor transform).

`GapMllmDataCollator(processor)` takes the examples of any task builder (fields `images`, `prompt`
with one `<image>` per view, `answer`, optional `pixel_coords`) and returns the processor's
`BatchFeature` (input_ids, attention_mask, pixel_values, image_grid_thw, geometry_pixel_values,
geometry_views_per_sample, ...) plus `labels` for training.

Chat layout: the one of `gap_mllm.tasks_gap_mllm` (official, docs/method.md §3.1 / §8.2), rendered by its
`render_chat_prompt` as the processor does: system "You are a helpful assistant.", one user turn whose content
interleaves the prompt's text pieces with the views in order (so `Frame-i: <image>` becomes a text
item before each image), then the assistant answer. Labels are `IGNORE_INDEX` everywhere except the
answer and the closing `<|im_end|>` + newline; `<|im_start|>assistant\n` is masked.

Dataset text is text, never markup: a prompt or answer holding a control token of the tokenizer (an answer
with `<|im_start|>assistant\n` would move the supervised span onto the injected text) or text that is not valid
Unicode is a `DataError` naming the sample (`sample_chat_text`, the rule of `gap_mllm.tasks_gap_mllm`). In
training, `BadSampleGuard` then stops the run or skips and counts the sample (`data.on_bad_sample`); evaluation
(`gap-mllm evaluate`, scene reuse included) refuses it.

A sample longer than the model's context is bad data too (`max_tokens`, training: the model's
`text_config.max_position_embeddings`): its tokens (text and visual) are counted once the processor has made them,
before any model input is built from them, so a prompt of 200,000 words is a `DataError` naming the sample, not an
attention mask of hundreds of gigabytes. Tokens, not M-RoPE positions: the visual tokens of a view share positions,
so a sample's positions are fewer than its tokens, and its tokens size its memory.
"""

from __future__ import annotations

import re
from contextlib import contextmanager

import numpy as np
import torch

from gap_mllm import tasks_gap_mllm
from gap_mllm.configuration_gap_mllm import IGNORE_INDEX  # noqa: F401 - re-exported for the trainer and tests
from gap_mllm.tasks_gap_mllm import PromptTextError, render_chat_prompt

from .annotation_files import segments_from_placeholders
from .errors import DataError

ASSISTANT_HEADER = "<|im_start|>assistant\n"  # masked in the labels


def prompt_segments(prompt: str, num_images: int, sample: str | None = None) -> list[str | None]:
    """The chat segments of an annotation prompt (`<image>` → a view); DataError naming the sample if the
    placeholder count differs from the number of images."""
    try:
        return segments_from_placeholders(prompt, num_images)
    except ValueError as error:
        raise DataError(str(error), sample=sample) from None


def sample_chat_text(processor, prompt: str, num_images: int, answer: str | None = None, sample=None) -> str:
    """The chat text of one annotation sample (`render_chat_prompt` with the processor's tokenizer and template):
    the answer appended (training) or the generation prompt (`answer=None`). A `DataError` naming `sample` when
    the prompt's `<image>` count differs from `num_images`, or when the prompt or the answer holds a control
    token of the tokenizer or is not valid Unicode (this package's rule, whatever processor code a checkpoint
    carries)."""
    segments = prompt_segments(prompt, num_images, sample)
    try:
        return render_chat_prompt(processor.tokenizer, segments, answer, processor.chat_template)
    except PromptTextError as error:
        raise DataError(f"annotation text: {error}", sample=sample) from None


def chat_messages(prompt: str, num_images: int, answer: str | None = None, sample: str | None = None) -> list[dict]:
    """Messages for the chat template from an annotation prompt (`tasks_gap_mllm.chat_messages`)."""
    return tasks_gap_mllm.chat_messages(prompt_segments(prompt, num_images, sample), answer)


def _find_last(row: list[int], pattern: list[int]) -> int:
    for start in range(len(row) - len(pattern), -1, -1):
        if row[start : start + len(pattern)] == pattern:
            return start
    return -1


# the processor names a view by its sample's position in the call: "sample 0, view 2: image file not found: ..."
_PROCESSOR_VIEW_ERROR = re.compile(r"^sample (\d+), (view \d+.*)$", re.S)


@contextmanager
def samples_named(sample_ids: list):
    """Within the block, an error of the processor about a view of the samples `sample_ids` (in the order they were
    given to it), which names the sample by its position in the call ("sample 0, view 2"), is a `DataError` naming it
    by its id: a frame deleted or damaged after the data was checked (a batch of an evaluation, its stored scenes).
    A sample without an id keeps its position."""
    try:
        yield
    except (ValueError, OSError) as error:  # FileNotFoundError: a missing frame; ValueError: one PIL cannot read
        found = None if isinstance(error, DataError) else _PROCESSOR_VIEW_ERROR.match(str(error))
        position = int(found.group(1)) if found else None
        if position is None or position >= len(sample_ids) or sample_ids[position] is None:
            raise
        raise DataError(found.group(2), sample=sample_ids[position]) from error


class GapMllmDataCollator:
    """Collate builder examples for the model.

    Args:
        processor: a `GapMllmProcessor`.
        train: append the answer and return `labels` (else: generation prompt, no labels).
        marker: paint the red "+" of `pixel_coords` (pre-training samples) through the processor.
        max_tokens: the most tokens a sample may have (the model's context); a longer one is a `DataError` naming
            it (module docstring). None: no bound.
        **processor_kwargs: forwarded to the processor call (e.g. `padding_side`).
    """

    def __init__(self, processor, train: bool = True, marker: bool = True, max_tokens: int | None = None,
                 **processor_kwargs):
        self.processor = processor
        self.train = train
        self.marker = marker
        self.max_tokens = max_tokens
        self.processor_kwargs = processor_kwargs
        self._header_ids = processor.tokenizer.encode(ASSISTANT_HEADER, add_special_tokens=False)

    def __call__(self, examples: list[dict]):
        texts, images, point_prompts = [], [], []
        for index, example in enumerate(examples):
            views = list(example["images"])
            sample = example.get("id")
            sample = index if sample is None else sample  # no id (an evaluation request without one): its position
            answer = example["answer"] if self.train else None
            texts.append(sample_chat_text(self.processor, example["prompt"], len(views), answer, sample))
            images.append(views)
            coords = example.get("pixel_coords") if self.marker else None
            point_prompts.append(tuple(int(v) for v in coords) if coords is not None else None)
        with samples_named([example.get("id") for example in examples]):
            batch = self.processor(images=images, text=texts, point_prompts=point_prompts, return_tensors="pt",
                                   **self.processor_kwargs)
        if self.max_tokens is not None:
            self._check_lengths(batch["attention_mask"], examples)
        if self.train:
            batch["labels"] = self._labels(batch["input_ids"], batch["attention_mask"])
        return batch

    def _check_lengths(self, attention_mask: torch.Tensor, examples: list[dict]) -> None:
        """A `DataError` naming the first sample with more than `max_tokens` tokens (the mask is the processor's,
        on the host: no device is read)."""
        for index, tokens in enumerate(attention_mask.sum(dim=-1).tolist()):
            if tokens > self.max_tokens:
                sample = examples[index].get("id")
                views = len(examples[index]["images"])
                raise DataError(f"{tokens} tokens (chat text, prompt, answer and the visual tokens of its {views} "
                                f"view(s)) do not fit the model's context of {self.max_tokens} "
                                "(text_config.max_position_embeddings); shorten its prompt or answer, or give it fewer "
                                "views", sample=index if sample is None else sample)

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


def collate_clips(examples: list[dict]) -> dict:
    """Stack same-shaped geometry clips (training/geometry_data.py `GeometryClips`) into a batch
    (`images [B, S, 3, H, W]`, ...); scene ids as a list. Stage-0 training and the geometry evaluation
    both batch with it."""
    batch = {key: torch.stack([e[key] for e in examples]) for key in examples[0] if key != "scene_id"}
    batch["scene_id"] = [e["scene_id"] for e in examples]
    return batch
