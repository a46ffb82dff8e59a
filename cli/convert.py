"""`gap-mllm convert`: bring real checkpoints into gap_mllm's classes, strictly, with a report of every key.

    gap-mllm convert vggt SOURCE OUTPUT_DIR [--heads camera,depth,point] [--tapped-layers 4,11,17,23] [--dtype bfloat16]
        SOURCE: VGGT `model.pt` / `model.safetensors`, a folder holding one, or a Hub id (facebook/VGGT-1B).
        Writes the encoder's `save_pretrained` folder: config.json (GapMllmGeometryConfig), model.safetensors (the
        geometry encoder, heads included when asked) and its code. `AutoModel.from_pretrained(OUTPUT_DIR)` loads the
        encoder alone; `GapMllmForConditionalGeneration.from_qwen3_vl(qwen, vggt_weights=OUTPUT_DIR)` reads it.

    gap-mllm convert official SOURCE_DIR OUTPUT_DIR
        SOURCE_DIR: an official GAP-MLLM checkpoint (Qwen3VLForConditionalGenerationWithVGGT, safetensors).
        Writes a gap_mllm folder that `AutoModel.from_pretrained(OUTPUT_DIR, trust_remote_code=True)` loads.

OUTPUT_DIR is new, empty, or an earlier conversion's own (processing/output_folder.py's one ownership rule): a folder
of the user's files is refused in one line (exit 2), and the folder is written whole or not at all.

Exit status: 0 on success, 1 when the checkpoint does not convert exactly (the offending keys are printed; OUTPUT_DIR
is left as it was), 2 for a usage error.
"""

import argparse
import sys

import torch

from gap_mllm.convert_official_gap_mllm_to_hf import convert_official_checkpoint
from gap_mllm.convert_vggt_to_hf import ConversionError, convert_vggt_checkpoint
from gap_mllm.processing.output_folder import writing_output_folder

from .command_arguments import HEAD_FLAGS
from .command_arguments import add_convert_arguments as add_arguments  # noqa: F401 - the command's add_arguments

COMMAND = "gap-mllm convert"


def _run_vggt(args, output_dir) -> "ConversionReport":  # noqa: F821
    overrides = {}
    if args.heads is not None:
        overrides.update({flag: name in args.heads for name, flag in HEAD_FLAGS.items()})
    if args.tapped_layers is not None:
        overrides["tapped_layers"] = args.tapped_layers
    if args.dpt_layers is not None:
        overrides["dpt_layers"] = args.dpt_layers
    dtype = getattr(torch, args.dtype) if args.dtype else None
    print(f"converting VGGT checkpoint {args.source} -> {args.output_dir}", flush=True)
    return convert_vggt_checkpoint(args.source, output_dir, dtype=dtype, progress=not args.no_progress, **overrides)


def _run_official(args, output_dir) -> "ConversionReport":  # noqa: F821
    print(f"converting official GAP-MLLM checkpoint {args.source} -> {args.output_dir}", flush=True)
    return convert_official_checkpoint(
        args.source, output_dir, progress=not args.no_progress, write_processor=not args.no_processor
    )


def main(args: argparse.Namespace) -> int:
    runner = {"vggt": _run_vggt, "official": _run_official}[args.kind]
    try:  # written beside OUTPUT_DIR and renamed when whole: a failed conversion leaves it as it was
        with writing_output_folder(args.output_dir, COMMAND, option="OUTPUT_DIR", overwrite_option=None,
                                   settings={"kind": args.kind, "source": str(args.source)}) as staging:
            report = runner(args, staging)
        # the converters tell where they wrote: the folder the user named, not its staging sibling
        report.notes = [note.replace(str(staging), str(args.output_dir)) for note in report.notes]
    except ConversionError as error:
        print(f"conversion failed: {error}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


if __name__ == "__main__":
    standalone = argparse.ArgumentParser(prog="gap-mllm convert", description=__doc__.splitlines()[0])
    add_arguments(standalone)
    sys.exit(main(standalone.parse_args()))
