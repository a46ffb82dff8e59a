"""User and dataset text never becomes a control token of the tokenizer: the one rule of every prompt path.

A chat prompt is tokenized in one piece, so a user's text containing `<|im_end|>`, `<|im_start|>` or
`<|vision_end|>` would come out as those control tokens: it would close the user turn and write turns
of its own (prompt injection through a query or a public textbox), move the end of the views that
scene reuse splits at, or (an annotation answer holding `<|im_start|>assistant\\n`) move the span the
training labels supervise. Tokenizing only the user's pieces with special-token matching switched off
(`split_special_tokens=True`) would change how the text next to them is split by BPE, and with it the
ids of every ordinary prompt, so instead text that holds one of the tokenizer's added tokens (special
or not: `<|im_end|>`, `<|vision_end|>`, `<think>`, ...) is refused with an error naming the tokens.
Ordinary text is never changed, so its ids are exactly what they were.

`refuse_control_tokens` is that rule, and every path that turns user or dataset text into a prompt calls it
(directly or through `chat_format.render_chat_prompt`): the processor (queries, free text, `chat_prompt`,
`apply_chat_template`), the training and evaluation collator, scene reuse, the serving encoder, the front
ends (predict, the Space) and the dataset builders. It also refuses text that is not valid Unicode (a lone
surrogate: how Python keeps the bytes of a non-UTF-8 command line or file), which no tokenizer can read.

Where no tokenizer is at hand (the dataset builders, a front end before its model is loaded), the text is
checked against the shape of the Qwen chat, vision and tool markup (`MARKUP_PATTERN`); with a tokenizer,
every added token of that tokenizer is checked as well, written out or produced when it reads the text.
"""

from __future__ import annotations

import re

# Every control token of the Qwen2/2.5/3(-VL) tokenizers has one of these shapes: `<|im_start|>`, `<|vision_end|>`,
# `<|box_start|>`, `<|endoftext|>`, ... and the reasoning / tool markers `<think>`, `</tool_call>`, `<tool_response>`.
MARKUP_PATTERN = re.compile(r"<\|[A-Za-z0-9_]+\|>|</?(?:think|tool_call|tool_response)>")


class PromptTextError(ValueError):
    """Text that must not become part of a chat prompt: it holds control tokens or is not valid Unicode."""


def added_token_contents(tokenizer) -> dict[int, str]:
    """`{id: text}` of the tokenizer's added tokens (the chat and vision markers and any other added token)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(index): str(getattr(token, "content", token)) for index, token in decoder.items()}


def refuse_invalid_unicode(text: str, what: str) -> None:
    """Raise `PromptTextError` when `text` (named `what`) holds a lone surrogate: not text a tokenizer can read
    (Python decodes the bytes of a non-UTF-8 command line or file with `surrogateescape` into U+DC80..U+DCFF)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        byte = f", the byte 0x{code - 0xDC00:02x} of an input that is not UTF-8" if 0xDC80 <= code <= 0xDCFF else ""
        raise PromptTextError(
            f"{what} is not valid text: character {error.start} is U+{code:04X}, a lone surrogate{byte}. Give the "
            "text as UTF-8."
        ) from None


def control_tokens_in(tokenizer, text: str) -> list[str]:
    """The control tokens `text` holds, in order of first appearance: the Qwen markup (`MARKUP_PATTERN`) and,
    when `tokenizer` is given, its added tokens, written out literally or produced when it reads `text`
    (normalisation included). `text` must be valid Unicode (`refuse_invalid_unicode`)."""
    found = list(dict.fromkeys(match.group() for match in MARKUP_PATTERN.finditer(text)))
    if tokenizer is None:
        return found
    added = added_token_contents(tokenizer)
    found += [content for content in added.values() if content and content in text and content not in found]
    found.sort(key=text.find)  # every one so far is written out in the text
    for index in tokenizer(text, add_special_tokens=False)["input_ids"]:
        content = added.get(int(index))
        if content is not None and content not in found:
            found.append(content)
    return found


def refuse_control_tokens(tokenizer, text: str, what: str) -> None:
    """The rule (module docstring): raise `PromptTextError` (a ValueError) when `text`, user or dataset text named
    `what` (e.g. "sample 0: the query"), is not valid Unicode or holds a control token. `tokenizer`: the one the
    prompt will be read with, or None where none is at hand (the Qwen markup is checked then)."""
    if not isinstance(text, str):
        raise TypeError(f"{what} must be text, got {type(text).__name__} {text!r:.60}")
    refuse_invalid_unicode(text, what)
    found = control_tokens_in(tokenizer, text)
    if found:
        raise PromptTextError(
            f"{what} contains the tokenizer's control token(s) {', '.join(map(repr, found))}: user text must not write "
            "chat or vision markup (it would end the user turn or move the views). Remove them from the text."
        )


__all__ = [
    "MARKUP_PATTERN",
    "PromptTextError",
    "added_token_contents",
    "control_tokens_in",
    "refuse_control_tokens",
    "refuse_invalid_unicode",
]
