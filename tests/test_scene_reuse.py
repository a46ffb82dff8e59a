"""Scene reuse: encode a scene once, answer K questions from its cached prefix (`gap_mllm.generation`: `encode_scene`,
`generate(model, scene=...)`).

Every answer must equal the one of a separate full `generate` call on the same images and question:
tokens exactly (greedy), logits within LOGITS_TOLERANCE (the prefix is prefilled in a shorter matmul
than in the full call, so float rounding differs; observed ≤ 3e-7 on the tiny model). The geometry
encoder and the vision tower must run once per scene, however many questions follow. A scene is refused by
name with another model (same shapes, changed weights or configuration, other head sizes) and with bad arguments.
"""

import copy

import pytest
import torch

from gap_mllm.generation import encode_scene, generate
from gap_mllm.tiny.tiny_model import build_tiny_model

from .conftest import make_views

LOGITS_TOLERANCE = 1e-5
NEW_TOKENS = 6
QUESTIONS = [
    "Where is the chair?",
    "Describe the room.",
    "How many lamps are in this room, and which one is closest to the door?",
    "Is the table left of the sofa?",
]
GREEDY = dict(max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False, output_logits=True,
              return_dict_in_generate=True)


@pytest.fixture(scope="module")
def talkative(tiny_processor):
    """Tiny model whose greedy answers change from token to token (random tiny LLMs tend to repeat one
    token; LLM weights × 4 sharpen the logits), so that equal answers mean something."""
    model, _ = build_tiny_model(processor=tiny_processor, seed=2)
    with torch.no_grad():
        for parameter in model.model.language_model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(4.0)
    return model


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def full_call(model, processor, frames, question):
    """Reference: one ordinary generate call on the whole prompt → (new tokens [L_new], logits per step [V])."""
    inputs = processor(images=frames, text=question, return_tensors="pt")
    out = model.generate(**inputs, **GREEDY)
    return out.sequences[0, inputs["input_ids"].shape[1] :], [step[0] for step in out.logits]


def assert_same_answer(reference, tokens, logits, label):
    ref_tokens, ref_logits = reference
    assert torch.equal(tokens, ref_tokens), f"{label}: {tokens.tolist()} != {ref_tokens.tolist()}"
    for step, (a, b) in enumerate(zip(logits, ref_logits, strict=True)):
        torch.testing.assert_close(a, b, atol=LOGITS_TOLERANCE, rtol=0, msg=f"{label}, step {step}")


def test_prefix_and_question_tokens_make_the_full_prompt(tiny_processor):
    frames = make_views(3)
    prefix, suffixes = tiny_processor.split_scene_prompt(QUESTIONS, num_views=3)
    assert prefix.endswith("<|vision_end|>") and prefix.count("<|vision_start|>") == 3
    scene_ids = tiny_processor(images=frames, text=prefix, return_tensors="pt")["input_ids"]
    for question, suffix in zip(QUESTIONS, suffixes, strict=True):
        assert suffix.startswith(question) and suffix.endswith("<|im_start|>assistant\n")
        full = tiny_processor(images=frames, text=question, return_tensors="pt")["input_ids"]
        question_ids = tiny_processor(text=suffix, return_tensors="pt")["input_ids"]
        assert torch.equal(torch.cat([scene_ids, question_ids], dim=1), full)
    # a chat-formatted prompt (text between the views, as the evaluation prompts) splits the same way
    chat = prefix.replace("<|vision_start|>", "Frame: <|vision_start|>") + suffixes[0]
    assert tiny_processor.split_scene_prompt(chat, num_views=3) == (prefix.replace("<|vision_start|>", "Frame: <|vision_start|>"), suffixes[0])
    with pytest.raises(ValueError, match="do not share one scene prefix"):
        tiny_processor.split_scene_prompt([chat, QUESTIONS[1]], num_views=3)


@pytest.fixture(scope="module")
def two_view_references(talkative, tiny_processor):
    """Frames of a 2-view scene and the separate full-call answers to every question about it."""
    frames = make_views(2, seed=7)
    return frames, [full_call(talkative, tiny_processor, frames, q) for q in QUESTIONS]


def answer_one_by_one(model, processor, frames, questions):
    """Encode the scene once, then one generate(scene=...) call per question → [(tokens, logits)]."""
    prefix, suffixes = processor.split_scene_prompt(questions, num_views=len(frames))
    scene = encode_scene(model, **processor(images=frames, text=prefix, return_tensors="pt"))
    answers = []
    for suffix in suffixes:
        question = processor(text=suffix, return_tensors="pt")
        out = generate(model, scene=scene, **question, **GREEDY)
        width = question["input_ids"].shape[1]
        assert torch.equal(out.sequences[0, :width], question["input_ids"][0])  # continues the ids given
        answers.append((out.sequences[0, width:], [step[0] for step in out.logits]))
    return answers


def test_answers_equal_separate_full_calls_and_the_encoders_run_once(talkative, tiny_processor, two_view_references):
    frames, references = two_view_references
    assert max(len(set(tokens.tolist())) for tokens, _ in references) >= 3, "answers too uniform to test anything"
    geometry_calls, vision_calls = count_calls(talkative.geometry_encoder), count_calls(talkative.model.visual)
    answers = answer_one_by_one(talkative, tiny_processor, frames, QUESTIONS)
    assert (len(geometry_calls), len(vision_calls)) == (1, 1)  # one scene, four questions
    for index, (reference, (tokens, logits)) in enumerate(zip(references, answers, strict=True)):
        assert_same_answer(reference, tokens, logits, f"question {index}")


@pytest.mark.parametrize("num_views, num_questions", [(1, 2), (4, 1)])
def test_other_view_counts(talkative, tiny_processor, num_views, num_questions):
    frames = make_views(num_views, seed=num_views)
    questions = QUESTIONS[:num_questions]
    references = [full_call(talkative, tiny_processor, frames, q) for q in questions]
    answers = answer_one_by_one(talkative, tiny_processor, frames, questions)
    for index, (reference, (tokens, logits)) in enumerate(zip(references, answers, strict=True)):
        assert_same_answer(reference, tokens, logits, f"{num_views} views, question {index}")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_questions_batched_against_one_scene(talkative, tiny_processor, two_view_references, padding_side):
    frames, references = two_view_references
    prefix, suffixes = tiny_processor.split_scene_prompt(QUESTIONS, num_views=2)
    scene = encode_scene(talkative, **tiny_processor(images=frames, text=prefix, return_tensors="pt"))
    batch = tiny_processor(text=suffixes, return_tensors="pt", padding_side=padding_side)
    assert not bool(batch["attention_mask"].all())  # the questions really have different lengths
    out = generate(talkative, scene=scene, **batch, **GREEDY)
    width = batch["input_ids"].shape[1]
    assert torch.equal(out.sequences[:, :width], batch["input_ids"])
    for row, reference in enumerate(references):
        assert_same_answer(reference, out.sequences[row, width:], [step[row] for step in out.logits], f"row {row}")
    answers = tiny_processor.decode_generated(out, input_ids=batch["input_ids"])
    assert answers == [tiny_processor.decode_generated(tokens[None])[0] for tokens, _ in references]


@pytest.mark.parametrize("compiled", [False, True])
def test_questions_about_several_scenes_decode_as_one_batch(talkative, tiny_processor, compiled):
    """`scene=[...]`, one scene per row: scenes of 1, 2 and 4 views (prefixes of three lengths, the shorter padded on
    the left) and two questions about one of them answer in one call as each would in its own full call."""
    from transformers import CompileConfig

    from gap_mllm.generation import DECODE_COMPILE_CONFIG

    views = [make_views(count, seed=10 + count) for count in (1, 2, 4)]
    rows = [(0, QUESTIONS[0]), (2, QUESTIONS[1]), (1, QUESTIONS[2]), (2, QUESTIONS[3])]  # (scene, question) per row
    references = [full_call(talkative, tiny_processor, views[k], question) for k, question in rows]
    scenes = []
    for frames in views:
        prefix, _ = tiny_processor.split_scene_prompt(QUESTIONS[:1], num_views=len(frames))
        scenes.append(encode_scene(talkative, **tiny_processor(images=frames, text=prefix, return_tensors="pt")))
    assert len({scene.num_tokens for scene in scenes}) == 3
    suffixes = [tiny_processor.split_scene_prompt([question], num_views=len(views[k]))[1][0] for k, question in rows]
    batch = tiny_processor(text=suffixes, return_tensors="pt", padding=True)
    options = dict(GREEDY)
    if compiled:
        options["compile_decoding"] = CompileConfig(**{**DECODE_COMPILE_CONFIG, "backend": "eager", "mode": None})
    out = generate(talkative, scene=[scenes[k] for k, _ in rows], **batch, **options)
    width = batch["input_ids"].shape[1]
    for row, reference in enumerate(references):
        assert_same_answer(reference, out.sequences[row, width:], [step[row] for step in out.logits], f"row {row}")
    with pytest.raises(ValueError, match=r"got 2 scenes for 4 question rows"):
        generate(talkative, scene=scenes[:2], **batch, **GREEDY)


def test_whole_prompt_works_as_scene_input_and_the_scene_is_never_written(talkative, tiny_processor):
    frames = make_views(2, seed=3)
    scene = encode_scene(talkative, **tiny_processor(images=frames, text=QUESTIONS[0], return_tensors="pt"))
    prefix, suffix = tiny_processor.split_scene_prompt(QUESTIONS[0], num_views=2)
    assert scene.num_tokens == tiny_processor(images=frames, text=prefix, return_tensors="pt")["input_ids"].shape[1]
    before = [(k.clone(), v.clone()) for k, v in scene.key_values]
    for _ in range(2):
        generate(talkative, scene=scene, **tiny_processor(text=[suffix] * 3, return_tensors="pt"), max_new_tokens=4)
    assert all(torch.equal(k, k0) and torch.equal(v, v0) for (k, v), (k0, v0) in zip(scene.key_values, before))
    assert scene.nbytes == sum(2 * k.numel() * 4 for k, _ in scene.key_values)


def test_scene_keeps_the_gates_of_a_full_forward(talkative, tiny_processor):
    frames = make_views(2, seed=5)
    inputs = tiny_processor(images=frames, text=QUESTIONS[1], return_tensors="pt")
    scene = encode_scene(talkative, **inputs, output_gates=True)
    with torch.no_grad():
        gates = talkative(**inputs, output_gates=True).fusion_gates
    assert len(scene.fusion_gates) == len(gates) == 4
    for a, b in zip(scene.fusion_gates, gates):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_bad_scene_requests_get_clear_errors(talkative, tiny_processor):
    frames = make_views(2)
    two_scenes = tiny_processor(images=[frames, frames], text=["a", "b"], return_tensors="pt")
    with pytest.raises(ValueError, match="ONE scene"):
        encode_scene(talkative, **two_scenes)
    with pytest.raises(ValueError, match="no <\\|vision_end\\|>"):
        encode_scene(talkative, **tiny_processor(text="no views", return_tensors="pt"), pixel_values=torch.zeros(1),
                               image_grid_thw=torch.ones(1, 3, dtype=torch.long))
    full = tiny_processor(images=frames, text=QUESTIONS[0], return_tensors="pt")
    scene = encode_scene(talkative, **full)
    with pytest.raises(ValueError, match="pixel_values"):
        generate(talkative, scene=scene, **full)
    with pytest.raises(ValueError, match="image tokens"):
        generate(talkative, scene=scene, input_ids=full["input_ids"])
    question = tiny_processor(text=tiny_processor.split_scene_prompt("q", 2)[1], return_tensors="pt")
    with pytest.raises(ValueError, match="num_beams=1"):
        generate(talkative, scene=scene, **question, num_beams=2)
    with pytest.raises(ValueError, match="use_cache=True"):
        generate(talkative, scene=scene, **question, use_cache=False)


# ------------------------------------------------------------------------- a scene and the model that encoded it


@pytest.fixture(scope="module")
def scene_setup(tiny_processor):
    model, _ = build_tiny_model(processor=tiny_processor, seed=0)
    frames = make_views(2, seed=11)
    prefix, suffix = tiny_processor.split_scene_prompt("Where is the chair?", num_views=2)
    question = tiny_processor(text=suffix, return_tensors="pt")
    return model, frames, prefix, question


def encode(model, processor, frames, prefix):
    return encode_scene(model, **processor(images=frames, text=prefix, return_tensors="pt"))


def test_a_scene_of_another_model_with_the_same_shapes_is_refused(tiny_processor, scene_setup):
    model, frames, prefix, question = scene_setup
    scene = encode(model, tiny_processor, frames, prefix)
    other, _ = build_tiny_model(processor=tiny_processor, seed=1)  # same layers, dtype, device; other weights
    with pytest.raises(ValueError, match="cannot be used with this model: it was encoded by another model object"):
        generate(other, scene=scene, **question, max_new_tokens=2)
    with pytest.raises(ValueError, match="another model object"):
        generate(copy.deepcopy(model), scene=scene, **question, max_new_tokens=2)
    first = generate(model, scene=scene, **question, max_new_tokens=3, do_sample=False)  # its own model: works,
    again = generate(model, scene=scene, **question, max_new_tokens=3, do_sample=False)  # and generating changes nothing
    assert torch.equal(first, again)


def test_a_scene_is_refused_after_the_weights_change(tiny_processor):
    model, _ = build_tiny_model(processor=tiny_processor, seed=0)
    other, _ = build_tiny_model(processor=tiny_processor, seed=1)
    frames = make_views(2, seed=12)
    prefix, suffix = tiny_processor.split_scene_prompt("q", num_views=2)
    question = tiny_processor(text=suffix, return_tensors="pt")
    weight = model.model.language_model.layers[0].mlp.up_proj.weight
    for change in (lambda: model.load_state_dict(other.state_dict()), lambda: weight.add_(0.01)):  # loading; a step
        scene = encode(model, tiny_processor, frames, prefix)
        with torch.no_grad():
            change()
        with pytest.raises(ValueError, match="this model's weights changed after it was encoded"):
            generate(model, scene=scene, **question, max_new_tokens=2)
    scene = encode(model, tiny_processor, frames, prefix)
    model.config.text_config.rms_norm_eps = 1e-3
    with pytest.raises(ValueError, match="configuration changed after it was encoded"):
        generate(model, scene=scene, **question, max_new_tokens=2)


def test_a_scene_of_other_head_sizes_is_named_by_its_shapes(tiny_processor, scene_setup):
    model, frames, prefix, question = scene_setup
    scene = encode(model, tiny_processor, frames, prefix)  # 4 layers of [1, 2, P, 16]
    small, _ = build_tiny_model(processor=tiny_processor, size="small")  # 4 layers of [1, 2, P, 64]
    with pytest.raises(ValueError, match=r"different model or placement \(4 layers of keys \[1, 2, \d+, 16\] "
                                         r"torch.float32 on cpu\); this model needs 4 layers of keys \[1, 2, P, 64\]"):
        generate(small, scene=scene, **question, max_new_tokens=2)


def test_bad_scene_arguments_get_errors_naming_them(tiny_processor, scene_setup):
    model, frames, prefix, question = scene_setup
    scene = encode(model, tiny_processor, frames, prefix)
    with pytest.raises(ValueError, match=r"scene must be a GapMllmScene from gap_mllm\.generation\.encode_scene\(model, \.\.\.\), got str 'hello'"):
        generate(model, scene="hello", **question, max_new_tokens=2)
    ids = question["input_ids"]
    with pytest.raises(ValueError, match=rf"attention_mask has shape \(2, {ids.shape[1]}\) but input_ids has \(1, {ids.shape[1]}\)"):
        generate(model, scene=scene, input_ids=ids, attention_mask=torch.ones(2, ids.shape[1], dtype=torch.long), max_new_tokens=2)
    vocabulary = model.get_input_embeddings().num_embeddings
    for bad in (vocabulary, -3):
        foreign = ids.clone()
        foreign[0, 1] = bad
        with pytest.raises(ValueError, match=rf"input_ids holds token id {bad}, outside the model's vocabulary of {vocabulary} ids"):
            generate(model, scene=scene, input_ids=foreign, max_new_tokens=2)
    full = tiny_processor(images=frames, text="Where is the chair?", return_tensors="pt")
    full["input_ids"][0, -2] = vocabulary + 5
    with pytest.raises(ValueError, match=rf"token id {vocabulary + 5}, outside"):  # the full path too
        generate(model, **full, max_new_tokens=2)
