"""Serving GAP-MLLM with an inference engine (vLLM) through Qwen3-VL's precomputed image embeddings.

GAP-MLLM changes only what Qwen3-VL receives for its image tokens, so it splits into two halves:

- the **encoder half** (`GapMllmEncoder`, this package, transformers): frames + a task → the chat prompt, and per
  view the fused `[tokens, (1 + 3) · hidden]` embeddings and the `image_grid_thw` row
  (`gap_mllm.speedups.encode_images`);
- the **language half**: a stock Qwen3-VL folder written by `gap-mllm export-llm` (`export.py`), which an engine
  serves unchanged and feeds the embeddings as `image_embeds`.

The two talk through vLLM's OpenAI-compatible server (`openai_payload.py`: one `image_embeds` content part per view)
or through a file of offline requests for `vllm.LLM.generate` (`offline.py`). `served_model.py` checks that a server
serves the export of the encoder's checkpoint; `engine_answers.py` reads its answers as the package's `generate`
would have stopped them (the tasks' answer-end rules). vLLM lives in its own environment
(`vllm_settings.py` says why and pins the version); nothing here imports vllm.
"""

from .encoder import EncodedRequest, GapMllmEncoder
from .engine_answers import (
    RETURN_TOKEN_IDS,
    answer_from_token_ids,
    check_prompt_token_ids,
    eos_token_ids,
    generated_token_ids,
    parsed_answer_json,
    structured_output,
    task_budget,
)
from .export import EXPORT_INFO_FILE, ExportedFolder, export_llm_folder, read_export_info
from .offline import (
    load_offline_requests,
    offline_answer_text,
    offline_request,
    offline_settings,
    save_offline_requests,
)
from .openai_payload import (
    ServerUnreachableError,
    chat_completion_payload,
    decode_tensor_base64,
    encode_tensor_base64,
    image_embeds_part,
    post_chat_completion,
)
from .served_model import check_export_source, check_served_model, post_json, served_models
from .vllm_settings import VLLM_REQUIREMENT, VLLM_VERSION, engine_options, serve_command

__all__ = [
    "EXPORT_INFO_FILE",
    "EncodedRequest",
    "RETURN_TOKEN_IDS",
    "structured_output",
    "ServerUnreachableError",
    "ExportedFolder",
    "GapMllmEncoder",
    "VLLM_REQUIREMENT",
    "VLLM_VERSION",
    "answer_from_token_ids",
    "chat_completion_payload",
    "check_export_source",
    "check_prompt_token_ids",
    "check_served_model",
    "decode_tensor_base64",
    "encode_tensor_base64",
    "engine_options",
    "eos_token_ids",
    "export_llm_folder",
    "generated_token_ids",
    "image_embeds_part",
    "load_offline_requests",
    "offline_answer_text",
    "offline_request",
    "offline_settings",
    "parsed_answer_json",
    "post_chat_completion",
    "post_json",
    "read_export_info",
    "save_offline_requests",
    "serve_command",
    "served_models",
    "task_budget",
]
