"""The encoder half of GAP-MLLM serving: frames + a task → the prompt and the per-view image embeddings an engine takes.

    encoder = GapMllmEncoder.from_pretrained("path/to/gap-mllm", device="cuda", dtype=torch.bfloat16)
    request = encoder.encode(frames, task="grounding_stage2", query="the chair next to the desk")
    request.prompt            # the chat text, one <|vision_start|><|image_pad|><|vision_end|> per view
    request.image_embeds      # per view [h·w/4, 4 · hidden]: GAP's fused main + DeepStack levels
    request.image_grid_thw    # [V, 3] rows (1, h, w)

The model keeps only what `encode_images` runs (geometry encoder, Qwen ViT, mergers, fusion); the decoder layers,
token embeddings and LM head are dropped after loading. The prompt is rendered by the GAP processor's own chat code
(`processor.chat_prompt` on the task's segments), so after the engine expands each image placeholder to its grid's
token count it is token for token the `input_ids` the processor builds (tests/test_serving.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
from gap_mllm.chat_format import SYSTEM_PROMPT
from gap_mllm.tasks_gap_mllm import resolve_task


@dataclass(frozen=True)
class EncodedRequest:
    """One sample, ready for an engine.

    Attributes:
        prompt: the chat text (system turn, user turn with one image placeholder per view, generation prompt).
        segments: the user turn as chat segments (`None` = one view, str = a text item), in order.
        system_prompt: the system turn's text.
        image_embeds: per view `[tokens_v, (1 + num_deepstack) · hidden]` on the CPU (main level first).
        image_grid_thw: `[V, 3]` int64, rows `(1, h_v, w_v)`.
        input_ids: the token ids `GapMllmProcessor` builds for this sample (placeholders expanded), for checks.
        task: the task name, or None for a free prompt.
    """

    prompt: str
    segments: tuple[str | None, ...]
    system_prompt: str
    image_embeds: tuple[torch.Tensor, ...]
    image_grid_thw: torch.LongTensor
    input_ids: tuple[int, ...]
    task: str | None = None

    @property
    def num_views(self) -> int:
        return len(self.image_embeds)


def _per_sample(value, count: int, what: str, is_single) -> list:
    if value is None:
        return [None] * count
    if is_single(value):
        if count != 1:
            raise ValueError(f"one {what} was given for {count} samples; pass one {what} per sample")
        return [value]
    if not isinstance(value, (list, tuple)) or len(value) != count:
        raise ValueError(f"{what} must be one {what} or a list with one per sample ({count}), got {value!r:.80}")
    return list(value)


def _is_box(value) -> bool:
    return isinstance(value, (Sequence, torch.Tensor)) and not isinstance(value, str) and all(
        not isinstance(v, (Sequence, torch.Tensor)) or (isinstance(v, torch.Tensor) and v.ndim == 0) for v in value)


class GapMllmEncoder:
    """GAP-MLLM's image path and prompt builder, without the language model (see the module docstring)."""

    def __init__(self, model: GapMllmForConditionalGeneration, processor: GapMllmProcessor):
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(cls, path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                        keep_language_model: bool = False) -> "GapMllmEncoder":
        """Load a GAP-MLLM folder / Hub id; drop the decoder layers, token embeddings and LM head unless
        `keep_language_model` (the engine holds that half)."""
        model = GapMllmForConditionalGeneration.from_pretrained(path, dtype=dtype)
        if not keep_language_model:
            model.vlm.model.language_model = None
            model.vlm.lm_head = None
        return cls(model.to(device), GapMllmProcessor.from_pretrained(path))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def segments(self, num_views: int, task: str | None = None, text: str | None = None, query=None, box=None) -> list:
        """The user turn of one sample: the task's segments, or every view then the free `text`."""
        if (task is None) == (text is None):
            raise ValueError("pass exactly one of task= (a GAP-MLLM task) or text= (a free prompt)")
        if task is not None:
            return resolve_task(task).user_segments(num_views, query=query, box=box)
        if query is not None or box is not None:
            raise ValueError("query= and box= are task inputs; pass task= as well")
        if "<|im_start|>" in text or self.processor.image_token in text:
            raise ValueError("text= is the plain question; the encoder writes the chat markup and the image placeholders")
        return [None] * num_views + [text]

    @torch.inference_mode()
    def encode_batch(self, images: Sequence[Sequence], task: str | None = None, text=None, query=None, box=None,
                     point_prompts=None) -> list[EncodedRequest]:
        """Several samples in one pass of the geometry encoder, ViT and fusion.

        Args:
            images: one list of views per sample (PIL images, paths, arrays; a sample's views share one size).
            task / text: a GAP-MLLM task name, or a free prompt (one str, or one per sample).
            query, box, point_prompts: the task inputs, one per sample (as for `GapMllmProcessor`).
        """
        if not isinstance(images, (list, tuple)) or not images or not all(isinstance(v, (list, tuple)) for v in images):
            raise ValueError("images must be a non-empty list with one list of views per sample")
        count = len(images)
        texts = _per_sample(text, count, "text", lambda v: isinstance(v, str))
        queries = _per_sample(query, count, "query", lambda v: isinstance(v, str))
        boxes = _per_sample(box, count, "box", _is_box)
        segments = [self.segments(len(views), task=task, text=t, query=q, box=b)
                    for views, t, q, b in zip(images, texts, queries, boxes, strict=True)]
        prompts = [self.processor.chat_prompt(s) for s in segments]
        options = {"task": task, "query": query, "box": box} if task is not None else {"text": texts}
        inputs = self.processor(images=[list(v) for v in images], point_prompts=point_prompts, return_tensors="pt", **options)
        encoded = self.model.encode_images(**{k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()})
        requests = []
        for index, (embeddings, grid) in enumerate(encoded.per_sample()):
            row = inputs["input_ids"][index][inputs["attention_mask"][index].bool()]
            requests.append(EncodedRequest(
                prompt=prompts[index], segments=tuple(segments[index]), system_prompt=SYSTEM_PROMPT,
                # clone: a view would drag the whole batch's storage into torch.save payloads
                image_embeds=tuple(e.detach().to("cpu").clone() for e in embeddings),
                image_grid_thw=grid.detach().to("cpu", torch.int64).clone(),
                input_ids=tuple(row.tolist()), task=None if task is None else resolve_task(task).name))
        return requests

    def encode(self, frames: Sequence, task: str | None = None, text: str | None = None, query: str | None = None,
               box=None, point_prompt=None) -> EncodedRequest:
        """One sample: `frames` are its views; see `encode_batch`."""
        return self.encode_batch([list(frames)], task=task, text=text, query=query, box=box,
                                 point_prompts=None if point_prompt is None else [point_prompt])[0]


__all__ = ["EncodedRequest", "GapMllmEncoder"]
