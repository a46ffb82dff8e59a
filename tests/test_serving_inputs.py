"""The serving helpers check what they are given: a budget, a grid or a token id is a whole number (0, -5 and 2.7
are refused, never truncated), and a malformed server response is a ValueError naming the field, not a raw
AttributeError, TypeError, KeyError or OverflowError."""

import json
import math
import re

import pytest
import torch

from gap_mllm.serving import (
    GapMllmEncoder,
    answer_from_token_ids,
    chat_completion_payload,
    check_prompt_token_ids,
    engine_options,
    generated_token_ids,
    image_embeds_part,
    load_offline_requests,
    offline_request,
    save_offline_requests,
    serve_command,
)
from gap_mllm.serving.openai_payload import answer_text
from gap_mllm.serving.values import grid_row, response_field, token_id_list, whole_number
from tests.conftest import make_views

WHERE = "http://127.0.0.1:8000 (gap-mllm)"
AT = re.escape(WHERE)


@pytest.fixture(scope="module")
def encoder(tiny_processor):
    from gap_mllm.tiny.tiny_model import build_tiny_model

    model, _ = build_tiny_model(seed=2)
    return GapMllmEncoder(model, tiny_processor)


@pytest.fixture(scope="module")
def request_2v(encoder):
    return encoder.encode(make_views(2, seed=3), task="detection")


# ------------------------------------------------------------------------------------------ whole numbers


@pytest.mark.parametrize("value", [0, -5, 2.7, 3.0, True, float("nan"), math.inf, "7", torch.tensor(2.5)])
def test_a_budget_is_a_whole_number_of_at_least_one(request_2v, value):
    with pytest.raises(ValueError, match="^" + re.escape(f"max_tokens must be a whole number >= 1, got {value!r:.80}") + "$"):
        chat_completion_payload(request_2v, max_tokens=value)


def test_whole_budgets_of_any_integer_type_are_kept(request_2v):
    import numpy as np

    for value in (1, np.int64(7), torch.tensor(9)):
        assert chat_completion_payload(request_2v, max_tokens=value)["max_tokens"] == int(value)
    assert json.dumps(chat_completion_payload(request_2v, max_tokens=np.int64(7))["max_tokens"]) == "7"


@pytest.mark.parametrize("grid, field", [([1, 2.7, 4], "image_grid_thw row entry 1"), ([1, 0, 4], "image_grid_thw row entry 1"),
                                         (torch.tensor([1.0, 2.0, 4.0]), "image_grid_thw row entry 0"),
                                         ([1, 2], "image_grid_thw row"), ("124", "image_grid_thw row")])
def test_an_image_part_refuses_a_grid_that_is_not_whole_numbers(request_2v, grid, field):
    with pytest.raises(ValueError, match=rf"^{field} must be"):
        image_embeds_part(request_2v.image_embeds[0], grid)
    part = image_embeds_part(request_2v.image_embeds[0], request_2v.image_grid_thw[0])
    assert part["image_embeds"]["image_grid_thw"] == request_2v.image_grid_thw[0].tolist()


def test_an_image_part_refuses_embeddings_that_are_not_a_float_matrix(request_2v):
    with pytest.raises(ValueError, match=r"image_embeds must be a floating-point tensor \[tokens, width\], got list"):
        image_embeds_part([[0.0]], [1, 2, 2])
    with pytest.raises(ValueError, match=r"got \(4,\)"):
        image_embeds_part(torch.zeros(4), [1, 2, 2])


def test_engine_options_refuse_a_fractional_or_boolean_image_limit():
    for value in (2.7, True, 0, -1):
        with pytest.raises(ValueError, match=r"^max_images \(a limit of 0 switches vLLM's DeepStack split off\) must be a whole number >= 1"):
            engine_options(value)
    with pytest.raises(ValueError, match=r"^port must be a whole number >= 1, got 80\.5$"):
        serve_command("llm", port=80.5)


def test_offline_requests_refuse_a_float_grid_instead_of_truncating_it(request_2v, tmp_path):
    from dataclasses import replace

    fractional = replace(request_2v, image_grid_thw=request_2v.image_grid_thw.float() * 1.35)
    with pytest.raises(ValueError, match=r"request 0: image_grid_thw must hold whole numbers, got a torch.float32 tensor"):
        offline_request(fractional)
    item = offline_request(request_2v)
    bad = {"prompt": item["prompt"], "multi_modal_data": {"image": {"image_embeds": item["multi_modal_data"]["image"]["image_embeds"],
                                                                    "image_grid_thw": item["multi_modal_data"]["image"]["image_grid_thw"].tolist()}}}
    with pytest.raises(ValueError, match=r"request 0: image_grid_thw and image_embeds must be tensors, got list and Tensor"):
        save_offline_requests([bad], tmp_path / "a.pt")
    no_prompt = dict(item, prompt=None)
    with pytest.raises(ValueError, match=r"request 1: prompt must be the chat text, got NoneType"):
        save_offline_requests([item, no_prompt], tmp_path / "b.pt")
    (tmp_path / "c.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'c.pt'}: not a file of offline requests"):
        load_offline_requests(tmp_path / "c.pt")
    torch.save([dict(item, prompt=7)], tmp_path / "d.pt")
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'd.pt'}: request 0: prompt must be the chat text, got int"):
        load_offline_requests(tmp_path / "d.pt")


# ------------------------------------------------------------------------------------------ responses


@pytest.mark.parametrize("response, problem", [
    ("oops", "the response has no field 'choices'"),
    ({"choices": "x"}, "the response['choices'] is not a list holding entry 0"),
    ({"choices": []}, "the response['choices'] is not a list holding entry 0"),
    ({"choices": [{"text": "x"}]}, "the response['choices'][0] has no field 'message'"),
    ({"choices": [{"message": "x"}]}, "the response['choices'][0]['message'] has no field 'content'"),
])
def test_a_malformed_response_names_the_missing_field(response, problem):
    with pytest.raises(ValueError, match="^" + re.escape(f"{WHERE}: not a chat completion response: {problem}")):
        answer_text(response, WHERE)


def test_an_answer_that_is_not_text_is_refused():
    with pytest.raises(ValueError, match=r"choices\[0\]\.message\.content is NoneType None, not the answer's text"):
        answer_text({"choices": [{"message": {"content": None}}]}, WHERE)
    assert answer_text({"choices": [{"message": {"content": "[]"}}]}) == "[]"


@pytest.mark.parametrize("ids, problem", [
    ([5, 2.7], r"choices\[0\]\.token_ids\[1\] must be a whole number >= 0, got 2\.7"),
    ([5, -1], r"choices\[0\]\.token_ids\[1\] must be a whole number >= 0, got -1"),
    ([float("inf")], r"choices\[0\]\.token_ids\[0\] must be a whole number >= 0, got inf"),
    (["5"], r"choices\[0\]\.token_ids\[0\] must be a whole number >= 0, got '5'"),
    ("123", r"choices\[0\]\.token_ids must be a list of token ids, got str '123'"),
    ({"a": 1}, r"choices\[0\]\.token_ids must be a list of token ids, got dict"),
])
def test_generated_ids_that_are_not_token_ids_are_refused(ids, problem):
    with pytest.raises(ValueError, match=rf"^{AT}'s {problem}"):
        generated_token_ids({"choices": [{"token_ids": ids}]}, WHERE)
    with pytest.raises(ValueError, match=r"choices\[0\] is str"):
        generated_token_ids({"choices": ["x"]}, WHERE)


def test_a_json_infinity_is_refused_not_an_overflow():
    response = json.loads('{"choices": [{"token_ids": [Infinity]}], "prompt_token_ids": [1e400]}')
    with pytest.raises(ValueError, match="must be a whole number >= 0, got inf"):
        generated_token_ids(response, WHERE)


def test_token_ids_the_tokenizer_does_not_have_are_refused(tiny_processor):
    tokenizer = tiny_processor.tokenizer
    with pytest.raises(ValueError, match=rf"^token_ids holds token id {2**40}, outside the tokenizer's {len(tokenizer)} ids"):
        answer_from_token_ids([5, 2**40], tokenizer, "detection")
    with pytest.raises(ValueError, match=r"^token_ids\[0\] must be a whole number >= 0, got -1"):
        answer_from_token_ids([-1], tokenizer, None)
    with pytest.raises(ValueError, match=r"^eos_token_ids\[0\] must be a whole number >= 0, got 1\.5"):
        answer_from_token_ids([5], tokenizer, None, eos_token_ids=[1.5])


def test_prompt_ids_are_checked_before_they_are_compared(request_2v, tiny_processor):
    tokenizer = tiny_processor.tokenizer
    with pytest.raises(ValueError, match=rf"^{AT}: not a chat completion response: \['x'\]"):
        check_prompt_token_ids(["x"], request_2v, tokenizer, WHERE)
    served = list(request_2v.input_ids)
    served[3] = served[3] + 0.5
    with pytest.raises(ValueError, match=rf"^{AT}'s prompt_token_ids\[3\] must be a whole number >= 0"):
        check_prompt_token_ids({"prompt_token_ids": served}, request_2v, tokenizer, WHERE)
    check_prompt_token_ids({"prompt_token_ids": list(request_2v.input_ids)}, request_2v, tokenizer, WHERE)


def test_the_checks_themselves():
    assert whole_number(3, "n") == 3 and whole_number(0, "n", minimum=0) == 0
    assert grid_row(torch.tensor([1, 4, 6])) == [1, 4, 6]
    assert token_id_list((1, 2), "ids", vocabulary_size=3) == [1, 2]
    assert response_field({"a": [{"b": 1}]}, ("a", 0, "b"), WHERE) == 1


def test_a_model_list_that_is_not_a_list_of_objects_is_refused(monkeypatch):
    from gap_mllm.serving import served_model

    class Body:
        def __init__(self, data):
            self.data = data

        def read(self):
            return json.dumps({"data": self.data}).encode()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    for data in (["gap-mllm"], {"id": "gap-mllm"}):
        monkeypatch.setattr(served_model.urllib.request, "urlopen", lambda url, timeout: Body(data))
        with pytest.raises(ValueError, match=r"/v1/models: not an OpenAI model list \('data' must be a list of model objects\)"):
            served_model.check_served_model("http://127.0.0.1:8000", "gap-mllm", "src")
