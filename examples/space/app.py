"""Hugging Face Space entry point for GAP-MLLM (also run locally by `gap-mllm space`).

Settings come from the environment (Space variables), then from `space_defaults.json` beside this file when
bundle_space.py wrote one (the bundled checkpoint), then the defaults below:
    GAP_MLLM_MODEL        a Hub id or folder; "mini" (default) = the embedded GAP-MLLM-Mini, "tiny" = the untrained test model
    GAP_MLLM_MAX_TOKENS   a cap on the generation budget per answer; unset (default): each task's own budget
                          (tasks_gap_mllm.py; generation stops at the answer's end), e.g. 1,280 for detection
    GAP_MLLM_QUANTIZE     a `--quantize` choice (int8, int4: optimum-quanto; bnb-int8, bnb-nf4: bitsandbytes on CUDA);
                          unset (default): the weights as saved
    GAP_MLLM_HOST/PORT    default 0.0.0.0:7860 on a Space (SPACE_ID is set there), 127.0.0.1 locally
On ZeroGPU hardware each request's model work runs inside `@spaces.GPU` (gap_mllm/cli/space_backend.py); on CPU Basic
the same code runs on the CPU.
"""

import json
import os
from pathlib import Path

from gap_mllm.cli.space_backend import SpaceSettings, max_new_tokens_from_environment
from gap_mllm.cli.space_ui import launch

DEFAULTS_FILE = Path(__file__).resolve().parent / "space_defaults.json"

if __name__ == "__main__":
    if DEFAULTS_FILE.is_file():  # the bundle's checkpoint; a Space variable of the same name wins
        for name, value in json.loads(DEFAULTS_FILE.read_text(encoding="utf-8")).items():
            os.environ.setdefault(name, str(value))
    on_space = "SPACE_ID" in os.environ  # Spaces must listen on all interfaces; a laptop should not
    launch(
        SpaceSettings(model=os.environ.get("GAP_MLLM_MODEL", "mini"), max_new_tokens=max_new_tokens_from_environment(),
                      quantize=os.environ.get("GAP_MLLM_QUANTIZE") or None),
        host=os.environ.get("GAP_MLLM_HOST", "0.0.0.0" if on_space else "127.0.0.1"),
        port=int(os.environ.get("GAP_MLLM_PORT", "7860")),
    )
