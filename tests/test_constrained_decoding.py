"""Constrained decoding: one grammar per task, derived from the registry's answer format.

- the grammar and the parser agree both ways: every answer the serialiser writes is in the grammar, and answers drawn
  at random from the grammar (token by token, through the engine's own masks) parse cleanly with the task's parser;
- the `generate` logits processor leaves a greedy answer that fits the grammar unchanged and corrects one that does
  not, row by row in a batch (the tiny model, driven by a logits processor that dictates the answer);
- GAP-MLLM-Mini's answers on frames drawn with PIL and on random noise parse for every task with constraints on,
  through the three generation paths (one call, batched requests, scene reuse);
- a spatial question's options get the letter grammar in the layouts people write them (`A)`, `(A)`, `A:`, `a.`),
  and a question asking for a letter without options is refused before the model loads;
- a detection list the grammar closed for its token budget is no success: the answer says so.
"""

import json
import random

import numpy as np
import PIL.Image
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import LogitsProcessor, LogitsProcessorList

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.cli.tasks import TaskRequest, answer_format, run_task
from gap_mllm.evaluation.generation import BatchGenerator, Request, answer_rules
from gap_mllm.evaluation.scene_generation import SceneGenerator
from gap_mllm.evaluation.tasks import get_task
from gap_mllm.generation import encode_scene, generate
from gap_mllm.mini import default_model_path
from gap_mllm.tasks_gap_mllm import (
    TASKS,
    Box3D,
    GrammarLogitsProcessor,
    detection_entries,
    fill_bitmask,
    grammar_matcher,
    offered_options,
    resolve_task,
    serialize_detection,
    spatial_answer_grammar,
    stop_token_ids,
)
from gap_mllm.tiny.tiny_model import build_tiny_model

LABELS = ["chair", "couch", "bed", "night stand", "trash can", "x"]
MINI_VOCAB = 768  # the width of GAP-MLLM-Mini's logits (its tokenizer has fewer ids)


def _random_result(task: str, rng: random.Random):
    """A typed answer of `task` (what a target holds), with the edge values of its numbers."""
    def number(low=-9.99, high=9.99):
        return rng.choice([round(rng.uniform(low, high), 2), 0.0, -0.0, 2.0, 99.99, -99.99])

    def box(label=None):
        values = [number() for _ in range(3)] + [abs(number()) for _ in range(3)] + [number(-3.14, 3.14) for _ in range(3)]
        return Box3D.from_list(values, label=label)

    spec = resolve_task(task)
    if task == "detection":
        return spec.result_type([box(rng.choice(LABELS)) for _ in range(rng.randint(0, 4))])
    if task in ("grounding", "grounding_stage2"):
        return spec.result_type(box())
    if task == "grounding_stage1":
        return spec.result_type(rng.randint(0, 40))
    if task == "reconstruction":
        return spec.result_type(tuple(number() for _ in range(3)), rng.choice([*LABELS, None]))
    if task == "captioning":
        return spec.result_type(rng.choice(["a red chair.", "this is a small striped table. it is by the wall."]))
    return spec.result_type(rng.choice(["3", "3.5", "B", "12"]))


@pytest.fixture(scope="module")
def mini_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


def _matcher(tokenizer, task):
    return grammar_matcher(tokenizer, MINI_VOCAB, resolve_task(task).grammar_for())


def grammar_accepts(tokenizer, vocab_size: int, grammar: str, text: str, whole: bool = True) -> bool:
    """Whether `text` is a whole answer of `grammar` (or with `whole=False`, the beginning of one)."""
    matcher = grammar_matcher(tokenizer, vocab_size, grammar)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    consumed = not tokens or matcher.consume_tokens(tokens)
    return consumed and not matcher.is_error() and (not whole or matcher.is_accepting())


def _sample(tokenizer, task, rng: random.Random, max_tokens: int = 2000) -> str:
    """One answer drawn from the task's grammar: at each step a random token among those the engine allows, the stop
    token taken with probability 1/4 once it is allowed."""
    matcher, bitmask = _matcher(tokenizer, task), torch.full((1, (MINI_VOCAB + 31) // 32), -1, dtype=torch.int32)
    stops, tokens = set(stop_token_ids(tokenizer)), []
    for _ in range(max_tokens):
        fill_bitmask(matcher, bitmask, 0)
        bits = (bitmask[0].unsqueeze(-1) >> torch.arange(32, dtype=torch.int32)) & 1  # 32 token ids per int32 word
        allowed = torch.nonzero(bits.flatten()[:MINI_VOCAB]).flatten().tolist()
        ends = [t for t in allowed if t in stops]
        if ends and (rng.random() < 0.25 or len(ends) == len(allowed)):
            return tokenizer.decode(tokens)
        token = rng.choice([t for t in allowed if t not in stops])
        assert matcher.consume_token(token)
        tokens.append(token)
    raise AssertionError(f"{task}: no answer end within {max_tokens} tokens: {tokenizer.decode(tokens)!r}")


@pytest.mark.parametrize("task", TASKS)
def test_grammar_and_parser_agree_both_ways(task, mini_tokenizer):
    spec, rng = resolve_task(task), random.Random(task)
    for _ in range(12):  # the serialiser's answers are in the grammar, whole
        text = spec.serialize(_random_result(task, rng))
        matcher = _matcher(mini_tokenizer, task)
        tokens = mini_tokenizer.encode(text, add_special_tokens=False) + stop_token_ids(mini_tokenizer)[:1]
        assert matcher.consume_tokens(tokens) and matcher.is_accepting(), (task, text)
    for _ in range(12):  # the grammar's answers parse cleanly, in the task's own format
        text = _sample(mini_tokenizer, task, rng)
        parsed = spec.parse(text)
        assert parsed.reason is None, (task, text, parsed.reason)
        assert answer_format(text) in (None, {"grounding_stage2": "grounding"}.get(task, task)), (task, text)
        assert spec.parse(spec.serialize(parsed)) == parsed, (task, text)  # and read back as the target would be


@pytest.mark.parametrize("task", TASKS)
def test_the_longest_answer_of_a_grammar_ends_within_its_budget(task, mini_tokenizer):
    """A token is at least a byte: the longest answer each grammar allows (longest numbers and labels, as many
    detection entries as it admits) has no more bytes than the task's budget, and one entry more is refused."""
    spec = resolve_task(task)
    box = Box3D.from_list([-99.99] * 3 + [99.99] * 3 + [-99.99] * 3, label="w" * 32)
    longest = {"detection": [box] * detection_entries(spec.max_new_tokens), "grounding_stage1": 999,
               "reconstruction": ((-99.99,) * 3, "w" * 32), "spatial_qa": "-999999.9999"}
    if task in ("captioning",):
        return  # free text: a caption cut by its budget is still a caption (parse_caption)
    result = longest.get(task, box)
    text = spec.serialize(spec.result_type(*result) if isinstance(result, tuple) else spec.result_type(result))
    assert grammar_accepts(mini_tokenizer, MINI_VOCAB, spec.grammar_for(), text), text
    assert len(text.encode()) <= spec.max_new_tokens, (task, len(text.encode()))
    if task == "detection":
        assert detection_entries(spec.max_new_tokens) == 9 and detection_entries(2 * spec.max_new_tokens) == 19
        more = spec.serialize(spec.result_type([box] * (detection_entries(spec.max_new_tokens) + 1)))
        assert not grammar_accepts(mini_tokenizer, MINI_VOCAB, spec.grammar_for(), more, whole=False)


class _Dictate(LogitsProcessor):
    """Makes each row's greedy choice the next token of its own `targets` row (a model whose greedy answer is known)."""

    def __init__(self, targets: list[list[int]], prompt_length: int):
        self.targets, self.prompt_length = targets, prompt_length

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_length
        boost = torch.zeros_like(scores)
        for row, target in enumerate(self.targets):
            boost[row, target[min(step, len(target) - 1)]] = 1e4
        return scores + boost


def test_a_fitting_greedy_answer_is_unchanged_and_another_is_corrected(build_model, tiny_processor):
    """Batched, left padded: row 0 dictates a grounding answer in the grammar, row 1 one with 3 numbers. Free decoding
    gives both as dictated; constrained, row 0 is the same tokens and row 1 becomes an answer that parses."""
    model = build_model()
    tokenizer = tiny_processor.tokenizer
    good = '{"bbox_3d": [0.5, -1.25, 2.0, 0.4, 0.4, 0.9, 0.0, 0.0, 1.57]}'
    bad = '{"bbox_3d": [0.5, 1.0, 2.0]}'
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    targets = [tokenizer(text, add_special_tokens=False)["input_ids"] + [eos] for text in (good, bad)]
    views = [Image.fromarray(np.full((64, 96, 3), 90 * i, np.uint8)) for i in range(2)]
    inputs = tiny_processor(images=[views, views[:1]], task="grounding", query=["the chair", "the bed"], return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    answers = {}
    for constrained in (False, True):
        kwargs = tiny_processor.generation_kwargs("grounding", inputs, max_new_tokens=80, constrained=constrained)
        dictated = LogitsProcessorList([_Dictate(targets, length), *kwargs.pop("logits_processor", [])])
        out = generate(model, **inputs, **kwargs, logits_processor=dictated, eos_token_id=eos, pad_token_id=eos)
        answers[constrained] = tiny_processor.decode_generated(out, inputs["input_ids"])
    assert answers[False] == [good, bad]
    assert answers[True][0] == good and answers[True][1] != bad
    fixed = tiny_processor.post_process(answers[True], "grounding")
    assert fixed[0].reason is None and fixed[1].reason is None and fixed[1].box is not None, answers[True]


def test_a_budget_given_beside_the_grammar_closes_its_list_for_that_budget(build_model, tiny_processor):
    """`generation_kwargs(constrained=True)` builds detection's grammar for the task's 1,280 tokens; a caller who gives
    `max_new_tokens` beside it (`generate(**inputs, **{**kwargs, "max_new_tokens": 240})`) gets the list closed for
    the 240 tokens the call generates, well-formed: the answer of a grammar built for 240, on the full and the scene
    path. The model dictates a list longer than any budget."""
    model, budget = build_model(), 240
    eos = tiny_processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
    box = Box3D.from_list([0.5, -1.25, 2.0, 0.4, 0.4, 0.9, 3.1, 1.2, -3.1], label="chair")
    target = tiny_processor.tokenizer(serialize_detection([box] * 40), add_special_tokens=False)["input_ids"]
    views = [Image.fromarray(np.full((64, 96, 3), 90 * i, np.uint8)) for i in range(2)]
    inputs = tiny_processor(images=[views], task="detection", return_tensors="pt")
    prompt_ids = inputs["input_ids"]

    def answer(kwargs, scene=None, **given):
        dictated = LogitsProcessorList([_Dictate([target], prompt_ids.shape[1]), *kwargs.pop("logits_processor")])
        call = {**kwargs, **given, "logits_processor": dictated, "eos_token_id": eos, "pad_token_id": eos}
        if scene is None:
            return tiny_processor.decode_generated(generate(model, **inputs, **call), prompt_ids)[0]
        question = {"input_ids": prompt_ids[:, scene.prefix_ids.shape[1]:]}
        out = generate(model, scene=scene, **question, **call)
        return tiny_processor.decode_generated(out, question["input_ids"])[0]

    built_for_it = answer(tiny_processor.generation_kwargs("detection", inputs, budget, constrained=True))
    given_beside = answer(tiny_processor.generation_kwargs("detection", inputs, constrained=True), max_new_tokens=budget)
    parsed = resolve_task("detection").parse(given_beside)
    assert given_beside == built_for_it and parsed.reason is None and len(parsed.boxes) == 2, given_beside
    prefix, _ = tiny_processor.split_scene_prompt(tiny_processor.task_prompt("detection", 2), num_views=2)
    scene = encode_scene(model, **tiny_processor(images=[views], text=[prefix], return_tensors="pt"))
    on_scene = answer(tiny_processor.generation_kwargs("detection", inputs, constrained=True), scene=scene,
                      max_new_tokens=budget)
    assert on_scene == built_for_it


def _tokenizer_without(character: str):
    """A byte-level tokenizer of single characters (no merges) that has no token for `character`, and `<|im_end|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(c for c in pre_tokenizers.ByteLevel.alphabet() if c != character)
    vocab = {c: i for i, c in enumerate(alphabet)} | {"<|im_end|>": len(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|im_end|>")


@pytest.mark.parametrize("task", ["grounding", "detection", "spatial_qa"])
def test_a_grammar_the_tokenizer_cannot_write_is_an_error_naming_what_it_cannot_write(task):
    """A tokenizer without `{` cannot write a grounding or detection answer: the grammar's first step masked the logits
    to a token the engine then refused, and the row decoded on without its grammar. Now the first step is a ValueError
    naming the character; a grammar whose characters it can all write is applied (the spatial answer's number)."""
    tokenizer = _tokenizer_without("{")
    processor = resolve_task(task).logits_processor(tokenizer, 3, 64)[0]
    step = (torch.tensor([[1, 2, 3]]), torch.zeros(1, len(tokenizer)))
    if task == "spatial_qa":
        assert torch.isfinite(processor(*step)).any()
        return
    with pytest.raises(ValueError) as refused:
        processor(*step)
    assert str(refused.value) == (
        "the answer grammar cannot be applied with this tokenizer: it has no token for '{', which the grammar's "
        "answers write; constrained decoding needs the model's own tokenizer, or decode freely (constrained=False; "
        "gap-mllm: --free)")


def test_processor_refuses_bad_settings(tiny_processor):
    with pytest.raises(ValueError, match="constrained must be True or False"):
        resolve_task("grounding").generation_kwargs(tiny_processor.tokenizer, 5, constrained="yes")
    with pytest.raises(ValueError, match="fewer than the prompt length 9"):
        GrammarLogitsProcessor(tiny_processor.tokenizer, resolve_task("grounding").grammar_for(), 9)(
            torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 768))
    free = Request(images=[], prompt="hi", task=None, constrained=True)
    with pytest.raises(ValueError, match="needs its task"):
        answer_rules([free], tiny_processor.tokenizer, 3, 8)
    mixed = [Request(images=[], prompt="a", task="detection"), Request(images=[], prompt="b", task="detection", constrained=True)]
    with pytest.raises(ValueError, match="one task, stop and grammar setting"):
        answer_rules(mixed, tiny_processor.tokenizer, 3, 8)
    assert get_task("grounding", constrained=True).make_request(0, ["a.png"], "<image>Text: x Output a JSON").constrained


def _user_frames() -> list[Image.Image]:
    """Three frames of a 'room' drawn with PIL (floor, wall, two boxes), and three frames of noise."""
    frames = []
    for k in range(3):
        image = Image.new("RGB", (160, 128), (200, 190, 170))
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 80, 160, 128), fill=(120, 90, 60))
        draw.rectangle((20 + 10 * k, 50, 70 + 10 * k, 100), fill=(180, 30, 30))
        draw.rectangle((100 - 5 * k, 40, 140 - 5 * k, 95), fill=(40, 60, 160))
        frames.append(image)
    rng = np.random.default_rng(54)
    noise = [Image.fromarray(rng.integers(0, 256, (128, 160, 3), dtype=np.uint8)) for _ in range(3)]
    return frames, noise


MINI_QUESTIONS = {  # every task a front end asks, with its inputs
    "detection": {},
    "grounding": {"query": "the red chair next to the wall"},
    "grounding_stage1": {"query": "the blue cabinet"},
    "captioning": {"box": [0.2, 0.3, 2.0, 0.6, 0.8, 0.6, 0.0, 0.0, 0.0]},
    "reconstruction": {"point_prompts": (0, 40, 70)},
    "spatial_qa": {"query": "How many chairs are in the room?"},
}


@pytest.fixture(scope="module")
def mini():
    from transformers import AutoModel, AutoProcessor

    folder = default_model_path()
    return AutoModel.from_pretrained(folder, trust_remote_code=True).eval(), AutoProcessor.from_pretrained(folder, trust_remote_code=True)


def _assert_mini_answers_parse(mini, frames, tasks):
    """One `generate` call per task, the front ends' path (processor.generation_kwargs, constrained): the answer parses
    cleanly and is in no other task's format (what `gap-mllm predict` exits 3 for). Captions get 16 tokens: a caption
    cut by its budget is still a caption, and the grammar's other answers end within their tasks' budgets."""
    model, processor = mini
    for task in tasks:
        inputs = processor(images=frames, task=task, return_tensors="pt", **MINI_QUESTIONS[task])
        budget = 16 if task == "captioning" else None
        out = model.generate(**inputs, **processor.generation_kwargs(task, inputs, budget, constrained=True))
        text = processor.decode_generated(out, inputs["input_ids"])[0]
        parsed = processor.post_process(out, task, inputs["input_ids"])[0]
        assert parsed.reason is None and answer_format(text) in (None, task), (task, text, parsed.reason)


def test_every_mini_answer_parses_with_constraints_on_user_frames(mini):
    """Frames of a user's own 'room' (PIL): free decoding answers most tasks here in another task's format."""
    _assert_mini_answers_parse(mini, _user_frames()[0], MINI_QUESTIONS)


def test_short_mini_answers_parse_with_constraints_on_noise(mini):
    _assert_mini_answers_parse(mini, _user_frames()[1], ["reconstruction", "spatial_qa"])


@pytest.mark.slow
def test_long_mini_answers_parse_with_constraints_on_noise(mini):
    """Detection, grounding and captioning on noise (the fast tests cover them on the drawn frames, and stage 1 on
    noise through the evaluation's generators)."""
    _assert_mini_answers_parse(mini, _user_frames()[1], ["detection", "grounding", "captioning"])


def test_batched_and_scene_reuse_generation_constrain_alike(mini, tmp_path):
    """The evaluation's two generators (left-padded batches; one encoding per scene, questions batched) give the same
    constrained answers, which parse, for requests on the noise frames."""
    model, processor = mini
    _, noise = _user_frames()
    paths = []
    for k, image in enumerate(noise):  # the evaluation's requests name image files
        image.save(tmp_path / f"noise-{k}.png")
        paths.append(str(tmp_path / f"noise-{k}.png"))
    spec = resolve_task("grounding_stage1")
    prompts = [spec.annotation_prompt(3, query=q) for q in ("the bed", "the blue cabinet")]
    requests = [Request(images=list(paths), prompt=p, max_new_tokens=24, task=spec.name, constrained=True) for p in prompts]
    batched = BatchGenerator.from_model(model, processor).generate(requests)
    scenes = SceneGenerator.from_model(model, processor)
    reused = scenes.generate_on_scenes(requests)
    assert scenes.scenes_encoded == 1
    assert batched == reused, (batched, reused)
    for text in batched:
        assert spec.parse(text, num_frames=3).reason is None and json.loads(text)["frame"] >= 0, text


def test_front_ends_constrain_by_default_and_evaluate_does_not():
    """predict, demo and the Space decode inside the grammar unless --free; evaluate only with --constrained."""
    import argparse

    from gap_mllm.cli import command_arguments, space
    from gap_mllm.cli.space_backend import SpaceSettings

    def parsed(add, *argv):
        parser = argparse.ArgumentParser()
        add(parser)
        return parser.parse_args(list(argv))

    predict = ("--images", "a.png", "--task", "detection")
    assert parsed(command_arguments.add_predict_arguments, *predict).constrained is True
    assert parsed(command_arguments.add_predict_arguments, *predict, "--free").constrained is False
    assert parsed(command_arguments.add_demo_arguments).constrained is True
    assert parsed(command_arguments.add_demo_arguments, "--free").constrained is False
    assert parsed(space.add_arguments).constrained is True and SpaceSettings().constrained is True
    evaluate = ("--task", "detection", "--data", "d", "--model", "mini", "--out", "o")
    assert parsed(command_arguments.add_evaluate_arguments, *evaluate).constrained is False
    assert parsed(command_arguments.add_evaluate_arguments, *evaluate, "--constrained").constrained is True


def test_stage1_grammar_holds_the_views_indices_row_by_row(mini_tokenizer):
    """Stage 1's frame index is one of its sample's views (the parser would clamp any other); a batch of samples
    with different view counts gets one grammar per row."""
    spec = resolve_task("grounding_stage1")
    assert grammar_accepts(mini_tokenizer, MINI_VOCAB, spec.grammar_for(None, 3), '{"frame": 2}')
    assert not grammar_accepts(mini_tokenizer, MINI_VOCAB, spec.grammar_for(None, 3), '{"frame": 3', whole=False)
    (processor,) = spec.logits_processor(mini_tokenizer, 2, num_views=[3, 12])
    assert processor.grammar == [spec.grammar_for(None, 3), spec.grammar_for(None, 12)]
    with pytest.raises(ValueError, match="2 grammars for a batch of 3 rows"):
        processor(torch.zeros(3, 2, dtype=torch.long), torch.zeros(3, MINI_VOCAB))


def test_evaluate_refuses_constrained_scoring_of_given_predictions(tmp_path):
    from gap_mllm.evaluation.runner import run_evaluation

    with pytest.raises(ValueError, match="constrained decoding applies to generated answers"):
        run_evaluation("detection", tmp_path / "data", tmp_path / "out", predictions_file=tmp_path / "answers.jsonl",
                       constrained=True)


# ------------------------------------------------------------------ without the grammar engine


@pytest.mark.parametrize("argv", [
    ["predict", "--example", "synthetic room A", "--task", "grounding", "--out", "{out}"],
    ["demo", "--out", "{out}"],
    ["evaluate", "--task", "grounding", "--data", "{data}", "--model", "mini", "--out", "{out}", "--constrained"],
])
def test_a_constrained_run_without_the_engine_is_refused_at_once(argv, tmp_path, monkeypatch, capsys):
    """`predict`, `demo` and `evaluate --constrained` without llguidance: one line naming it and its install command,
    exit 2, from the early check (before the command's module, hence the model, is imported), nothing written."""
    import importlib.util
    import sys

    from gap_mllm.cli.main import main
    from gap_mllm.tasks_gap_mllm import ENGINE_REQUIREMENT

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llguidance" else find_spec(name, *a))
    (tmp_path / "data").mkdir()
    out = tmp_path / "out"
    loaded = set(sys.modules)
    assert main([part.format(out=out, data=tmp_path / "data") for part in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "llguidance" in err and f"pip install '{ENGINE_REQUIREMENT}'" in err, err
    assert not out.exists() and sorted(tmp_path.iterdir()) == [tmp_path / "data"]
    command_module = {name: f"gap_mllm.cli.{name}" for name in ("predict", "demo", "evaluate")}
    assert command_module[argv[0]] in loaded or command_module[argv[0]] not in sys.modules  # not imported by the run


@pytest.mark.parametrize("rows", [[0, 1, 2], [2, 0]])
def test_the_bitmask_refuses_exactly_the_tokens_whose_bit_is_clear(rows):
    """`apply_bitmask` (numpy's unpacking on the CPU): token t of a row is -inf iff bit t % 32 of word t // 32 is 0,
    at a width that ends inside a word; the rows not named are left as they were."""
    from gap_mllm.tasks_gap_mllm import apply_bitmask

    generator = torch.Generator().manual_seed(81)
    width = 100
    bitmask = torch.randint(-2**31, 2**31 - 1, (3, 4), dtype=torch.int32, generator=generator)
    scores = torch.randn(3, width, generator=generator)
    expected = scores.clone()
    for row in rows:
        for token in range(width):
            if not (int(bitmask[row, token // 32]) >> (token % 32)) & 1:
                expected[row, token] = float("-inf")
    apply_bitmask(scores, bitmask, rows)
    assert torch.equal(scores, expected)


# ----------------------------------------------------------- options as people write them; a list closed for its budget


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_model()


@pytest.mark.parametrize("lines, letters", [
    ("A) chair\nB) table\nC) bed", ("A", "B", "C")),
    ("(A) chair\n(B) table", ("A", "B")),
    ("A: chair\nB: table", ("A", "B")),
    ("a. chair\nb. table", ("a", "b")),
    ("  a) chair\n  b) table", ("a", "b")),
])
def test_option_layouts_get_the_letter_grammar(lines, letters):
    question = f"Which object is closest to the door?\n{lines}\nAnswer with the option letter."
    assert offered_options(question) == letters
    assert spatial_answer_grammar(64, None, question) == f"root ::= {' | '.join(f'{chr(34)}{x}{chr(34)}' for x in letters)}\n"


def test_a_question_asking_for_a_letter_without_options_is_refused_before_the_model_loads(no_model_load, capsys):
    question = "Which object is closest to the door? Answer with the option's letter from the given choices directly."
    assert offered_options("Q: how far is the bed from the door?") == ()  # a "Q:" line is no option
    with pytest.raises(ValueError, match="asks for an option letter but lists no options"):
        spatial_answer_grammar(64, None, question)
    assert gap_mllm(["predict", "--example", "synthetic room A", "--task", "spatial_qa", "--query", question]) == 2
    assert capsys.readouterr().err == (
        "gap-mllm predict: error: the question asks for an option letter but lists no options this model reads: write each "
        "option on its own line as 'A. chair', 'A) chair', '(A) chair' or 'A: chair', lettered from A\n")


def test_a_constrained_list_closed_for_its_budget_is_no_success(tiny):
    model, processor = tiny
    frame = PIL.Image.fromarray(np.full((64, 96, 3), 120, dtype=np.uint8))
    result = run_task(model, processor, [frame], TaskRequest("detection"), max_new_tokens=60, constrained=True)
    assert result.raw == "```json\n[\n]```"  # well formed: the grammar closed the list at once
    assert result.parsed.reason == ("the grammar closed the list for the token budget of 60 (it keeps the last 138 "
                                    "tokens to close it), so the answer may lack entries; give it a larger token "
                                    "budget (--max-new-tokens)")
