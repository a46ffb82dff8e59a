"""The vLLM version GAP-MLLM is served with and the engine options it needs, defined once (docs, examples, bench).

Why these options (read in vLLM 0.33.0's source, `vllm/model_executor/models/qwen3_vl.py` and
`vllm/renderers/chat_utils/`):

- `enable_mm_embeds`: without it vLLM refuses `image_embeds` inputs.
- the image limit stays > 0: with `limit_mm_per_prompt={"image": 0, "video": 0}` vLLM skips building the vision
  tower (`_mark_tower_model`), and Qwen3-VL then turns its DeepStack split off (`use_deepstack` is False when the
  tower is missing), so the `(1 + 3) · hidden`-wide GAP embeddings would no longer be split into the main and
  DeepStack levels. The exported folder therefore keeps the ViT weights; they are loaded but never run on
  embeddings. The limit is the number of views per request (32 for grounding stage 1); videos are off.
- `structured_outputs_config={"backend": "guidance"}` (`--structured-outputs-config.backend guidance`): vLLM picks
  the grammar engine at server start, not per request, and its default ("auto") gives a GBNF grammar to xgrammar.
  The answer grammars (`structured_outputs.grammar`, modeling_gap_mllm/tasks_gap_mllm.py) are written for and
  verified with llguidance, the engine of `generate(constrained=True)`, so a served answer is masked by the same
  engine as a local one. At Qwen's 151,936 ids xgrammar also takes 0.35-4 s to compile the caption's prose grammar
  and 60-570 ms a token to mask it, llguidance 30-120 ms and about 0.5 ms (bench/README.md, "Constrained
  decoding"; docs/serving.md).
- `chat_template_content_format="openai"`: the chat template then receives the text and image items in their
  order (GAP's stage-1 prompt interleaves `Frame-i: ` texts with the views), exactly as `GapMllmProcessor`
  renders them; the "string" format would join the texts and move the images.

The pin: vLLM 0.33.0 has the multi-image precomputed-embedding path for Qwen3-VL (one `image_embeds` content part
per image, vllm-project/vllm#29988; Qwen3-VL parsing `image_embeds` + `image_grid_thw` dicts, #30037; Qwen2-VL's
parser sizing each image by `grid.prod() / merge²`, #23366; the failure report with stacked grids, #32309). It
requires `transformers<5.21`, while gap-mllm pins `transformers==5.23.0` (pip: ResolutionImpossible), so vLLM
runs in its own environment (`make vllm-venv`) and gap-mllm's encoder half talks to it over HTTP, or hands it a
file of offline requests.
"""

from __future__ import annotations

from .values import whole_number

VLLM_VERSION = "0.33.0"
STRUCTURED_OUTPUTS_BACKEND = "guidance"  # llguidance, the package's grammar engine (module docstring)
VLLM_REQUIREMENT = f"vllm=={VLLM_VERSION}"
# views of one request: grounding stage 1 reads 32 frames (the official setting)
DEFAULT_MAX_IMAGES_PER_REQUEST = 32


def engine_options(max_images: int = DEFAULT_MAX_IMAGES_PER_REQUEST) -> dict:
    """Keyword arguments for `vllm.LLM(model=exported_folder, **engine_options())` (see the module docstring);
    `max_images` is a whole number >= 1 (a limit of 0 switches vLLM's DeepStack split off)."""
    max_images = whole_number(max_images, "max_images (a limit of 0 switches vLLM's DeepStack split off)")
    return {"enable_mm_embeds": True, "limit_mm_per_prompt": {"image": max_images, "video": 0},
            "structured_outputs_config": {"backend": STRUCTURED_OUTPUTS_BACKEND}}


def serve_command(exported_folder: str, max_images: int = DEFAULT_MAX_IMAGES_PER_REQUEST, port: int = 8000,
                  served_model_name: str = "gap-mllm") -> list[str]:
    """`vllm serve` arguments for an `export-llm` folder (run in the vLLM environment)."""
    options = engine_options(max_images)
    port = whole_number(port, "port")
    limits = ", ".join(f'"{name}": {count}' for name, count in options["limit_mm_per_prompt"].items())
    return ["vllm", "serve", str(exported_folder), "--served-model-name", served_model_name, "--port", str(port),
            "--enable-mm-embeds", "--limit-mm-per-prompt", "{" + limits + "}",
            "--chat-template-content-format", "openai",
            "--structured-outputs-config.backend", options["structured_outputs_config"]["backend"]]


__all__ = ["DEFAULT_MAX_IMAGES_PER_REQUEST", "STRUCTURED_OUTPUTS_BACKEND", "VLLM_REQUIREMENT", "VLLM_VERSION",
           "engine_options", "serve_command"]
