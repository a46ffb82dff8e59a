"""The model and processor a recipe trains (`model:` of a recipe): a saved GAP-MLLM folder or Hub id, or a
freshly initialised model of a named size (`model.tiny`).

Fresh sizes are builders found by name. "tiny" and "small" (the test sizes of `gap_mllm.tiny`) are built in;
any other size is an entry point of the group `gap_mllm.fresh_models` (`name = module:builder`) that an
installed package declares, so training finds a builder without importing the package that defines it.
GAP-MLLM-Mini declares "mini" this way (setup.py: `gap_mllm.mini.mini_config:build_mini_model`): `gap_mllm.mini`
sits a layer above training (tests/test_layering.py), so this package does not import it. A builder takes
`fusion_method`, `use_geometry` and `seed` and returns `(model, processor)`.

A fresh model can start from trained encoders (`model.encoders_from`): the geometry encoder and the Qwen ViT of a
saved folder are copied in (`load_encoder_weights`). The miniature's stage 1 (and its "stage 2 only" ablation arm)
starts from the stage-0 encoders with a freshly initialised LLM, mergers and fusions, like the official stage 1
starts from pretrained VGGT-1B and Qwen3-VL with new fusion modules. A model without geometry
(`use_geometry=False`) takes the ViT only.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from pathlib import Path

import torch

from gap_mllm import GapMllmProcessor
from gap_mllm.loading import load_model
from gap_mllm.processing.model_paths import missing_local_folder
from gap_mllm.tiny.tiny_model import build_tiny_model

from .checkpoints import load_model_weights
from .config import ModelSource

logger = logging.getLogger(__name__)

FRESH_MODEL_GROUP = "gap_mllm.fresh_models"
BUILT_IN_SIZES = ("tiny", "small")
ENCODER_PREFIXES = {"geometry_encoder": "model.geometry_encoder.", "vision_tower": "model.visual."}


def fresh_sizes() -> tuple[str, ...]:
    """Every fresh size: the built-in ones, then the entry points of `FRESH_MODEL_GROUP` (e.g. "mini")."""
    declared = [entry.name for entry in entry_points(group=FRESH_MODEL_GROUP)]
    return BUILT_IN_SIZES + tuple(name for name in dict.fromkeys(declared) if name not in BUILT_IN_SIZES)


def fresh_model_builder(size: str):
    """The builder of a fresh size; an entry point's module is imported only now, when its size is built."""
    if size in BUILT_IN_SIZES:
        return functools.partial(build_tiny_model, size=size)
    for entry in entry_points(group=FRESH_MODEL_GROUP):
        if entry.name == size:
            return entry.load()
    raise ValueError(f"model.tiny={size!r}; choose from {fresh_sizes()} (sizes other than {' and '.join(BUILT_IN_SIZES)} "
                     f"are entry points of the group {FRESH_MODEL_GROUP!r} of an installed package: if 'mini' is "
                     "missing, reinstall gap-mllm, e.g. pip install -e .)")


def build_fresh_model(source: ModelSource):
    """A freshly initialised model of size `source.tiny` (e.g. "tiny", "small", "mini") with its processor."""
    builder = fresh_model_builder(source.tiny)
    return builder(fusion_method=source.fusion_method, use_geometry=source.use_geometry, seed=source.seed)


def check_model_folder(name_or_path: str) -> None:
    """ValueError naming `model.name_or_path` when it means a local folder that is missing (processing/model_paths.py:
    a Hub id would otherwise be tried, with a minute of retries offline) or that holds no saved checkpoint."""
    if str(name_or_path) == "mini" and not Path("mini", "config.json").is_file():
        # `gap-mllm train` reads the name (cli/train.py); a run started another way (python -m, accelerate) does not
        raise ValueError("model.name_or_path=mini names the embedded GAP-MLLM-Mini under `gap-mllm train` only; "
                         "started otherwise, give its folder: python -c 'from gap_mllm.mini import default_model_path; "
                         "print(default_model_path())'")
    missing = missing_local_folder(str(name_or_path))
    if missing is not None:
        raise ValueError(f"model.name_or_path={name_or_path}: no such folder {missing} (train the stage that writes it "
                         "first, or give a GAP-MLLM checkpoint folder or Hub id)")
    path = Path(name_or_path).expanduser()
    if path.is_dir() and not (path / "config.json").is_file():
        raise ValueError(f"model.name_or_path={name_or_path}: {path.resolve()} has no config.json, so it is not a saved "
                         "checkpoint (the embedded GAP-MLLM-Mini's folder is gap_mllm.mini.default_model_path())")


def load_model_and_processor(source: ModelSource):
    """(GapMllmForConditionalGeneration, GapMllmProcessor) from `source` (a folder / Hub id, or a fresh size)."""
    if source.tiny:
        model, processor = build_fresh_model(source)
        if source.encoders_from:
            copied = load_encoder_weights(model, source.encoders_from, source.encoders)
            logger.info("copied %d encoder tensors from %s", len(copied), source.encoders_from)
        if source.dtype not in ("auto", "float32"):
            model = model.to(getattr(torch, source.dtype))
        return model, processor
    if not source.name_or_path:
        raise ValueError("model.name_or_path (a GAP-MLLM folder or Hub id) or model.tiny must be set")
    if source.encoders_from:
        raise ValueError("model.encoders_from applies to a fresh model (model.tiny), not to model.name_or_path")
    check_model_folder(source.name_or_path)
    kwargs = {"dtype": source.dtype, "trust_remote_code": source.trust_remote_code}
    if source.attn_implementation:
        kwargs["attn_implementation"] = source.attn_implementation
    model = load_model(source.name_or_path, **kwargs)
    processor = GapMllmProcessor.from_pretrained(source.name_or_path)
    return model, processor


# ------------------------------------------------------------------------------------------ encoders of a saved folder


@torch.no_grad()
def load_encoder_weights(model, folder, encoders=tuple(ENCODER_PREFIXES)) -> list[str]:
    """Copy every tensor of the given `encoders` ("geometry_encoder": `geometry_encoder.*`, "vision_tower":
    `model.visual.*`) of `folder` into `model`.

    Strict on what the model has under those prefixes: a missing or mis-shaped tensor raises a
    ValueError naming it. Returns the names copied.
    """
    unknown = set(encoders) - set(ENCODER_PREFIXES)
    if unknown:
        raise ValueError(f"unknown encoder(s) {sorted(unknown)}; choose from {sorted(ENCODER_PREFIXES)}")
    prefixes = tuple(ENCODER_PREFIXES[name] for name in encoders)
    folder = Path(folder)
    source = load_model_weights(folder)
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
