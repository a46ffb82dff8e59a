"""transformers' "Loading weights" progress bar, off while a small local checkpoint loads.

A checkpoint whose weights are smaller than `SMALL_CHECKPOINT_BYTES` loads in about a second: the bar (one line per
load, redrawn) would be noise in every snippet, demo, predict, evaluate and Space log of GAP-MLLM-Mini (15 M
parameters, 31 MB). `GapMllmPreTrainedModel.from_pretrained` loads through `loading_bar_for`, so the package's own
model loads quietly however it is called (`AutoModel.from_pretrained(folder, trust_remote_code=True)` included: this
module is remote code too); a larger checkpoint, or a Hub id, whose download has its own bars, keeps them.
Light to import (the front ends' argument modules reach it): transformers is imported when a bar is switched off.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

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
