"""User text never becomes a control token of the tokenizer.

A chat prompt is tokenized in one piece, so a user's text containing `<|im_end|>`, `<|im_start|>` or
`<|vision_end|>` would come out as those control tokens: it would close the user turn and write turns
of its own (prompt injection through a query or a public textbox), or move the end of the views that
scene reuse splits at. Tokenizing only the user's pieces with special-token matching switched off
(`split_special_tokens=True`) would change how the text next to them is split by BPE, and with it the
ids of every ordinary prompt, so instead text that holds one of the tokenizer's added tokens (special
or not: `<|im_end|>`, `<|vision_end|>`, `<think>`, ...) is refused with an error naming the tokens.
Ordinary text is never changed, so its ids are exactly what they were.
"""

from __future__ import annotations


def added_token_contents(tokenizer) -> dict[int, str]:
    """`{id: text}` of the tokenizer's added tokens (the chat and vision markers and any other added token)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(index): str(getattr(token, "content", token)) for index, token in decoder.items()}


def control_tokens_in(tokenizer, text: str) -> list[str]:
    """The added tokens of `tokenizer` that `text` holds, in order of first appearance: written out
    literally, or produced when the tokenizer reads `text` (normalisation included)."""
    added = added_token_contents(tokenizer)
    found = sorted({content for content in added.values() if content and content in text}, key=text.find)
    for index in tokenizer(text, add_special_tokens=False)["input_ids"]:
        content = added.get(int(index))
        if content is not None and content not in found:
            found.append(content)
    return found


def refuse_control_tokens(tokenizer, text: str, what: str) -> None:
    """Raise ValueError when `text` (user input named `what`, e.g. "the query of sample 0") holds a
    control token of `tokenizer` (see the module docstring)."""
    found = control_tokens_in(tokenizer, text)
    if found:
        raise ValueError(
            f"{what} contains the tokenizer's control token(s) {', '.join(map(repr, found))}: user text must not write "
            "chat or vision markup (it would end the user turn or move the views). Remove them from the text."
        )


__all__ = ["added_token_contents", "control_tokens_in", "refuse_control_tokens"]
