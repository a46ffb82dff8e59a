"""argparse `type=` helpers shared by the commands."""

from __future__ import annotations

import argparse


def positive_int(value: str) -> int:
    """An integer ≥ 1 (a token budget, a count); anything else is an argparse error naming the value."""
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number (at least 1)")
    return number


positive_int.__name__ = "positive integer"  # argparse names the type in its messages
