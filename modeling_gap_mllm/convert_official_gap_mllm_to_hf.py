"""Convert an official GAP-MLLM checkpoint (`Qwen3VLForConditionalGenerationWithVGGT`) to a gap_mllm folder.

Official layout (docs/method.md §1.8; safetensors, one file or shards + index):

| official key                                                 | gap_mllm key                                   |
|--------------------------------------------------------------|------------------------------------------------|
| `model.visual.*`, `model.language_model.*`, `lm_head.weight` | the same (Qwen3-VL's names; `lm_head` tied on 2B) |
| `geometry_encoder.vggt.aggregator.*` (+ `camera_head.*` …)   | `model.geometry_encoder.aggregator.*` (VGGT rules) |
| `geometry_merger.{ln_q.weight[, ln_q.bias], mlp.0.*, mlp.2.*}` | `model.geometry_fusion.mergers.0.*` (main level) |
| `geometry_deepstack_merger_list.{k}.*`                       | `model.geometry_fusion.mergers.{k+1}.*`        |
| `feature_fusion.{norm1, norm2, gate_projection.0}.*`         | `model.geometry_fusion.fusions.0.*`            |
| `deepstack_feature_fusion_list.{k}.*`                        | `model.geometry_fusion.fusions.{k+1}.*`        |

The official code registers the geometry modules twice (on the outer model and on `self.model`),
so each geometry key may also appear under `model.` (e.g. `model.geometry_merger.mlp.0.weight`).
Either copy is accepted; when both are present they must be equal (else `ConversionError` naming
the key) and the inner one is reported as a skipped duplicate.

Settings come from the official `config.json` (a stock `qwen3_vl` config with extra attributes) and
from the weights: `intermediate_layer_idx` → `geometry_config.tapped_layers` (default [4, 11, 17, 23]:
the training script does not write it), `reference_frame`, merger hidden width from `mlp.0.weight`,
merger norm `"layer"` when `ln_q.bias` exists else `"rms"` (docs/method.md §1.3), fusion `"gated"` when
`gate_projection` weights exist (the official non-gated variants crash, so no checkpoint has them),
VGGT architecture from the aggregator shapes.

Output: `config.json` (`GapMllmConfig` with `auto_map`), the renamed weights (shards mirror the
source shards; `model.safetensors.index.json` when more than one), the remote-code files, the
generation config and, when the source has a tokenizer, the `GapMllmProcessor`. Load with
`AutoModel.from_pretrained(out, trust_remote_code=True)`.
"""

import json
import shutil
from pathlib import Path

import torch
from huggingface_hub.utils import tqdm
from safetensors import safe_open
from safetensors.torch import save_file
from transformers.dynamic_module_utils import custom_object_save

from .configuration_gap_mllm import QWEN3_VL_TOKEN_FIELDS, GapMllmConfig
from .convert_vggt_to_hf import (
    CheckpointFileError,
    ConversionError,
    ConversionReport,
    infer_vggt_geometry_config,
    plan_vggt_conversion,
)
from .modeling_gap_mllm import GapMllmForConditionalGeneration
from .processing_gap_mllm import GapMllmProcessor

# official module name → gap_mllm prefix; `{k}` is the DeepStack index (gap level k + 1)
GEOMETRY_MODULES = ("geometry_encoder.", "geometry_merger.", "geometry_deepstack_merger_list.",
                    "feature_fusion.", "deepstack_feature_fusion_list.")
QWEN_PREFIXES = ("model.visual.", "model.language_model.", "lm_head.")  # kept as they are
ENCODER_PREFIX = "model.geometry_encoder."  # where the VGGT rules' names go
OFFICIAL_VGGT_PREFIX = "geometry_encoder.vggt."
DUPLICATE_PREFIX = "model."
OFFICIAL_GAP_ATTRIBUTES = (
    "use_geometry_encoder", "geometry_encoder_type", "reference_frame", "intermediate_layer_idx",
    "geometry_encoder_freeze", "geometry_merger_hidden_dim", "geometry_merger_type", "feature_fusion_method",
    "fusion_attention_heads", "fusion_dropout", "fusion_num_layers", "geometry_encoder_path",
)
COPIED_FILES = ("generation_config.json",)


# ------------------------------------------------------------------------------------------ reading
def official_weight_files(source_dir) -> list[Path]:
    """The safetensors files of an official checkpoint folder, in shard order."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise FileNotFoundError(f"{source_dir}: no such folder (an official GAP-MLLM checkpoint folder holds "
                                "config.json and model.safetensors)")
    index = source_dir / "model.safetensors.index.json"
    if index.is_file():
        return [source_dir / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    single = source_dir / "model.safetensors"
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{source_dir} has neither model.safetensors nor model.safetensors.index.json")


def read_official_shapes(files) -> tuple[dict[str, tuple], dict[str, Path]]:
    """Key → shape and key → file from the safetensors headers (no tensor is loaded)."""
    shapes, location = {}, {}
    for path in files:
        try:
            handle = safe_open(str(path), framework="pt")
        except Exception as error:  # noqa: BLE001 - SafetensorError / OSError: name the file
            raise CheckpointFileError(f"{path}: not a readable safetensors file ({error}); it is probably truncated "
                                      "or corrupt: download or copy it again") from error
        with handle:
            for key in handle.keys():
                if key in location:
                    raise ConversionError(f"key {key!r} appears in both {location[key].name} and {path.name}")
                shapes[key] = tuple(handle.get_slice(key).get_shape())
                location[key] = path
    return shapes, location


def canonical_geometry_key(key: str) -> tuple[str | None, bool]:
    """`(key without the duplicate-registration prefix, whether it had it)`, or `(None, False)` for non-geometry keys."""
    for module in GEOMETRY_MODULES:
        if key.startswith(module):
            return key, False
        if key.startswith(DUPLICATE_PREFIX + module):
            return key[len(DUPLICATE_PREFIX) :], True
    return None, False


def map_fusion_key(canonical: str) -> str | None:
    """gap_mllm key of an official merger / fusion key (level 0 = main, k + 1 = DeepStack k)."""
    for official, ours in (("geometry_merger.", "mergers"), ("feature_fusion.", "fusions")):
        if canonical.startswith(official):
            return f"model.geometry_fusion.{ours}.0.{canonical[len(official):]}"
    for official, ours in (("geometry_deepstack_merger_list.", "mergers"), ("deepstack_feature_fusion_list.", "fusions")):
        if canonical.startswith(official):
            index, rest = canonical[len(official) :].split(".", 1)
            if index.isdigit():
                return f"model.geometry_fusion.{ours}.{int(index) + 1}.{rest}"
    return None


# ------------------------------------------------------------------------------------------ config
def _merger_prefixes(canonical_shapes) -> list[str]:
    prefixes = ["geometry_merger."]
    index = 0
    while any(key.startswith(f"geometry_deepstack_merger_list.{index}.") for key in canonical_shapes):
        prefixes.append(f"geometry_deepstack_merger_list.{index}.")
        index += 1
    return prefixes


def build_config_from_official(official_config: dict, canonical_shapes: dict, notes: list[str]) -> GapMllmConfig:
    """`GapMllmConfig` from the official `config.json` and the (de-duplicated) geometry key shapes."""
    official_config = dict(official_config)
    gap = {name: official_config.pop(name) for name in OFFICIAL_GAP_ATTRIBUTES if name in official_config}
    for name in ("architectures", "auto_map", "transformers_version", "_name_or_path"):
        official_config.pop(name, None)
    if official_config.get("model_type") != "qwen3_vl":
        raise ConversionError(f"not an official GAP-MLLM config: model_type {official_config.get('model_type')!r}, expected 'qwen3_vl'")
    if gap.get("use_geometry_encoder") is False:
        raise ConversionError("use_geometry_encoder is False: this is a plain Qwen3-VL checkpoint; use from_qwen3_vl instead")
    if gap.get("geometry_encoder_type", "vggt") != "vggt":
        raise ConversionError(f"geometry_encoder_type {gap['geometry_encoder_type']!r} is not supported (only 'vggt')")
    if gap.get("geometry_merger_type", "mlp") != "mlp":
        raise ConversionError(f"geometry_merger_type {gap['geometry_merger_type']!r} is not supported (only 'mlp')")

    vggt_shapes = {k[len(OFFICIAL_VGGT_PREFIX) :]: s for k, s in canonical_shapes.items() if k.startswith(OFFICIAL_VGGT_PREFIX)}
    if not vggt_shapes:
        raise ConversionError(f"no geometry encoder weights ({OFFICIAL_VGGT_PREFIX}aggregator.*) in the checkpoint")
    tapped = [int(i) for i in gap.get("intermediate_layer_idx", [4, 11, 17, 23])]
    if "intermediate_layer_idx" not in gap:
        notes.append("intermediate_layer_idx not in config.json: using the official hard-coded [4, 11, 17, 23]")
    geometry_config = infer_vggt_geometry_config(
        vggt_shapes, tapped_layers=tapped, reference_frame=gap.get("reference_frame", "first")
    )

    mergers = _merger_prefixes(canonical_shapes)
    norms = {p: "layer" if p + "ln_q.bias" in canonical_shapes else "rms" for p in mergers if p + "ln_q.weight" in canonical_shapes}
    if len(set(norms.values())) > 1:
        raise ConversionError(f"the mergers disagree on their norm (ln_q.bias present in some only): {norms}")
    merger_norm = next(iter(norms.values()), "rms")
    notes.append(f"merger norm detected from the keys: {merger_norm!r} ({'ln_q.bias present' if merger_norm == 'layer' else 'no ln_q.bias'})")
    hidden_key = "geometry_merger.mlp.0.weight"
    if hidden_key not in canonical_shapes:
        raise ConversionError(f"missing {hidden_key!r} (and its model.-prefixed duplicate): cannot size the mergers")
    merger_hidden = canonical_shapes[hidden_key][0]
    if "geometry_merger_hidden_dim" in gap and int(gap["geometry_merger_hidden_dim"]) != merger_hidden:
        raise ConversionError(
            f"config geometry_merger_hidden_dim={gap['geometry_merger_hidden_dim']} but {hidden_key} has {merger_hidden} rows"
        )
    has_gates = "feature_fusion.gate_projection.0.weight" in canonical_shapes
    method = gap.get("feature_fusion_method")
    if not has_gates:
        raise ConversionError(
            "no feature_fusion.gate_projection.0.weight: only the 'gated' fusion of the official code runs "
            "(its other variants crash), so only gated checkpoints are converted"
        )
    if method not in (None, "gated"):
        raise ConversionError(f"config feature_fusion_method={method!r} but the weights hold a gated fusion")
    if method is None:
        notes.append("feature_fusion_method not in config.json: 'gated' detected from gate_projection weights")

    return GapMllmConfig(
        **{name: official_config[name] for name in ("text_config", "vision_config", *QWEN3_VL_TOKEN_FIELDS)
           if name in official_config},
        geometry_config=geometry_config.to_dict(),
        geometry_fusion_config={"method": "gated", "merger_hidden_size": merger_hidden, "merger_norm": merger_norm},
        dtype=official_config.get("dtype", official_config.get("torch_dtype")),
    )


# ------------------------------------------------------------------------------------------ planning
def plan_official_conversion(
    shapes: dict, target_shapes: dict, tied: dict, geometry_config
) -> tuple[ConversionReport, list[tuple[str, str]]]:
    """Map every official key (shapes only).

    Args:
        shapes: official key → shape.
        target_shapes: gap_mllm state-dict key → shape.
        tied: gap_mllm tied target key → the key it is tied to (not required from the checkpoint).
        geometry_config: decides which VGGT head tensors are wanted.

    Returns:
        the report and `duplicates`: pairs (kept source key, skipped source key) that must hold the same
        values (duplicate registrations, tied weights saved twice); `check_duplicates` compares them.
    """
    report = ConversionReport()
    # one copy per geometry key: prefer the outer registration, remember the inner duplicate
    canonical_to_source, duplicates = {}, []
    for key in sorted(shapes, key=lambda k: k.startswith(DUPLICATE_PREFIX)):  # outer keys first
        canonical, inner = canonical_geometry_key(key)
        if canonical is None:
            continue
        if canonical in canonical_to_source:
            kept = canonical_to_source[canonical]
            if shapes[kept] != shapes[key]:
                report.conflicts[key] = f"shape {shapes[key]} differs from its duplicate {kept} {shapes[kept]}"
            else:
                duplicates.append((kept, key))
                report.skipped[key] = "duplicate registration (model.-prefixed copy, checked equal)"
        else:
            canonical_to_source[canonical] = key

    # geometry encoder: the VGGT rules (heads the config disables / track head are skipped there)
    vggt_sources = {c[len(OFFICIAL_VGGT_PREFIX) :]: shapes[s] for c, s in canonical_to_source.items() if c.startswith(OFFICIAL_VGGT_PREFIX)}
    encoder_targets = {k[len(ENCODER_PREFIX) :]: s for k, s in target_shapes.items() if k.startswith(ENCODER_PREFIX)}
    vggt_report = plan_vggt_conversion(vggt_sources, encoder_targets, geometry_config, prefix="")
    source_of = {c[len(OFFICIAL_VGGT_PREFIX) :]: s for c, s in canonical_to_source.items() if c.startswith(OFFICIAL_VGGT_PREFIX)}
    report.mapped.update({ENCODER_PREFIX + t: source_of[s] for t, s in vggt_report.mapped.items()})
    report.skipped.update({source_of[s]: why for s, why in vggt_report.skipped.items()})
    report.unexpected.update({source_of[s]: why for s, why in vggt_report.unexpected.items()})
    report.mismatched.update(
        {ENCODER_PREFIX + t: (source_of[s], ss, ts) for t, (s, ss, ts) in vggt_report.mismatched.items()}
    )

    def place(source_key: str, target: str | None):
        if target is None or target not in target_shapes:
            report.unexpected[source_key] = "no tensor of this name in GapMllmForConditionalGeneration"
        elif tuple(target_shapes[target]) != tuple(shapes[source_key]):
            report.mismatched[target] = (source_key, shapes[source_key], target_shapes[target])
        else:
            report.mapped[target] = source_key

    for canonical, source_key in canonical_to_source.items():
        if canonical.startswith("geometry_encoder."):
            if not canonical.startswith(OFFICIAL_VGGT_PREFIX):
                report.unexpected[source_key] = f"geometry encoder key outside {OFFICIAL_VGGT_PREFIX!r}"
            continue
        place(source_key, map_fusion_key(canonical))
    qwen_source_of = {_qwen_target(key): key for key in shapes if _qwen_target(key)}
    for target, key in qwen_source_of.items():
        if target in tied:
            # e.g. lm_head.weight saved although tied: must equal the tensor it is tied to
            report.skipped[key] = f"tied to {tied[target]} (checked equal)"
            if tied[target] in qwen_source_of:
                duplicates.append((qwen_source_of[tied[target]], key))
            continue
        place(key, target)
    for key in shapes:
        if canonical_geometry_key(key)[0] is None and _qwen_target(key) is None:
            report.unexpected[key] = "neither a Qwen3-VL key (model.visual., model.language_model., lm_head.) nor a geometry key"
    report.missing = sorted(set(target_shapes) - set(report.mapped) - set(report.mismatched) - set(tied))
    return report, duplicates


def _qwen_prefix(key: str) -> str | None:
    return next((p for p in QWEN_PREFIXES if key.startswith(p)), None)


def _qwen_target(key: str) -> str | None:
    return key if _qwen_prefix(key) else None


# ------------------------------------------------------------------------------------------ conversion
class _ShardReader:
    """Tensors by key across safetensors files, one open handle per file."""

    def __init__(self, location: dict[str, Path]):
        self.location = location
        self.handles = {path: safe_open(str(path), framework="pt") for path in set(location.values())}

    def get(self, key: str) -> torch.Tensor:
        return self.handles[self.location[key]].get_tensor(key)


def check_duplicates(reader: _ShardReader, duplicates, report: ConversionReport) -> None:
    """Record a conflict for every duplicate pair whose values differ (tensors are loaded pair by pair)."""
    for kept, other in duplicates:
        first, second = reader.get(kept), reader.get(other)
        if first.shape != second.shape or not torch.equal(first, second):
            report.conflicts[other] = f"differs from {kept} (max abs difference {(first.float() - second.float()).abs().max().item():.3g})"
            report.skipped.pop(other, None)


def build_meta_model(config: GapMllmConfig):
    """The target model on the meta device: its state-dict shapes, tied keys and remote-code files, no memory."""
    with torch.device("meta"):
        return GapMllmForConditionalGeneration(config)


def convert_official_checkpoint(
    source_dir, output_dir, progress: bool = False, write_processor: bool = True
) -> ConversionReport:
    """Convert an official GAP-MLLM folder into a gap_mllm folder (see the module docstring).

    Every check runs before anything is written: an unmapped, missing or mis-shaped key, or
    duplicates that disagree, raise `ConversionError` naming the keys and leave `output_dir` untouched.

    Args:
        source_dir: the official checkpoint folder (config.json + safetensors).
        output_dir: created; must not already hold a config.json.
        progress: show a byte progress bar while writing.
        write_processor: also convert the tokenizer / image processor into a `GapMllmProcessor` when present.

    Returns:
        the [`ConversionReport`] (mapped, skipped with reasons, notes on detected settings).
    """
    source_dir, output_dir = Path(source_dir), Path(output_dir)
    if (output_dir / "config.json").exists():
        raise FileExistsError(f"{output_dir} already holds a config.json; choose an empty folder")
    files = official_weight_files(source_dir)
    shapes, location = read_official_shapes(files)
    canonical_shapes = {}
    for key, shape in shapes.items():
        canonical, _ = canonical_geometry_key(key)
        canonical_shapes.setdefault(canonical or key, shape)
    notes: list[str] = []
    config = build_config_from_official(json.loads((source_dir / "config.json").read_text()), canonical_shapes, notes)
    model = build_meta_model(config)
    target_shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    report, duplicates = plan_official_conversion(shapes, target_shapes, tied, config.geometry_config)
    report.notes.extend(notes)
    report.raise_if_errors(str(source_dir))
    reader = _ShardReader(location)
    check_duplicates(reader, duplicates, report)
    report.raise_if_errors(str(source_dir))

    # write: output shard i holds the tensors of source shard i, renamed
    source_to_target = {source: target for target, source in report.mapped.items()}
    shard_keys = [[key for key in shapes if location[key] == path and key in source_to_target] for path in files]
    shard_keys = [keys for keys in shard_keys if keys]
    total = sum(_nbytes(shapes[k], reader, k) for keys in shard_keys for k in keys)
    output_dir.mkdir(parents=True, exist_ok=True)
    names = (["model.safetensors"] if len(shard_keys) == 1
             else [f"model-{i + 1:05d}-of-{len(shard_keys):05d}.safetensors" for i in range(len(shard_keys))])
    bar = _progress_bar(progress, total)
    weight_map = {}
    for name, keys in zip(names, shard_keys):
        tensors = {}
        for key in keys:
            tensor = reader.get(key).contiguous()
            tensors[source_to_target[key]] = tensor
            weight_map[source_to_target[key]] = name
            if bar is not None:
                bar.update(tensor.numel() * tensor.element_size())
        save_file(tensors, str(output_dir / name), metadata={"format": "pt"})
        del tensors
    if bar is not None:
        bar.close()
    if len(names) > 1:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (output_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config.save_pretrained(output_dir)
    custom_object_save(model, output_dir, config=config)
    config.save_pretrained(output_dir)  # again: custom_object_save adds the model to auto_map
    for name in COPIED_FILES:
        if (source_dir / name).is_file():
            shutil.copy(source_dir / name, output_dir / name)
    if write_processor:
        _convert_processor(source_dir, output_dir, report)
    report.notes.append(f"wrote {len(weight_map)} tensors in {len(names)} file(s) to {output_dir}")
    return report


def _nbytes(shape, reader: _ShardReader, key: str) -> int:
    handle = reader.handles[reader.location[key]]
    dtype = handle.get_slice(key).get_dtype()
    sizes = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1, "I8": 1, "BOOL": 1}
    count = 1
    for dim in shape:
        count *= dim
    return count * sizes.get(dtype, 4)


def _progress_bar(progress: bool, total: int):
    if not progress:
        return None

    return tqdm(total=total, unit="B", unit_scale=True, desc="writing GAP-MLLM weights")


def _convert_processor(source_dir: Path, output_dir: Path, report: ConversionReport) -> None:
    if not (source_dir / "tokenizer_config.json").is_file():
        report.notes.append("no tokenizer in the source folder: processor not written (save a GapMllmProcessor yourself)")
        return

    processor = GapMllmProcessor.from_pretrained(source_dir)
    processor.save_pretrained(output_dir)
    report.notes.append("processor written (GapMllmProcessor from the source tokenizer and image processor)")


__all__ = [
    "build_config_from_official",
    "canonical_geometry_key",
    "convert_official_checkpoint",
    "map_fusion_key",
    "plan_official_conversion",
    "read_official_shapes",
]
