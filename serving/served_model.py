"""Which model an OpenAI-compatible server serves, checked before a GAP encoder sends it anything.

The encoder half and the served language half must come from ONE GAP-MLLM checkpoint: the language half of another
checkpoint accepts the same embedding width and answers, wrongly and silently. vLLM's `/v1/models` lists each served
model as `{"id": served name, "root": the folder it loaded, "max_model_len": ...}`, and `gap-mllm export-llm` writes
`gap_export.json` into that folder (`source`, the sha256 of the source's weights files, the embedding layout). So:

    check_served_model(url, "gap-mllm", source="path/to/gap-mllm")

refuses a server that does not answer (named by its URL), one that serves no model of that name (the names it serves
are listed), a served folder that is no `export-llm` output, or one exported from other weights than `source`. The
folder is read where the server says it is (`root`), so the check needs the client to see it at that path (the same
machine or a shared file system); otherwise it says so and `verify_export=False` skips it, explicitly.

A server that does not answer is a `ServerUnreachableError` (a ConnectionError) whose one line names the URL and the
`vllm serve` command that starts one (`openai_payload.unreachable_message`), here and in `post_chat_completion`.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

from .export import _weights_fingerprint, read_export_info
from .openai_payload import ServerUnreachableError, post_chat_completion, unreachable_message


def served_models(base_url: str, timeout: float = 30.0) -> list[dict]:
    """The model cards of `{base_url}/v1/models` (`id`, `root`, ...)."""
    url = base_url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as error:
        raise RuntimeError(f"{url}: HTTP {error.code}: {error.read().decode(errors='replace')[:2000]}") from error
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        raise ServerUnreachableError(unreachable_message(base_url, error)) from error
    try:
        cards = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"{url}: not an OpenAI model list: {body[:300]!r}") from None
    if not isinstance(cards, list) or not all(isinstance(card, dict) for card in cards):
        raise ValueError(f"{url}: not an OpenAI model list ('data' must be a list of model objects): {body[:300]!r}")
    return list(cards)


def check_export_source(info: dict, source, where: str = "the served folder") -> None:
    """ValueError unless an `export-llm` folder's `gap_export.json` (`info`) names the GAP checkpoint `source`: the
    same weights files (sha256) when both sides have them (a local folder), else the same Hub id / path."""
    exported = info.get("source_weights_sha256") or {}
    local = _weights_fingerprint(source)
    if exported and local:
        if exported != local:
            raise ValueError(f"{where} was exported from other weights than {source} ({info.get('source')}: "
                             f"{', '.join(sorted(exported))}); serve the export of {source}, or load the GAP folder it came from")
        return
    if str(info.get("source")) != str(source):
        raise ValueError(f"{where} was exported from {info.get('source')!r}, not {str(source)!r} (no weights hashes to compare "
                         "on both sides); serve the export of this checkpoint")


def check_served_model(base_url: str, served_model_name: str, source, verify_export: bool = True,
                       timeout: float = 30.0) -> dict:
    """The model card of `served_model_name` on the server, after the checks of the module docstring."""
    cards = served_models(base_url, timeout)
    names = [str(card.get("id")) for card in cards]
    card = next((card for card in cards if card.get("id") == served_model_name), None)
    if card is None:
        raise ValueError(f"{base_url} serves {', '.join(map(repr, names)) or 'no model'}, not {served_model_name!r}: pass "
                         "served_model_name= as given to `vllm serve --served-model-name`")
    if not verify_export:
        return card
    root = card.get("root")
    folder = Path(str(root)) if root else None
    if folder is None or not folder.is_dir():
        raise ValueError(f"{base_url}: cannot check which checkpoint {served_model_name!r} is: the server loaded {root!r}, which "
                         "is not a folder here. Run where the served folder is readable at that path, or skip the check "
                         "explicitly (verify_export=false) when you know it is the export of the same GAP checkpoint")
    try:
        info = read_export_info(folder)
    except (FileNotFoundError, ValueError) as error:
        raise ValueError(f"{base_url} serves {served_model_name!r} from {folder}, which is not an export of a GAP-MLLM "
                         f"checkpoint ({error}): its image inputs would not be GAP's") from None
    check_export_source(info, source, where=f"{base_url}'s {served_model_name!r} ({folder})")
    return card


def post_json(base_url: str, payload: dict, timeout: float = 600.0) -> dict:
    """`post_chat_completion` (kept under this name): a server that does not answer is a `ServerUnreachableError`
    naming the URL and how to start one, a slow one a TimeoutError, an HTTP error its status and body."""
    return post_chat_completion(base_url, payload, timeout=timeout)


__all__ = ["check_export_source", "check_served_model", "post_json", "served_models"]
