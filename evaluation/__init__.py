"""Evaluation with the official GAP-MLLM semantics: oriented 3D box IoU, task metrics, task runners."""
