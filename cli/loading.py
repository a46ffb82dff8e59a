"""Loading a GAP-MLLM for the front ends exactly as a user would: Auto classes + trust_remote_code.

`model` is a local folder or a Hub repo id (the Hub cache and HF_HUB_OFFLINE apply as usual).
"tiny" builds the embedded tiny, UNTRAINED model into a folder first (no download): it exercises the
whole pipeline, but its answers are noise.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

TINY = "tiny"
UNTRAINED_NOTICE = ("This is the tiny, randomly initialised GAP-MLLM: the weights are UNTRAINED, so the answers "
                    "are noise. The demo shows the real pipeline; load a trained checkpoint with --model.")


def tiny_model_folder(folder=None) -> Path:
    """Save the tiny model + processor as a Hub-style folder (a fresh temporary one by default)."""
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="gap-mllm-tiny-"))
    return save_tiny_checkpoint(folder)


def load_model_and_processor(model: str = TINY, device: str = "cpu", flag: str = "--model"):
    """`(model, processor, is_tiny)`, the model in eval mode. A source that cannot be loaded (no such
    folder, an empty one, truncated weights, refused pickle weights, an unreachable Hub id) is a
    `UserError` naming it (`cli/model_source.py`)."""
    from transformers import AutoModel, AutoProcessor

    from .model_source import load_pretrained

    is_tiny = model == TINY
    source = str(tiny_model_folder()) if is_tiny else model
    loaded = load_pretrained(AutoModel.from_pretrained, source, flag, trust_remote_code=True).to(device).eval()
    processor = load_pretrained(AutoProcessor.from_pretrained, source, flag, trust_remote_code=True)
    return loaded, processor, is_tiny
