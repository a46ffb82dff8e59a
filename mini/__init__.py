"""GAP-MLLM-Mini: the miniature GAP-MLLM trained end to end on SynthRooms by this package (tokenizer,
configuration, the `make mini` pipeline and its ablation), and the trained model itself, embedded as a
Hub-style folder: the default model of `gap-mllm demo`, `gap-mllm predict` and the Space.

    from transformers import AutoModel
    from gap_mllm.mini import default_model_path
    model = AutoModel.from_pretrained(default_model_path(), trust_remote_code=True)
"""

from pathlib import Path

# The trained GAP-MLLM-Mini (written by `make mini`, committed; shipped inside the package).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "gap-mllm-mini"


def default_model_path() -> Path:
    """The folder of the embedded, trained GAP-MLLM-Mini (FileNotFoundError with what to do if absent)."""
    if not (DEFAULT_MODEL_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"the embedded GAP-MLLM-Mini is not in this installation ({DEFAULT_MODEL_DIR} has no config.json): "
            "train it with `make mini`, or pass another model folder or Hub id"
        )
    return DEFAULT_MODEL_DIR
