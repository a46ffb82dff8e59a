"""`gap_mllm.generation.generate(model, answer_task=..., constrained=...)`: a caller that never builds the task's
settings names the task, and `generate` decodes as `model.generate(**inputs, **processor.generation_kwargs(task,
inputs, constrained=...))` would: the same tokens, the answer inside the task's grammar, and refusals that name what is
missing. Transformers' `pipeline("image-text-to-text")` takes the task's settings as standard generate arguments
(`generate_kwargs=processor.generation_kwargs(...)`) and answers inside the grammar too."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from gap_mllm import register_auto_classes
from gap_mllm.generation import generate
from gap_mllm.mini import default_model_path
from gap_mllm.tasks_gap_mllm import GROUNDING_STAGE1, GROUNDING_STAGE2


@pytest.fixture(scope="module")
def mini():
    register_auto_classes()
    folder = str(default_model_path())
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    return folder, model, processor


def _views(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)) for _ in range(count)]


def test_named_task_decodes_as_the_processor_settings_do(mini):
    _, model, processor = mini
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "image"},
                                             {"type": "text", "text": "Find the chair by the window. Output a JSON."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[_views(2)], text=[text], return_tensors="pt")
    with torch.no_grad():
        expected = model.generate(**inputs, **processor.generation_kwargs("grounding_stage2", inputs, constrained=True))
        named = generate(model, **inputs, answer_task="grounding_stage2", constrained=True, tokenizer=processor.tokenizer)
    assert torch.equal(named, expected)
    answer = processor.batch_decode(named[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)[0]
    assert GROUNDING_STAGE2.parse(answer).reason is None, answer


def test_pipeline_answers_inside_the_task_grammar(mini):
    folder, _, processor = mini
    pipe = pipeline("image-text-to-text", model=folder, trust_remote_code=True)
    messages = [{"role": "user", "content": [{"type": "image", "image": view} for view in _views(3)]
                 + [{"type": "text", "text": "Which frame shows the couch first? Output a JSON."}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[[content["image"] for content in messages[0]["content"][:3]]], text=[text],
                       return_tensors="pt")  # what the pipeline sends: the task's settings for that prompt
    out = pipe(text=messages, generate_kwargs=processor.generation_kwargs("grounding_stage1", inputs, constrained=True))
    answer = out[0]["generated_text"][-1]["content"]
    parsed = GROUNDING_STAGE1.parse(answer, num_frames=3)
    assert parsed.reason is None and 0 <= parsed.frame < 3, answer  # inside the 3 views the pipeline sent


def test_refusals_name_what_is_missing(mini):
    _, model, processor = mini
    inputs = processor(images=[_views(1)], text=[processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe."}]}], add_generation_prompt=True)],
        return_tensors="pt")
    with pytest.raises(ValueError, match="constrained=True\\) needs answer_task=NAME"):
        generate(model, **inputs, constrained=True, tokenizer=processor.tokenizer)
    with pytest.raises(ValueError, match="needs tokenizer=..."):
        generate(model, **inputs, answer_task="captioning")
    with pytest.raises(ValueError, match="frame_selection_typo"):
        generate(model, **inputs, answer_task="frame_selection_typo", tokenizer=processor.tokenizer)
