"""Tiny GAP-MLLM configs, tokenizer and models built locally (no downloads), for tests and the demo."""
