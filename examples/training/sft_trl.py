"""Fine-tune GAP-MLLM through TRL's SFTTrainer (optionally with LoRA), on SynthRooms reconstruction data.

    python examples/training/sft_trl.py --out runs/sft [--lora] [--steps 20]

Uses the tiny model so it runs on a CPU in seconds; for a real run, load
`GapMllmForConditionalGeneration.from_pretrained(...)` and its processor instead.
"""

import argparse
from pathlib import Path

from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.processing.synth.generator import SynthConfig, SynthRooms
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.config import AuxLossConfig, DataConfig, LoraSettings
from gap_mllm.training.data import load_split
from gap_mllm.training.lora import gap_lora_config
from gap_mllm.training.sft import GapSFTTrainer, gap_sft_config


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lora", action="store_true")
    options = parser.parse_args()

    data = Path(options.out) / "synthrooms"  # the toy dataset lives beside the run
    write_dataset(data, SynthRooms(SynthConfig(image_size=(60, 80), num_frames=8, grounding_frames=4, caption_frames=4,
                                               qa_frames=4, recon_samples_per_scene=8)), {"train": 2})
    dataset = load_split(DataConfig(data_root=str(data), cache_dir=str(data / "hf")), "train", AuxLossConfig())
    model, processor = build_tiny_model()
    args = gap_sft_config(options.out, use_cpu=True, bf16=False, max_steps=options.steps, per_device_train_batch_size=4,
                          learning_rate=3e-3, logging_steps=5, report_to="none", activation_checkpointing=False)
    trainer = GapSFTTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=GapMllmDataCollator(processor), processing_class=processor,
        peft_config=gap_lora_config(model, LoraSettings(enabled=True)) if options.lora else None,
    )
    trainer.train()
    trainer.save_model()
    print("losses:", [round(h["loss"], 3) for h in trainer.state.log_history if "loss" in h])


if __name__ == "__main__":
    main()
