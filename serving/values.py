"""The values the serving helpers take from callers and from servers, checked before they are used.

A budget, a grid or a token id is a whole number: a float is refused, never truncated (`int(2.7)` would silently
ask for 2 tokens or describe a view 2 patches high), and so are bools, NaN and infinity (`int(inf)`: a raw
OverflowError). A server's response is read field by field, so a malformed one (no `choices`, a `message` that is a
string, an id that is text) is a ValueError naming the missing or wrong field and the server, not a KeyError,
AttributeError or TypeError from deep inside a helper.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch


def _integer(value) -> int | None:
    """`value` as an int when it is an integer (Python, numpy or a 0-d integer tensor; not a bool), else None."""
    if torch.is_tensor(value):
        if value.ndim != 0 or value.dtype == torch.bool or value.is_floating_point() or value.is_complex():
            return None
        return int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        return None
    return int(value)


def whole_number(value, name: str, minimum: int = 1) -> int:
    """`value` as an int if it is an integer >= `minimum`; a ValueError naming `name` otherwise."""
    number = _integer(value)
    if number is None or number < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r:.80}")
    return number


def grid_row(value, name: str = "image_grid_thw row") -> list[int]:
    """The `(t, h, w)` patch grid of one view (a sequence or a 1-D tensor): three whole numbers >= 1."""
    values = value.tolist() if torch.is_tensor(value) else value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) != 3:
        raise ValueError(f"{name} must be 3 whole numbers (t, h, w), got {value!r:.80}")
    return [whole_number(v, f"{name} entry {k}") for k, v in enumerate(values)]


def token_id_list(value, name: str, vocabulary_size: int | None = None) -> list[int]:
    """A list of token ids: whole numbers >= 0 and, with `vocabulary_size`, below it (an id the tokenizer does not
    have was produced with another tokenizer)."""
    if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list of token ids, got {type(value).__name__} {value!r:.80}")
    ids = [whole_number(v, f"{name}[{k}]", minimum=0) for k, v in enumerate(value)]
    beyond = [i for i in ids if vocabulary_size is not None and i >= vocabulary_size]
    if beyond:
        raise ValueError(f"{name} holds token id {beyond[0]}, outside the tokenizer's {vocabulary_size} ids; was it "
                         "produced with another tokenizer?")
    return ids


def response_field(response, path: Sequence, where: str):
    """`response[path[0]][path[1]]...` of a server's JSON answer; a ValueError naming the first field that is missing
    or of the wrong kind (`where`: the server, named in the message)."""
    value, walked = response, "the response"
    for key in path:
        if isinstance(key, int):
            if not isinstance(value, list) or not -len(value) <= key < len(value):
                raise ValueError(f"{where}: not a chat completion response: {walked} is not a list holding entry {key} "
                                 f"({str(response)[:300]})")
        elif not isinstance(value, dict) or key not in value:
            raise ValueError(f"{where}: not a chat completion response: {walked} has no field {key!r} ({str(response)[:300]})")
        value, walked = value[key], f"{walked}[{key!r}]"
    return value


__all__ = ["grid_row", "response_field", "token_id_list", "whole_number"]
