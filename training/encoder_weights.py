"""Start a fresh GAP-MLLM from trained encoders: copy the geometry encoder and the Qwen ViT of a folder.

The miniature's stage 1 (and its "stage 2 only" ablation arm) starts from the stage-0 encoders with a
freshly initialised LLM, mergers and fusions, like the official stage 1 starts from pretrained VGGT-1B
and Qwen3-VL with new fusion modules. A model without geometry (`use_geometry=False`) takes the ViT only.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors.torch
import torch

ENCODER_PREFIXES = {"geometry_encoder": "geometry_encoder.", "vision_tower": "vlm.model.visual."}


def _folder_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    single = folder / "model.safetensors"
    if single.is_file():
        return safetensors.torch.load_file(str(single), device="cpu")
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        raise FileNotFoundError(f"{folder} holds no model.safetensors (or sharded index): not a saved GAP-MLLM folder")
    state = {}
    for shard in sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())):
        state.update(safetensors.torch.load_file(str(folder / shard), device="cpu"))
    return state


@torch.no_grad()
def load_encoder_weights(model, folder, encoders=tuple(ENCODER_PREFIXES)) -> list[str]:
    """Copy every tensor of the given `encoders` ("geometry_encoder": `geometry_encoder.*`, "vision_tower":
    `vlm.model.visual.*`) of `folder` into `model`.

    Strict on what the model has under those prefixes: a missing or mis-shaped tensor raises a
    ValueError naming it. Returns the names copied.
    """
    unknown = set(encoders) - set(ENCODER_PREFIXES)
    if unknown:
        raise ValueError(f"unknown encoder(s) {sorted(unknown)}; choose from {sorted(ENCODER_PREFIXES)}")
    prefixes = tuple(ENCODER_PREFIXES[name] for name in encoders)
    folder = Path(folder)
    source = _folder_state_dict(folder)
    target = model.state_dict()
    wanted = [name for name in target if name.startswith(prefixes)]
    missing = [name for name in wanted if name not in source]
    if missing:
        raise ValueError(f"{folder} lacks {len(missing)} encoder tensor(s) of this model, e.g. {missing[:3]}")
    for name in wanted:
        if source[name].shape != target[name].shape:
            raise ValueError(f"{folder}: {name} has shape {tuple(source[name].shape)}, the model {tuple(target[name].shape)}")
        target[name].copy_(source[name].to(target[name].dtype))
    return wanted
