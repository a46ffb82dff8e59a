"""A tiny Qwen-style tokenizer and processor built locally in well under a second (no downloads).

The tokenizer is a byte-level BPE with the Qwen2 pre-tokenisation regex, the Qwen special tokens and
a Qwen3-VL-style chat template, trained on a small built-in corpus of GAP-MLLM prompts and answers so
that tokenised task answers stay short. It is a test fixture: real runs use the checkpoint's own
tokenizer and chat template (docs/transformers-notes.md §16).

    tok = build_tiny_tokenizer()                   # PreTrainedTokenizerFast, ~800 ids, deterministic
    proc = build_tiny_processor()                  # GapMllmProcessor with a few tokens per view
"""

from __future__ import annotations

import os

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from gap_mllm.processing_gap_mllm import GapMllmProcessor
from gap_mllm.tasks_gap_mllm import DETECTION, FRAME_LABEL, GROUNDING_STAGE1, GROUNDING_STAGE2, IMAGE_PLACEHOLDER

# Copied from the Qwen2 / Qwen3 tokenizer.json pre-tokenizer ("Split" step).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

TINY_VOCAB_SIZE = 800

# Qwen2-VL-style template with a default system prompt (hand-written, NOT the official Qwen3-VL one).
# No whitespace-control tags: every newline in the strings below is part of the output.
# `{"type": "image"}` items (or any item carrying an "image" key) become one vision placeholder each.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}"
    "{% else %}"
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' or 'image' in item %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

_LABELS = (
    "chair pillow cabinet table lamp couch desk stand bed backpack bathtub ottoman dresser bin toilet "
    "refrigerator stove microwave monitor computer window shelf curtain plant stairs picture book bottle "
    "towel sink door radiator sofa box bag shoe trash can kitchen counter whiteboard mirror"
).split()

# Task prompts of docs/method.md §3 (official wording, from the task registry) plus a pre-training prompt of our own.
_PROMPTS = [
    DETECTION.task_text(),
    GROUNDING_STAGE1.task_text(query="the brown chair is next to the table."),
    GROUNDING_STAGE2.task_text(query="a white pillow on the bed near the window."),
    "".join(FRAME_LABEL.format(index=i) for i in range(4)) + IMAGE_PLACEHOLDER,
    "What is the 3D position of the point marked by the red cross in the camera coordinate system of the "
    'first frame? Output a JSON dictionary with the point in "pointmap" and its semantic label in "label".',
    "Describe the object in the box. This is a brown wooden chair. It is placed next to the table.",
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
    "<|im_end|>\n<|im_start|>assistant\n",
]


def _answers() -> list[str]:
    """Deterministic answer texts in the official formats (values from a fixed linear sequence)."""
    out = []
    for i, label in enumerate(_LABELS):
        vals = [round(((i * 37 + k * 11) % 400 - 200) / 100.0, 2) for k in range(9)]
        nums = ", ".join(repr(v) for v in vals)
        entry = f'{{"label": "{label}", "bbox_3d": [{nums}]}}'
        out.append(f"```json\n[\n\t{entry},\n\t{entry}\n]```")
        out.append(f'{{"bbox_3d": [{nums}]}}')
        out.append(f'{{"frame": {i % 32}}}')
        out.append(f'{{"pointmap": [{vals[0]}, {vals[1]}, {vals[2]}], "label": "{label}"}}')
    return out


def tiny_corpus() -> list[str]:
    """The built-in training corpus (prompts, answers, digits and JSON punctuation)."""
    texts = list(_PROMPTS) * 4 + _answers()
    texts.append(" ".join(str(d) for d in range(100)) + " -0.0 0.5 1.25 [ ] { } , : \" ' ``` \t")
    texts.append(" ".join(_LABELS))
    return texts


def train_bpe_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a Qwen-style byte-level BPE on `texts` and wrap it as a transformers tokenizer.

    Returns:
        `PreTrainedTokenizerFast` with eos `<|im_end|>`, pad `<|endoftext|>`, left padding (batched
        generation), the `image_token`/`video_token`/`vision_start_token`/`vision_end_token`
        attributes (and their `*_id`s) that `Qwen3VLProcessor` reads, and the chat template above.
        The same ids come out of every build (single-threaded, fixed corpus).
    """
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """`tok` (a `tokenizers.Tokenizer` with the Qwen special tokens) as the transformers tokenizer
    `train_bpe_tokenizer` describes: its special tokens, left padding, vision token attributes and chat template."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
    )


def build_tiny_tokenizer(save_dir: str | os.PathLike | None = None) -> PreTrainedTokenizerFast:
    """Train the tiny byte-level BPE on `tiny_corpus()` (see `train_bpe_tokenizer`).

    Args:
        save_dir: if given, the tokenizer is also saved there (`tokenizer.json`, `tokenizer_config.json`,
            `chat_template.jinja`).
    """
    hf = train_bpe_tokenizer(tiny_corpus(), TINY_VOCAB_SIZE)
    if save_dir is not None:
        hf.save_pretrained(save_dir)
    return hf


def build_tiny_processor(save_dir: str | os.PathLike | None = None, **kwargs):
    """A `GapMllmProcessor` with the tiny tokenizer and small pixel limits (a few tokens per view).

    Args:
        save_dir: if given, the processor is saved there.
        **kwargs: `min_pixels` (default 32·32·4 = 4096), `max_pixels` (default 128·128·4 = 65536) and
            any `GapMllmProcessor` init argument (e.g. `preprocessing_mode`).
    """
    min_pixels = kwargs.pop("min_pixels", 32 * 32 * 4)
    max_pixels = kwargs.pop("max_pixels", 128 * 128 * 4)
    processor = GapMllmProcessor.from_tokenizer(
        build_tiny_tokenizer(), min_pixels=min_pixels, max_pixels=max_pixels, **kwargs
    )
    if save_dir is not None:
        processor.save_pretrained(save_dir)
    return processor
