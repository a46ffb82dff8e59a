"""Write GAP-MLLM's language half as a plain Qwen3-VL folder that an engine (vLLM, SGLang, transformers) loads as is.

    folder = export_llm_folder("path/to/gap-mllm", "gap-mllm-llm")      # gap-mllm export-llm SOURCE OUTPUT

The folder holds exactly what a stock `Qwen3VLForConditionalGeneration` checkpoint holds: `config.json`
(`model_type: qwen3_vl`, `architectures: [Qwen3VLForConditionalGeneration]`), the weights in stock names
(`model.language_model.*`, `model.visual.*`, `lm_head.*`, safetensors), `generation_config.json`, the tokenizer with
the GAP chat template, and the Qwen3-VL image/video processor configs (`preprocessor_config.json`,
`video_preprocessor_config.json`) with the GAP processor's patch size, merge size and pixel limits. Plus
`gap_export.json` (which GAP checkpoint it came from, the embedding layout) and a README that says loudly that the
folder's image inputs must be the GAP encoder's embeddings.

The ViT weights are kept although they never run on GAP's embeddings: vLLM builds Qwen3-VL's vision tower whenever
images are allowed, and splits the DeepStack levels only when that tower exists (vllm_settings.py).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import Qwen3VLForConditionalGeneration

from gap_mllm import GapMllmForConditionalGeneration, GapMllmProcessor
from gap_mllm.loading import load_model
from gap_mllm.processing.errors import DiskFullError, device_of, names_full_disk
from gap_mllm.processing.output_folder import OutputFolderRefused, unwritable_reason

EXPORT_INFO_FILE = "gap_export.json"
# the hidden folder an export is written into, next to the target, before it is renamed (`.<name>.partial-<hex>`;
# a killed export leaves it behind, and it can be deleted)
STAGING_SUFFIX = "partial"
EXPORT_FORMAT = "gap-mllm-llm/1"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

README = """# GAP-MLLM language half, as a stock Qwen3-VL folder

**Its image inputs must be the GAP-MLLM encoder's embeddings.** This folder is the language model (and the unused
Qwen3-VL vision tower) of the GAP-MLLM checkpoint `{source}`. Loaded on its own and given images, any engine runs
the *stock Qwen3-VL image path*: no geometry encoder, no fusion — a model that answers without GAP-MLLM's 3D
geometry, silently. Feed it only the precomputed image embeddings of `gap_mllm.serving.GapMllmEncoder` (one
`[tokens, {width}]` tensor per view: main level then {levels} DeepStack levels of {hidden} each, with its
`image_grid_thw` row), e.g. vLLM's `image_embeds` content parts:

    vllm serve <this folder> --enable-mm-embeds --limit-mm-per-prompt '{{"image": 32, "video": 0}}' \\
        --chat-template-content-format openai --structured-outputs-config.backend guidance

and keep the image limit above 0 (with 0 vLLM skips the vision tower and with it the DeepStack split).
`{info}` records the source checkpoint and the layout. Written by `gap-mllm export-llm`.
"""


@dataclass(frozen=True)
class ExportedFolder:
    """What `export_llm_folder` wrote: the folder and the files in it (relative names, sorted)."""

    path: Path
    files: tuple[str, ...]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_fingerprint(source) -> dict[str, str]:
    """`{weights file: sha256}` of a local GAP folder (empty for a Hub id or an in-memory model)."""
    folder = Path(source) if isinstance(source, (str, os.PathLike)) else None
    if folder is None or not folder.is_dir():
        return {}
    return {path.name: _file_sha256(path) for path in sorted(folder.glob("*.safetensors"))}


def stock_qwen3_vl(model: GapMllmForConditionalGeneration, dtype: torch.dtype | None = None) -> Qwen3VLForConditionalGeneration:
    """A stock `Qwen3VLForConditionalGeneration` (not GAP's batched subclass) sharing the weights of `model`'s
    Qwen3-VL part.

    Built on the meta device and filled with `load_state_dict(strict=True, assign=True)`, so no weight is copied
    (unless `dtype` casts) and every stock parameter name must be matched by one of GAP's."""
    with torch.device("meta"):
        stock = Qwen3VLForConditionalGeneration(model.config.to_qwen3_vl_config())
    state = model.qwen3_vl_state_dict()
    if dtype is not None:
        state = {name: tensor.to(dtype) if tensor.is_floating_point() else tensor for name, tensor in state.items()}
    stock.load_state_dict(state, strict=True, assign=True)
    stock.tie_weights()
    stock.generation_config = model.generation_config
    stock.config.dtype = next(stock.parameters()).dtype
    return stock.eval()


def _make_tokenizer_config_stock(folder: Path) -> None:
    """The GAP tokenizer config names `GapMllmProcessor` (remote code the folder does not carry): name the stock one."""
    path = folder / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config.pop("auto_map", None)
    config["processor_class"] = "Qwen3VLProcessor"
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _image_processor_files(processor: GapMllmProcessor, folder: Path) -> list[str]:
    """Stock Qwen3-VL processor configs with the GAP processor's sizes (the engine never resizes GAP's embeddings;
    these keep the folder loadable by `Qwen3VLProcessor` and record the limits the encoder half used)."""
    image_processor = processor.image_processor
    min_pixels, max_pixels = processor.pixel_limits
    image = image_processor.to_dict()
    image.pop("auto_map", None)
    image.update(size={"shortest_edge": min_pixels, "longest_edge": max_pixels}, image_processor_type="Qwen2VLImageProcessor",
                 processor_class="Qwen3VLProcessor")
    # Qwen3VLProcessor needs a video processor; GAP serves no videos (limit 0), the other settings stay the class defaults.
    video = {key: image[key] for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")}
    video.update(video_processor_type="Qwen3VLVideoProcessor", processor_class="Qwen3VLProcessor")
    written = []
    for name, content in (("preprocessor_config.json", image), ("video_preprocessor_config.json", video)):
        (folder / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")
        written.append(name)
    return written


def export_llm_folder(source, output_dir, dtype: str | None = None, model: GapMllmForConditionalGeneration | None = None,
                      processor: GapMllmProcessor | None = None) -> ExportedFolder:
    """Write the language half of a GAP-MLLM checkpoint as a stock Qwen3-VL folder (see the module docstring).

    Args:
        source: a GAP-MLLM folder or Hub id (recorded in `gap_export.json`; loaded unless `model`/`processor` given).
        output_dir: a new or empty folder.
        dtype: "float32", "bfloat16" or "float16" to cast the weights (default: keep the checkpoint's).
        model, processor: an already loaded GAP-MLLM and its processor (then `source` only names them).

    The files are written into a hidden folder next to `output_dir` that is renamed to it when complete: a failed
    export (a full disk, an interrupt) leaves no folder behind, and the same command can simply be run again.

    Raises:
        FileExistsError: `output_dir` exists and is not empty (nothing is overwritten).
        OutputFolderRefused: the folder that would hold `output_dir` cannot be written (read-only, no permission),
            checked before the model is loaded.
        ValueError: an unknown dtype, or a source that is not a GAP-MLLM.
        DiskFullError: the device filled up while writing (the partial export is removed).
    """
    output = Path(output_dir)
    _check_new_folder(output)
    # the export is written beside `output` and renamed: the folder that holds it must be writable, known now rather
    # than after the model is loaded and converted
    unwritable = unwritable_reason(output.parent / f".{output.name}.{STAGING_SUFFIX}")
    if unwritable is not None:
        raise OutputFolderRefused(f"OUTPUT_DIR {output} cannot be written: {unwritable} (the export is written into a "
                                  "hidden folder beside OUTPUT_DIR, then renamed); give an OUTPUT_DIR in a folder you "
                                  "can write to")
    if dtype is not None and dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    model = model if model is not None else load_model(source)
    processor = processor if processor is not None else GapMllmProcessor.from_pretrained(source)
    if not isinstance(model, GapMllmForConditionalGeneration):
        raise ValueError(f"{source}: expected a GAP-MLLM checkpoint, got {type(model).__name__}")

    stock = stock_qwen3_vl(model, _DTYPES[dtype] if dtype else None)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.{STAGING_SUFFIX}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()  # the permissions a new folder gets (the umask's), which it keeps when renamed
    try:
        _write_export(staging, stock, model, processor, source)
        _check_new_folder(output)  # still new or empty: nothing appeared there while the export was written
        if output.is_dir():
            output.rmdir()
        staging.rename(output)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, Exception) and names_full_disk(error):
            weights = sum(t.numel() * t.element_size() for t in stock.state_dict().values())
            raise DiskFullError(errno.ENOSPC, f"no space left on {device_of(output.parent)} while writing the export "
                                f"into {output} (its weights take {weights / 2**20:.0f} MB); the partial export was "
                                "removed: free space there (or export elsewhere), then run export-llm again") from error
        raise
    files = tuple(sorted(str(path.relative_to(output)) for path in output.rglob("*") if path.is_file()))
    return ExportedFolder(path=output, files=files)


def _check_new_folder(output: Path) -> None:
    """FileExistsError unless `output` is missing or an empty folder (an export never overwrites anything)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"{output}: exists and is not an empty folder; export-llm writes into a new folder")


def _write_export(output: Path, stock: Qwen3VLForConditionalGeneration, model: GapMllmForConditionalGeneration,
                  processor: GapMllmProcessor, source) -> None:
    """Every file of the export (module docstring) into the folder `output`."""
    stock.save_pretrained(output)
    processor.tokenizer.save_pretrained(output)
    _make_tokenizer_config_stock(output)
    if processor.chat_template and not (output / "chat_template.jinja").exists():
        (output / "chat_template.jinja").write_text(processor.chat_template)
    _image_processor_files(processor, output)

    vision = model.config.vision_config
    levels = len(vision.deepstack_visual_indexes)
    info = {
        "format": EXPORT_FORMAT,
        "source": str(source),
        "source_weights_sha256": _weights_fingerprint(source),
        "use_geometry": bool(model.config.use_geometry),
        "fusion_method": model.config.geometry_fusion_config.method if model.config.use_geometry else None,
        "preprocessing_mode": processor.preprocessing_mode,
        "image_inputs": "precomputed embeddings of the GAP-MLLM encoder (gap_mllm.serving.GapMllmEncoder) only; "
                        "a stock image path would ignore the geometry",
        "embedding_layout": {"hidden_size": vision.out_hidden_size, "num_deepstack_levels": levels,
                             "width": (1 + levels) * vision.out_hidden_size,
                             "order": ["main"] + [f"deepstack_{k}" for k in range(levels)]},
        "dtype": str(stock.dtype).removeprefix("torch."),
    }
    (output / EXPORT_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (output / "README.md").write_text(README.format(source=source, width=info["embedding_layout"]["width"], levels=levels,
                                                    hidden=vision.out_hidden_size, info=EXPORT_INFO_FILE))


def read_export_info(folder) -> dict:
    """`gap_export.json` of an exported folder; a clear error when the folder is not an `export-llm` output."""
    path = Path(folder) / EXPORT_INFO_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {EXPORT_INFO_FILE}; not a folder written by `gap-mllm export-llm`")
    info = json.loads(path.read_text())
    if info.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path}: format {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
    return info


__all__ = ["EXPORT_INFO_FILE", "ExportedFolder", "export_llm_folder", "read_export_info", "stock_qwen3_vl"]
