"""`python -m lab.mini`, from the repository root: GAP-MLLM-Mini's research pipeline (lab/mini/pipeline.py), which
`make mini` and `make mini-ablation` run. Its options are lab/mini/pipeline_settings.py's (`--help` and an argument
mistake import neither torch nor transformers). A mistake is one line and exit status 2, a stop at `--time-limit` exit
status 75, as for the `gap-mllm` commands (cli/errors.py); `--debug`, anywhere on the command line, shows the full
traceback instead."""

from __future__ import annotations

import sys

from gap_mllm.cli.errors import run_command
from gap_mllm.cli.main import CommandParser, add_debug_option, parse_command_arguments

from .pipeline_settings import add_arguments

MODULE = "lab.mini"
DESCRIPTION = "train GAP-MLLM-Mini end to end on SynthRooms (data, stages 0-2, evaluation, table; --ablation)"


def build_parser() -> CommandParser:
    """The command line's parser (a misspelt option is answered with the nearest one, and `--debug` is an option, as
    for `gap-mllm`'s commands)."""
    parser = CommandParser(prog=f"python -m {MODULE}", description=DESCRIPTION)
    add_arguments(parser)
    add_debug_option(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the process's arguments) and run the pipeline; the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = parse_command_arguments(build_parser(), [arg for arg in argv if arg != "--debug"])
    from . import pipeline  # torch and transformers, once the arguments parsed

    return run_command(MODULE, pipeline.main, args, debug=debug, program="python -m")


if __name__ == "__main__":
    sys.exit(main())
