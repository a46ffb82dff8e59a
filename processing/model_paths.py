"""Whether a model name given by a user (`--model`, `model.name_or_path`) means a local folder that is not there.

transformers reads a name that is not an existing folder as a Hub repo id, so a mistyped local path such as
`checkpoints/my-run` (a valid `org/name` form) spends a minute on network retries and ends in a message about the
Hub. A name is taken for a local folder when it cannot be a Hub repo id (more than one `/`, characters a repo id
does not allow, a leading `.`, `/` or `~`) or when its parent folder exists here (`checkpoints/` is a folder of
this machine, not a Hub organisation). One rule for the command line (cli/model_source.py) and training
(training/model_loading.py).
"""

from __future__ import annotations

import re
from pathlib import Path

# the quiet load of a small local checkpoint: the model's own rule (remote code, so it lives in the model's folder)
from gap_mllm.loading_bar import SMALL_CHECKPOINT_BYTES, local_weight_bytes, loading_bar_for  # noqa: F401

HUB_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")  # org/name, the form a Hub model id takes


def missing_local_folder(name: str) -> Path | None:
    """The absolute path `name` stands for when it means a local folder that does not exist; None when it is an
    existing folder or file, or can only be a Hub repo id."""
    path = Path(name).expanduser()
    if path.exists():
        return None
    looks_local = (not HUB_REPO_ID.match(name) or name.startswith((".", "~", "/"))
                   or path.parent.is_dir() and path.parent != Path("."))
    return path.resolve() if looks_local else None
