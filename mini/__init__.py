"""GAP-MLLM-Mini: the miniature GAP-MLLM trained end to end on SynthRooms by this package (tokenizer,
configuration, the `make mini` pipeline and its ablation)."""
