"""argparse `type=` helpers shared by every command line of the package: the `gap-mllm` commands (cli/), and the
synth, mini and evaluation entry points; and `add_deprecated_alias`, an option's old name kept working. A count, duration or port out of its range is an argparse error naming the
option and the value (`argument --batch-size: '0' must be a positive number (at least 1)`, exit status 2),
before any work starts, instead of a `range()` error, a run that ends having done nothing, a server that cannot
listen, or thousands of processes started at once.

They live here, in the lowest layer with a command line (`gap-mllm synth`), so that every layer above imports
the same definitions (tests/test_layering.py)."""

from __future__ import annotations

import argparse
import math
import os
import sys

PORT_RANGE = (1, 65535)  # the TCP ports a server can listen on


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


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity where the system has one, else every CPU of the machine)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(value: str) -> int:
    """A number of worker processes: at least 1 and at most the CPUs this process may use (`usable_cpus`). The
    workers render on the CPU, so more of them only wait for one another; and a process pool started by fork starts
    every worker at once (`--workers 100000` would start 100,000 processes)."""
    number = positive_int(value)
    cpus = usable_cpus()
    if number > cpus:
        raise argparse.ArgumentTypeError(f"{value!r} is more processes than the {cpus} CPUs this machine gives the "
                                         f"command; give at most {cpus}")
    return number


def port_number(value: str) -> int:
    """A TCP port a server listens on: 1 to 65535."""
    number = _whole_number(value)
    low, high = PORT_RANGE
    if not low <= number <= high:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port: give a number from {low} to {high}")
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


class DeprecatedAlias(argparse.Action):
    """A hidden old name of an option (`add_deprecated_alias`): stores its value where the option does and prints
    one line on stderr naming the option to use (`gap-mllm train: --output-dir is deprecated; use --out`).

    Args:
        use: the option's shown name, named in that line."""

    def __init__(self, option_strings, dest, use: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.use = use

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is deprecated; use {self.use}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser, old: str, option: argparse.Action) -> argparse.Action:
    """Add `old` to `parser` as a hidden alias of `option` (what `add_argument` returned for an option that stores
    its value): the same dest, type, choices and nargs, left out of --help, one deprecation line when used.

    Raises:
        TypeError: `option` does not store a value (a flag, an append)."""
    if type(option) is not argparse._StoreAction:  # argparse's plain store action has no public name
        raise TypeError(f"{old}: a deprecated alias needs an option that stores its value, got {type(option).__name__}")
    return parser.add_argument(old, action=DeprecatedAlias, use=option.option_strings[0], dest=option.dest,
                               type=option.type, choices=option.choices, nargs=option.nargs, metavar=option.metavar,
                               default=argparse.SUPPRESS, help=argparse.SUPPRESS)


# argparse names the type in its messages (e.g. "invalid positive integer value")
positive_int.__name__ = "positive integer"
non_negative_int.__name__ = "non-negative integer"
positive_seconds.__name__ = "number of seconds"
worker_count.__name__ = "number of workers"
port_number.__name__ = "port"

__all__ = ["DeprecatedAlias", "add_deprecated_alias", "non_negative_int", "port_number", "positive_int",
           "positive_seconds", "usable_cpus", "worker_count"]
