"""argparse `type=` helpers and the deprecated-alias action of the commands: defined once in
processing/argument_types.py (the lowest layer with a command line, `gap-mllm synth`) and imported from there by every
entry point."""

from __future__ import annotations

from gap_mllm.processing.argument_types import (
    DeprecatedAlias,
    add_deprecated_alias,
    non_negative_int,
    port_number,
    positive_int,
    positive_seconds,
)

__all__ = ["DeprecatedAlias", "add_deprecated_alias", "non_negative_int", "port_number", "positive_int", "positive_seconds"]
