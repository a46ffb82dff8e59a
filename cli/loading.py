"""Loading a GAP-MLLM for the front ends exactly as a user would: Auto classes + trust_remote_code.

`model` is a local folder or a Hub repo id (the Hub cache and HF_HUB_OFFLINE apply as usual), "mini"
(the default of every front end): the embedded GAP-MLLM-Mini trained by this package on SynthRooms
(gap_mllm.mini.default_model_path), or "tiny": the tiny, UNTRAINED test model built into a temporary folder first
(no download; the folder is removed when the process exits), which exercises the whole pipeline but answers noise.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig, AutoModel, AutoProcessor

from gap_mllm.loading import load_model
from gap_mllm.processing.model_paths import place_loaded_model, quantization_kwargs
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

from .errors import UserError
from .model_source import (
    GAP_MLLM_MODEL_TYPE,
    MINI,
    TINY,
    check_model_source,
    load_pretrained,
    not_gap_mllm_message,
    resolve_model_source,
)

MINI_NOTICE = ("GAP-MLLM-Mini, the miniature GAP-MLLM trained by this package on SynthRooms (`make mini`): it knows "
               "SynthRooms rooms only, so try the bundled examples; on real photos its answers are meaningless.")
# The tasks GAP-MLLM-Mini was trained on (`make mini`'s stage 2): it never saw a spatial question
MINI_TASKS = ("detection", "grounding", "captioning", "reconstruction")
MINI_UNTRAINED_TASK_NOTE = ("note: GAP-MLLM-Mini never trained on {task}: its answer is untrained; the tasks it "
                            f"learnt are {', '.join(MINI_TASKS)}")
UNTRAINED_NOTICE = ("This is the tiny, randomly initialised GAP-MLLM: the weights are UNTRAINED, so the answers "
                    "are noise. It shows the real pipeline; the default, --model mini, is the trained GAP-MLLM-Mini.")


def temporary_model_folder(prefix: str) -> Path:
    """A new folder in the system's temporary folder for a model built on the fly (the tiny test models), removed
    when the process exits: the front ends read it until then (the config and processor first, the weights later),
    and each run builds its own."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def tiny_model_folder(folder=None) -> Path:
    """Save the tiny model + processor as a Hub-style folder (by default a temporary one, removed at exit)."""

    folder = Path(folder) if folder is not None else temporary_model_folder("gap-mllm-tiny-")
    return save_tiny_checkpoint(folder)


@dataclass
class ModelSource:
    """What a front end reads of a model before its weights: where it is (`source`, a folder or Hub id), its
    `config` and its `processor`, whether it is the tiny test model. Enough to check a request whole (the query's
    tokens, the frames as the processor reads them, the model's context, the memory the weights and frames take:
    cli/tasks.py `check_request`) before the weights load. `source` was checked (`check_model_source`) when the config
    was read, and is not checked again."""

    source: str
    config: object
    processor: object
    is_tiny: bool
    flag: str = "--model"

    def load_model(self, device: str = "cpu", quantize: str | None = None):
        """The model itself, in eval mode (the weights: the slow part); `quantize`: a `--quantize` choice
        (`gap_mllm.processing.model_paths.quantization_kwargs`), None: as saved."""
        kwargs = quantization_kwargs(quantize, device)
        # the package's load: its checkpoint checks (a damaged folder refused by name) and batch-wide paths
        model = load_pretrained(functools.partial(load_model, loader=AutoModel.from_pretrained), self.source, self.flag,
                                checked=True, trust_remote_code=True, **kwargs)
        return place_loaded_model(model, device, kwargs).eval()


def load_model_source(model: str = MINI, flag: str = "--model", source: str | None = None,
                      checked: bool = False) -> ModelSource:
    """The config and processor of `model` ("mini", "tiny", a folder or Hub id), without its weights. A source that
    cannot be loaded (no such folder, an empty one, refused files, an unreachable Hub id, a checkpoint of another
    model type) is a `UserError` naming it (`cli/model_source.py`).

    Args:
        source: the folder or Hub id `model` names, when the caller resolved it (`resolve_model_source`); None:
            resolved here.
        checked: `source` was checked (`check_model_source`: a command's early check did); else it is checked here,
            once.
    """
    is_tiny = model == TINY
    if source is None:
        source = str(tiny_model_folder()) if is_tiny else resolve_model_source(model)
    if not checked:
        source = check_model_source(source, flag)
    config = load_pretrained(AutoConfig.from_pretrained, source, flag, checked=True, trust_remote_code=True)
    model_type = getattr(config, "model_type", None)
    if model_type != GAP_MLLM_MODEL_TYPE:  # a Hub model of a type transformers knows (a folder is checked before)
        raise UserError(not_gap_mllm_message(source, model_type, flag))
    processor = load_pretrained(AutoProcessor.from_pretrained, source, flag, checked=True, trust_remote_code=True)
    return ModelSource(source, config, processor, is_tiny, flag)


def load_model_and_processor(model: str = MINI, device: str = "cpu", flag: str = "--model",
                              found: ModelSource | None = None, source: str | None = None, quantize: str | None = None):
    """`(model, processor, is_tiny)`, the model in eval mode (`load_model_source`, then the weights; `found`: its
    `ModelSource` already read, as `gap-mllm predict` reads it to check a request first; `source`: the folder or Hub
    id `model` names, resolved by the caller; `quantize`: a `--quantize` choice, `ModelSource.load_model`). A source
    that cannot be loaded (no such folder, an empty one, truncated weights, refused pickle weights, an unreachable Hub
    id, a checkpoint of another model type) is a `UserError` naming it (`cli/model_source.py`)."""
    found = found if found is not None else load_model_source(model, flag, source=source)
    return found.load_model(device, quantize), found.processor, found.is_tiny
