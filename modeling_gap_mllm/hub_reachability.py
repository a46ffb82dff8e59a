"""A Hub checkpoint named while the Hub cannot be reached: one line at once, not a minute of retries.

transformers asks the Hub for every file of a repo id, and huggingface_hub retries a failed connection with
back-off: `from_qwen3_vl("Qwen/Qwen3-VL-2B-Instruct")` on a machine without network took 57-69 s to end in a
page-long OSError. `hub_loading_kwargs` asks once, with a short timeout and no retries (the metadata of the repo's
config.json), before the load: a Hub that answers, even with an error (no such repo, gated), lets the load go on as
usual; one that cannot be reached loads a checkpoint in the local Hub cache from the cache alone, and refuses one that
is not there, in one line naming it. A local folder, and `HF_HUB_OFFLINE=1`, are left to transformers.
"""

from __future__ import annotations

import os

PROBE_TIMEOUT_S = 5.0  # one metadata request; a reachable Hub answers in well under a second
PROBE_FILE = "config.json"  # every transformers checkpoint has one


def hub_unreachable(repo_id: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why the Hub cannot be reached for `repo_id` (the connection error, in words), or None when it answered (any
    HTTP answer counts, an error status included: transformers then says what it means)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo_id, PROBE_FILE), timeout=timeout)
    except HfHubHTTPError:  # an answer: no such repo, gated, a server error; not a connection problem
        return None
    except Exception as error:  # noqa: BLE001 - DNS, refused connection, timeout, proxy: every way of no answer
        return f"{type(error).__name__}: {error}".splitlines()[0]
    return None


def hub_loading_kwargs(name_or_path, what: str = "checkpoint") -> dict:
    """Extra `from_pretrained` arguments for loading `name_or_path` (module docstring): `{}` for a local folder, in
    offline mode or when the Hub answers; `{"local_files_only": True}` when it cannot be reached but the checkpoint is
    in the local Hub cache.

    Raises:
        OSError: the Hub cannot be reached and `name_or_path` is not in the local Hub cache (one line naming it).
    """
    from huggingface_hub import constants, is_offline_mode, try_to_load_from_cache

    name = str(name_or_path)
    if os.path.isdir(name) or is_offline_mode():
        return {}
    problem = hub_unreachable(name)
    if problem is None:
        return {}
    if isinstance(try_to_load_from_cache(name, PROBE_FILE), str):
        return {"local_files_only": True}
    raise OSError(f"{what} {name}: the Hub ({constants.ENDPOINT}) cannot be reached ({problem}) and {name} is not in "
                  "the local Hub cache; connect to the network, or give a local folder of the checkpoint")
