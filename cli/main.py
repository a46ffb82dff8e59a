"""`gap-mllm` console script: one sub-command per module, imported only when the command runs, so that a missing
optional dependency only affects its own command and `--help` answers at once: `gap-mllm --help` and
`gap-mllm COMMAND --help` import neither torch nor transformers (each command's arguments are defined in a light
module, `ARGUMENTS`; tests/test_cli_startup.py; bench/bench_startup.py times it).

A user mistake (a missing file, a bad value, an unreachable model, ...) is one line on stderr and exit
status 2 (cli/errors.py); `--debug`, anywhere on the command line, shows the full traceback instead (an option of
every command's --help, `DEBUG_HELP`). `gap-mllm --version` prints the installed package's version."""

import argparse
import difflib
import importlib
import sys

from .argument_types import DeprecatedAlias
from .errors import run_command

# command -> (module with add_arguments(parser) and main(args) -> int, one-line help)
# a command that left the installed command line since 0.1.0 -> what runs it now (named for one release)
MOVED_COMMANDS = {"mini": "the Mini's research pipeline runs from a repository checkout: make mini (python -m lab.mini)"}
COMMANDS = {
    "demo": ("gap_mllm.cli.demo", "GAP-MLLM-Mini (trained by this package) answers detection, grounding, captioning and the marker task on a held-out SynthRooms room, next to the exact answer and its held-out score vs a trivial baseline"),
    "train": ("gap_mllm.cli.train", "geometry-aligned pre-training (stage 1) and task fine-tuning (stage 2) from a recipe"),
    "convert": ("gap_mllm.cli.convert", "convert VGGT-1B or official GAP-MLLM checkpoints into gap_mllm (strict, with a report of every key)"),
    "evaluate": ("gap_mllm.cli.evaluate", "score a model (or a predictions file) on the data of a task of the registry (--task; gap-mllm evaluate --help lists them)"),
    "export-lmms": ("gap_mllm.evaluation.lmms_eval_plugin.export", "write lmms-eval tasks (documents + task YAMLs) of a data root for the gap_mllm lmms-eval plugin"),
    "export-vsibench": ("gap_mllm.evaluation.lmms_eval_plugin.vsibench_export", "write a SynthRooms data root's spatial questions as a local VSI-Bench (rows, videos) for lmms-eval's own vsibench task"),
    "predict": ("gap_mllm.cli.predict", "run one task on frames, a video or a bundled scene; print the parsed answer, save PNG/GLB/PLY (with the point cloud of your frames when the model has depth and camera heads)"),
    "export-llm": ("gap_mllm.cli.export_llm", "write a checkpoint's language half as a stock Qwen3-VL folder for vLLM/SGLang (image inputs: GAP encoder embeddings)"),
    "push": ("gap_mllm.cli.push", "publish a checkpoint folder to the Hub: safetensors, remote code, processor, generated card"),
    "space": ("gap_mllm.cli.space", "run the Gradio Space locally (gradio: pip install 'gap-mllm[space]'; make install has it)"),
    "synth": ("gap_mllm.processing.synth_cli", "generate SynthRooms scenes with exact ground truth (ScanNet layout + official schemas)"),
}


# command -> "module:function" that adds its arguments, where that is not the `add_arguments` of the command's own
# module: a light module (no torch, no transformers) that `gap-mllm COMMAND --help` imports instead of the command.
ARGUMENTS = {
    "demo": "gap_mllm.cli.command_arguments:add_demo_arguments",
    "train": "gap_mllm.training.train_arguments:add_arguments",
    "convert": "gap_mllm.cli.command_arguments:add_convert_arguments",
    "evaluate": "gap_mllm.cli.command_arguments:add_evaluate_arguments",
    "export-lmms": "gap_mllm.evaluation.lmms_eval_plugin.export_arguments:add_arguments",
    "export-vsibench": "gap_mllm.evaluation.lmms_eval_plugin.vsibench_export_arguments:add_arguments",
    "predict": "gap_mllm.cli.command_arguments:add_predict_arguments",
    "export-llm": "gap_mllm.cli.command_arguments:add_export_llm_arguments",
    "push": "gap_mllm.cli.command_arguments:add_push_arguments",
    "synth": "gap_mllm.processing.synth_arguments:add_arguments",
}


def argument_adder(command: str):
    """The function that adds `command`'s arguments to a parser (`ARGUMENTS`, else its module's `add_arguments`)."""
    module_name, _, function = ARGUMENTS.get(command, f"{COMMANDS[command][0]}:add_arguments").partition(":")
    return getattr(importlib.import_module(module_name), function)


def suggested_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Every option string of `parser` and of its sub-parsers (`convert vggt --heads`, ...) -> the name to suggest
    for it: itself, or for a deprecated alias (`add_deprecated_alias`) the option to use instead."""
    found = {}
    for action in parser._actions:  # argparse keeps no public list of them
        found.update(dict.fromkeys(action.option_strings, action.use if isinstance(action, DeprecatedAlias) else None))
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.update(suggested_names(sub))
    return {name: use or name for name, use in found.items()}


def suggestion(word: str, known) -> str:
    """" (did you mean X?)" for the name of `known` closest to a misspelt `word` (difflib), or "" when none is close:
    Python 3.11's argparse has no `suggest_on_error`. `known`: names, or a mapping of names to the name to suggest
    for each (`suggested_names`)."""
    names = known if isinstance(known, dict) else {name: name for name in known}
    close = difflib.get_close_matches(word.split("=", 1)[0], sorted(names), n=1, cutoff=0.7)
    return f" (did you mean {names[close[0]]}?)" if close else ""


def misspelt_options(parser: argparse.ArgumentParser, argv: list[str]) -> list[tuple[str, str]]:
    """`(word, the option it is probably meant to be)` for each `--word` of `argv` that is no option of `parser` (nor
    an abbreviation argparse takes, `--que` for `--query`) but close to one: `--taks` -> `--task`; close to a
    deprecated alias, the option to use instead."""
    names = suggested_names(parser)
    known = sorted(names)
    found = []
    for word in argv:
        if word == "--":  # what follows is not options
            break
        name = word.split("=", 1)[0]
        if not name.startswith("--") or name in known or any(option.startswith(name) for option in known):
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
        if close:
            found.append((name, names[close[0]]))
    return found


class CommandParser(argparse.ArgumentParser):
    """A command's parser whose every error ends with the option a misspelt word was probably meant to be: for
    `--taks detection` argparse's error is "the following arguments are required: --task" and says nothing of the
    `--taks` it set aside. `argv` is what `parse_command_arguments` parses."""

    argv: list[str] = []

    def error(self, message: str):
        hints = [f"{word}: did you mean {option}?" for word, option in misspelt_options(self, self.argv)]
        if hints and "did you mean" not in message:
            message += f" ({'; '.join(hints)})"
        super().error(message)  # exits with status 2


def parse_command_arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args(argv)`, a misspelt option answered with the nearest known one ("did you mean --query?"),
    whatever argparse's error is (an unknown option, or a required one missing because it was misspelt: a
    `CommandParser` says so). Abbreviations stay as argparse takes them (`--que` for `--query`, an ambiguous one
    refused)."""
    if isinstance(parser, CommandParser):
        parser.argv = list(argv)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        options = [word for word in unknown if word.startswith("-")]
        hint = suggestion(options[0], suggested_names(parser)) if options else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")  # exits with status 2
    return args


# `--debug` of every command: `main` takes it out of the command line wherever it stands, so that it works before the
# command's name too; the option is there for --help (a command that defines its own, train, keeps its help)
DEBUG_HELP = "show the full traceback of an error instead of its one line (anywhere on the command line)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gap-mllm", description="GAP-MLLM: geometry-aligned 3D-aware Qwen3-VL.")
    parser.add_argument("--version", action="store_true", help="print the installed package's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def add_debug_option(parser: argparse.ArgumentParser) -> None:
    """`--debug` (`DEBUG_HELP`) on `parser` and each of its sub-parsers that has none of its own."""
    if "--debug" not in parser._option_string_actions:
        parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                add_debug_option(sub)


def build_command_parser(command: str) -> CommandParser:
    """The parser of `gap-mllm COMMAND`: its arguments (`argument_adder`) and `--debug`."""
    parser = CommandParser(prog=f"gap-mllm {command}", description=COMMANDS[command][1])
    argument_adder(command)(parser)
    add_debug_option(parser)
    return parser


def package_version() -> str:
    """The installed gap-mllm distribution's version (importlib.metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gap-mllm")
    except PackageNotFoundError:
        return "unknown (the gap-mllm distribution is not installed)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [arg for arg in argv if arg != "--debug"]
    if argv[:1] == ["--version"]:
        print(f"gap-mllm {package_version()}")
        return 0
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        if argv and argv[0] not in ("-h", "--help"):
            parser.print_usage(sys.stderr)
            moved = f"; {MOVED_COMMANDS[argv[0]]}" if argv[0] in MOVED_COMMANDS else suggestion(argv[0], COMMANDS)
            print(f"gap-mllm: error: unknown command {argv[0]!r}{moved}; choose from {', '.join(COMMANDS)}",
                  file=sys.stderr)
            return 2
        parser.print_help()
        return 0
    module_name = COMMANDS[argv[0]][0]
    command_parser = build_command_parser(argv[0])
    # --help, argument errors and the checks that need no model end here, before the command's imports
    args = parse_command_arguments(command_parser, argv[1:])
    args.debug = debug  # train reads it too: the libraries' log on the terminal
    # imported once the arguments parsed: its rules read files (numpy, PIL, huggingface_hub), which --help and an
    # argument mistake need not pay for (tests/test_cli_startup.py)
    from .early_checks import check_arguments

    status = run_command(argv[0], lambda checked: check_arguments(argv[0], checked), args, debug=debug)
    if status:
        return status
    module = importlib.import_module(module_name)
    return run_command(argv[0], module.main, args, debug=debug)


if __name__ == "__main__":
    sys.exit(main())
