#!/usr/bin/env bash
# Stage 1 then stage 2 on SynthRooms with the tiny model, on a CPU, through `gap-mllm train`.
# Stage 2 starts from the stage-1 output (the recipe default; here pointed at this run's folder).
set -euo pipefail
OUT=${1:-runs/tiny}
gap-mllm synth --scenes 4 --out "$OUT/data"
CPU=(--set model.dtype=float32 --set training.use_cpu=true --set training.bf16=false
     --set training.activation_checkpointing=false --set training.max_steps=20 --set training.learning_rate=3e-3
     --set training.per_device_train_batch_size=2 --set training.dataloader_num_workers=0)
gap-mllm train --config training/recipes/stage1_pretrain.yaml --data-root "$OUT/data" --output-dir "$OUT/stage1" \
    --set model.tiny=tiny "${CPU[@]}"
gap-mllm train --config training/recipes/stage2_finetune.yaml --data-root "$OUT/data" --output-dir "$OUT/stage2" \
    --set model.name_or_path="$OUT/stage1" "${CPU[@]}"
