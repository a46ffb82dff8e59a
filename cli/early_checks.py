"""Checks of a command's arguments that need no model, run by cli/main.py once the arguments parsed and before the
command's own module is imported: that module brings torch and transformers (7-10 s), and a missing file, a model
folder that is not there, a text file given as a frame, a task input that is missing or one the task does not read
should be one line at once, not after that wait: so should an output folder that is a file, a frame that does
not decode and a marker outside the frames. Light to import (tests/test_cli_startup.py): the rules come from
light modules (uploads.py, task_request.py, model_source.py), the same ones the commands apply again later.

Each check raises `UserError` (cli/errors.py prints it as one line, exit status 2)."""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import shlex
import socket
import sys
from pathlib import Path

from gap_mllm.evaluation.folder_lock import check_evaluation_folder
from gap_mllm.files import regular_file_problem
from gap_mllm.processing.errors import MissingDependency
from gap_mllm.processing.model_paths import quantize_missing
from gap_mllm.processing.output_folder import OwnerCheck, check_outside_data
from gap_mllm.processing.output_folder import check_output_folder as check_writer_folder
from gap_mllm.processing.path_containment import broken_link
from gap_mllm.tasks_gap_mllm import engine_missing

from .command_arguments import DEMO_OUT, SPACE_HOST, SPACE_PORT
from .errors import UserError
from .example_rooms import EXAMPLE_FRAMES, EXAMPLE_IMAGE_SIZE
from .model_source import TINY, check_model_source, resolve_model_source
from .space import gradio_missing
from .task_request import TaskRequest
from .uploads import CLI_WORDS, UploadError, check_frames, cli_limits, frame_paths

# How `gap-mllm predict` gives each task input: a missing one is named by its option
INPUT_OPTIONS = {"query": "--query TEXT", "box": "--box CX CY CZ SX SY SZ [YAW PITCH ROLL]",
                 "marker": "--marker VIEW X Y"}
# the commands whose output folders follow the output-folder rule (processing/output_folder.py), as their markers
# name them: a folder one of them wrote is that command's to write again, any other non-empty folder is refused
PREDICT_WRITER = "gap-mllm predict"
DEMO_WRITER = "gap-mllm demo"


def check_model(model: str | None, flag: str = "--model") -> str | None:
    """The folder or Hub id `model` ("mini", "tiny", a folder or a Hub id) names, checked; UserError unless it can be
    loaded as far as the file system tells: a folder that is not there, an empty one, one of another model type
    (`check_model_source`). None for "tiny" (built on the fly) and for no model."""
    if model is None or model == TINY:
        return None
    return check_model_source(resolve_model_source(model), flag)


def near_names(path: Path) -> list[str]:
    """The entries of `path`'s folder whose names are close to its own (a misspelt path), as paths written like it."""
    parent = path.parent
    if not parent.is_dir():
        return []
    names = difflib.get_close_matches(path.name, sorted(entry.name for entry in parent.iterdir()), n=2, cutoff=0.75)
    return [str(parent / name) for name in names]


def check_existing(path: str | None, flag: str, kind: str = "file",
                   missing: str = "{flag} {path}: no such file or folder") -> None:
    """UserError unless `path` (when given) is an existing file (`kind` "file") or folder ("folder"); a missing one
    is `missing` (formatted with flag and path) and names the near names of its folder ("did you mean ...?")."""
    if path is None:
        return
    found = Path(path).expanduser()
    leads_nowhere = broken_link(found)
    if leads_nowhere is not None:  # not "no such file, did you mean" the same name
        raise UserError(f"{flag} {path}: this is {leads_nowhere}; give a real {kind}")
    if not found.exists():
        near = [name for name in near_names(found) if name != str(found)]
        raise UserError(missing.format(flag=flag, path=path) + (f"; did you mean {' or '.join(near)}?" if near else ""))
    if kind == "folder" and not found.is_dir():
        raise UserError(f"{flag} {path}: this is a file; give a folder")
    if kind == "file" and not found.is_file():  # regular files only (gap_mllm.processing_gap_mllm): a FIFO too
        what = regular_file_problem(found) or "not a regular file"
        raise UserError(f"{flag} {path}: this is {what}; give a file" if what == "a folder"
                        else f"{flag} {path}: this is {what}, not a regular file; give a file")


def check_output_folder(path: str | None, flag: str, command: str | None = None,
                        owner_check: OwnerCheck | None = None) -> None:
    """UserError unless `path` (when given) can become a folder: neither it nor a folder above it is a file (else
    the command would end in `[Errno 17] File exists` or `[Errno 20] Not a directory` after its model work). With
    `command` (the writer its marker names), the output-folder rule of every writer too (processing/output_folder.py):
    a folder of the user's files, the working folder and one that cannot be written are refused (OutputFolderRefused,
    one line), so that nothing of the user's is written over, and nothing is learnt only after the model ran."""
    if path is None:
        return
    found = Path(path).expanduser()
    for place in (found, *found.parents):
        if place.exists():
            if not place.is_dir():
                where = "this is a file" if place == found else f"{place} is a file"
                raise UserError(f"{flag} {path}: {where}; give a folder")
            break
    if command is not None:
        check_writer_folder(found, command, option=flag, overwrite_option=None, owner_check=owner_check,
                            named=f"{flag} {path}")


def predict_request(args: argparse.Namespace, num_views: int | None = None,
                    view_size: tuple[int, int] | None = None) -> TaskRequest:
    """The request `gap-mllm predict` was given, checked against the frames' count and `(width, height)` where they
    are known: an input the task does not read is refused (`TaskRequest.unused_inputs`); on the user's own frames
    every input the task needs must be given, and a missing one is named by its option (on a bundled example the
    room's own fill the missing ones, cli/task_request.py `example_request`)."""
    request = TaskRequest(args.task, query=args.query, box=args.box, marker=args.marker)
    unused = request.unused_inputs()
    if unused:
        reads = ", ".join(f"--{name}" for name in request.used_inputs()) or "no input but the frames"
        raise UserError(f"--{unused[0]} is not read by --task {request.task} (it reads {reads}); leave it out")
    if args.example:
        request.check_given(num_views, view_size)  # the room's own fill what is missing
        return request
    try:
        request.validate(num_views, view_size)
    except ValueError as error:
        missing = request.missing_inputs()
        if not missing:
            raise
        raise ValueError(f"{error}: give {INPUT_OPTIONS[missing[0]]}") from None
    return request


# `predict --formats glb` without trimesh: the one optional format (png and ply are what a plain install writes)
GLB_MISSING = ("--formats glb needs trimesh, which a plain install leaves out: pip install 'gap-mllm[glb]' (or pip "
               "install trimesh), or leave glb out of --formats")


def check_grammar_engine(args: argparse.Namespace) -> None:
    """A run that decodes inside the task's grammar (predict's and demo's default, evaluate --constrained) needs the
    grammar engine: without it, one line naming it and its install command, before the model loads."""
    if getattr(args, "constrained", False) and getattr(args, "predictions", None) is None:
        missing = engine_missing("--free; evaluate: leave out --constrained")
        if missing is not None:
            raise MissingDependency(missing)


def check_quantize(args: argparse.Namespace) -> None:
    """`--quantize` (predict, evaluate, space): its quantizer's package installed (MissingDependency naming it and how
    to install it), before the command's imports and the model's load."""
    missing = quantize_missing(getattr(args, "quantize", None))
    if missing is not None:
        raise MissingDependency(missing)


def check_predict(args: argparse.Namespace) -> int | None:
    """`gap-mllm predict`: the options that would be ignored, the output folder, the frames (each image decoded), the
    request against them (a marker outside the frames), the model. A mistake in the request or the frames is one
    line as `gap-mllm predict` words it (cli/predict.py), status 2."""
    check_grammar_engine(args)
    check_quantize(args)
    if args.formats and not args.save_dir:
        raise UserError("--formats picks what --out writes, and without --out nothing is written: add "
                        "--out DIR, or leave --formats out")
    if args.formats and "glb" in args.formats and importlib.util.find_spec("trimesh") is None:
        raise MissingDependency(GLB_MISSING)
    check_output_folder(args.save_dir, "--out", PREDICT_WRITER)
    try:
        if args.images:
            # what needs no frames first: a missing input is named before the frames are read
            request = predict_request(args)
            paths = frame_paths(args.images, args.max_frames)  # folders -> their images (quiet: predict says it)
            shape = check_frames(paths, cli_limits(paths, args.max_frames), words=CLI_WORDS)
            # then what the frames add: a marker names a pixel of its frame as shown (original pixels, upright), not
            # of the resized frame
            request.check_given(shape.count, shape.original_size(args.marker[0] if args.marker else 0))
        else:  # a bundled room: its frames' count and size are known without rendering it
            predict_request(args, EXAMPLE_FRAMES, EXAMPLE_IMAGE_SIZE[::-1])
    except (UploadError, ValueError) as error:  # worded as predict words them once it has read the frames
        print(f"gap-mllm predict: error: {error}", file=sys.stderr)
        return 2
    # the user's own frames: the request is whole and fits them, so predict does not validate it again; a bundled
    # room's request is whole once predict fills in the room's own inputs, and predict validates it then
    args.request_validated = bool(args.images)
    args.model_source = check_model(args.model)
    return None


def listen_problem(host: str, port: int) -> str | None:
    """Why the Space cannot listen on `host`:`port`, in words that follow "--host H --port P", or None: a host that is
    no address of this machine (a name that does not resolve, another machine's address), or a port it may not take
    (in use, or below 1024 without the right). Found by binding a socket there and closing it at once, as the server
    will: a mistake is one line now, not a traceback once the model has loaded."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as error:
        return f"names no address of this machine ({getattr(error, 'strerror', None) or error})"
    family, kind, protocol, _, address = addresses[0]
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a port just closed is free
        try:
            probe.bind(address)
        except OSError as error:
            return f"cannot be listened on ({error.strerror or error})"
    return None


def check_space(args: argparse.Namespace) -> None:
    """`gap-mllm space` (and `demo --space`): the address it listens on (`listen_problem`), then gradio."""
    problem = listen_problem(args.host, args.port)
    if problem is not None:
        raise UserError(f"--host {shlex.quote(args.host)} --port {args.port} {problem}; give another --host or --port")
    missing = gradio_missing()
    if missing is not None:
        raise MissingDependency(missing)
    check_quantize(args)


# `gap-mllm demo` options read on one of its two paths only: option -> (attribute, read with --space, what it is)
DEMO_PATH_OPTIONS = {"--host": ("host", True, "the Space's interface"), "--port": ("port", True, "the Space's port"),
                     "--out": ("out", False, "where the console demo writes its pictures"),
                     "--example": ("example", False, "the console demo's room (the Space's page offers every room)"),
                     "--seed": ("seed", False, "the console demo's tiny model's weights")}


def unread_demo_option(args: argparse.Namespace) -> str | None:
    """The first option given to `gap-mllm demo` that its path (the console demo, or the Space with `--space`) does
    not read, in one line saying why and what to do; None when every option given is read."""
    for option, (attribute, with_space, what) in DEMO_PATH_OPTIONS.items():
        value = getattr(args, attribute)
        if value is None or with_space == args.space:
            continue
        given = f"{option} {shlex.quote(str(value))}"
        if with_space:
            return (f"{given} is {what}, read only with --space (without it the demo runs in the console): add "
                    f"--space, or leave {option} out")
        return f"{given} is {what}, which --space does not run: leave {option} out, or drop --space"
    if args.seed is not None and args.model != TINY:
        return (f"--seed {args.seed} sets the weights of --model tiny, and --model {args.model} has its own: leave "
                "--seed out, or add --model tiny")
    return None


def check_demo(args: argparse.Namespace) -> None:
    """`gap-mllm demo`: an option its path does not read (`unread_demo_option`); the model; with `--space`, what
    `check_space` checks (the Space checks the rest itself), before the demo's module imports torch and
    transformers."""
    unread = unread_demo_option(args)
    if unread is not None:
        raise UserError(unread)
    if args.space:
        check_space(argparse.Namespace(host=args.host or SPACE_HOST, port=args.port or SPACE_PORT))
    if not args.space:
        check_grammar_engine(args)
        check_output_folder(args.out or DEMO_OUT, "--out", DEMO_WRITER)
        args.model_source = check_model(args.model)


def check_evaluate_sources(args: argparse.Namespace) -> None:
    """`gap-mllm evaluate`: `--write-oracle FILE` writes that one file and no folder, so an `--out` beside it would be
    passed over: refused (UserError), before anything is written (also by cli/evaluate.py, for `python -m`)."""
    if args.quantize and (args.predictions or args.write_oracle):
        given = f"--predictions {args.predictions}" if args.predictions else f"--write-oracle {args.write_oracle}"
        raise UserError(f"--quantize loads a model quantized, and {given} runs none: leave --quantize out")
    if args.write_oracle and args.out:
        raise UserError(f"--write-oracle writes the predictions file {args.write_oracle} and no folder, so --out "
                        f"{args.out} would be passed over: leave --out out (then score the file with --predictions "
                        f"{args.write_oracle} --out {args.out})")


def check_evaluate(args: argparse.Namespace) -> None:
    """`gap-mllm evaluate`: the sources, the data root, the files it reads, the output folder, the model."""
    check_evaluate_sources(args)
    check_grammar_engine(args)
    check_quantize(args)
    check_existing(args.data, "--data", "folder")
    check_existing(args.annotation_file, "--annotation-file")
    check_existing(args.predictions, "--predictions")
    check_output_folder(args.out, "--out")
    if args.out is not None:  # new, empty or an evaluation's own: never a folder of the user's files, nor "."
        check_evaluation_folder(Path(args.out).expanduser())
        check_outside_data(Path(args.out).expanduser(), args.data, f"--out {args.out}", f"--data {args.data}")
    args.model_source = check_model(args.model)


def check_train(args: argparse.Namespace) -> None:
    """`gap-mllm train`: the recipe file (worded as training/config.py `load_recipe` words it)."""
    check_existing(args.config, "--config",
                   missing="--config: recipe {path!r} not found (see training/recipes/ for the shipped ones)")


# argparse destinations of the paths the commands read -> (how the user wrote them, what to give instead of a link
# that leads nowhere); and of the folders they write (the output-folder rule's words)
READ_PATHS = {"model": ("--model", "the checkpoint folder itself or a Hub repo id"),
              "data": ("--data", "a real folder"), "config": ("--config", "a real file"),
              "predictions": ("--predictions", "a real file"), "source": ("SOURCE", "a real file or folder")}
WRITTEN_FOLDERS = {"out": "--out", "output_dir": "--out", "save_dir": "--out"}


def check_path_links(args: argparse.Namespace) -> None:
    """UserError for a path argument of any command that is a symbolic link loop or a link to nothing
    (`broken_link`), before anything is read or written: such a path is no folder and no file (`is_dir` and `exists`
    say False), so each reader would call it missing, or take it for a Hub id, or fail on it after its work."""
    for destination, (flag, remedy) in READ_PATHS.items():
        value = getattr(args, destination, None)
        leads_nowhere = broken_link(value) if isinstance(value, str) and value else None
        if leads_nowhere is not None:
            raise UserError(f"{flag} {value}: this is {leads_nowhere}; give {remedy}")
    for destination, flag in WRITTEN_FOLDERS.items():
        value = getattr(args, destination, None)
        leads_nowhere = broken_link(value) if isinstance(value, str) and value else None
        if leads_nowhere is not None:  # the words of processing/output_folder.py's rule
            raise UserError(f"{flag} {value} is {leads_nowhere}; give a folder (a new name, or a link to a real one)")


# command -> its check; a command without one goes straight to its module
CHECKS = {"predict": check_predict, "demo": check_demo, "evaluate": check_evaluate, "train": check_train,
          "space": check_space}


def check_arguments(command: str, args: argparse.Namespace) -> int | None:
    """Check every command's path arguments for links that lead nowhere (`check_path_links`), then run `command`'s
    check (`CHECKS`), if it has one: UserError for a mistake, or the exit status of a mistake the
    check reported itself. What a check established is recorded in `args` for the command, which then does not
    establish it again: `model_source`, the checked folder or Hub id of `--model` (predict, demo, evaluate; None for
    "tiny"), and predict's `request_validated` (the request validated against the user's frames)."""
    check_path_links(args)
    check = CHECKS.get(command)
    return check(args) if check is not None else None
