"""GeometryAlignedTrainer: the stage-1 loss falls, optimizer groups and gradients follow the policy,
the LM loss equals the model's, gradient accumulation is exact, auxiliary losses are logged and saved."""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.training.config import FreezingPolicy, LearningRates
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.param_groups import apply_freezing, build_parameter_groups
from gap_mllm.training.run import build_trainer
from gap_mllm.training.trainer import AUX_HEADS_WEIGHTS

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root, trainable_state  # noqa: F401


def run(tmp_path, dataset, model=None, processor=None, **sections):
    if model is None:
        model, processor = tiny()
    setup = build_trainer(recipe(tmp_path, **sections), model=model, processor=processor, train_dataset=dataset)
    setup.trainer.train()
    return setup


def test_stage1_loss_falls_clearly(tmp_path, recon_dataset):
    """12 steps of batch 4 on 16 marker/pointmap samples: the answer loss (mean of the last 3 steps vs
    the first 3) must fall by more than 30 % (measured: 6.24 → 3.35, i.e. 46 %)."""
    setup = run(tmp_path, recon_dataset, training={"max_steps": 12, "per_device_train_batch_size": 4,
                                                   "learning_rate": 5e-3, "lr_scheduler_type": "constant"},
                learning_rates={"merger_lr": 5e-3})
    losses = [h["lm_loss"] for h in setup.trainer.state.log_history if "lm_loss" in h]
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert len(losses) == 12
    assert last < 0.7 * first, f"answer loss fell only from {first:.3f} to {last:.3f}"


def expected_groups(model, policy: FreezingPolicy) -> dict[str, set[str]]:
    """The policy's groups, derived from module types and names independently of param_groups.py."""
    layer_norm_weights = {f"{m}.weight" for m, mod in model.named_modules() if isinstance(mod, torch.nn.LayerNorm)}
    groups: dict[str, set[str]] = {}
    for name, _ in model.named_parameters():
        if name.startswith("model.visual."):
            if policy.freeze_vision_tower:
                continue
            group = "vision_tower"
        elif name.startswith("model.geometry_encoder."):
            continue
        elif name.startswith("model.geometry_fusion.mergers."):
            group = "merger"
        elif name.startswith("model.language_model."):
            if policy.freeze_llm:
                continue
            group = "base"
        elif name.startswith("model.geometry_fusion.fusions."):
            group = "base"
        else:
            raise AssertionError(f"unexpected parameter {name}")
        no_decay = name.endswith(".bias") or name in layer_norm_weights
        groups.setdefault(group + ("_no_decay" if no_decay else ""), set()).add(name)
    return groups


@pytest.mark.parametrize("policy", [FreezingPolicy(), FreezingPolicy(freeze_vision_tower=False, freeze_llm=True)])
def test_optimizer_groups_match_the_policy_exactly(policy):
    model, _ = tiny()
    apply_freezing(model, policy)
    rates = LearningRates(merger_lr=1e-5, vision_tower_lr=1e-6)
    groups = build_parameter_groups(model, base_lr=5e-6, weight_decay=0.01, learning_rates=rates)
    got = {g["name"]: set(g["param_names"]) for g in groups}
    assert got == expected_groups(model, policy)
    lr = {"base": 5e-6, "merger": 1e-5, "vision_tower": 1e-6}
    for group in groups:
        kind = group["name"].removesuffix("_no_decay")
        assert group["lr"] == lr[kind]
        assert group["weight_decay"] == (0.0 if group["name"].endswith("_no_decay") else 0.01)
    # RMSNorm weights are decayed (official grouping), LayerNorm weights of the gates are not.
    if not policy.freeze_llm:
        assert "model.language_model.norm.weight" in got["base"]
    assert "model.geometry_fusion.fusions.0.norm1.weight" in got["base_no_decay"]


def test_gradients_reach_exactly_the_trainable_parameters(recon_dataset):
    model, processor = tiny()
    apply_freezing(model, FreezingPolicy())
    wrapped = GeometryAlignedModel(model)
    out = wrapped(**GapMllmDataCollator(processor)([recon_dataset[0], recon_dataset[1]]))
    out.loss.backward()
    for name, param in model.named_parameters():
        frozen = name.startswith(("model.visual.", "model.geometry_encoder."))
        assert param.requires_grad is not frozen, name
        if frozen:
            assert param.grad is None, name
    # Every trainable parameter, all four fusion levels included (the tiny LLM, like the real one, has
    # decoder layers after the last DeepStack injection), must receive a gradient from the answer loss.
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_lm_loss_equals_the_model_loss(recon_dataset):
    """The answer-position-only LM head gives the model's own (full-logits) loss."""
    model, processor = tiny()
    batch = GapMllmDataCollator(processor)([recon_dataset[i] for i in range(3)])
    with torch.no_grad():
        ours = GeometryAlignedModel(model)(**batch)
        reference = model(**batch)
    assert ours.lm_num_tokens == (batch["labels"][:, 1:] != -100).sum()
    torch.testing.assert_close(ours.loss, reference.loss, atol=1e-5, rtol=1e-5)


def test_gradient_accumulation_equals_the_full_batch(tmp_path, recon_dataset):
    """Batch 4 × GA 1 and batch 1 × GA 4: same gradient norms and weights after 2 steps (global token
    mean; the samples' micro-batch means would weight tokens differently whenever answers differ in
    length, and a missing 1/GA scaling would multiply the gradient norm by 4)."""
    finals, grad_norms = [], []
    for batch_size, accumulation in ((4, 1), (1, 4)):
        setup = run(tmp_path / f"ga{accumulation}", recon_dataset,
                    training={"max_steps": 2, "per_device_train_batch_size": batch_size,
                              "gradient_accumulation_steps": accumulation, "learning_rate": 1e-3})
        finals.append(trainable_state(setup.model))
        grad_norms.append([float(entry["grad_norm"]) for entry in setup.trainer.state.log_history if "grad_norm" in entry])
    assert len(grad_norms[0]) == 2
    torch.testing.assert_close(torch.tensor(grad_norms[1]), torch.tensor(grad_norms[0]), atol=0, rtol=1e-4)
    # Adam divides by sqrt(v): on near-zero gradient entries float summation-order noise is amplified
    # to ~1e-6 of the weights, far below the ~lr = 1e-3 change a real weighting error gives.
    for other in finals[1:]:
        for name, value in finals[0].items():
            torch.testing.assert_close(other[name], value, atol=1e-5, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")


def test_auxiliary_losses_are_logged_weighted_and_their_heads_saved(tmp_path, recon_dataset):
    aux = {"feature_align_weight": 0.5, "camera_weight": 0.25, "depth_weight": 0.1, "scale_weight": 1.0}
    setup = run(tmp_path, recon_dataset, aux=aux, training={"max_steps": 2})
    logged = setup.trainer.state.log_history[0]
    for key in ("lm_loss", "feature_align_loss", "camera_loss", "depth_loss", "scale_loss", "skipped_samples"):
        assert key in logged and logged[key] == logged[key], key  # present and not NaN
    # the total is lm + Σ weight · part (evaluation mode: no accumulation scaling)
    trainer, wrapped = setup.trainer, setup.model
    batch = trainer._prepare_inputs(trainer.data_collator([recon_dataset[i] for i in range(2)]))
    wrapped.eval()
    with torch.no_grad():
        total, out = trainer.compute_loss(wrapped, batch, return_outputs=True)
    parts = out.aux_losses
    expected = out.loss + 0.5 * parts["feature_align"] + 0.25 * parts["camera"] + 0.1 * parts["depth"] + 1.0 * parts["scale"]
    torch.testing.assert_close(total, expected)
    # heads trained (they are in the optimizer at their own rate) and saved beside the model only
    trainer.save_model()
    out_dir = trainer.args.output_dir
    heads = load_file(os.path.join(out_dir, AUX_HEADS_WEIGHTS))
    assert {k.split(".")[0] for k in heads} == {"align", "camera", "depth", "scale"}
    assert not any(k.startswith("aux_heads") for k in load_file(os.path.join(out_dir, "model.safetensors")))
    assert {g["name"] for g in trainer.optimizer.param_groups} >= {"aux_heads", "aux_heads_no_decay"}


def test_no_auxiliary_heads_without_auxiliary_losses(tmp_path, recon_dataset):
    setup = run(tmp_path, recon_dataset, training={"max_steps": 1})
    assert setup.model.aux_heads is None
    setup.trainer.save_model()
    assert not os.path.exists(os.path.join(setup.trainer.args.output_dir, AUX_HEADS_WEIGHTS))
    assert set(setup.trainer.state.log_history[0]) >= {"loss", "lm_loss"}
    assert not any(k.endswith("_loss") and k != "lm_loss" for k in setup.trainer.state.log_history[0])


def test_trainer_accepts_a_model_without_geometry(tmp_path, recon_dataset):
    """The no-geometry ablation arm (plain Qwen3-VL inside GAP-MLLM, use_geometry=False) trains, and its
    training loss equals the model's own loss on the same batch."""
    from gap_mllm.tiny.tiny_model import build_tiny_model

    model, processor = build_tiny_model(use_geometry=False)
    batch = GapMllmDataCollator(processor)([recon_dataset[i] for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(GeometryAlignedModel(model)(**batch).loss, model(**batch).loss, atol=1e-5, rtol=1e-5)
    before = trainable_state(model)
    run(tmp_path, recon_dataset, model=model.train(), processor=processor, cache={"enabled": "always"})
    after = trainable_state(model)
    assert not hasattr(model, "geometry_encoder")
    assert all(not torch.equal(before[n], after[n]) for n in before if n.startswith("model.language_model.layers."))


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_the_loss_lines_print_numbers_not_quoted_strings(tmp_path, recon_dataset, capsys, disable_tqdm):
    """Trainer's console line of each logging step (above the progress bar, or printed with `disable_tqdm`) holds
    numbers to 4 significant digits, `{'loss': 2.345, ...}`, not transformers' quoted strings `{'loss': '2.345'}`;
    the log history keeps the full values."""
    import ast

    setup = run(tmp_path, recon_dataset, training={"max_steps": 2, "logging_steps": 1, "disable_tqdm": disable_tqdm})
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("{'loss': ")]
    assert len(lines) == 2, lines
    for line, logged in zip(lines, setup.trainer.state.log_history[:2], strict=True):  # (then the run's summary)
        shown = ast.literal_eval(line)
        assert shown["loss"] == float(f"{logged['loss']:.4g}") and shown["lm_loss"] == float(f"{logged['lm_loss']:.4g}")
        assert all(not isinstance(value, str) for value in shown.values()), line


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_the_encoder_stage_trainer_prints_numbers_too(tmp_path, disable_tqdm):
    """Stage 0's trainer (`EncoderStageTrainer`) holds the same console callback: its loss lines hold numbers."""
    from transformers import PrinterCallback, ProgressCallback, TrainingArguments

    from gap_mllm.training.encoder_stage import EncoderStageTrainer
    from gap_mllm.training.encoder_stage_run import GeometryStageModel
    from gap_mllm.training.log_lines import NumbersPrinterCallback, NumbersProgressCallback

    from .test_mini_stages import tiny_with_heads

    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", disable_tqdm=disable_tqdm, use_cpu=True)
    trainer = EncoderStageTrainer(GeometryStageModel(tiny_with_heads()[0], camera_weight=1.0, depth_weight=0.0),
                                  args=args)
    kinds = {type(callback) for callback in trainer.callback_handler.callbacks}
    assert not kinds & {ProgressCallback, PrinterCallback}
    assert (NumbersPrinterCallback if disable_tqdm else NumbersProgressCallback) in kinds
