"""Training GAP-MLLM: geometry-aligned pre-training and fine-tuning with Trainer, PEFT, TRL and accelerate."""
