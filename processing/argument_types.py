"""argparse `type=` helpers shared by every command line of the package: the `gap-mllm` commands (cli/), and the
synth, mini and evaluation entry points. A count or duration out of its range is an argparse error naming the
option and the value (`argument --batch-size: '0' must be a positive number (at least 1)`, exit status 2),
before any work starts, instead of a `range()` error or a run that ends having done nothing.

They live here, in the lowest layer with a command line (`gap-mllm synth`), so that every layer above imports
the same definitions (tests/test_layering.py)."""

from __future__ import annotations

import argparse
import math


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def positive_int(value: str) -> int:
    """An integer ≥ 1 (a token budget, a batch size, a number of workers or samples)."""
    number = _whole_number(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number (at least 1)")
    return number


def non_negative_int(value: str) -> int:
    """An integer ≥ 0 (a count that may be zero, such as the scenes of an optional split, or a seed)."""
    number = _whole_number(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be zero or a positive number")
    return number


def positive_seconds(value: str) -> float:
    """A finite number of seconds > 0."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive, finite number of seconds")
    return number


# argparse names the type in its messages (e.g. "invalid positive integer value")
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_seconds.__name__ = "number of seconds"

__all__ = ["non_negative_int", "positive_int", "positive_seconds"]
