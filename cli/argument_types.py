"""argparse `type=` helpers of the commands: defined once in processing/argument_types.py (the lowest layer with a
command line, `gap-mllm synth`) and imported from there by every entry point."""

from __future__ import annotations

from gap_mllm.processing.argument_types import non_negative_int, port_number, positive_int, positive_seconds

__all__ = ["non_negative_int", "port_number", "positive_int", "positive_seconds"]
