"""One divergence guard for every training loop (training/divergence.py): a NaN gradient injected
into the third optimizer step stops the Trainer on each batch path (padded, packed, bucketed, feature cache) before
the step is applied, with a line that names the batch and the kernel settings; the benches' own loop (StepGuard)
fails the arm instead of reporting a figure."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from gap_mllm.training.divergence import StepGuard, TrainingDivergedError
from gap_mllm.training.run import build_trainer

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401

PATHS = {
    "padded": ({}, r"batch 2 × \d+ tokens, (no padding|padded rows \(\d+ padding tokens, 0 rows padded on the left\))"),
    "packed": ({"packing": True}, r"batch 1 × \d+ tokens, packed rows \(2 segments\)"),
    "bucketed": ({"length_buckets": [1024]}, r"batch 2 × 1024 tokens, padded rows .*; kernel settings on: "
                                              r"data.length_buckets=\[1024\]"),
    "feature cache": ({}, r"batch 2 × \d+ tokens"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_a_nan_gradient_stops_every_batch_path_naming_the_batch(path, tmp_path, recon_dataset, train_data_root):
    data, expected = PATHS[path]
    sections = {"data": {"data_root": str(train_data_root), **data}}
    if path == "feature cache":
        sections["cache"] = {"enabled": "always", "directory": str(tmp_path / "cache")}
    settings = {"max_steps": 4, "max_grad_norm": 1.0, "output_dir": str(tmp_path / "run")}
    model, processor = tiny()
    setup = build_trainer(recipe(tmp_path, training=settings, **sections), model=model, processor=processor,
                          train_dataset=recon_dataset.select(range(8)))
    trainer = setup.trainer
    trained = [p for p in setup.model.parameters() if p.requires_grad]
    trained[-1].register_hook(lambda grad: grad * float("nan") if trainer.state.global_step == 2 else grad)
    with pytest.raises(TrainingDivergedError) as error:
        trainer.train()
    message = str(error.value)
    assert message.startswith("training diverged at optimizer step 3: the gradient norm is nan")
    assert re.search(expected, message), message
    assert trainer.state.global_step == 2


def test_the_bench_loop_guard_names_the_arm_and_never_lets_the_step_through():
    weight = torch.nn.Parameter(torch.ones(3))
    guard = StepGuard([weight], "bench arm sdpa_compile_bucketed", "kernel settings on: kernels.compile_layers=true")
    (weight * 2).sum().backward()
    assert guard.check(1) == pytest.approx(torch.full((3,), 2.0).norm().item())
    weight.grad = torch.tensor([1.0, float("inf"), 0.0])
    batch = {"input_ids": torch.zeros(2, 8, dtype=torch.long), "attention_mask": torch.tensor([[0] * 3 + [1] * 5, [1] * 8])}
    with pytest.raises(TrainingDivergedError) as error:
        guard.check(13, batch)
    assert str(error.value).startswith(
        "training diverged at optimizer step 13: the gradient norm is inf (a NaN or infinite loss or gradient); bench arm "
        "sdpa_compile_bucketed; batch 2 × 8 tokens, padded rows (3 padding tokens, 1 rows padded on the left) (left-padded "
        "rows have fully masked attention rows); kernel settings on: kernels.compile_layers=true; the step was not applied")
    weight.grad = torch.zeros(3)
    with pytest.raises(TrainingDivergedError, match="the gradient norm is nan"):
        guard.check(14, loss=torch.tensor(float("nan")))  # a NaN loss with finite gradients fails too


def test_a_diverging_bench_arm_is_recorded_as_failed_not_as_a_figure(tmp_path, monkeypatch):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import bench_train_arms

    original_check = StepGuard.check

    def check(self, step, batch=None, loss=None):  # the 2nd step's gradients turn NaN before the guard reads them
        if step == 2:
            for parameter in self.parameters:
                if parameter.grad is not None:
                    parameter.grad.fill_(float("nan"))
        return original_check(self, step, batch, loss)

    monkeypatch.setattr(StepGuard, "check", check)
    out = tmp_path / "arms.json"
    assert bench_train_arms.main(["--size", "small", "--device", "cpu", "--steps", "3", "--arms", "sdpa", "sdpa_packed",
                                  "--out", str(out)]) == 0
    measured = json.loads(out.read_text())["measurements"]
    for arm in ("arm_sdpa", "arm_sdpa_packed"):
        assert "median_step_s" not in measured[arm] and "mfu" not in measured[arm]
        assert measured[arm]["error"].startswith("TrainingDivergedError: training diverged at optimizer step 2")
