"""The SynthRooms data a `python -m lab.mini` run reads: written once, and refused when the folder holds anything
else. Shared by the run's own data (lab/mini/pipeline.py) and the fresh-seed scenes a release is judged on
(lab/mini/fresh_seeds.py)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gap_mllm.processing.dataset_identity import read_dataset_info
from gap_mllm.processing.output_folder import clean_leftovers
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.writer import setting_differences, write_dataset_folder

logger = logging.getLogger(__name__)

# the marker of the folders the pipeline writes for itself (processing/output_folder.py): a fixed name, which the
# data folders written so far carry, so the pipeline keeps reusing them
MINI_COMMAND = "gap-mllm mini"


def ensure_synth_data(folder: Path, config, splits: dict[str, int], named: str, workers: int = 1, remedy: str = "",
                      budget: str | None = None) -> dict:
    """The SynthRooms data of `config` and `splits` in `folder`: left as it is when it holds exactly that, else written.

    The data are written beside the folder and renamed into place when complete (`write_dataset_folder`), so a
    killed run leaves no half folder: the rerun deletes its leftover and writes the data again.

    Raises:
        ValueError: the folder holds something else (other SynthRooms settings or scene counts, or files that are
            not SynthRooms data): it is never deleted or written into, since it may be the user's own data.
    """
    clean_leftovers(Path(os.path.abspath(folder)))  # a data folder a kill left moved aside comes back first
    info = read_dataset_info(folder)  # a malformed file: a DataError naming it
    if info is not None:
        counts = {k: len(v) for k, v in info["splits"].items()}
        settings = setting_differences(info, config)  # each with both values
        if not settings and counts == splits:
            logger.info("data: %s is up to date", folder)
            return info
        held = f"scenes {counts}" + (f" of other SynthRooms settings ({'; '.join(settings)})" if settings else "")
        needs = f"this budget ({budget}) needs the mini preset's scenes" if budget else "this run needs the scenes"
        raise ValueError(f"{named} holds {held}; {needs} {splits}. {remedy}")
    logger.info("data: writing %s scenes to %s", splits, folder)
    return write_dataset_folder(folder, SynthRooms(config), splits, command=MINI_COMMAND, option="--data",
                                overwrite_option=None, named=named, workers=workers)
