"""The arguments of the `gap-mllm` commands that live in this folder (demo, evaluate, predict, convert, export-llm,
push), each command's `add_arguments`; the command modules run them. Light to import (no torch, no transformers,
tests/test_cli_startup.py): `gap-mllm COMMAND --help` reads only this, and a command's module is imported once its
arguments parsed."""

from __future__ import annotations

import argparse

from gap_mllm.processing.box_angles import CENTRE_AND_SIZE, UPRIGHT_LEVEL_ANGLES
from gap_mllm.processing.model_paths import QUANTIZE_CHOICES
from gap_mllm.tasks_gap_mllm import COMPILE_DECODING_CHOICES

from .argument_types import add_deprecated_alias, port_number, positive_int
from .example_rooms import EXAMPLE_SEEDS
from .task_names import front_end_task_names, task_argument

# `convert vggt --heads` names -> the geometry config flags they set
HEAD_FLAGS = {"camera": "use_camera_head", "depth": "use_depth_head", "point": "use_point_head"}
DTYPES = ("float32", "bfloat16", "float16")  # --dtype of convert and export-llm: torch dtype names

SAVE_FORMATS = ("png", "glb", "ply")  # predict --formats: pictures written with --out
# what --out writes when --formats is not given: what a plain install can write (glb needs trimesh, the
# glb extra, so it is written only when asked for: cli/early_checks.py refuses it without trimesh)
DEFAULT_SAVE_FORMATS = ("png", "ply")

# `gap-mllm predict`'s exit status for an answer that does not parse; not 2 (a mistake in the command): the command
# was right, the model's answer is not
PARSE_FAILURE_STATUS = 3
EXIT_STATUS_HELP = ("Exit status: 0 the answer parsed; 2 a mistake in the command (a missing or unusable file, a bad "
                    f"value, a model that cannot be loaded); {PARSE_FAILURE_STATUS} the model's answer did not parse "
                    "cleanly as the task's answer, or is in another task's format, or was ended by its token budget, "
                    "or holds a 0x0x0 box (the raw answer and the parse problem are still printed, and saved in "
                    "answer.json with --out)")


BOX_HELP = ("captioning: the object's box in the first camera's OpenCV frame (x right, y down, z forward; metres): "
            "cx cy cz sx sy sz [yaw pitch roll], the angles in radians as the model writes them, R = "
            "Ry(roll)·Rx(pitch)·Rz(yaw): an upright object has pitch 1.57 less the camera's downward tilt and roll "
            "±3.14 (a detection answer's box holds them). Without the angles, an upright object as the model's "
            "training cameras see it, sx across the view, sy along it, sz its height: yaw 3.14, roll 3.14 and pitch "
            "1.57 less the typical downward tilt its folder's box_angles.json records (GAP-MLLM-Mini: 1.24); a model "
            "that records none: a level camera's, yaw pitch roll "
            + " ".join(f"{angle:.2f}" for angle in UPRIGHT_LEVEL_ANGLES))


class BoxNumbers(argparse.Action):
    """`--box`: 6 numbers (centre and size) or 9 (and the angles); any other count is argparse's error."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) not in (CENTRE_AND_SIZE, 9):
            raise argparse.ArgumentError(self, f"expected {CENTRE_AND_SIZE} numbers (cx cy cz sx sy sz) or 9 (cx cy "
                                               f"cz sx sy sz yaw pitch roll), got {len(values)}")
        setattr(namespace, self.dest, values)


def add_compile_decoding_argument(parser, default: str) -> None:
    """The front ends' `--compile-decoding {auto,on,off}` (predict, evaluate), with their own default."""
    parser.add_argument("--compile-decoding", choices=COMPILE_DECODING_CHOICES, default=default,
                        help="static cache + every decode step compiled to a CUDA graph (same tokens, faster on a GPU; "
                             "compiles a few times per run, tens of seconds each at the real size); auto: on CUDA only "
                             f"(default: {default})")


def int_list(text: str) -> list[int]:
    """argparse `type=`: "4,11,17,23" -> [4, 11, 17, 23]."""
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def head_list(text: str) -> list[str]:
    """argparse `type=` of `--heads`: a comma list of HEAD_FLAGS names, or "none" (no head)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = sorted(set(names) - set(HEAD_FLAGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown head(s) {unknown}; choose from {', '.join(HEAD_FLAGS)} or 'none'")
    return names


def add_quantize_argument(parser) -> None:
    """The front ends' `--quantize` (predict, evaluate, space): the language model quantized at load by transformers'
    quantizers, the vision tower, the geometry encoder and the fusion as saved (processing/model_paths.py)."""
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                        help="load the language model's weights quantized (the vision tower, geometry encoder and "
                             "fusion stay as saved): int8 / int4 with optimum-quanto (CPU or CUDA: pip install "
                             "'gap-mllm[quantize]'), bnb-int8 / bnb-nf4 with bitsandbytes (CUDA); default: as saved")


def add_free_decoding_argument(parser: argparse.ArgumentParser) -> None:
    """`--free` of the commands that decode inside the task's answer grammar by default (predict, demo, space)."""
    parser.add_argument("--free", dest="constrained", action="store_false",
                        help="decode freely instead of inside the task's answer grammar (the default keeps every "
                             "answer in its task's format, llguidance); the paper's protocol, as gap-mllm evaluate")


# What `gap-mllm demo` and `gap-mllm space` use for an option not given. The demo's options of one of its two paths
# (the console demo, or the Space with --space) default to None, so that one given to the other path is refused
# (cli/early_checks.py `check_demo`), never passed over.
DEMO_OUT = "demo_output"
DEMO_EXAMPLE = "synthetic room A"
TINY_SEED = 0
SPACE_HOST = "127.0.0.1"
SPACE_PORT = 7860


class PositionalAlternative(argparse.Action):
    """The positional form of an option (`add_option_or_positional`): a value given is stored where the option
    stores its own; none given (the positional left out) leaves the option's value as it is."""

    def __call__(self, parser, namespace, values, option_string=None):
        if values is not None:
            setattr(namespace, self.dest, values)


def add_option_or_positional(parser: argparse.ArgumentParser, option: str, dest: str, metavar: str, help: str) -> None:
    """A required value given as `option` (shown in --help) or as a positional argument (hidden: `convert vggt SOURCE
    OUTPUT_DIR` and `export-llm SOURCE OUTPUT_DIR` keep working), both stored in `dest`; argparse refuses neither
    given ("one of the arguments --out is required") and both ("argument --out: not allowed with argument
    OUTPUT_DIR"). --help shows the option in brackets, as argparse shows every member of a group, so `help` is
    followed by "(required)"."""
    either = parser.add_mutually_exclusive_group(required=True)
    either.add_argument(dest, nargs="?", default=None, action=PositionalAlternative, metavar=metavar,
                        help=argparse.SUPPRESS)
    either.add_argument(option, dest=dest, default=None, metavar=option.lstrip("-").upper(), help=f"{help} (required)")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="mini",
                        help='"mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model; or a folder / Hub id')
    parser.add_argument("--example", default=None, choices=sorted(EXAMPLE_SEEDS),
                        help=f"the bundled room (default: {DEMO_EXAMPLE}; not with --space)")
    parser.add_argument("--out", default=None,
                        help=f"where the pictures (and the tiny model's folder) are written (default: {DEMO_OUT}; not "
                             "with --space)")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="cap on each task's generation budget (default: the task's own; answers stop at their end)")
    add_free_decoding_argument(parser)
    parser.add_argument("--seed", type=int, default=None, help=f"weights of --model tiny (default: {TINY_SEED})")
    parser.add_argument("--space", action="store_true",
                        help="launch the Gradio Space instead (gap-mllm space; gradio: the space extra)")
    parser.add_argument("--host", default=None, help=f"with --space: interface to listen on (default: {SPACE_HOST})")
    parser.add_argument("--port", type=port_number, default=None, help=f"with --space: port (default: {SPACE_PORT})")


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    # here: the evaluation package imports scipy (half a second), which no other command's --help needs
    from gap_mllm.evaluation.benchmark_names import benchmark_tasks

    tasks = benchmark_tasks()
    parser.add_argument("--task", required=True, type=task_argument(tasks, "gap-mllm evaluate"), metavar="TASK",
                        help=f"benchmark to run: {', '.join(tasks)}")
    parser.add_argument("--data", required=True, help="data root (annotations/ and scannet/posed_images/)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help='model folder or Hub id to generate with; "mini": the embedded GAP-MLLM-Mini')
    source.add_argument("--predictions", help="JSONL of answers to score instead of generating")
    source.add_argument("--write-oracle", metavar="FILE", help="write the ground truth as a predictions file and exit")
    parser.add_argument("--out", help="output folder (required unless --write-oracle)")
    parser.add_argument("--split", default="val", help="annotation split (default: val)")
    parser.add_argument("--annotation-file", help="explicit annotation JSON instead of the split lookup")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="samples per generate() call (left padded)")
    parser.add_argument("--max-new-tokens", type=positive_int, help="cap on the official token budgets (1280 / 4096)")
    parser.add_argument("--official-compat", action="store_true",
                        help="reproduce the official numbers (Euler reading, category lists, parsing quirks)")
    parser.add_argument("--constrained", action="store_true",
                        help="decode every answer inside its task's answer grammar (llguidance), so each is in the task's "
                             "format; off by default: the paper's protocol decodes freely (run both into two --out "
                             "folders to report both)")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (captioning; needs Java)")
    parser.add_argument("--limit", type=positive_int, help="evaluate only the first N samples")
    parser.add_argument("--no-plots", action="store_true", help="skip the figures")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-scene-reuse", action="store_true",
                        help="answer every sample with its own full model call (the one-at-a-time protocol; same "
                             "answers, slower: for comparison)")
    add_compile_decoding_argument(parser, default="auto")
    add_quantize_argument(parser)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    vggt = sub.add_parser("vggt", help="VGGT-1B model.pt / safetensors / Hub id -> gap_mllm geometry encoder folder")
    vggt.add_argument("source", help="VGGT checkpoint file, folder or Hub id (e.g. facebook/VGGT-1B)")
    add_option_or_positional(vggt, "--out", "output_dir", "OUTPUT_DIR",
                             help="folder to write config.json + model.safetensors into")
    vggt.add_argument(
        "--heads", type=head_list, default=None,
        help="heads to keep: comma list of camera,depth,point, or 'none' (default: every head in the checkpoint)",
    )
    vggt.add_argument("--tapped-layers", type=int_list, default=None, help="aggregator layers GAP-MLLM fuses (default 4,11,17,23)")
    vggt.add_argument("--dpt-layers", type=int_list, default=None, help="layers the DPT heads read (default 4,11,17,23)")
    vggt.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: keep the checkpoint dtype)")
    vggt.add_argument("--no-progress", action="store_true", help="no progress bar")

    official = sub.add_parser("official", help="official GAP-MLLM checkpoint folder -> gap_mllm folder (AutoModel, trust_remote_code)")
    official.add_argument("source", help="official checkpoint folder (config.json + safetensors)")
    add_option_or_positional(official, "--out", "output_dir", "OUTPUT_DIR", help="new folder for the converted checkpoint")
    official.add_argument("--no-processor", action="store_true", help="do not convert the tokenizer / image processor")
    official.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_export_llm_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_or_positional(parser, "--model", "source", "SOURCE",
                             help="GAP-MLLM folder or Hub id ('mini' = the embedded GAP-MLLM-Mini)")
    add_option_or_positional(parser, "--out", "output_dir", "OUTPUT_DIR",
                             help="new or empty folder for the stock Qwen3-VL checkpoint")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: keep the checkpoint's)")


def add_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the checkpoint folder (save_pretrained of model AND processor)")
    parser.add_argument("--repo", required=True, help="target repository id, e.g. org/gap-mllm")
    parser.add_argument("--eval-summary", nargs="*", default=[], metavar="PATH",
                        help="summary.json files (or their folders) from `gap-mllm evaluate` for the card's results")
    parser.add_argument("--base-model", default=None, help="the Qwen3-VL checkpoint it was built from (card metadata; default: the one the "
                             "folder records, none for a model trained from random initialisation as GAP-MLLM-Mini)")
    parser.add_argument("--training-data", nargs="+", default=None, metavar="TEXT",
                        help="what the model was trained on, one item per argument (default: what the checkpoint's "
                             "gap_mllm_training.json records, written by gap-mllm train)")
    parser.add_argument("--datasets", nargs="+", default=None, metavar="HUB_ID", help="Hub dataset ids for the card metadata")
    parser.add_argument("--untrained", action="store_true", help="mark the card as an untrained test model")
    parser.add_argument("--keep-readme", action="store_true", help="upload the folder's README.md instead of generating one")
    parser.add_argument("--private", action="store_true", help="create the repository as private")
    parser.add_argument("--revision", default=None, help="branch to commit to (created if missing)")
    parser.add_argument("--commit-message", default="Upload GAP-MLLM checkpoint",
                        help="the Hub commit's message (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the upload plan and the card; upload nothing")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = f"{parser.epilog}. {EXIT_STATUS_HELP}" if parser.epilog else EXIT_STATUS_HELP
    parser.add_argument("--model", default="mini",
                        help='a GAP-MLLM folder or Hub id; "mini" (default): the embedded GAP-MLLM-Mini; "tiny": the untrained test model')
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", nargs="+", metavar="PATH",
                        help="frames of one scene in order, a folder of them (its images sorted by file name), or one "
                             "video / GIF; a video, GIF or folder is sampled down to --max-frames")
    source.add_argument("--example", choices=sorted(EXAMPLE_SEEDS),
                        help="a bundled held-out SynthRooms room (exact geometry): the answer is shown next to the "
                             "exact one and the model's held-out score of the task")

    tasks = front_end_task_names()
    parser.add_argument("--task", required=True, type=task_argument(tasks, "gap-mllm predict"), metavar="TASK",
                        help=f"one of {', '.join(tasks)}")
    parser.add_argument("--query", help="the text the task takes: the description of the object to ground, or the "
                                        "question to answer")
    parser.add_argument("--box", nargs="+", type=float, action=BoxNumbers, metavar="V", help=BOX_HELP)
    parser.add_argument("--marker", nargs=3, type=int, metavar=("VIEW", "X", "Y"), help="reconstruction: pixel to mark")
    parser.add_argument("--max-frames", type=positive_int, default=8,
                        help="frames sampled evenly from a video, GIF or folder holding more")
    parser.add_argument("--max-new-tokens", type=positive_int, default=None,
                        help="generation budget (default: the task's own; generation stops at the answer's end anyway)")
    add_free_decoding_argument(parser)
    add_compile_decoding_argument(parser, default="off")  # one answer does not repay the compilation
    add_quantize_argument(parser)
    out = parser.add_argument("--out", dest="save_dir", metavar="OUT",
                              help="write the answer (answer.json) and the pictures into this folder, and for your own "
                                   "frames the point cloud the model's depth and camera heads reconstruct (GLB / PLY)")
    add_deprecated_alias(parser, "--save-dir", out)
    parser.add_argument("--formats", nargs="+", default=None, choices=SAVE_FORMATS,
                        help="with --out: what to save (default: png ply; glb needs trimesh: pip install 'gap-mllm[glb]')")
    parser.add_argument("--json", action="store_true", help="print the parsed answer as JSON instead of text")
