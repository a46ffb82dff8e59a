"""LoRA on the LLM (mergers and fusions fully trained and saved): save / load / merge give the same
logits; TRL's SFTTrainer trains GAP-MLLM through GapSFTTrainer; peft's wrapping warns of no deprecation."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from gap_mllm import GapMllmForConditionalGeneration
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.training.lora import load_lora, merge_lora
from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401

LOGIT_TOLERANCE = 1e-5  # float32; merging adds B·A into W once


def test_lora_trains_llm_adapters_and_full_mergers_and_round_trips(tmp_path, recon_dataset):
    base_dir = tmp_path / "base"
    model, processor = tiny()
    model.save_pretrained(base_dir)
    setup = build_trainer(recipe(tmp_path, training={"max_steps": 3}, lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0}),
                          model=model, processor=processor, train_dataset=recon_dataset)
    peft_model = setup.model.model
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n and "language_model" in n) or ".modules_to_save." in n for n in trainable)
    saved_modules = {n.split(".modules_to_save.")[0].split("model.", 2)[-1] for n in trainable if ".modules_to_save." in n}
    assert saved_modules == {f"model.geometry_fusion.{g}.{i}" for g in ("mergers", "fusions") for i in range(4)}
    setup.trainer.train()
    setup.trainer.save_model()

    adapter = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("model.geometry_fusion.mergers.0" in k for k in adapter)
    assert not any("geometry_encoder" in k or ".visual." in k for k in adapter)

    batch = GapMllmDataCollator(processor)([recon_dataset[0], recon_dataset[1]])
    peft_model.eval()
    with torch.no_grad():
        trained = peft_model(**batch).logits
        reloaded = load_lora(GapMllmForConditionalGeneration.from_pretrained(base_dir), tmp_path / "out").eval()
        merged = merge_lora(reloaded)
        assert type(merged) is GapMllmForConditionalGeneration
        untouched = GapMllmForConditionalGeneration.from_pretrained(base_dir).eval()(**batch).logits
        torch.testing.assert_close(reloaded(**batch).logits, trained, atol=LOGIT_TOLERANCE, rtol=0)
        torch.testing.assert_close(merged(**batch).logits, trained, atol=LOGIT_TOLERANCE, rtol=0)
    assert (untouched - trained).abs().max() > 1e-3  # training changed the model


def test_trl_sft_trainer_fine_tunes_gap_mllm(tmp_path, recon_dataset):
    from gap_mllm.training.sft import GapSFTTrainer, gap_sft_config

    model, processor = tiny()
    before = model.geometry_fusion.mergers[0].mlp[0].weight.detach().clone()
    encoder_before = {n: p.detach().clone() for n, p in model.geometry_encoder.named_parameters()}
    config = gap_sft_config(str(tmp_path / "sft"), use_cpu=True, bf16=False, max_steps=3, per_device_train_batch_size=2,
                            learning_rate=1e-3, logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True,
                            activation_checkpointing=False)
    trainer = GapSFTTrainer(model=model, args=config, train_dataset=recon_dataset,
                            data_collator=GapMllmDataCollator(processor), processing_class=processor)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(model.geometry_fusion.mergers[0].mlp[0].weight, before)
    for name, value in model.geometry_encoder.named_parameters():  # the frozen encoder stays frozen
        assert torch.equal(value, encoder_before[name]), name


def test_lora_on_a_gap_mllm_warns_of_no_deprecation():
    """peft reads `is_gradient_checkpointing` (transformers 5.x's deprecated name) in `PeftModel.__init__`: the model
    answers under that name without a FutureWarning (notebook 02's stored output showed one), with the new name's
    value, on and off."""
    import warnings

    from peft import LoraConfig, get_peft_model

    from gap_mllm.tiny.tiny_model import build_tiny_model

    model, _ = build_tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        assert model.is_gradient_checkpointing is model.is_activation_checkpointing is False
        model.activation_checkpointing_enable()
        assert model.is_gradient_checkpointing is model.is_activation_checkpointing is True
        get_peft_model(model, LoraConfig(r=2, target_modules=r".*language_model.*\.q_proj"))
