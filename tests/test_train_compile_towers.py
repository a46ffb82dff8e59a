"""`kernels.compile_towers` (training/kernels.py): every block of the frozen towers is compiled on its own, the
model's outputs and state-dict names stay what they were, and uncompiling returns the eager blocks. Dynamo's eager
backend on the CPU: this checks the wiring and the arithmetic; whether it pays is the GPU call's question
(bench/gpu_figures.py, arm sdpa_compile_towers_bucketed)."""

from __future__ import annotations

import torch
from torch._dynamo.testing import CompileCounter

from gap_mllm.tiny.tiny_model import build_tiny_model
from gap_mllm.training.kernels import TOWER_BLOCKS, compile_frozen_towers, tower_blocks, uncompile_frozen_towers

from .conftest import make_views


def test_every_tower_block_compiles_and_the_outputs_stay_equal():
    model, processor = build_tiny_model()
    inputs = processor(images=[make_views(2)], text=["<image><image>where is the chair?"], return_tensors="pt")
    names = list(model.state_dict())
    with torch.no_grad():
        eager = model(**inputs).logits
    expected = sum(len(model.get_submodule(path)) for path in TOWER_BLOCKS)
    counter = CompileCounter()
    torch._dynamo.reset()
    try:
        assert compile_frozen_towers(model, backend=counter) == expected == len(tower_blocks(model))
        with torch.no_grad():
            compiled = model(**inputs).logits
        assert counter.frame_count >= 1  # the blocks ran through Dynamo
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
        assert list(model.state_dict()) == names  # nn.Module.compile keeps the names
    finally:
        uncompile_frozen_towers(model)
        torch._dynamo.reset()
    assert all(block._compiled_call_impl is None for block in tower_blocks(model))
