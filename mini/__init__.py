"""GAP-MLLM-Mini: the miniature GAP-MLLM trained end to end on SynthRooms by this package (its configuration and
tokenizer, how a folder is known as a Mini), and the trained model itself: the default model of `gap-mllm demo`,
`predict`, `evaluate --model mini`, the notebooks and the Space. The pipeline that trains and reports on it
(`make mini`) is the repository's research lab (lab/mini/), not installed.

    from transformers import AutoModel
    from gap_mllm.mini import default_model_path
    model = AutoModel.from_pretrained(default_model_path(), trust_remote_code=True)
"""

from .default_model import SHIPPED_DIR, default_model_path

__all__ = ["SHIPPED_DIR", "default_model_path"]
