"""A run whose gradient turns NaN stops at that optimizer step with an error naming it and the checkpoint
to resume from; the weights are never updated with the NaN and no later checkpoint is written."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from transformers import TrainerCallback

from gap_mllm.training.divergence import DivergenceGuard, TrainingDivergedError
from gap_mllm.training.encoder_stage import EncoderStageTrainer
from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401


class RememberWeights(TrainerCallback):
    """The trainable weights after each optimizer step, by global step."""

    def __init__(self, model):
        self.model, self.after_step = model, {}

    def on_step_end(self, args, state, control, **kwargs):
        self.after_step[state.global_step] = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}


def test_a_nan_gradient_stops_the_run_before_the_step_is_applied(tmp_path, recon_dataset):
    model, processor = tiny()
    settings = {"max_steps": 6, "save_strategy": "steps", "save_steps": 2, "max_grad_norm": 1.0, "output_dir": str(tmp_path / "run")}
    setup = build_trainer(recipe(tmp_path, training=settings), model=model, processor=processor,
                          train_dataset=recon_dataset.select(range(12)))
    trainer = setup.trainer
    weights = RememberWeights(setup.model)
    trainer.add_callback(weights)
    # one weight's gradient becomes NaN in the 3rd optimizer step, as in a run that diverges
    poisoned = next(p for p in setup.model.parameters() if p.requires_grad)
    poisoned.register_hook(lambda grad: grad * float("nan") if trainer.state.global_step == 2 else grad)

    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert "diverged at optimizer step 3: the gradient norm is nan" in message
    assert str(tmp_path / "run" / "checkpoint-2") in message and "training.bf16=false" in message

    assert sorted(weights.after_step) == [1, 2]  # step 3 never ended
    for name, param in setup.model.named_parameters():
        if param.requires_grad:  # exactly the weights after step 2: the NaN step was not applied
            assert torch.equal(param.detach(), weights.after_step[2][name]), name
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["checkpoint-2"]
    saved = safetensors.torch.load_file(str(tmp_path / "run" / "checkpoint-2" / "model.safetensors"))
    assert saved and all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())


def test_the_encoder_stage_trainer_has_the_same_guard():
    assert issubclass(EncoderStageTrainer, DivergenceGuard)
