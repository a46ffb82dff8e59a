"""Convert VGGT checkpoints (`facebook/VGGT-1B` `model.pt` / `model.safetensors`) to gap_mllm's geometry encoder.

VGGT's checkpoint is a flat state dict of `VGGT()` with the prefixes `aggregator.`, `camera_head.`,
`depth_head.`, `point_head.` and `track_head.` (docs/vggt.md §7). `GapMllmGeometryEncoder` keeps
VGGT's module and leaf names (`aggregator`, `camera_head`, `depth_head`, `point_head`), so the mapping
is the identity after removing an optional wrapper prefix (`vggt.`, `geometry_encoder.vggt.`,
`spatial_encoder.vggt_model.`, ... — detected from where `aggregator.camera_token` sits).

The conversion is strict (`vggt_weights.load_vggt_weights`, which also serves the model at run time):
every encoder tensor must be filled with the right shape, and every source tensor is either used or
skipped for a stated reason. This file only writes converted folders; nothing the remote code loads
imports it (converters stay out of the `trust_remote_code` import graph, as in transformers).

Usage:

```python
from gap_mllm.modeling_geometry_encoder import GapMllmGeometryEncoder
from gap_mllm.vggt_weights import load_vggt_state_dict

encoder = GapMllmGeometryEncoder.from_vggt_state_dict(load_vggt_state_dict("model.pt"))
```

or `gap-mllm convert vggt model.pt out_dir/` to write a converted folder (config.json + model.safetensors).
"""

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from .configuration_gap_mllm import GapMllmGeometryConfig
from .conversion_report import ConversionReport
from .modeling_geometry_encoder import GapMllmGeometryEncoder
from .vggt_weights import (  # noqa: F401 - re-exported: the converter's public names before the split
    ANCHOR_KEY,
    find_vggt_prefix,
    infer_vggt_geometry_config,
    load_vggt_state_dict,
    load_vggt_weights,
    plan_vggt_conversion,
    resolve_checkpoint_file,
)


def convert_vggt_checkpoint(
    source, output_dir, config: GapMllmGeometryConfig | None = None, dtype: torch.dtype | None = None,
    progress: bool = False, **config_overrides,
) -> ConversionReport:
    """Write a converted VGGT folder: `config.json` (a `GapMllmGeometryConfig`) + `model.safetensors`
    (the encoder's state dict). `GapMllmForConditionalGeneration.from_qwen3_vl(..., vggt_weights=output_dir)`
    and `GapMllmGeometryEncoder.from_vggt_state_dict(load_vggt_state_dict(output_dir))` read it back.

    Args:
        source: anything `load_vggt_state_dict` accepts.
        output_dir: created if needed.
        config: the target config; inferred from the weights (plus `config_overrides`) when `None`.
        dtype: cast the weights (e.g. `torch.bfloat16`); default keeps the source dtype.
    """
    state_dict = load_vggt_state_dict(source)
    if config is None:
        config = infer_vggt_geometry_config(state_dict, **config_overrides)
    config.source_checkpoint = config.source_checkpoint or (None if isinstance(source, Mapping) else str(source))
    encoder = GapMllmGeometryEncoder(config)
    if dtype is None:
        dtype = state_dict[find_vggt_prefix(state_dict) + ANCHOR_KEY].dtype
    encoder.to(dtype)
    report = load_vggt_weights(encoder, state_dict, progress=progress, source_name=str(source))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(output_dir)
    tensors = {key: value.contiguous() for key, value in encoder.state_dict().items()}
    save_file(tensors, str(output_dir / "model.safetensors"), metadata={"format": "pt"})
    report.notes.append(f"wrote {len(tensors)} tensors ({dtype}) and config.json to {output_dir}")
    return report


__all__ = [
    "convert_vggt_checkpoint",
    "find_vggt_prefix",
    "infer_vggt_geometry_config",
    "load_vggt_state_dict",
    "load_vggt_weights",
    "plan_vggt_conversion",
    "resolve_checkpoint_file",
]
