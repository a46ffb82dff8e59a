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
from gap_mllm.convert_vggt_to_hf import load_vggt_encoder, load_vggt_state_dict

encoder = load_vggt_encoder(load_vggt_state_dict("model.pt"))
```

or `gap-mllm convert vggt model.pt out_dir/` to write a converted folder (`GapMllmGeometryEncoder.save_pretrained`:
config.json, model.safetensors and the encoder's code, a folder `AutoModel.from_pretrained` loads alone).
"""

import json
import math
import os
import pickle
import re
import zipfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm
from safetensors.torch import load_file
from transformers import initialization as init

from .checks import load_checked, report_missing_weights
from .configuration_gap_mllm import GapMllmConfig, GapMllmGeometryConfig
from .files import PICKLE_REFUSED
from .modeling_vggt import GapMllmGeometryEncoder


# First bytes of files people hand to a converter by mistake.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"PK\x03\x04", "a zip archive"),
)


class ConversionError(ValueError):
    """A checkpoint does not convert exactly; the message names every offending key."""


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read at all (wrong kind of file, truncated, refused pickle);
    the message names the file and says what to do."""


def describe_file_content(path) -> str:
    """What a file looks like from its first bytes: "a JPEG image", "an empty file", "a safetensors
    file", "a PyTorch (zip) checkpoint", "a pickle", "text", or "unknown binary data"."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        return "an empty file"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "a safetensors file"
    if head.startswith(b"PK\x03\x04") and path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "a PyTorch (zip) checkpoint"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return "unknown binary data"


@dataclass
class ConversionReport:
    """Key-level account of a conversion.

    Attributes:
        mapped: target key → source key.
        skipped: source key → why it was not used (not an error).
        missing: target keys no source key fills (error).
        unexpected: source key → why it cannot be placed (error).
        mismatched: target key → (source key, source shape, target shape) (error).
        conflicts: source key → description of a disagreeing duplicate (error).
        notes: free-form facts worth telling the user (detected settings, tied weights, ...).
    """

    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.conflicts)

    def error_message(self, source: str = "the checkpoint", limit: int = 20) -> str:
        lines = []

        def section(title, items):
            items = list(items)
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")

        section("missing (no source key fills these target keys)", sorted(self.missing))
        section("unexpected source keys", (f"{k}: {why}" for k, why in sorted(self.unexpected.items())))
        section(
            "shape mismatches",
            (f"{k} <- {src}: source shape {tuple(s)} vs expected {tuple(t)}" for k, (src, s, t) in sorted(self.mismatched.items())),
        )
        section("conflicting duplicates", (f"{k}: {why}" for k, why in sorted(self.conflicts.items())))
        return f"{source} does not convert exactly:\n" + "\n".join(lines)

    def raise_if_errors(self, source: str = "the checkpoint") -> None:
        if not self.ok:
            raise ConversionError(self.error_message(source))

    def summary(self, depth: int = 2) -> str:
        """Counts of mapped and skipped keys grouped by their first `depth` name components."""

        def grouped(keys):
            return Counter(".".join(key.split(".")[:depth]) for key in keys)

        lines = [f"mapped {len(self.mapped)} tensors:"]
        lines += [f"  {group:<48} {count:>6}" for group, count in sorted(grouped(self.mapped).items())]
        if self.skipped:
            reasons = Counter(self.skipped.values())
            lines.append(f"skipped {len(self.skipped)} source tensors:")
            lines += [f"  {count:>6} × {reason}" for reason, count in sorted(reasons.items())]
        lines += [f"note: {note}" for note in self.notes]
        if not self.ok:
            lines.append(self.error_message())
        return "\n".join(lines)


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


def encoder_to_fill(config: GapMllmGeometryConfig) -> GapMllmGeometryEncoder:
    """A `GapMllmGeometryEncoder` for `load_vggt_weights` to fill, every tensor of it: its weight init (random numbers
    the copy overwrites, 1.2 billion of them at VGGT-1B's size) skipped."""
    with init.no_init_weights():
        return GapMllmGeometryEncoder(config)


def load_vggt_encoder(state_dict, config: GapMllmGeometryConfig | None = None) -> GapMllmGeometryEncoder:
    """Build an encoder holding the weights of a VGGT checkpoint, strictly (fp32 unless `config` says otherwise).

    Args:
        state_dict: a flat VGGT state dict (`torch.load("model.pt")`, `safetensors.torch.load_file(...)`),
            possibly nested under a wrapper prefix such as `geometry_encoder.vggt.` (detected).
        config: the target config; when `None` the architecture is inferred from the weights
            (`vggt_weights.infer_vggt_geometry_config`: heads present in the checkpoint are
            enabled, `tapped_layers` default to [4, 11, 17, 23]).

    Returns:
        the encoder in eval mode, with `conversion_report` (a `ConversionReport`) attached. Raises
        `ConversionError` naming the keys when an encoder tensor is missing or mis-shaped or a source
        tensor has no place (heads the config disables and VGGT's track head are skipped and reported).

    Output structure: `encoder(images)` with `images [B, S, 3, H, W]` in [0, 1] (H, W multiples of
    14) returns a `GeometryEncoderOutput` whose `layer_features[i]` is `[B, S, (H/14)·(W/14), 2·hidden_size]`
    for layer `config.tapped_layers[i]`: channels `[:hidden_size]` are the frame-attention block's
    output, `[hidden_size:]` the global-attention block's output of that layer, patch tokens row-major,
    camera and register tokens dropped — VGGT's `aggregator(images)[0][layer][:, :, 5:]`.
    """
    if config is None:
        config = infer_vggt_geometry_config(state_dict)
    encoder = encoder_to_fill(config)
    encoder.conversion_report = load_vggt_weights(encoder, state_dict)
    return encoder.eval()


PROBE_TIMEOUT_S = 5.0  # one metadata request; a reachable Hub answers in well under a second
PROBE_FILE = "config.json"  # every transformers checkpoint has one


def hub_unreachable(repo_id: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be reached for `repo_id` (the connection error, in words), or None when it answered (any
    HTTP answer counts, an error status included: transformers then says what it means)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, PROBE_FILE), timeout=timeout)
    except HfHubHTTPError:  # an answer: no such repo, gated, a server error; not a connection problem
        return None
    except Exception as error:  # noqa: BLE001 - DNS, refused connection, timeout, proxy: every way of no answer
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def hub_loading_kwargs(name_or_path, what: str = "checkpoint") -> dict:
    """Extra `from_pretrained` arguments for loading `name_or_path` (module docstring): `{}` for a local folder, in
    offline mode or when the Hub answers; `{"local_files_only": True}` when it cannot be reached but the checkpoint is
    in the local Hub cache.

    Raises:
        OSError: the Hub cannot be reached and `name_or_path` is not in the local Hub cache (one line naming it).
    """
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache

    name = str(name_or_path)
    if os.path.isdir(name) or is_offline_mode():
        return {}
    problem = hub_unreachable(name)
    if problem is None:
        return {}
    if isinstance(try_to_load_from_cache(name, PROBE_FILE), str):
        return {"local_files_only": True}
    raise OSError(f"{what} {name}: the Hub ({constants.ENDPOINT}) cannot be reached ({problem}) and {name} is not in "
                  "the local Hub cache; connect to the network, or give a local folder of the checkpoint")


def build_from_qwen3_vl(model_class, qwen3_vl_name_or_path, geometry_config: dict | None = None,
                        geometry_fusion_config: dict | None = None, vggt_weights=None, **from_pretrained_kwargs):
    """`GapMllmForConditionalGeneration.from_qwen3_vl`: `model_class.from_pretrained` of the Qwen3-VL folder (every
    Qwen3-VL weight loads), then, when given, the VGGT weights; the GAP weights left newly initialised are reported
    once (`MissingWeightsWarning`) and kept as `model.missing_weight_groups`.

    Args:
        model_class: `GapMllmForConditionalGeneration` (the package's or a remote-code copy).
        qwen3_vl_name_or_path: a Qwen3-VL folder or Hub id (e.g. `Qwen/Qwen3-VL-2B-Instruct`).
        geometry_config, geometry_fusion_config: overrides of the GAP sub-configs (the geometry config must describe
            the VGGT architecture of `vggt_weights`; its defaults are VGGT-1B).
        vggt_weights: a VGGT state dict, a `model.pt` / `.safetensors` file, a folder holding one (also a `gap-mllm
            convert vggt` output) or a Hub id such as `facebook/VGGT-1B`; `None` leaves the encoder randomly
            initialised (reported). Head weights load only when the geometry config enables the heads; the
            conversion report is kept as `model.vggt_conversion_report`.
        from_pretrained_kwargs: passed to `from_pretrained` (dtype, ...).
    """
    # an unreachable Hub: the cached checkpoint at once, or one line, not a minute of retries (modeling_gap_mllm.py)
    from_pretrained_kwargs = {**hub_loading_kwargs(qwen3_vl_name_or_path, "Qwen3-VL"), **from_pretrained_kwargs}
    model, info = load_checked(  # the package's checkpoint checks (gap_mllm.loading would close an import cycle)
        model_class.from_pretrained, qwen3_vl_name_or_path, geometry_config=geometry_config or {},
        geometry_fusion_config=geometry_fusion_config or {}, output_loading_info=True, warn_missing_weights=False,
        **from_pretrained_kwargs,
    )
    loaded = set()
    if vggt_weights is not None:
        if not model.config.use_geometry:
            raise ValueError("vggt_weights were given but use_geometry=False: the model has no geometry encoder.")
        report = load_vggt_weights(model.geometry_encoder, vggt_weights)
        model.vggt_conversion_report = report
        loaded = {"model.geometry_encoder." + key for key in report.mapped}
        if isinstance(vggt_weights, (str, os.PathLike)):
            model.config.geometry_config.source_checkpoint = str(vggt_weights)
    model.apply_freezing_policy()
    new_keys = [key for key in info["missing_keys"] if key not in loaded]
    model.missing_weight_groups = sorted(report_missing_weights(new_keys, str(qwen3_vl_name_or_path)))
    return model


def convert_vggt_checkpoint(
    source, output_dir, config: GapMllmGeometryConfig | None = None, dtype: torch.dtype | None = None,
    progress: bool = False, **config_overrides,
) -> ConversionReport:
    """Write a converted VGGT folder, the encoder's `save_pretrained`: `config.json` (a `GapMllmGeometryConfig`),
    `model.safetensors` (the encoder's state dict) and the encoder's code. `AutoModel.from_pretrained(output_dir)`,
    `GapMllmForConditionalGeneration.from_qwen3_vl(..., vggt_weights=output_dir)` and
    `load_vggt_encoder(load_vggt_state_dict(output_dir))` read it back.

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
    encoder = encoder_to_fill(config)
    if dtype is None:
        dtype = state_dict[find_vggt_prefix(state_dict) + ANCHOR_KEY].dtype
    encoder.to(dtype)
    report = load_vggt_weights(encoder, state_dict, progress=progress, source_name=str(source))
    encoder.save_pretrained(output_dir)
    report.notes.append(f"wrote {len(encoder.state_dict())} tensors ({dtype}), config.json and the encoder's code to "
                        f"{output_dir}")
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
