"""Batched greedy generation for the task runners (left padding, official decoding settings).

A `Request` is one model call: the view files of a sample, the human-turn prompt with one `<image>`
per view (the official annotation layout; `Frame-i: <image>` interleaving is kept), the optional
marker `pixel_coords = [view, x, y]`, the token budget, the registry task the prompt asks and the sample's
id (named by the error that refuses a prompt holding a control token: processing/collator.py); views that are not
files (decoded video frames) carry a `scene` name instead.
`BatchGenerator` turns a list of requests into texts with the package collator (system prompt, chat
template, generation prompt) and the package's `generate(model, do_sample=False, num_beams=1)`, stopping each row at
the end of its answer (the task's stop rule) unless the request asks for the official behaviour (EOS
or budget only), and keeping it inside the task's answer grammar when the request is `constrained`
(`TaskSpec.logits_processor`; off by default: the paper's protocol decodes freely); prompts are
left-padded so every row ends at the generation point.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from gap_mllm import register_auto_classes
from gap_mllm.generation import check_compile_decoding, generate
from gap_mllm.loading import load_model
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.processing.model_paths import loading_bar_for, place_loaded_model, quantization_kwargs
from gap_mllm.tasks_gap_mllm import resolve_task


@dataclass
class Request:
    images: list
    prompt: str
    pixel_coords: list | None = None
    max_new_tokens: int = 1280
    task: str | None = None  # registry task the prompt asks (its stop rule); None: EOS / budget only
    stop_at_answer_end: bool = True
    sample: str | None = None  # the sample's id, for errors (a prompt holding a control token is refused by name)
    # what names the views when they are not files (frames decoded from a video): requests with the same `scene`
    # share one encoding under scene reuse (scene_generation.request_scene); None: the image paths name them
    scene: str | None = None
    constrained: bool = False  # decode inside the task's answer grammar (needs `task`; TaskSpec.logits_processor)


def answer_rules(requests: list[Request], tokenizer, prompt_length: int, budget: int) -> dict:
    """The `generate` arguments that one call's requests share: the task's stop rule (unless the official behaviour
    is asked for) and, for constrained requests, its grammar's logits processor for the call's token `budget`.
    `prompt_length`: where the answers start in the rows `generate` sees.

    Raises:
        ValueError: the requests mix tasks or settings, or a constrained request names no task.
    """
    settings = {(r.task, r.stop_at_answer_end, r.constrained) for r in requests}
    if len(settings) != 1:
        raise ValueError(f"one generate() call needs one task, stop and grammar setting, got {sorted(settings, key=str)}")
    task, stop, constrained = settings.pop()
    if constrained and task is None:
        raise ValueError("a constrained request needs its task (the grammar of its answer); a free prompt has none")
    kwargs = {}
    if task is not None and stop:
        kwargs["stopping_criteria"] = resolve_task(task).stopping_criteria(tokenizer, prompt_length)
    if constrained:
        kwargs["logits_processor"] = resolve_task(task).logits_processor(tokenizer, prompt_length, budget,
                                                                         [len(r.images) for r in requests])
    return kwargs


class BatchGenerator:
    """Load a GAP-MLLM checkpoint folder once; `generate(requests) -> list[str]`.

    Args:
        model_dir: a saved model folder (weights, config, remote code, processor).
        device: torch device (default: the accelerate process device, else CPU).
        max_new_tokens: if given, caps every request's budget (useful for smoke runs).
        dtype: optional torch dtype for the weights (e.g. torch.bfloat16 on GPU).
        compile_decoding: "auto" (default: decode steps compiled to CUDA graphs on CUDA), "on" or "off"
            (gap_mllm.generation; the same answers).
        quantize: a `--quantize` choice (`gap_mllm.processing.model_paths.quantization_kwargs`); None: as saved.
    """

    def __init__(self, model_dir, device=None, max_new_tokens: int | None = None, dtype=None, compile_decoding="auto",
                 quantize: str | None = None):
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        kwargs = {"trust_remote_code": True}
        register_auto_classes()  # the package's classes load the folder, not its remote-code copy
        if dtype is not None:
            kwargs["dtype"] = dtype
        kwargs.update(quantization_kwargs(quantize, self.device))
        with loading_bar_for(model_dir):  # no progress bar for a small local checkpoint (GAP-MLLM-Mini)
            self.model = load_model(str(model_dir), loader=AutoModelForImageTextToText.from_pretrained, **kwargs)
        self.model = place_loaded_model(self.model, self.device, kwargs).eval()
        self.compile_decoding = check_compile_decoding(compile_decoding)
        self.processor = AutoProcessor.from_pretrained(str(model_dir), trust_remote_code=True)
        self.collator = GapMllmDataCollator(self.processor, train=False, padding_side="left")
        self.max_new_tokens = max_new_tokens

    @classmethod
    def from_model(cls, model, processor, max_new_tokens: int | None = None,
                   compile_decoding="off") -> "BatchGenerator":
        """A generator around a model already in memory (e.g. during training); it is not moved or copied."""
        generator = cls.__new__(cls)
        generator.model, generator.processor = model, processor
        generator.device = model.device
        generator.collator = GapMllmDataCollator(processor, train=False, padding_side="left")
        generator.max_new_tokens = max_new_tokens
        generator.compile_decoding = check_compile_decoding(compile_decoding)
        return generator

    @torch.no_grad()
    def generate(self, requests: list[Request]) -> list[str]:
        if not requests:
            return []
        examples = [{"images": r.images, "prompt": r.prompt, "pixel_coords": r.pixel_coords, "id": r.sample} for r in requests]
        batch = self.collator(examples).to(self.device)
        budget = max(r.max_new_tokens for r in requests)
        if self.max_new_tokens is not None:
            budget = min(budget, self.max_new_tokens)
        kwargs = {"max_new_tokens": budget, "do_sample": False, "num_beams": 1,
                  **answer_rules(requests, self.processor.tokenizer, batch["input_ids"].shape[1], budget)}
        output = generate(self.model, **batch, compile_decoding=self.compile_decoding, **kwargs)
        return self.processor.decode_generated(output, batch["input_ids"])
