"""`checks.check_batch(model, inputs)`, what the package's trainers run before each forward (`compute_loss` of
`GeometryAlignedTrainer` and `GapSFTTrainer`): ids outside the vocabulary, ill-shaped or empty masks, labels and token
types end in ValueErrors naming the input, with one host synchronisation; a trainer refuses such a batch before its
forward; and the paths that must keep working (the model's forward with labels, cached decoding, generation) do."""

from __future__ import annotations

import pytest
import torch

from gap_mllm import checks
from gap_mllm.configuration_gap_mllm import IGNORE_INDEX
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views


@pytest.fixture(scope="module")
def setup():
    from gap_mllm.tiny.tiny_tokenizer import build_tiny_processor

    processor = build_tiny_processor()
    model, _ = build_tiny_model(processor=processor)
    model.eval()
    inputs = processor(images=[make_views(2), make_views(2, seed=3)], text=["Describe the room.", "Where?"],
                       return_tensors="pt")
    return model, processor, inputs


def check(model, inputs, **changes):
    """The trainers' check of the batch `inputs` with `changes`."""
    checks.check_batch(model, {**inputs, **changes})


def run(model, inputs, **changes):
    with torch.no_grad():
        return model(**{**inputs, **changes})


def changed_id(inputs, value):
    ids = inputs["input_ids"].clone()
    ids[1, -1] = value
    return ids


@pytest.mark.parametrize("offset", [0, 5, -725])
def test_ids_outside_the_vocabulary_are_named(setup, offset):
    model, _, inputs = setup
    vocabulary = model.get_input_embeddings().num_embeddings
    bad = vocabulary + offset
    with pytest.raises(ValueError, match=rf"^input_ids holds token id {bad}, outside the model's vocabulary of "
                                         rf"{vocabulary} ids \(0 … {vocabulary - 1}\)"):
        check(model, inputs, input_ids=changed_id(inputs, bad))


def test_float_ids_are_named(setup):
    model, _, inputs = setup
    with pytest.raises(ValueError, match="^input_ids must hold integer token ids, got a torch.float32 tensor$"):
        check(model, inputs, input_ids=inputs["input_ids"].float())


@pytest.mark.parametrize("mask, shape", [(lambda m: m[:, :-2], r"\(2, 39\)"), (lambda m: m[None], r"\(1, 2, 41\)"),
                                         (lambda m: m[:1], r"\(1, 41\)")], ids=["short", "3-d", "one-row"])
def test_a_mask_of_the_wrong_shape_is_named(setup, mask, shape):
    model, _, inputs = setup
    assert inputs["input_ids"].shape == (2, 41)
    with pytest.raises(ValueError, match=rf"^attention_mask has shape {shape}, expected \[2, 41\]: one value per token"):
        check(model, inputs, attention_mask=mask(inputs["attention_mask"]))


def test_an_all_zero_mask_row_is_named_not_blamed_on_the_token_types(setup):
    model, _, inputs = setup
    mask = inputs["attention_mask"].clone()
    mask[1] = 0
    with pytest.raises(ValueError, match=r"^attention_mask row 1 is all zeros: every sample needs at least one token"):
        check(model, inputs, attention_mask=mask)


def test_a_mask_leaving_out_image_tokens_is_named(setup):
    model, _, inputs = setup
    mask = inputs["attention_mask"].clone()
    image_positions = (inputs["mm_token_type_ids"][1] != 0).nonzero()[:3, 0]
    mask[1, image_positions] = 0
    with pytest.raises(ValueError, match=r"^attention_mask masks 3 image/video token\(s\) \(mm_token_type_ids ≠ 0\), "
                                         r"the first in row 1: the mask may leave out padding only"):
        check(model, inputs, attention_mask=mask)


def test_labels_and_token_types_are_checked(setup):
    model, _, inputs = setup
    labels = inputs["input_ids"].masked_fill(inputs["mm_token_type_ids"] != 0, IGNORE_INDEX)
    check(model, inputs, labels=labels)  # -100 is not an id
    assert torch.isfinite(run(model, inputs, labels=labels).loss)
    outputs = model.get_output_embeddings().out_features
    for bad in (outputs, -5):
        with pytest.raises(ValueError, match=rf"^labels \(besides -100, ignored\) holds token id {bad}, outside"):
            check(model, inputs, labels=labels.masked_fill(labels == labels[0, -1], bad))
    with pytest.raises(ValueError, match=r"^labels has shape \(2, 40\), but the input tokens are \[2, 41\]"):
        check(model, inputs, labels=labels[:, 1:])
    with pytest.raises(ValueError, match=r"^mm_token_type_ids has shape \(2, 40\), but the input tokens are \[2, 41\]"):
        check(model, inputs, mm_token_type_ids=inputs["mm_token_type_ids"][:, 1:])


def test_the_values_are_read_in_one_synchronisation(setup, monkeypatch):
    model, _, inputs = setup
    reads = []
    original = checks.token_id_range
    monkeypatch.setattr(checks, "token_id_range", lambda ids: reads.append(1) or original(ids))
    calls = []
    real_tolist = torch.Tensor.tolist

    def counting_tolist(tensor):
        calls.append(tuple(tensor.shape))
        return real_tolist(tensor)

    labels = inputs["input_ids"].clone()
    monkeypatch.setattr(torch.Tensor, "tolist", counting_tolist)
    check(model, inputs, labels=labels)
    assert reads == [1, 1] and calls == [(6,)]  # ids, labels and mask: one stacked read


def test_the_sft_trainer_refuses_a_bad_batch_before_its_forward(setup):
    """`GapSFTTrainer.compute_loss` (the TRL trainer users fine-tune with on their own batches) checks the batch first;
    the pipeline's `GeometryAlignedTrainer` takes the package collator's batches, checked where they are made."""
    from types import SimpleNamespace

    from gap_mllm.training.sft import GapSFTTrainer

    _, processor, inputs = setup
    model, _ = build_tiny_model(processor=processor)
    trainer = SimpleNamespace(accelerator=SimpleNamespace(unwrap_model=lambda wrapped: wrapped))
    forwards = []
    model.register_forward_pre_hook(lambda *args: forwards.append(1))
    vocabulary = model.get_input_embeddings().num_embeddings
    with pytest.raises(ValueError, match=rf"^input_ids holds token id {vocabulary + 5}, outside the model's vocabulary"):
        GapSFTTrainer.compute_loss(trainer, model, {**inputs, "input_ids": changed_id(inputs, vocabulary + 5)})
    assert not forwards


def test_cached_decoding_padding_and_generation_still_work(setup):
    model, _, inputs = setup
    assert (inputs["attention_mask"] == 0).any()  # a padded batch passes
    prefill = run(model, inputs, use_cache=True)
    assert prefill.past_key_values.get_seq_length() == 41
    step_ids = prefill.logits[:, -1].argmax(-1, keepdim=True)
    grown = torch.cat([inputs["attention_mask"], torch.ones(2, 1, dtype=torch.long)], dim=1)
    # a decoding step: the mask covers cache + new tokens; the prompt's token types may come along
    checks.check_forward_inputs(model, step_ids, None, grown, None, inputs["mm_token_type_ids"],
                                prefill.past_key_values)
    with pytest.raises(ValueError, match=r"^attention_mask has shape \(2, 41\), expected \[2, 41 cached \+ 1 new tokens\]"):
        checks.check_forward_inputs(model, step_ids, None, inputs["attention_mask"], None, None,
                                    prefill.past_key_values)
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, 44)
