"""A run whose gradient turns NaN stops at that optimizer step with an error naming it and the checkpoint
to resume from; the weights are never updated with the NaN and no later checkpoint is written; the command line
says so in one line naming the step and the run."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch
from transformers import TrainerCallback

from gap_mllm.cli.errors import run_command
from gap_mllm.training.divergence import DivergenceGuard, TrainingDivergedError, divergence_message
from gap_mllm.training.encoder_stage import EncoderStageTrainer
from gap_mllm.training.run import build_trainer, run_training

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


class OverflowingWeightDecay(TrainerCallback):
    """From optimizer step `step` on, a weight decay whose product with the learning rate overflows float32: AdamW's
    update `w * (1 - lr * decay)` turns every decayed weight infinite (or NaN) from a finite gradient."""

    def __init__(self, trainer, step: int):
        self.trainer, self.step = trainer, step

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if state.global_step + 1 >= self.step:
            for group in self.trainer.optimizer.param_groups:
                if group["weight_decay"]:
                    group["weight_decay"] = 1e300


def test_an_update_that_makes_a_weight_non_finite_stops_the_run_before_anything_of_it_is_saved(tmp_path, recon_dataset):
    model, processor = tiny()
    settings = {"max_steps": 4, "save_strategy": "steps", "save_steps": 1, "weight_decay": 0.01,
                "output_dir": str(tmp_path / "run")}
    setup = build_trainer(recipe(tmp_path, training=settings), model=model, processor=processor,
                          train_dataset=recon_dataset.select(range(8)))
    trainer = setup.trainer
    trainer.add_callback(OverflowingWeightDecay(trainer, step=2))
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("training diverged at optimizer step 2: its update made ")
    assert "trained weight tensors (" in message and "non-finite (with a finite gradient" in message
    assert str(tmp_path / "run" / "checkpoint-1") in message and "training.weight_decay" in message
    assert trainer.state.global_step == 1  # step 2 never ended: no checkpoint, no run state, no log of it
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if p.is_dir()) == ["checkpoint-1"]
    saved = safetensors.torch.load_file(str(tmp_path / "run" / "checkpoint-1" / "model.safetensors"))
    assert saved and all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())


def test_the_last_step_is_checked_too_and_no_final_model_is_saved(tmp_path, recon_dataset):
    """A run of one step whose update overflows (a finite weight decay of 1e300, as `--set training.weight_decay=1e300`
    gives it) ends in the error, not in "trained 1 steps" with a broken model saved as the result."""
    model, processor = tiny()
    settings = {"max_steps": 1, "weight_decay": 1e300, "output_dir": str(tmp_path / "run")}
    with pytest.raises(TrainingDivergedError) as error:
        run_training(recipe(tmp_path, training=settings), model=model, processor=processor,
                     train_dataset=recon_dataset.select(range(2)))
    assert str(error.value).startswith("training diverged at optimizer step 1: its update made ")
    assert f"no checkpoint was written yet in {tmp_path / 'run'}" in str(error.value)
    assert not (tmp_path / "run" / "model.safetensors").exists()
    assert not (tmp_path / "run" / "gap_mllm_training.json").exists()


def test_a_finite_run_reads_its_weights_once_per_optimizer_step():
    """The weight check is one global norm: one host read per optimizer step, however many weights train; the tensors
    are counted one by one only when it is not finite, so huge finite weights (whose squares overflow) are not
    taken for non-finite ones."""
    from gap_mllm.host_syncs import HostSyncCounter
    from gap_mllm.training.divergence import non_finite_weight_count

    model, _ = tiny()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert len(trained) > 50
    with HostSyncCounter() as syncs:
        assert non_finite_weight_count(trained) == 0
    assert syncs.total == 1
    with torch.no_grad():
        trained[5].view(-1)[0] = float("inf")
        trained[7].view(-1)[-1] = float("nan")
    assert non_finite_weight_count(trained) == 2
    with torch.no_grad():
        trained[5].view(-1)[0] = trained[7].view(-1)[-1] = 1e30  # finite, but 1e60 is past float32
    assert non_finite_weight_count(trained) == 0


def test_a_diverged_run_is_one_line_naming_the_step_and_the_run(tmp_path, capsys):
    def diverging(args):
        raise TrainingDivergedError(divergence_message(7, float("nan"), str(tmp_path)))

    assert run_command("train", diverging, None) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gap-mllm train: error: training diverged at optimizer step 7: the "
                                                   f"gradient norm is nan (a NaN or infinite loss or gradient) in the run "
                                                   f"writing {tmp_path}; ")
