"""The model card of GAP-MLLM-Mini, every figure computed from the checkpoint and the pipeline's results."""

from __future__ import annotations

from huggingface_hub import ModelCard, ModelCardData

from gap_mllm.cli.model_card import usage_section
from gap_mllm.mini.identity import MINI_MODEL_NAME

from .report import results_markdown


def _architecture(config) -> str:
    text, vision = config.text_config, config.vision_config
    rows = [
        ("LLM", f"Qwen3 decoder, {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
                f"{text.num_attention_heads}/{text.num_key_value_heads} heads, vocabulary {text.vocab_size}"),
        ("vision tower", f"Qwen3-VL ViT, {vision.depth} blocks, width {vision.hidden_size}, patch {vision.patch_size}, "
                         f"DeepStack taps {list(vision.deepstack_visual_indexes)}"),
    ]
    if config.use_geometry:
        geometry, fusion = config.geometry_config, config.geometry_fusion_config
        heads = [name for name, on in (("camera", geometry.use_camera_head), ("depth", geometry.use_depth_head),
                                       ("point", geometry.use_point_head)) if on]
        rows += [
            ("geometry encoder", f"VGGT aggregator, {geometry.num_hidden_layers} frame/global pairs, width {geometry.hidden_size}, "
                                 f"DINOv2 embedding of {geometry.patch_embed_num_hidden_layers} blocks; heads: {', '.join(heads) or 'none'}"),
            ("fusion", f"{fusion.method}, {config.num_fusion_levels} levels (VGGT layers {config.level_geometry_layers}), "
                       f"merger hidden {fusion.merger_hidden_size}"),
        ]
    else:
        rows.append(("geometry", "none (plain Qwen3-VL)"))
    return "\n".join(["| part | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])


FOLDER_ID = "gap-mllm-mini"  # the exported folder's name (mini/gap-mllm-mini), what its usage snippet loads
ROOMS = (f'`"{FOLDER_ID}"`: this folder (with the `gap-mllm` package installed, `gap_mllm.mini.default_model_path()` '
         "gives it). It knows SynthRooms rooms only: `frames = synthetic_scene(seed=0).views` "
         "(`from gap_mllm.cli.scenes import synthetic_scene`) is a held-out one.")


def mini_usage() -> str:
    """The card's "Use" section: the usage snippet every GAP-MLLM card has (model_card.md's, constrained decoding as
    the README's), loading this folder, and where its frames come from."""
    return usage_section(FOLDER_ID) + "\n\n" + ROOMS


def mini_model_card(config, counts: dict[str, int], results: dict | None) -> str:
    """README.md of the exported miniature (front matter + sections)."""
    data = ModelCardData(language="en", license="apache-2.0", library_name="transformers", pipeline_tag="image-text-to-text",
                         tags=["multimodal", "3d", "spatial-reasoning", "custom_code", "gap-mllm", "synthetic-data"],
                         model_name=MINI_MODEL_NAME)
    parameters = "\n".join(["| part | parameters |", "|---|---|"] + [f"| {name} | {count / 1e6:.2f} M |" for name, count in counts.items()])
    if results is not None:
        evaluation = (f"Held-out SynthRooms test scenes (budget `{results['budget']}`); every figure from `make mini`:\n\n"
                      + results_markdown(results))
    else:
        evaluation = "Not evaluated: no results were given when this folder was written."
    body = f"""
# GAP-MLLM-Mini

A miniature GAP-MLLM (arXiv 2603.16461) trained from scratch by the `gap-mllm` package on SynthRooms,
its procedural indoor scenes with exact geometry: every part of the method at a size that trains on a
laptop CPU. It is the package's embedded default for the demo, `gap-mllm predict` and the Space, and the
package's end-to-end test of whether the method, the training code and the data learn: the evaluation
below says how far it got, next to trivial baselines. It knows SynthRooms only: on real photos its answers
are meaningless.

## Architecture

{_architecture(config)}

{parameters}

Weights are stored in bfloat16 (computed in float32 after loading).

## Use

{mini_usage()}

## Training

All stages by the `make mini` pipeline (mini/README.md in the repository), on SynthRooms' `mini` preset;
the last table under Evaluation says which device trained each stage:

1. stage 0, geometry: the VGGT aggregator and its camera and depth heads on exact depth and poses (VGGT's
   objective and normalisation), then its cameras with a cross-view matching objective (VGGT trains a
   tracking head for the same purpose), the stand-in for pretrained VGGT-1B; frozen afterwards;
2. stage 0, vision: the Qwen ViT on per-token semantics (category, colour, texture, marker) and each token's
   place in the image, the stand-in for the pretrained Qwen ViT; frozen afterwards;
3. stage 1: the official geometry-aligned pre-training task (red "+" marker → point + label);
4. stage 2: grounding (both official stages), detection and captioning in the official formats.

## Evaluation

{evaluation}

## Licence

Apache-2.0. The weights were trained from random initialisation by this package on synthetic data; no
third-party weights (neither Qwen3-VL nor VGGT-1B) are included.
"""
    return str(ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n" + body))
