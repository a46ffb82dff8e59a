"""The client pieces of serving that an evaluation needs: annotation-form prompts encoded as the evaluation collator
builds them, one scene's encoding shared by its questions, engine answers cut where `generate` stops, and the checks
of what a server serves (gap_mllm/serving/encoder.py, engine_answers.py, served_model.py)."""

import pytest
import torch

from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.serving import (
    GapMllmEncoder,
    answer_from_token_ids,
    check_export_source,
    check_prompt_token_ids,
    check_served_model,
    export_llm_folder,
    generated_token_ids,
)
from gap_mllm.speedups import encode_images
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1
from gap_mllm.tiny.tiny_model import save_tiny_checkpoint
from tests.conftest import make_views

from .engine_stand_in import EngineStandIn


@pytest.fixture
def encoder(build_model, tiny_processor):
    return GapMllmEncoder(build_model(seed=2), tiny_processor)


def test_annotation_prompts_encode_as_the_evaluation_collator_builds_them(encoder, tiny_processor):
    views = make_views(3, seed=4)
    prompt = GROUNDING_STAGE1.annotation_prompt(3, query="the lamp")  # "Frame-0: <image>Frame-1: <image>...\n..."
    [request] = encoder.encode_prompts([views], [prompt], task="grounding_stage1")
    batch = GapMllmDataCollator(tiny_processor, train=False)([{"images": views, "prompt": prompt}])  # the HF backend's
    with torch.no_grad():
        reference = encode_images(encoder.model, **batch)
    assert list(request.input_ids) == batch["input_ids"][0].tolist()
    assert all(torch.equal(a, b) for a, b in zip(request.image_embeds, reference.embeddings, strict=True))
    # and it is the request the task path builds for the same query
    by_task = encoder.encode(views, task="grounding_stage1", query="the lamp")
    assert (request.prompt, request.segments, request.input_ids, request.task) == (
        by_task.prompt, by_task.segments, by_task.input_ids, by_task.task)


def test_reprompt_asks_another_question_about_the_same_encoded_views(encoder):
    views = make_views(2, seed=6)
    first, second = (GROUNDING_STAGE1.annotation_prompt(2, query=q) for q in ("the lamp", "the big wooden table"))
    [scene] = encoder.encode_prompts([views], [first])
    asked = encoder.reprompt(scene, second, task="grounding_stage1")
    [direct] = encoder.encode_prompts([views], [second], task="grounding_stage1")
    assert asked.input_ids == direct.input_ids and asked.prompt == direct.prompt and asked.segments == direct.segments
    assert asked.task == "grounding_stage1" and asked.image_embeds is scene.image_embeds  # not encoded again
    assert all(torch.equal(a, b) for a, b in zip(asked.image_embeds, direct.image_embeds, strict=True))
    with pytest.raises(ValueError, match="1 <image> placeholder"):
        encoder.reprompt(scene, "<image> one view only")


def _ids(tokenizer, *pieces) -> list[int]:
    """Token ids of each piece, concatenated (so the token boundaries between pieces are known)."""
    ids = []
    for piece in pieces:
        ids += [piece] if isinstance(piece, int) else tokenizer(piece, add_special_tokens=False)["input_ids"]
    return ids


@pytest.mark.parametrize("task, answer, after", [
    ("grounding_stage1", '{"frame": 3}', "\n\nmore text"),                    # "dict": the first {...} is closed
    ("detection", '[\n\t{"label": "chair"}\n]', "```\nand more"),             # "list": the first [...] is closed
    ("captioning", "a small chair.\n\n", "The end"),                           # "paragraph": a blank line after text
    ("spatial_qa", "3.5\n", "and more"),                                       # "line": a line break after text
])
def test_engine_tokens_are_cut_where_generate_stops(tiny_processor, task, answer, after):
    tokenizer = tiny_processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # the engine wrote on past the answer's end (it stops only at <|im_end|> or the budget)
    ids = _ids(tokenizer, answer, after, eos)
    assert answer_from_token_ids(ids, tokenizer, task, eos_token_ids=[eos]) == answer
    # the official behaviour (no answer-end rule) and free prompts: everything up to the EOS
    assert answer_from_token_ids(ids, tokenizer, task, stop_at_answer_end=False, eos_token_ids=[eos]) == answer + after
    assert answer_from_token_ids(ids, tokenizer, None, eos_token_ids=[eos]) == answer + after


def test_engine_tokens_stop_at_the_first_eos(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    ids = _ids(tokenizer, '{"frame": 3', eos, "}")  # the answer never completes before the EOS
    assert answer_from_token_ids(ids, tokenizer, "grounding_stage1", eos_token_ids=[eos]) == '{"frame": 3'
    assert answer_from_token_ids(ids[:-1], tokenizer, "grounding_stage1", eos_token_ids=[eos]) == '{"frame": 3'


def test_responses_without_ids_or_with_another_prompt_are_refused(encoder):
    request = encoder.encode(make_views(1, seed=1), task="detection")
    with pytest.raises(ValueError, match="return_token_ids"):
        generated_token_ids({"choices": [{"message": {"content": "[]"}}]})
    with pytest.raises(ValueError, match="prompt token ids"):
        check_prompt_token_ids({"choices": []}, request, encoder.processor.tokenizer)
    check_prompt_token_ids({"prompt_token_ids": list(request.input_ids)}, request, encoder.processor.tokenizer)
    other = list(request.input_ids)
    other[5] = other[5] + 1
    with pytest.raises(ValueError, match="first difference at token 5"):
        check_prompt_token_ids({"prompt_token_ids": other}, request, encoder.processor.tokenizer)


def test_export_source_is_compared_by_weights_or_by_name(tmp_path):
    folder = save_tiny_checkpoint(tmp_path / "gap", seed=1)
    info = {"source": "elsewhere/gap", "source_weights_sha256": {}}
    with pytest.raises(ValueError, match="exported from 'elsewhere/gap'"):
        check_export_source(info, folder)
    check_export_source(info, "elsewhere/gap")  # a Hub id on both sides: its name
    export = export_llm_folder(folder, tmp_path / "llm")
    with EngineStandIn(export.path) as server:
        assert check_served_model(server.url, "gap-mllm", folder)["root"] == str(export.path.resolve())
        with pytest.raises(ValueError, match="exported from other weights"):
            check_served_model(server.url, "gap-mllm", save_tiny_checkpoint(tmp_path / "other", seed=2))
        server.folder = tmp_path / "only-on-the-server"  # /v1/models names a folder this client cannot read
        with pytest.raises(ValueError, match="verify_export=false"):
            check_served_model(server.url, "gap-mllm", folder)
        assert check_served_model(server.url, "gap-mllm", folder, verify_export=False)["id"] == "gap-mllm"
