"""User mistakes become one clear line (and exit status 2); the traceback stays available with --debug.

`gap-mllm` runs every command through `run_command`. An exception that describes bad input (a file
that is missing, unreadable or refused, a bad recipe value, a data error, an upload rule, a checkpoint
that does not convert, a model source that cannot be loaded) is printed as

    gap-mllm <command>: error: <message>
    (run with --debug for the traceback)

and the command exits with status 2; the traceback is also logged at DEBUG level. Anything else is a
bug and keeps its traceback. `--debug` (anywhere on the command line) re-raises everything.
"""

from __future__ import annotations

import logging
import pickle
import sys

from safetensors import SafetensorError

from gap_mllm.conversion_report import ConversionError
from gap_mllm.processing.errors import DataError, exception_chain

logger = logging.getLogger(__name__)

USAGE_ERROR_STATUS = 2


class UserError(ValueError):
    """A mistake in what the user gave (a path, an id, a value); the message says what to do."""


USER_ERROR_TYPES = (UserError, DataError, ConversionError, ValueError, OSError, pickle.UnpicklingError, SafetensorError)


def user_message(error: BaseException) -> str | None:
    """The one-line message for a user mistake, or None for an error that is a bug.

    The most precise exception in the cause chain wins: our own (UserError, DataError, ...) over the
    generic ValueError / OSError that libraries wrap them in (datasets wraps builder errors)."""
    chain = list(exception_chain(error))
    for candidate in chain:
        if isinstance(candidate, (UserError, DataError, ConversionError)):
            return str(candidate)
    if isinstance(error, USER_ERROR_TYPES):
        text = str(error).strip() or type(error).__name__
        return text.splitlines()[0] if isinstance(error, pickle.UnpicklingError) else text
    return None


def run_command(name: str, main, args, debug: bool = False) -> int:
    """`main(args)` with user mistakes printed as one line (exit status 2); see the module docstring."""
    try:
        return int(main(args) or 0)
    except KeyboardInterrupt:
        print(f"gap-mllm {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - sorted into user mistakes and bugs below
        message = None if debug else user_message(error)
        if message is None:
            raise
        logger.debug("gap-mllm %s failed", name, exc_info=True)
        print(f"gap-mllm {name}: error: {message}\n(run with --debug for the traceback)", file=sys.stderr)
        return USAGE_ERROR_STATUS
