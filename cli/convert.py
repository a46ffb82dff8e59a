"""`gap-mllm convert`: bring real checkpoints into gap_mllm's classes, strictly, with a report of every key.

    gap-mllm convert vggt SOURCE OUTPUT_DIR [--heads camera,depth,point] [--tapped-layers 4,11,17,23] [--dtype bfloat16]
        SOURCE: VGGT `model.pt` / `model.safetensors`, a folder holding one, or a Hub id (facebook/VGGT-1B).
        Writes config.json (GapMllmGeometryConfig) + model.safetensors (the geometry encoder, heads included
        when asked). `GapMllmForConditionalGeneration.from_qwen3_vl(qwen, vggt_weights=OUTPUT_DIR)` reads it.

    gap-mllm convert official SOURCE_DIR OUTPUT_DIR
        SOURCE_DIR: an official GAP-MLLM checkpoint (Qwen3VLForConditionalGenerationWithVGGT, safetensors).
        Writes a gap_mllm folder that `AutoModel.from_pretrained(OUTPUT_DIR, trust_remote_code=True)` loads.

Exit status: 0 on success, 1 when the checkpoint does not convert exactly (the offending keys are printed).
"""

import argparse
import sys

import torch

from gap_mllm.conversion_report import ConversionError
from gap_mllm.convert_official_gap_mllm_to_hf import convert_official_checkpoint
from gap_mllm.convert_vggt_to_hf import convert_vggt_checkpoint

HEAD_FLAGS = {"camera": "use_camera_head", "depth": "use_depth_head", "point": "use_point_head"}
DTYPES = ("float32", "bfloat16", "float16")


def _int_list(text: str) -> list[int]:
    try:
        return [int(value) for value in text.split(",") if value.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from error


def _heads(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["none"]:
        return []
    unknown = sorted(set(names) - set(HEAD_FLAGS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown head(s) {unknown}; choose from {', '.join(HEAD_FLAGS)} or 'none'")
    return names


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    vggt = sub.add_parser("vggt", help="VGGT-1B model.pt / safetensors / Hub id -> gap_mllm geometry encoder folder")
    vggt.add_argument("source", help="VGGT checkpoint file, folder or Hub id (e.g. facebook/VGGT-1B)")
    vggt.add_argument("output_dir", help="folder to write config.json + model.safetensors into")
    vggt.add_argument(
        "--heads", type=_heads, default=None,
        help="heads to keep: comma list of camera,depth,point, or 'none' (default: every head in the checkpoint)",
    )
    vggt.add_argument("--tapped-layers", type=_int_list, default=None, help="aggregator layers GAP-MLLM fuses (default 4,11,17,23)")
    vggt.add_argument("--dpt-layers", type=_int_list, default=None, help="layers the DPT heads read (default 4,11,17,23)")
    vggt.add_argument("--dtype", choices=DTYPES, default=None, help="cast the weights (default: keep the checkpoint dtype)")
    vggt.add_argument("--no-progress", action="store_true", help="no progress bar")

    official = sub.add_parser("official", help="official GAP-MLLM checkpoint folder -> gap_mllm folder (AutoModel, trust_remote_code)")
    official.add_argument("source", help="official checkpoint folder (config.json + safetensors)")
    official.add_argument("output_dir", help="new folder for the converted checkpoint")
    official.add_argument("--no-processor", action="store_true", help="do not convert the tokenizer / image processor")
    official.add_argument("--no-progress", action="store_true", help="no progress bar")


def _run_vggt(args) -> "ConversionReport":  # noqa: F821
    overrides = {}
    if args.heads is not None:
        overrides.update({flag: name in args.heads for name, flag in HEAD_FLAGS.items()})
    if args.tapped_layers is not None:
        overrides["tapped_layers"] = args.tapped_layers
    if args.dpt_layers is not None:
        overrides["dpt_layers"] = args.dpt_layers
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"converting VGGT checkpoint {args.source} -> {args.output_dir}", flush=True)
    return convert_vggt_checkpoint(args.source, args.output_dir, dtype=dtype, progress=not args.no_progress, **overrides)


def _run_official(args) -> "ConversionReport":  # noqa: F821
    print(f"converting official GAP-MLLM checkpoint {args.source} -> {args.output_dir}", flush=True)
    return convert_official_checkpoint(
        args.source, args.output_dir, progress=not args.no_progress, write_processor=not args.no_processor
    )


def main(args: argparse.Namespace) -> int:
    runner = {"vggt": _run_vggt, "official": _run_official}[args.kind]
    try:
        report = runner(args)
    except ConversionError as error:
        print(f"conversion failed: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    standalone = argparse.ArgumentParser(prog="gap-mllm convert", description=__doc__.splitlines()[0])
    add_arguments(standalone)
    sys.exit(main(standalone.parse_args()))
