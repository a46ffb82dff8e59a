"""Whether a model name given by a user (`--model`, `model.name_or_path`) means a local folder that is not there.

transformers reads a name that is not an existing folder as a Hub repo id, so a mistyped local path such as
`checkpoints/my-run` (a valid `org/name` form) spends a minute on network retries and ends in a message about the
Hub. A name is taken for a local folder when it cannot be a Hub repo id (more than one `/`, characters a repo id
does not allow, a leading `.`, `/` or `~`) or when its parent folder exists here (`checkpoints/` is a folder of
this machine, not a Hub organisation). One rule for the command line (cli/model_source.py) and training
(training/model_loading.py).

Also the front ends' quiet load of a small local checkpoint (`loading_bar_for`): transformers' weight-loading bar off
for a folder under `SMALL_CHECKPOINT_BYTES`, and their `--quantize` choice (`quantization_kwargs`), one rule for
`gap-mllm predict`, `evaluate` and the Space.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from contextlib import contextmanager
from pathlib import Path

from .errors import MissingDependency
from .path_containment import resolve_path

HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name, the form a Hub model id takes


def missing_local_folder(name: str) -> Path | None:
    """The absolute path `name` stands for when it means a local folder that does not exist; None when it is an
    existing folder or file, or can only be a Hub repo id. A symbolic link loop on the way raises `OSError` (errno
    ELOOP) naming the path."""
    path = Path(name).expanduser()
    if path.exists():
        return None
    looks_local = (not HUB_REPO_ID.match(name) or name.startswith((".", "~", "/"))
                   or path.parent.is_dir() and path.parent != Path("."))
    return resolve_path(path) if looks_local else None


SMALL_CHECKPOINT_BYTES = 256 * 2**20


def local_weight_bytes(name) -> int | None:
    """The total size of the safetensors / bin weight files of local folder `name`; None when it is no folder."""
    path = Path(str(name)).expanduser()
    if not path.is_dir():
        return None
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in path.glob(pattern) if f.is_file())


@contextmanager
def loading_bar_for(name):
    """transformers' weight-loading progress bar off, while loading `name`, when it is a local checkpoint smaller than
    `SMALL_CHECKPOINT_BYTES`; as it was otherwise, and after."""
    size = local_weight_bytes(name)
    if size is None or size >= SMALL_CHECKPOINT_BYTES:
        yield
        return
    from huggingface_hub import utils as hub_utils  # here: loaded with transformers, not by the light importers
    from transformers.utils import logging as transformers_logging

    was_on, hub_was_off = transformers_logging.is_progress_bar_enabled(), hub_utils.are_progress_bars_disabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_on:
            with warnings.catch_warnings():  # enabling warns when HF_HUB_DISABLE_PROGRESS_BARS is set
                warnings.simplefilter("ignore")
                transformers_logging.enable_progress_bar()
            if hub_was_off:  # enable_progress_bar turns the Hub's bars on too: keep them as they were
                hub_utils.disable_progress_bars()


# `--quantize`: the language model's Linear layers converted at load by transformers' own quantizers. The vision tower,
# the geometry encoder, the mergers and the gates stay as loaded (the model class's `_keep_in_fp32_modules`, which
# transformers' quantizers skip), and so does `lm_head` (transformers' default: the output embeddings are skipped).
# int8/int4: optimum-quanto's weight-only kernels, on the CPU and CUDA (chosen by measurement: bench/README.md);
# bnb-int8/bnb-nf4: bitsandbytes, for CUDA.
QUANTIZE_CHOICES = ("int8", "int4", "bnb-int8", "bnb-nf4")
# choice -> (the module it imports, its package, the package's extra: None for bitsandbytes, CUDA machines only)
QUANTIZE_PACKAGES = {**dict.fromkeys(("int8", "int4"), ("optimum.quanto", "optimum-quanto", "quantize")),
                     **dict.fromkeys(("bnb-int8", "bnb-nf4"), ("bitsandbytes", "bitsandbytes", None))}


def quantize_missing(quantize: str | None) -> str | None:
    """The line saying which package `--quantize QUANTIZE` needs and how to install it, when it is not installed (looked
    up, not imported); None when it is, or for no quantization. ValueError: a choice not in `QUANTIZE_CHOICES`."""
    if quantize is None:
        return None
    if quantize not in QUANTIZE_PACKAGES:
        raise ValueError(f"--quantize {quantize!r}: one of {', '.join(QUANTIZE_CHOICES)}")
    module, package, extra = QUANTIZE_PACKAGES[quantize]
    if importlib.util.find_spec(module.split(".")[0]) is not None and importlib.util.find_spec(module) is not None:
        return None
    how = f"pip install 'gap-mllm[{extra}]'" if extra else f"pip install {package} (on a CUDA machine)"
    return f"--quantize {quantize} needs {package}, which is not installed: {how}"


def quantization_kwargs(quantize: str | None, device="cpu") -> dict:
    """The `from_pretrained` keyword arguments of `--quantize QUANTIZE` (`QUANTIZE_CHOICES`) for a model that runs on
    `device`: `quantization_config` (and, for bitsandbytes, which quantizes onto the device it loads on,
    `device_map`); {} for None. `MissingDependency` naming the package and how to install it when it is missing."""
    missing = quantize_missing(quantize)
    if missing is not None:
        raise MissingDependency(missing)
    if quantize is None:
        return {}
    import torch
    from transformers import BitsAndBytesConfig, QuantoConfig

    if quantize in ("int8", "int4"):
        return {"quantization_config": QuantoConfig(weights=quantize)}
    config = (BitsAndBytesConfig(load_in_8bit=True) if quantize == "bnb-int8" else
              BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16))
    return {"quantization_config": config, "device_map": {"": str(device)}}


def place_loaded_model(model, device, load_kwargs: dict):
    """`model`, loaded with `from_pretrained(**load_kwargs)`, on `device`: a load that named a `device_map` (bitsandbytes
    quantizes onto the device it loads on: `quantization_kwargs`) placed it already and moving it again is refused by
    transformers, so it stays where it is; any other is moved with `.to(device)`."""
    return model if "device_map" in load_kwargs else model.to(device)
