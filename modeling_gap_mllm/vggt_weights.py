"""Loading VGGT checkpoints (`facebook/VGGT-1B` `model.pt` / `model.safetensors`) into gap_mllm's geometry encoder.

VGGT's checkpoint is a flat state dict of `VGGT()` with the prefixes `aggregator.`, `camera_head.`,
`depth_head.`, `point_head.` and `track_head.` (docs/vggt.md §7). `GapMllmGeometryEncoder` keeps
VGGT's module and leaf names (`aggregator`, `camera_head`, `depth_head`, `point_head`), so the mapping
is the identity after removing an optional wrapper prefix (`vggt.`, `geometry_encoder.vggt.`,
`spatial_encoder.vggt_model.`, ... — detected from where `aggregator.camera_token` sits).

Loading is strict (see `ConversionReport`): every encoder tensor must be filled with the right shape,
and every source tensor is either used or skipped for a stated reason — the heads the config
disables, the track head (not implemented), and VGGT's non-persistent normalisation buffers.
Anything else raises `ConversionError` naming the keys.

This module is what the model needs at run time (`GapMllmGeometryEncoder.from_vggt_state_dict`,
`GapMllmForConditionalGeneration.from_qwen3_vl(vggt_weights=...)`); writing a converted folder lives
in `convert_vggt_to_hf.py`, which the remote code never imports.
"""

import json
import math
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm
from safetensors.torch import load_file

from .configuration_gap_mllm import GapMllmGeometryConfig
from .conversion_report import PICKLE_REFUSED, CheckpointFileError, ConversionReport, describe_file_content

HEAD_MODULES = {"camera_head": "use_camera_head", "depth_head": "use_depth_head", "point_head": "use_point_head"}
UNSUPPORTED_MODULES = {"track_head": "track head (not implemented in gap_mllm)"}
NON_PERSISTENT_BUFFERS = {
    "aggregator._resnet_mean": "normalisation buffer (rebuilt from geometry_config.image_mean)",
    "aggregator._resnet_std": "normalisation buffer (rebuilt from geometry_config.image_std)",
}
ANCHOR_KEY = "aggregator.camera_token"
CHECKPOINT_FILE_NAMES = ("model.safetensors", "model.safetensors.index.json", "model.pt", "pytorch_model.bin")


# ------------------------------------------------------------------------------------------ loading
def _unwrap(state_dict) -> dict:
    """Training checkpoints sometimes wrap the weights as {"model": sd} or {"state_dict": sd}."""
    for wrapper in ("model", "state_dict", "module"):
        if isinstance(state_dict, Mapping) and set(state_dict) == {wrapper} and isinstance(state_dict[wrapper], Mapping):
            state_dict = state_dict[wrapper]
    return dict(state_dict)


def _load_file(path: Path) -> dict:
    """The tensors of one checkpoint file; anything that is not a readable checkpoint raises
    `CheckpointFileError` naming the file (a JPEG, a truncated file, a pickle the safe loader refuses)."""
    if path.name.endswith(".safetensors.index.json"):
        try:
            index = json.loads(path.read_text())
            shards = sorted(set(index["weight_map"].values()))
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointFileError(f"{path}: not a safetensors index (JSON with a weight_map): {error}") from error
        state_dict = {}
        for shard in shards:
            state_dict.update(_load_file(path.parent / shard))
        return state_dict
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint file not found")
    content = describe_file_content(path)
    if path.suffix == ".safetensors" or content == "a safetensors file":
        try:
            return load_file(str(path))
        except Exception as error:  # noqa: BLE001 - SafetensorError is not an OSError / ValueError
            raise CheckpointFileError(f"{path}: not a readable safetensors file ({content}; {error}); it is probably "
                                      "truncated or corrupt: download or copy it again") from error
    if content not in ("a PyTorch (zip) checkpoint", "a pickle", "a zip archive"):
        raise CheckpointFileError(f"{path}: not a PyTorch or safetensors checkpoint (it is {content}); give VGGT's "
                                  "model.pt or model.safetensors")
    try:
        # mmap: a 5 GB model.pt is not read into memory before the tensors are used
        return _unwrap(torch.load(str(path), map_location="cpu", weights_only=True, mmap=content != "a pickle"))
    except pickle.UnpicklingError as error:
        raise CheckpointFileError(f"{path}: {PICKLE_REFUSED} ({str(error).splitlines()[-1].strip() or error})") from error
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as error:
        raise CheckpointFileError(f"{path}: cannot read this PyTorch checkpoint ({error}); it is probably truncated "
                                  "or corrupt: download or copy it again") from error


def resolve_checkpoint_file(source) -> Path:
    """A checkpoint file from a file path, a folder (model.safetensors / index / model.pt / pytorch_model.bin)
    or a Hub repository id (downloads model.safetensors, else model.pt)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        for name in CHECKPOINT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path} holds none of {', '.join(CHECKPOINT_FILE_NAMES)}")
    if re.fullmatch(r"[\w.-]+/[\w.-]+", str(source)) and not str(source).startswith("."):
        not_cached = []
        for name in ("model.safetensors", "model.pt"):
            try:
                return Path(hf_hub_download(str(source), name))
            except LocalEntryNotFoundError:  # offline (or unreachable) and not in the local cache
                not_cached.append(name)
            except EntryNotFoundError:  # reachable, and the repository has no such file
                continue
            except RepositoryNotFoundError as error:
                raise FileNotFoundError(f"{source}: no such local file or folder, and no such Hub repository "
                                        "(or it is private or gated: log in with hf auth login)") from error
        if not_cached:
            raise FileNotFoundError(f"{source}: no network and not in the local Hub cache (looked for "
                                    f"{' and '.join(not_cached)}); connect once to download it, or give a local file")
        raise FileNotFoundError(f"Hub repository {source!r} has neither model.safetensors nor model.pt")
    raise FileNotFoundError(f"{source}: no such file or folder (and not a Hub repo id such as facebook/VGGT-1B); give "
                            "VGGT's model.pt / model.safetensors, a folder holding one, or a Hub id")


def load_vggt_state_dict(source) -> dict[str, torch.Tensor]:
    """The flat state dict of a VGGT checkpoint: a mapping (returned as is), a `.pt`/`.pth`/`.bin`,
    `.safetensors` or sharded-index file, a folder holding one, or a Hub id such as `facebook/VGGT-1B`."""
    if isinstance(source, Mapping):
        return _unwrap(source)
    return _load_file(resolve_checkpoint_file(source))


# ------------------------------------------------------------------------------------------ inspection
def _shapes(state_dict) -> dict[str, tuple]:
    return {key: tuple(value.shape) if hasattr(value, "shape") else tuple(value) for key, value in state_dict.items()}


def find_vggt_prefix(keys) -> str:
    """The wrapper prefix in front of VGGT's own names ('' for `model.pt`, 'geometry_encoder.vggt.' for GAP-MLLM)."""
    candidates = sorted(key[: -len(ANCHOR_KEY)] for key in keys if key.endswith(ANCHOR_KEY))
    if not candidates:
        raise ValueError(f"not a VGGT checkpoint: no key ends with {ANCHOR_KEY!r}")
    if len(candidates) > 1:
        raise ValueError(
            f"several VGGT models in one checkpoint (prefixes {candidates}); pass the state dict of one of them"
        )
    return candidates[0]


def _count_blocks(keys, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    indices = {int(m.group(1)) for key in keys if (m := pattern.match(key))}
    return max(indices) + 1 if indices else 0


def infer_vggt_geometry_config(state_dict, **overrides) -> GapMllmGeometryConfig:
    """A `GapMllmGeometryConfig` whose architecture matches a VGGT state dict (tensors or shapes).

    Read from the shapes: width, depth, register tokens, patch size, DINOv2 depth/registers/position
    grid (→ `image_size`), MLP ratio, attention heads (from the QK-norm size), which heads are present
    (→ `use_*_head`), camera trunk depth, DPT widths. Not stored in the weights, hence defaults unless
    overridden: `tapped_layers` ([4, 11, 17, 23]), `dpt_layers` ([4, 11, 17, 23]),
    `camera_head_num_attention_heads` (16), `camera_head_num_iterations` (4).

    Args:
        state_dict: VGGT state dict, or a mapping key → shape.
        overrides: any `GapMllmGeometryConfig` field; wins over the inferred value (e.g. `use_depth_head=False`).
    """
    shapes = _shapes(state_dict)
    prefix = find_vggt_prefix(shapes)
    shapes = {key[len(prefix) :]: shape for key, shape in shapes.items() if key.startswith(prefix)}
    keys = list(shapes)
    hidden = shapes["aggregator.camera_token"][-1]
    values = {
        "hidden_size": hidden,
        "num_hidden_layers": _count_blocks(keys, "aggregator.frame_blocks."),
        "num_register_tokens": shapes["aggregator.register_token"][2],
        "patch_size": shapes["aggregator.patch_embed.patch_embed.proj.weight"][-1],
        "patch_embed_num_hidden_layers": _count_blocks(keys, "aggregator.patch_embed.blocks."),
        "patch_embed_num_register_tokens": shapes.get("aggregator.patch_embed.register_tokens", (1, 0))[1],
        "mlp_ratio": shapes["aggregator.frame_blocks.0.mlp.fc1.weight"][0] / hidden,
        "qk_norm": "aggregator.frame_blocks.0.attn.q_norm.weight" in shapes,
    }
    grid_side = math.isqrt(shapes["aggregator.patch_embed.pos_embed"][1] - 1)
    values["image_size"] = grid_side * values["patch_size"]
    if values["qk_norm"]:
        values["num_attention_heads"] = hidden // shapes["aggregator.frame_blocks.0.attn.q_norm.weight"][0]
    for module, flag in HEAD_MODULES.items():
        values[flag] = any(key.startswith(module + ".") for key in keys)
    if values["use_camera_head"]:
        values["camera_head_trunk_depth"] = _count_blocks(keys, "camera_head.trunk.")
    dpt = "depth_head" if values["use_depth_head"] else "point_head" if values["use_point_head"] else None
    if dpt:
        values["dpt_out_channels"] = [shapes[f"{dpt}.projects.{i}.weight"][0] for i in range(4)]
        values["dpt_features"] = shapes[f"{dpt}.scratch.layer1_rn.weight"][0]
    values.update(overrides)
    return GapMllmGeometryConfig(**values)


def plan_vggt_conversion(
    source_shapes: Mapping, target_shapes: Mapping, config: GapMllmGeometryConfig, prefix: str | None = None
) -> ConversionReport:
    """Decide, from shapes only, where every VGGT tensor goes in a geometry encoder.

    Args:
        source_shapes: VGGT key → shape (or tensor).
        target_shapes: encoder state-dict key → shape (or tensor).
        config: the encoder's config (decides which head tensors are wanted).
        prefix: wrapper prefix of the source keys; detected when `None`.

    Returns:
        the report; it is not raised here (call `raise_if_errors`).
    """
    source_shapes, target_shapes = _shapes(source_shapes), _shapes(target_shapes)
    prefix = find_vggt_prefix(source_shapes) if prefix is None else prefix
    report = ConversionReport()
    if prefix:
        report.notes.append(f"VGGT weights found under the prefix {prefix!r}")
    for key, shape in source_shapes.items():
        if not key.startswith(prefix):
            report.unexpected[key] = f"outside the VGGT prefix {prefix!r}"
            continue
        name = key[len(prefix) :]
        module = name.split(".", 1)[0]
        if name in target_shapes:
            if tuple(target_shapes[name]) != tuple(shape):
                report.mismatched[name] = (key, shape, target_shapes[name])
            else:
                report.mapped[name] = key
        elif name in NON_PERSISTENT_BUFFERS:
            report.skipped[key] = NON_PERSISTENT_BUFFERS[name]
        elif module in UNSUPPORTED_MODULES:
            report.skipped[key] = UNSUPPORTED_MODULES[module]
        elif module in HEAD_MODULES and not getattr(config, HEAD_MODULES[module]):
            report.skipped[key] = f"{module} (disabled: geometry_config.{HEAD_MODULES[module]}=False)"
        else:
            report.unexpected[key] = "no tensor of this name in the geometry encoder"
    report.missing = sorted(set(target_shapes) - set(report.mapped) - set(report.mismatched))
    return report


# ------------------------------------------------------------------------------------------ loading into modules
def load_vggt_weights(
    encoder: torch.nn.Module,
    source,
    progress: bool = False,
    source_name: str | None = None,
) -> ConversionReport:
    """Copy VGGT weights into an existing `GapMllmGeometryEncoder`, strictly.

    Args:
        encoder: the target; its config decides which heads are loaded.
        source: VGGT state dict, or anything `load_vggt_state_dict` accepts.
        progress: show a byte progress bar while copying.
        source_name: name used in error messages.

    Returns:
        the [`ConversionReport`]. Raises `ConversionError` (naming the keys) unless every encoder tensor
        is filled and every source tensor is used or deliberately skipped.
    """
    name = source_name or (str(source) if not isinstance(source, Mapping) else "the VGGT state dict")
    state_dict = load_vggt_state_dict(source)
    targets = encoder.state_dict()
    report = plan_vggt_conversion(state_dict, targets, encoder.config)
    report.raise_if_errors(name)
    items = list(report.mapped.items())
    total = sum(state_dict[src].numel() * state_dict[src].element_size() for _, src in items)
    bar = None
    if progress:
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="copying VGGT weights")
    with torch.no_grad():
        for target, src in items:
            tensor = state_dict[src]
            targets[target].copy_(tensor)
            if bar is not None:
                bar.update(tensor.numel() * tensor.element_size())
    if bar is not None:
        bar.close()
    return report
