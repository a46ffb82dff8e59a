"""A tiny GAP-MLLM checkpoint in the official layout (docs/method.md §1.8), for converting without the real one.

The released checkpoints (e.g. `Zestfuljx0402/gapmllm-3d-3b`, about 8 GB) come from the Hub; this writes a checkpoint
with the same file layout, key names, duplicated geometry registrations and config fields from a tiny gap_mllm model
with random weights, so that `gap-mllm convert official` and every later step of docs/publish.md run on any machine:

    python -m gap_mllm.tiny.official_layout official/tiny-gapmllm      # then: gap-mllm convert official ...

The layout (tests/test_convert_official.py converts it and checks every tensor):

    config.json        stock Qwen3-VL config (model_type "qwen3_vl",
                       architectures ["Qwen3VLForConditionalGenerationWithVGGT"]) + use_geometry_encoder,
                       geometry_encoder_type, reference_frame, feature_fusion_method, fusion_num_layers,
                       geometry_merger_type, intermediate_layer_idx
    model.visual.*                          Qwen3-VL vision tower
    model.language_model.*                  Qwen3-VL text model
    lm_head.weight                          (tied to the embeddings, saved anyway)
    geometry_encoder.vggt.aggregator.*      VGGT aggregator
    geometry_merger.{ln_q.weight[, ln_q.bias], mlp.0.*, mlp.2.*}          main-level merger
    geometry_deepstack_merger_list.{0,1,2}.*                              DeepStack mergers
    feature_fusion.{norm1, norm2, gate_projection.0}.*                    main-level gate
    deepstack_feature_fusion_list.{0,1,2}.*                               DeepStack gates
    model.<every geometry key above>        the duplicated registration on the inner model

split over two safetensors shards with an index, the duplicate copies landing in other shards than their originals,
plus the tokenizer and image-processor files of a Qwen3-VL release.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from .tiny_model import build_tiny_model

OFFICIAL_LEVEL_NAMES = {"mergers": ("geometry_merger", "geometry_deepstack_merger_list"),
                        "fusions": ("feature_fusion", "deepstack_feature_fusion_list")}


def official_key_names(key: str) -> list[str]:
    """The official key(s) of one gap_mllm key (two for geometry modules: outer + `model.` duplicate)."""
    if key.startswith("model.geometry_encoder."):
        name = "geometry_encoder.vggt." + key[len("model.geometry_encoder."):]
    elif key.startswith("model.geometry_fusion."):
        _, _, kind, level, rest = key.split(".", 4)
        main, deepstack = OFFICIAL_LEVEL_NAMES[kind]
        name = f"{main}.{rest}" if level == "0" else f"{deepstack}.{int(level) - 1}.{rest}"
    else:  # Qwen3-VL's names are the official ones
        return [key]
    return [name, "model." + name]


def write_official_checkpoint(model, processor, folder, registration="both", edit=None):
    """Write `model` in the official layout (see the module docstring).

    registration: "both" (outer + `model.` copies), "outer" or "inner" only.
    edit: optional callable applied to the official key → tensor dict before saving.
    """
    tensors = {}
    for key, value in model.state_dict().items():
        names = official_key_names(key)
        if len(names) == 2 and registration != "both":
            names = names[:1] if registration == "outer" else names[1:]
        for name in names:
            tensors[name] = value.detach().clone().contiguous()
    if edit is not None:
        edit(tensors)
    folder.mkdir(parents=True)
    keys = sorted(tensors)  # sorted: every "model.geometry_*" copy lands in the first shard, its original in the second
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2], "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, str(folder / name), metadata={"format": "pt"})
    weight_map = {k: name for name, shard_keys in shards.items() for k in shard_keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = model.config.to_qwen3_vl_config().to_dict()
    config.update(
        architectures=["Qwen3VLForConditionalGenerationWithVGGT"], use_geometry_encoder=True, geometry_encoder_type="vggt",
        reference_frame="first", feature_fusion_method="gated", fusion_num_layers=1, geometry_merger_type="mlp",
        intermediate_layer_idx=list(model.config.geometry_config.tapped_layers),
    )
    (folder / "config.json").write_text(json.dumps(config))
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="new folder for the checkpoint")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder")
    model, processor = build_tiny_model(seed=args.seed)
    print(write_official_checkpoint(model, processor, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
