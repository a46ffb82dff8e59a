"""`gap-mllm export-llm`: write a GAP-MLLM checkpoint's language half as a stock Qwen3-VL folder for an engine.

    gap-mllm export-llm SOURCE OUTPUT_DIR [--dtype bfloat16]

SOURCE: a GAP-MLLM folder or Hub id (`mini` = the embedded GAP-MLLM-Mini). OUTPUT_DIR: a new or empty folder; it
gets config.json (qwen3_vl), the weights in stock names, the tokenizer and chat template, the Qwen3-VL processor
configs, gap_export.json and a README (see gap_mllm/serving/export.py). The ViT weights are kept: vLLM builds the
vision tower whenever images are allowed and splits the DeepStack levels only when it exists. The files are written
into a hidden folder next to OUTPUT_DIR, renamed to it when complete: a failed export (a full disk) leaves nothing
behind, and the same command runs again.
"""

import argparse

from gap_mllm.mini import default_model_path
from gap_mllm.serving.export import export_llm_folder

from .command_arguments import add_export_llm_arguments as add_arguments  # noqa: F401 - the command's add_arguments
from .model_source import check_model_source

def main(args: argparse.Namespace) -> int:
    source = args.source
    if source == "mini":

        source = default_model_path()
    source = check_model_source(source, flag="SOURCE")  # a missing folder or a non-GAP one named before anything is written
    print(f"exporting the language half of {source} -> {args.output_dir}", flush=True)
    exported = export_llm_folder(source, args.output_dir, dtype=args.dtype)
    print(f"wrote {len(exported.files)} files to {exported.path}:")
    for name in exported.files:
        print(f"  {name}")
    print("The Qwen3-VL vision tower's weights are kept (vLLM builds the tower and splits the DeepStack levels only with it);"
          " they never run on GAP embeddings.")
    print("Its image inputs must be GAP-MLLM encoder embeddings (gap_mllm.serving.GapMllmEncoder); see README.md there.")
    return 0
