#!/usr/bin/env bash
# Stage 1 then stage 2 on SynthRooms with the tiny model, through `gap-mllm train`, on whatever the
# machine has: the recipes pick the device and precision themselves (--device auto; a CPU trains in
# float32) and say what they picked. Stage 2 starts from the stage-1 output (the recipe default; here
# pointed at this run's folder). The data has a validation split (VAL_SCENES scenes the training never sees),
# so the stage-2 model can be scored right after:
#
#   bash examples/training/train_stage1_tiny.sh [OUT]       (default OUT: runs/tiny)
#   gap-mllm evaluate --task detection --model runs/tiny/stage2 --data runs/tiny/data --split val --out runs/tiny/eval --max-new-tokens 64
#
# (with another OUT, replace runs/tiny by it). The tiny model trains for a few minutes (about 3 on a 2-core
# CPU, most of it filling the feature cache) and only STEPS steps, so its scores are zero: the point is the mechanics. Size knobs (environment): SCENES (4), VAL_SCENES (1), STEPS (20), FRAMES per scene (16),
# HEIGHT x WIDTH (120 x 160).
set -euo pipefail
OUT=${1:-runs/tiny}
SCENES=${SCENES:-4}
VAL_SCENES=${VAL_SCENES:-1}
STEPS=${STEPS:-20}
FRAMES=${FRAMES:-16}
HEIGHT=${HEIGHT:-120}
WIDTH=${WIDTH:-160}

gap-mllm synth --scenes "$SCENES" --val-scenes "$VAL_SCENES" --out "$OUT/data" --size "$HEIGHT" "$WIDTH" --frames "$FRAMES" \
    --grounding-frames 8 --caption-frames 8 --qa-frames 8
SMALL=(--set training.max_steps="$STEPS" --set training.learning_rate=3e-3 --set training.per_device_train_batch_size=2
       --set training.gradient_accumulation_steps=1)
gap-mllm train --config training/recipes/stage1_pretrain.yaml --data "$OUT/data" --out "$OUT/stage1" \
    --set model.tiny=tiny "${SMALL[@]}"
gap-mllm train --config training/recipes/stage2_finetune.yaml --data "$OUT/data" --out "$OUT/stage2" \
    --set model.name_or_path="$OUT/stage1" "${SMALL[@]}"
echo "trained $OUT/stage2; score it on the validation scenes:"
echo "  gap-mllm evaluate --task detection --model $OUT/stage2 --data $OUT/data --split val --out $OUT/eval --max-new-tokens 64"
