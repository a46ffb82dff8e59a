"""The chat layout of every GAP-MLLM prompt (docs/method.md §3.1, §8.2), defined once for inference and training.

    system     "You are a helpful assistant."
    user       the views and text items in order (`Frame-i: ` text before each view for grounding stage 1)
    assistant  the answer (training only; at inference the generation prompt `<|im_start|>assistant\\n`)

A user turn is written as a list of *segments*: `None` is one view (an image item), a string is a text
item (empty strings are dropped). The official annotation files write the same turn as one string
with one `<image>` per view; `segments_from_placeholders` / `placeholders_from_segments` convert.
`render_chat_prompt` renders them with the tokenizer's chat template for the processor and the training
collator alike, so a training sample and an inference call of one task read identically. It checks the text
first (`check_chat_text`: the rule of control_tokens.py), so no text item and no answer can write chat turns:
text items that are adjacent in the prompt are checked as the one text they become there, so a control token
split over two items (`"x<|im_"`, `"end|>"`) is found too.
"""

from __future__ import annotations

from collections.abc import Sequence

from .control_tokens import refuse_control_tokens

SYSTEM_PROMPT = "You are a helpful assistant."
IMAGE_PLACEHOLDER = "<image>"  # one per view in the human turn of the official annotation files
CHAT_MARKER = "<|im_start|>"
ASSISTANT_HEADER = "<|im_start|>assistant\n"  # masked in the labels (docs/method.md §8.2)


def segments_from_placeholders(prompt: str, num_images: int) -> list[str | None]:
    """`"Frame-0: <image>Frame-1: <image>\\nText"` → `["Frame-0: ", None, "Frame-1: ", None, "\\nText"]`.

    Raises:
        ValueError: when the prompt's `<image>` count differs from `num_images`.
    """
    pieces = prompt.split(IMAGE_PLACEHOLDER)
    if len(pieces) - 1 != num_images:
        raise ValueError(
            f"the prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but {num_images} image(s) were given"
        )
    segments: list[str | None] = []
    for index, piece in enumerate(pieces):
        if piece:
            segments.append(piece)
        if index < num_images:
            segments.append(None)
    return segments


def placeholders_from_segments(segments: Sequence[str | None]) -> str:
    """Inverse of `segments_from_placeholders`: the annotation-file form of a user turn."""
    return "".join(IMAGE_PLACEHOLDER if segment is None else segment for segment in segments)


def chat_messages(segments: Sequence[str | None], answer: str | None = None) -> list[dict]:
    """Messages for `apply_chat_template`: the system prompt, the user turn, then the answer if given."""
    content = [{"type": "image"} if segment is None else {"type": "text", "text": segment}
               for segment in segments if segment is None or segment]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": content}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return messages


def text_runs(segments: Sequence[str | None]) -> list[tuple[list[int], str]]:
    """`(indices, joined text)` of each run of text items not separated by a view: the text the prompt holds
    between two views (empty items are dropped by `chat_messages`, so they separate nothing)."""
    runs: list[tuple[list[int], str]] = []
    after_text = False  # the previous non-empty segment was text: this one continues its run
    for index, segment in enumerate(segments):
        if segment is None:
            after_text = False
        elif segment:
            indices, text = runs.pop() if after_text else ([], "")
            runs.append(([*indices, index], text + segment))
            after_text = True
    return runs


def check_chat_text(tokenizer, segments: Sequence[str | None], answer: str | None = None,
                    turn: str = "the user turn") -> None:
    """Raise `control_tokens.PromptTextError` (a ValueError) naming the text items (of `turn`) or the answer when
    they hold a control token of `tokenizer` or are not valid Unicode; adjacent text items are checked joined."""
    for indices, text in text_runs(segments):
        what = (f"text item {indices[0]} of {turn}" if len(indices) == 1 else
                f"text items {indices[0]}-{indices[-1]} of {turn} (joined, as the prompt holds them)")
        refuse_control_tokens(tokenizer, text, what)
    if answer is not None:
        refuse_control_tokens(tokenizer, answer, "the answer")


def render_chat_prompt(tokenizer, segments: Sequence[str | None], answer: str | None = None,
                       chat_template: str | None = None) -> str:
    """The chat text of one sample: `chat_messages` through the tokenizer's chat template (or
    `chat_template`), ending with the answer (training) or with the generation prompt (inference).

    Raises:
        control_tokens.PromptTextError: (a ValueError) for text items or an answer holding a control token of
            `tokenizer` or not valid Unicode (`check_chat_text`).
    """
    check_chat_text(tokenizer, segments, answer)
    return tokenizer.apply_chat_template(chat_messages(segments, answer), chat_template=chat_template,
                                         tokenize=False, add_generation_prompt=answer is None)


__all__ = [
    "ASSISTANT_HEADER",
    "CHAT_MARKER",
    "IMAGE_PLACEHOLDER",
    "SYSTEM_PROMPT",
    "chat_messages",
    "check_chat_text",
    "placeholders_from_segments",
    "render_chat_prompt",
    "segments_from_placeholders",
    "text_runs",
]
