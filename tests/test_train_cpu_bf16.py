"""`cpu_bf16_autocast`: bf16 autocast on the CPU (training/device.py). The LLM's matrix products run in bf16 while
the weights and the optimizer stay float32, and the first step's loss is the float32 one within bf16 rounding. The
CPU's native bf16 is simulated (`cpu_has_native_bf16`): torch's CPU autocast gives the same numbers either way, only
slower where oneDNN emulates bf16."""

from __future__ import annotations

import math

import torch

from gap_mllm.training import device, run

from .test_train_fixtures import recipe, recon_dataset, tiny, train_data_root  # noqa: F401


def first_step(tmp_path, dataset, monkeypatch, **top_level):
    """(dtype of an LLM projection's output during the step, the step's loss, the parameters' dtypes)."""
    monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: True)
    model, processor = tiny()
    seen = []
    projection = model.model.language_model.layers[0].mlp.down_proj
    handle = projection.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    settings = recipe(tmp_path, training={"max_steps": 1}, **top_level)
    setup = run.build_trainer(settings, model=model, processor=processor, train_dataset=dataset)
    setup.trainer.train()
    handle.remove()
    loss = setup.trainer.state.log_history[0]["loss"]
    return set(seen), loss, {p.dtype for p in model.parameters()}


def test_the_llm_computes_in_bf16_and_the_weights_stay_float32(tmp_path, recon_dataset, monkeypatch):  # noqa: F811
    dtypes, loss, weights = first_step(tmp_path / "bf16", recon_dataset, monkeypatch, cpu_bf16_autocast=True)
    assert dtypes == {torch.bfloat16} and weights == {torch.float32}
    reference_dtypes, reference_loss, _ = first_step(tmp_path / "fp32", recon_dataset, monkeypatch)
    assert reference_dtypes == {torch.float32}
    # the same model, data and seed: bf16 keeps 8 bits of mantissa, so the mean token loss moves by well under 1 %
    assert math.isfinite(loss) and abs(loss - reference_loss) <= 0.01 * reference_loss, (loss, reference_loss)
