"""The encoder half of GAP-MLLM serving: frames + a task → the prompt and the per-view image embeddings an engine takes.

    encoder = GapMllmEncoder.from_pretrained("path/to/gap-mllm", device="cuda", dtype=torch.bfloat16)
    request = encoder.encode(frames, task="grounding_stage2", query="the chair next to the desk")
    request.prompt            # the chat text, one <|vision_start|><|image_pad|><|vision_end|> per view
    request.image_embeds      # per view [h·w/4, 4 · hidden]: GAP's fused main + DeepStack levels
    request.image_grid_thw    # [V, 3] rows (1, h, w)

Evaluation requests, written as the annotation files write a user turn (one `<image>` per view), go through
`encode_prompts`; `reprompt` gives another question about the same views without encoding them again.

The model keeps only what `gap_mllm.speedups.encode_images` runs (geometry encoder, Qwen ViT, mergers, fusion); the
decoder layers, token embeddings and LM head are dropped after loading. The prompt is rendered by the GAP processor's
own chat code (`processor.chat_prompt` on the task's segments), so after the engine expands each image placeholder to
its grid's token count it is token for token the `input_ids` the processor builds (tests/test_serving.py checks it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
from gap_mllm.loading import load_model
from gap_mllm.processing.annotation_files import segments_from_placeholders
from gap_mllm.processing_gap_mllm import is_box, one_per_sample
from gap_mllm.speedups import encode_images
from gap_mllm.tasks_gap_mllm import SYSTEM_PROMPT, resolve_task


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
        model = load_model(path, dtype=dtype)
        if not keep_language_model:
            model.model.language_model = None
            model.lm_head = None
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
        texts = one_per_sample(text, count, "text", lambda v: isinstance(v, str))
        queries = one_per_sample(query, count, "query", lambda v: isinstance(v, str))
        boxes = one_per_sample(box, count, "box", is_box)
        segments = [self.segments(len(views), task=task, text=t, query=q, box=b)
                    for views, t, q, b in zip(images, texts, queries, boxes, strict=True)]
        prompts = [self.processor.chat_prompt(s) for s in segments]
        options = {"task": task, "query": query, "box": box} if task is not None else {"text": texts}
        inputs = self.processor(images=[list(v) for v in images], point_prompts=point_prompts, return_tensors="pt", **options)
        return self._requests(inputs, segments, prompts, None if task is None else resolve_task(task).name)

    @torch.inference_mode()
    def encode_prompts(self, images: Sequence[Sequence], prompts: Sequence[str], point_prompts=None,
                       task: str | None = None) -> list[EncodedRequest]:
        """Several samples whose user turns are written as the annotation files write them: one `<image>` per view
        (`"Frame-0: <image>Frame-1: <image>\\n..."`), what `gap-mllm evaluate` and the lmms-eval plugin send. The
        chat text and processor inputs are the ones the evaluation collator builds for the same prompt.

        Args:
            images: one list of views per sample.
            prompts: one annotation-form prompt per sample, as many `<image>` as views.
            point_prompts: None or one `(view, x, y)` marker (or None) per sample.
            task: the registry task the prompts ask (recorded on the requests: its budget and stop rule).
        """
        if not isinstance(images, (list, tuple)) or not images or len(prompts) != len(images):
            raise ValueError(f"images and prompts must be non-empty lists of one entry per sample, got {len(images or [])} "
                             f"and {len(prompts)}")
        segments = [segments_from_placeholders(prompt, len(views)) for prompt, views in zip(prompts, images)]
        chats = [self.processor.chat_prompt(s) for s in segments]
        inputs = self.processor(images=[list(v) for v in images], text=chats, point_prompts=point_prompts, return_tensors="pt")
        return self._requests(inputs, segments, chats, None if task is None else resolve_task(task).name)

    def reprompt(self, request: EncodedRequest, prompt: str, task: str | None = None) -> EncodedRequest:
        """`request`'s views (embeddings and grids, not recomputed) with another annotation-form `prompt`: the
        questions of one scene share its encoding. `input_ids` are the prompt's tokens with each image placeholder
        expanded to its view's token count, as `GapMllmProcessor` builds them."""
        segments = segments_from_placeholders(prompt, request.num_views)
        chat = self.processor.chat_prompt(segments)
        return replace(request, prompt=chat, segments=tuple(segments), input_ids=tuple(self.expanded_ids(chat, request.image_grid_thw)),
                       task=None if task is None else resolve_task(task).name)

    def expanded_ids(self, chat: str, image_grid_thw: torch.Tensor) -> list[int]:
        """The token ids of a chat text with each `<|image_pad|>` repeated `t·h·w / merge²` times (view order), which
        is what Qwen3-VL's processor and an engine's prompt update make of it."""
        tokenizer = self.processor.tokenizer
        image_token = tokenizer.convert_tokens_to_ids(self.processor.image_token)
        merge = self.model.config.vision_config.spatial_merge_size
        counts = (image_grid_thw.prod(dim=-1) // merge**2).tolist()
        ids = tokenizer(chat, add_special_tokens=False)["input_ids"]
        if ids.count(image_token) != len(counts):
            raise ValueError(f"the chat text has {ids.count(image_token)} image placeholders for {len(counts)} views")
        views, expanded = iter(counts), []
        for token in ids:
            expanded.extend([token] * next(views) if token == image_token else [token])
        return expanded

    def _requests(self, inputs, segments: list, prompts: list[str], task: str | None) -> list[EncodedRequest]:
        """One `EncodedRequest` per sample of processor `inputs` (the image path runs once for the batch)."""
        on_device = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        encoded = encode_images(self.model, **on_device)
        requests = []
        for index, (embeddings, grid) in enumerate(encoded.per_sample()):
            row = inputs["input_ids"][index][inputs["attention_mask"][index].bool()]
            requests.append(EncodedRequest(
                prompt=prompts[index], segments=tuple(segments[index]), system_prompt=SYSTEM_PROMPT,
                # clone: a view would drag the whole batch's storage into torch.save payloads
                image_embeds=tuple(e.detach().to("cpu").clone() for e in embeddings),
                image_grid_thw=grid.detach().to("cpu", torch.int64).clone(),
                input_ids=tuple(row.tolist()), task=task))
        return requests

    def encode(self, frames: Sequence, task: str | None = None, text: str | None = None, query: str | None = None,
               box=None, point_prompt=None) -> EncodedRequest:
        """One sample: `frames` are its views; see `encode_batch`."""
        return self.encode_batch([list(frames)], task=task, text=text, query=query, box=box,
                                 point_prompts=None if point_prompt is None else [point_prompt])[0]


__all__ = ["EncodedRequest", "GapMllmEncoder"]
