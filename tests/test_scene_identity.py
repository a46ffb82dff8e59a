"""A scene is refused after any change of what encoded it, including the changes that do not bump a tensor's
in-place version counter: a fused AdamW step, a PEFT adapter switch or `disable_adapter()`, an in-place
buffer change, a write through `.data` (checks.py)."""

from __future__ import annotations

import pytest
import torch

from gap_mllm.checks import model_identity
from gap_mllm.generation import encode_scene, generate
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views

REFUSED = "this model's weights changed after it was encoded"
ADAPTERS_CHANGED = "this model's adapters changed after it was encoded"


@pytest.fixture
def scene_setup(tiny_processor):
    """A tiny model, the inputs of a 2-view scene prefix and the tokens of one question."""
    model, _ = build_tiny_model(processor=tiny_processor, seed=0)
    prefix, suffix = tiny_processor.split_scene_prompt("Where is the chair?", num_views=2)
    scene_inputs = tiny_processor(images=make_views(2, seed=21), text=prefix, return_tensors="pt")
    question = tiny_processor(text=suffix, return_tensors="pt")
    return model, scene_inputs, question


def answer(model, scene, question):
    return generate(model, scene=scene, **question, max_new_tokens=2, do_sample=False)


def test_a_fused_adamw_step_invalidates_the_scene(scene_setup):
    model, scene_inputs, question = scene_setup
    trained = list(model.model.language_model.parameters())
    optimizer = torch.optim.AdamW(trained, lr=1e-3, fused=True)  # Trainer's default optim, adamw_torch_fused
    scene = encode_scene(model, **scene_inputs)
    versions = [p._version for p in trained]
    loss = model(**scene_inputs).logits.float().pow(2).mean()
    loss.backward()
    optimizer.step()
    assert [p._version for p in trained] == versions  # the fused kernel leaves the version counters alone
    with pytest.raises(ValueError, match=REFUSED):
        answer(model, scene, question)
    fresh = encode_scene(model, **scene_inputs)  # a scene encoded after the step is accepted, and it differs
    assert not torch.equal(fresh.key_values[-1][0], scene.key_values[-1][0])
    answer(model, fresh, question)


CHANGES = {
    "buffer": lambda model: model.geometry_encoder.aggregator.image_mean.add_(0.1),  # bumps the buffer's counter
    "buffer .data": lambda model: model.geometry_encoder.aggregator.image_std.data.mul_(1.5),  # bumps no counter
    "weight .data": lambda model: model.model.language_model.layers[0].mlp.up_proj.weight.data.add_(0.01),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_an_in_place_buffer_change_and_a_write_through_data_invalidate_the_scene(scene_setup, change):
    model, scene_inputs, question = scene_setup
    scene = encode_scene(model, **scene_inputs)
    with torch.no_grad():
        CHANGES[change](model)
    with pytest.raises(ValueError, match=REFUSED):
        answer(model, scene, question)


def test_peft_adapter_switches_and_disable_adapter_invalidate_the_scene(scene_setup):
    peft = pytest.importorskip("peft")
    model, scene_inputs, question = scene_setup
    # non-zero adapters (init_lora_weights=False), so that switching them changes the keys
    config = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**config))
    peft_model.add_adapter("other", peft.LoraConfig(**config))
    scene = encode_scene(model, **scene_inputs)  # adapter "default"
    answer(model, scene, question)
    with peft_model.disable_adapter():
        with pytest.raises(ValueError, match=ADAPTERS_CHANGED):
            answer(model, scene, question)
        plain = encode_scene(model, **scene_inputs)
        assert not torch.equal(plain.key_values[-1][0], scene.key_values[-1][0])  # the adapter mattered
    answer(model, scene, question)  # adapters back as they were: the scene holds again
    peft_model.set_adapter("other")
    with pytest.raises(ValueError, match=ADAPTERS_CHANGED):
        answer(model, scene, question)
    peft_model.set_adapter("default")
    answer(model, scene, question)


def test_the_identity_of_an_unchanged_model_is_stable(scene_setup):
    """Unchanged model, same identity (its cost, one read of the weights per check, is in checks.py's
    docstring: tests time nothing)."""
    model, _, _ = scene_setup
    assert model_identity(model) == model_identity(model)
