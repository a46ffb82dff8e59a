"""Constrained answers that mean something: each task's grammar admits what a reader accepts as an answer of that task.

- captions are prose (words, numbers, spaces, ordinary punctuation; no `{ } [ ] "`, no key name), and every caption
  SynthRooms trains on is inside that grammar, as is every other training target inside its task's grammar;
- labels are names; stage 1's frame is one of the views; spatial QA answers one of the options its question offers;
- a detection answer is bounded by tokens, not bytes: with a real-size tokenizer (the tiny one padded to Qwen's
  151,936 ids) and the Mini's, 1,280 tokens hold 18 entries of a real scene (a byte bound allowed 9), and a stream
  that always opens another entry, one byte per token, still ends well-formed at every budget;
- GAP-MLLM-Mini on six public-domain photographs (tests/data/photos/SOURCES.md), a drawn room and noise answers
  inside these grammars on every path that decodes constrained: `gap-mllm predict` / `demo` (`run_task`), the
  Space's stored scenes, `generate(model, answer_task=...)`, the batched generator of `gap-mllm evaluate` and the
  lmms-eval plugin's hf backend, and a vLLM request's grammar.
"""

import json
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoModel, AutoProcessor, AutoTokenizer, LogitsProcessorList

from gap_mllm.checks import fit_budget_to_context
from gap_mllm.cli.scene_store import SceneStore
from gap_mllm.cli.tasks import TaskRequest, answer_format, run_task, task_answer
from gap_mllm.evaluation.generation import BatchGenerator, Request, answer_rules
from gap_mllm.generation import answer_task_kwargs, budget_to_grammars, generate
from gap_mllm.mini import default_model_path
from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.features import OFFICIAL_CATEGORIES
from gap_mllm.processing.synth.categories import CATEGORY_NAMES
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.language import captions
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.serving import GapMllmEncoder, chat_completion_payload
from gap_mllm.tasks_gap_mllm import (
    CAPTIONING,
    DETECTION,
    DETECTION_INDENT,
    DETECTION_LINE_END,
    DETECTION_LIST,
    RECONSTRUCTION,
    SPATIAL_QA,
    TASKS,
    Box3D,
    GrammarLogitsProcessor,
    detection_entries,
    detection_entry,
    offered_options,
    parse_caption,
    parse_grounding,
    resolve_task,
    serialize_detection,
    stop_token_ids,
)

from .conftest import write_small_synth
from .test_constrained_answers_kept import photo_frames
from .test_constrained_decoding import _user_frames, grammar_accepts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from engine_bench_model import padded_tokenizer  # noqa: E402

PHOTOS = sorted((Path(__file__).parent / "data" / "photos").glob("*.jpg"))
MINI_VOCAB = 768  # the width of GAP-MLLM-Mini's logits
QWEN_VOCAB = 151_936  # Qwen3-VL's
BOX = [0.2, 0.3, 2.0, 0.6, 0.8, 0.6, 0.0, 0.0, 0.0]
CHOICE = ("Which object is closest to the camera?\nA. chair\nB. table\nC. lamp\n"
          "Answer with the option's letter from the given choices directly.")
NUMERICAL = "How many chairs are in this room?\nPlease answer the question using a single word or phrase."
REAL_BOX = Box3D.from_list([1.23, -0.45, 3.06, 0.62, 0.58, 0.91, 1.57, -0.0, 0.0], label="chair")  # a room's numbers
ENTRY_TOKENS = 65  # its detection line (88 bytes) with both tokenizers: every digit is a token, 6 per number


@pytest.fixture(scope="module")
def mini_tokenizer():
    return AutoTokenizer.from_pretrained(default_model_path())


@pytest.fixture(scope="module")
def mini():
    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    return model, AutoProcessor.from_pretrained(folder, trust_remote_code=True)


def _frames(name: str) -> list[Image.Image]:
    """The six photographs (sizes 160x106 to 160x188, resized to the first one's: test_constrained_answers_kept
    `photo_frames`), or the drawn room and the noise of test_constrained_decoding (three frames each)."""
    if name == "photos":
        return photo_frames()
    room, noise = _user_frames()
    return {"room": room, "noise": noise}[name]


def _inside(tokenizer, grammar: str, text: str, whole: bool = True) -> bool:
    """`text` is an answer of `grammar` (`whole`), or the beginning of one (an answer cut by its budget)."""
    return grammar_accepts(tokenizer, MINI_VOCAB, grammar, text, whole)


def _is_prose(tokenizer, caption: str, whole: bool = False) -> bool:
    return _inside(tokenizer, CAPTIONING.grammar_for(), caption, whole)


# ------------------------------------------------------------------------------------------------ the grammars


PROSE = ["this is a small red striped night stand. it is placed against the wall.", "a bed.",
         "the couch is about 1.5 meters away.", "It's an L-shaped (wooden) sofa, left of the TV; 2 chairs face it!",
         "I see a point on the frame?"]
NOT_PROSE = ['9d": [-0d": "bed", "bbox_3.0, 1.08]', '{"bbox_3d": [0.1]}', "the bed, 1.03, 2.5.", "label: chair.",
             "a  bed.", "a bed..", "bed ,wall.", " a bed.", "pointmapTextcouch couch.", "the dpointmap.", "a bbox.",
             "1 chair.", "a d.", "a chair\nby the wall.", "the `bed`.", "it is -1.5 meters away."]


@pytest.mark.parametrize("caption", PROSE)
def test_a_caption_of_prose_is_inside_the_grammar(caption, mini_tokenizer):
    assert _is_prose(mini_tokenizer, caption, whole=True)


@pytest.mark.parametrize("caption", NOT_PROSE)
def test_another_task_syntax_or_debris_is_no_caption(caption, mini_tokenizer):
    """Brackets, quotes, colons, backticks, line breaks, key names (also glued into a word), numbers next to numbers,
    double spaces and punctuation, one-letter words other than `a` and `I`, a minus: refused somewhere in the text."""
    assert not _is_prose(mini_tokenizer, caption)


def test_labels_are_names(mini_tokenizer):
    """Detection's and reconstruction's label: every category the data knows, and nothing that is no name."""
    def labelled(label):
        return DETECTION.serialize(DETECTION.result_type([Box3D.from_list([0.5] * 9, label=label)]))

    for label in (*CATEGORY_NAMES, *OFFICIAL_CATEGORIES, "night stand", "l-shaped sofa", "kid's bed", "tv 2", "w" * 32):
        assert _inside(mini_tokenizer, DETECTION.grammar_for(), labelled(label)), label
    for label in ("", "9d", "]: 0.2, [", "chair ", "a  b", "-chair", "chair-", "w" * 33, "bed}, {", "x_y"):
        assert not _inside(mini_tokenizer, DETECTION.grammar_for(), labelled(label)), label
    assert not _inside(mini_tokenizer, RECONSTRUCTION.grammar_for(), '{"pointmap": [0.1, 0.2, 0.3], "label": "1.5"}')


def test_spatial_answers_are_the_options_the_question_offers(mini_tokenizer):
    assert offered_options(CHOICE) == ("A", "B", "C") and offered_options(NUMERICAL) == ()
    choice, numerical = SPATIAL_QA.grammar_for(None, None, CHOICE), SPATIAL_QA.grammar_for(None, None, NUMERICAL)
    assert [_inside(mini_tokenizer, choice, a) for a in ("A", "C", "D", "3")] == [True, True, False, False]
    assert [_inside(mini_tokenizer, numerical, a) for a in ("3", "2.75", "-1", "A")] == [True, True, True, False]
    assert _inside(mini_tokenizer, SPATIAL_QA.grammar_for(), "D")  # the question unknown: either form


DUPLICATE_LETTER = "Which object is closest to the camera?\nA. chair\nB. table\nA. sofa\nAnswer with the option's letter."
NUMBERED = "Which object is closest to the camera?\n1. chair\n2. table\nAnswer with the option's number."


@pytest.mark.parametrize("question, problem", [
    (DUPLICATE_LETTER, "the question names option A twice, so an answer 'A' would not say which: letter each option "
                       "once, from A"),
    (NUMBERED, "the question numbers its options (1, 2), and this model answers options by their letter: write them "
               "as 'A. chair', 'B. table', lettered from A"),
])
def test_a_question_naming_a_letter_twice_or_numbering_its_options_is_refused_by_name(question, problem, capsys):
    """"A. chair / B. table / A. sofa" got the grammar of A or B (an answer "A" says neither which), and "1. chair /
    2. table" the free number grammar (the Mini may answer "2010"). Both are refused, naming why, by the grammar (every
    path: generate, the evaluation, a vLLM request) and by the front ends' request check before the model loads."""
    from gap_mllm.cli.main import main as gap_mllm

    with pytest.raises(ValueError) as refused:
        SPATIAL_QA.grammar_for(None, None, question)
    assert str(refused.value) == problem
    with pytest.raises(ValueError) as refused:
        TaskRequest("spatial_qa", query=question).check_given()
    assert str(refused.value) == problem
    assert gap_mllm(["predict", "--example", "synthetic room A", "--task", "spatial_qa", "--query", question]) == 2
    assert capsys.readouterr().err == f"gap-mllm predict: error: {problem}\n"
    # numbered lines beside lettered options are no options: the letters are read
    steps = "Go forward.\n1. pass the bed\n2. turn left\nWhere is the door?\nA. left\nB. right"
    assert SPATIAL_QA.grammar_for(None, None, steps) == 'root ::= "A" | "B"\n'


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    return write_small_synth(tmp_path_factory.mktemp("synth"))


def test_every_synthrooms_training_target_is_inside_its_grammar(synth_root, mini_tokenizer):
    """The answers (and Scan2Cap's reference captions) of a generated dataset: the model is never trained on an answer
    that constrained decoding could not write. Detection's is inside both forms of its grammar: bounded in bytes and
    closed by the token budget."""
    checked = 0
    for task in ("detection", "grounding_stage1", "grounding_stage2", "captioning", "reconstruction", "spatial_qa"):
        spec = resolve_task(task)
        for record in json.loads(find_annotation_file(synth_root, task, "val").read_text()):
            prompt, answer = (turn["value"] for turn in record["conversations"])
            grammars = [spec.grammar_for(None, len(record["images"]), prompt)]
            if spec.entry_list is not None:
                grammars.append(spec.entry_list.grammar(None))
            for text in [answer, *record.get("annotations", [])]:
                assert all(_inside(mini_tokenizer, g, text) for g in grammars), (task, text)
                checked += 1
    assert checked > 30


def test_every_synthrooms_caption_is_prose(mini_tokenizer):
    """The three caption forms of every object of 16 layout scenes (the language of the captioning targets)."""
    generator = SynthRooms(synth_config("mini", seed=7))
    texts = {c for i in range(16) for scene in [generator.layout_scene(i)] for k in range(len(scene.objects))
             for c in captions(scene, k)}
    assert len(texts) > 100
    assert [t for t in texts if not _is_prose(mini_tokenizer, t, whole=True)] == []


# ------------------------------------------------------------------------------------- detection's token budget


def _forced_detection(tokenizer, width: int, budget: int, target: list[int], prefer_short: bool = False,
                      lowered: int | None = None, by_byte: bool = False) -> tuple[str, int]:
    """Greedy decoding under `DETECTION_LIST`'s processor with a stream that dictates `target` (a list far longer than
    the budget: it always opens another entry); where the grammar refuses the dictated token, the allowed token the
    stream prefers: any (`prefer_short` False) or the one of fewest bytes (the most tokens per answer). `lowered`:
    the budget `generate` lowers the call to (`fit_budget`). `by_byte`: `target` holds one token per byte and the
    stream dictates the token of the answer's next byte (where the grammar forces its next bytes, the engine writes
    them in its own tokens, so the answer runs ahead of the step count). Returns `(answer, tokens generated)`."""
    processor = GrammarLogitsProcessor(tokenizer, DETECTION_LIST, 1, budget)
    if lowered is not None:
        processor.fit_budget(lowered)
    budget = min(budget, lowered or budget)
    stops = set(stop_token_ids(tokenizer))
    base = torch.zeros(1, width)
    if prefer_short:
        lengths = [len(tokenizer.convert_ids_to_tokens(i) or "") or 99 for i in range(len(tokenizer))]
        base[0, : len(lengths)] = -torch.tensor(lengths, dtype=torch.float)
    ids, scores, threads = [tokenizer.convert_tokens_to_ids("<|im_start|>")], base.clone(), torch.get_num_threads()
    torch.set_num_threads(1)  # a Qwen-wide row per step: on a busy 2-core machine two threads make it 4x slower
    try:
        for step in range(budget):
            scores.copy_(base)
            at = len(tokenizer.decode(ids[1:]).encode()) if by_byte else step
            scores[0, target[min(at, len(target) - 1)]] += 1e4
            token = int(processor(torch.tensor([ids]), scores).argmax())
            if token in stops:
                break
            ids.append(token)
    finally:
        torch.set_num_threads(threads)
    return tokenizer.decode(ids[1:]), len(ids) - 1


def _real_scene_entries(tokenizer) -> list[int]:
    """The tokens of a detection answer listing 200 objects of a real scene's size (2-decimal numbers)."""
    return tokenizer(serialize_detection([REAL_BOX] * 200), add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("which", ["mini", "real_size"])
def test_detection_holds_as_many_entries_as_the_tokens_allow(which, mini_tokenizer):
    """1,280 tokens (detection's budget) hold 18 entries of a room (`ENTRY_TOKENS` each) with either tokenizer, where
    the byte bound allowed 9; the answer ends well-formed within the budget."""
    tokenizer, width = (mini_tokenizer, MINI_VOCAB) if which == "mini" else (padded_tokenizer(QWEN_VOCAB), QWEN_VOCAB)
    entry = DETECTION_INDENT + detection_entry(REAL_BOX) + DETECTION_LINE_END
    assert len(tokenizer(entry, add_special_tokens=False)["input_ids"]) == ENTRY_TOKENS
    answer, used = _forced_detection(tokenizer, width, DETECTION.max_new_tokens, _real_scene_entries(tokenizer))
    parsed = DETECTION.parse(answer)
    assert parsed.reason is None and answer.endswith("]```") and used <= DETECTION.max_new_tokens, answer[-80:]
    assert len(parsed.boxes) == 18 and detection_entries(DETECTION.max_new_tokens) == 9


def test_an_answer_forced_to_its_budget_still_parses(mini_tokenizer):
    """The worst case of the reserve: entries of the longest labels and numbers, written one byte per token wherever
    the grammar leaves a choice (bytes it forces, llguidance writes in its own tokens), that
    never stop opening another entry, at every budget across one entry's length (the budget ends in every part of
    an entry): the answer ends well-formed within the budget, with at least the byte bound's entries."""
    longest = Box3D.from_list([-99.99] * 3 + [99.99] * 3 + [-99.99] * 3, label="w" * 32)
    text = serialize_detection([longest] * 12)
    target = [tokenizer_id for c in text for tokenizer_id in mini_tokenizer(c, add_special_tokens=False)["input_ids"]]
    assert len(target) == len(text)  # one byte per token
    for budget in range(DETECTION_LIST.reserve, DETECTION_LIST.reserve + 140):
        answer, used = _forced_detection(mini_tokenizer, MINI_VOCAB, budget, target, prefer_short=True, by_byte=True)
        parsed = DETECTION.parse(answer)
        assert parsed.reason is None and answer.endswith("]```") and used <= budget, (budget, answer[-60:])
        assert len(parsed.boxes) >= detection_entries(budget), budget


def test_a_budget_lowered_to_the_context_closes_the_list_for_it(mini, mini_tokenizer):
    """`generate` lowers a budget past the model's context to the positions left (checks.py) and tells the
    grammar, whose list then closes for the lower budget: 3 entries in 300 tokens, as a 300-token call."""
    model, _ = mini
    processor = GrammarLogitsProcessor(mini_tokenizer, DETECTION_LIST, 5, DETECTION.max_new_tokens)
    kwargs = {"max_new_tokens": DETECTION.max_new_tokens, "logits_processor": LogitsProcessorList([processor])}
    limit = model.config.text_config.max_position_embeddings
    fit_budget_to_context(model, kwargs, highest_prompt_position=limit - 1 - 300, input_length=5)
    budget_to_grammars(model, kwargs, input_length=5)  # what generate does next
    assert kwargs["max_new_tokens"] == processor.max_new_tokens == 300
    target = _real_scene_entries(mini_tokenizer)
    lowered, used = _forced_detection(mini_tokenizer, MINI_VOCAB, DETECTION.max_new_tokens, target, lowered=300)
    assert (lowered, used) == _forced_detection(mini_tokenizer, MINI_VOCAB, 300, target)
    assert len(DETECTION.parse(lowered).boxes) == 3 and used <= 300


def test_stage1_frame_is_one_of_the_views_on_every_path(mini):
    """Stage 1's grammar holds the sample's view indices wherever it is built: the processor's settings (predict, demo,
    Space), `generate(model, answer_task=...)`, the evaluation's batches, a vLLM request."""
    model, processor = mini
    spec, photos = resolve_task("grounding_stage1"), _frames("photos")[:3]
    three = spec.grammar_for(None, 3)
    assert 'root ::= "{" "\\"frame\\": " ("0" | "1" | "2") "}"' in three
    inputs = processor(images=photos, task=spec.name, query="the cat", return_tensors="pt")
    (from_processor,) = processor.generation_kwargs(spec.name, inputs, constrained=True)["logits_processor"]
    (from_generate,) = answer_task_kwargs(spec.name, True, inputs["input_ids"],
                                          {"tokenizer": processor.tokenizer, **inputs})["logits_processor"]
    (from_batches,) = answer_rules([Request(images=["a", "b", "c"], prompt="", task=spec.name, constrained=True)],
                                   processor.tokenizer, 9, spec.max_new_tokens)["logits_processor"]
    request = GapMllmEncoder(model, processor).encode(photos, task=spec.name, query="the cat")
    from_vllm = chat_completion_payload(request, constrained=True)["structured_outputs"]["grammar"]
    assert from_processor.grammar == from_generate.grammar == from_batches.grammar == [three] and from_vllm == three


# ---------------------------------------------------------------------------- GAP-MLLM-Mini, every constrained path


def _check_answer(tokenizer, task: str, raw: str, parsed, query: str | None = None) -> None:
    """`raw` is a real answer of `task`: parsed cleanly, in no other task's format; a caption is prose (cut by its
    budget or whole), a spatial answer one of the offered options."""
    assert parsed.reason is None and answer_format(raw) in (None, task), (task, raw)
    if task == "captioning":
        assert _is_prose(tokenizer, raw), raw
    if task == "spatial_qa" and offered_options(query):
        assert raw in offered_options(query), raw


@pytest.mark.parametrize("frames", ["photos", "room", "noise"])
def test_predict_and_demo_captions_are_prose(frames, mini):
    """`run_task` (gap-mllm predict, demo): the Mini's caption of a box, 48 tokens, on each kind of frames (freely
    decoded it answers grounding's dict here)."""
    model, processor = mini
    result = run_task(model, processor, _frames(frames), TaskRequest("captioning", box=BOX), max_new_tokens=48)
    _check_answer(processor.tokenizer, "captioning", result.raw, result.parsed)


def test_predict_answers_every_task_on_photographs(mini):
    """Every front-end task's answer on the six photographs (detection with 200 tokens: its list closes at them, well
    formed, and the front end says the budget closed it: no success)."""
    model, processor = mini
    photos = _frames("photos")
    requests = {"detection": TaskRequest("detection"), "grounding": TaskRequest("grounding", query="the red chair"),
                "reconstruction": TaskRequest("reconstruction", marker=(0, 40, 50)),
                "spatial_qa": TaskRequest("spatial_qa", query=CHOICE)}
    for task, request in requests.items():
        result = run_task(model, processor, photos, request, max_new_tokens=200 if task == "detection" else None)
        if task == "detection":
            assert result.parsed.reason.startswith("the grammar closed the list for the token budget of 200 ")
            assert processor.post_process_detection(processor.tokenizer(result.raw, return_tensors="pt")["input_ids"]
                                                    )[0].reason is None and len(result.parsed.boxes) >= 1
            continue
        _check_answer(processor.tokenizer, task, result.raw, result.parsed, request.query)


def test_the_space_stored_scene_answers_as_predict(mini):
    """The Space answers from the session's stored scene (cli/scene_store.py): the same constrained answers (whole:
    48 tokens hold the caption)."""
    model, processor = mini
    photos, store = _frames("photos")[:3], SceneStore()
    for request in (TaskRequest("captioning", box=BOX), TaskRequest("spatial_qa", query=CHOICE)):
        stored = run_task(model, processor, photos, request, max_new_tokens=48, scenes=store, session="s")
        assert stored.raw == run_task(model, processor, photos, request, max_new_tokens=48).raw
        _check_answer(processor.tokenizer, request.task, stored.raw, stored.parsed, request.query)
    assert store.encoded == 1


def test_generate_with_a_named_task_answers_inside_the_grammar(mini):
    """`gap_mllm.generation.generate(model, answer_task=..., constrained=True)`: a caption is prose, and a batch of a
    choice and a numerical question gets one grammar per row, from each row's prompt."""
    model, processor = mini
    photos = _frames("photos")
    inputs = processor(images=photos, task="captioning", box=BOX, return_tensors="pt")
    out = generate(model, **inputs, answer_task="captioning", constrained=True, tokenizer=processor.tokenizer,
                   max_new_tokens=32)
    caption = processor.decode_generated(out, inputs["input_ids"])[0]
    _check_answer(processor.tokenizer, "captioning", caption, CAPTIONING.parse(caption))
    inputs = processor(images=[photos[:3], photos[3:]], task="spatial_qa", query=[CHOICE, NUMERICAL],
                       return_tensors="pt")
    out = generate(model, **inputs, answer_task="spatial_qa", constrained=True, tokenizer=processor.tokenizer)
    choice, number = processor.decode_generated(out, inputs["input_ids"])
    assert choice in ("A", "B", "C") and SPATIAL_QA.parse(number).value is not None, (choice, number)


def test_the_evaluation_and_lmms_eval_generator_answers_inside_the_grammar(mini, tmp_path):
    """`BatchGenerator` (gap-mllm evaluate, the lmms-eval plugin's hf backend) on the photographs as files."""
    model, processor = mini
    paths = []
    for path, frame in zip(PHOTOS, photo_frames()):
        paths.append(str(tmp_path / path.name))
        frame.save(paths[-1])
    caption = Request(images=paths, prompt=CAPTIONING.annotation_prompt(6, box=BOX), max_new_tokens=32,
                      task="captioning", constrained=True)
    choice = Request(images=paths, prompt=SPATIAL_QA.annotation_prompt(6, query=CHOICE), max_new_tokens=8,
                     task="spatial_qa", constrained=True)
    generator = BatchGenerator.from_model(model, processor)
    (text,) = generator.generate([caption])
    _check_answer(processor.tokenizer, "captioning", text, CAPTIONING.parse(text))
    (letter,) = generator.generate([choice])
    assert letter in ("A", "B", "C"), letter


def test_a_vllm_request_carries_the_grammar_of_its_question(mini):
    """The vLLM payload's grammar: the caption's prose (and the Mini decoding inside it as vLLM's guidance backend
    does, with no budget closing: prose), spatial QA's offered letters from the request's prompt, and detection's
    list bounded in bytes (vLLM cannot count tokens)."""
    model, processor = mini
    photos, encoder = _frames("photos")[:3], GapMllmEncoder(model, processor)
    request = encoder.encode(photos, task="captioning", box=BOX)
    grammar = chat_completion_payload(request, max_tokens=24, constrained=True)["structured_outputs"]["grammar"]
    assert grammar == CAPTIONING.grammar_for(24)
    inputs = processor(images=photos, task="captioning", box=BOX, return_tensors="pt")
    length = inputs["input_ids"].shape[1]
    vllm_like = LogitsProcessorList([GrammarLogitsProcessor(processor.tokenizer, grammar, length)])
    out = model.generate(**inputs, max_new_tokens=24, do_sample=False, logits_processor=vllm_like)
    text = processor.decode_generated(out, inputs["input_ids"])[0]
    _check_answer(processor.tokenizer, "captioning", text, CAPTIONING.parse(text))
    request = encoder.encode(photos[:2], task="spatial_qa", query=CHOICE)
    spatial = chat_completion_payload(request, constrained=True)["structured_outputs"]["grammar"]
    assert spatial == SPATIAL_QA.grammar_for(None, None, request.prompt) == 'root ::= "A" | "B" | "C"\n'
    detection = chat_completion_payload(encoder.encode(photos[:2], task="detection"), constrained=True)
    assert detection["structured_outputs"]["grammar"] == DETECTION.grammar_for() == DETECTION_LIST.grammar(9)


@pytest.mark.slow
@pytest.mark.parametrize("frames", ["photos", "room", "noise"])
def test_every_default_answer_is_a_real_answer(frames, mini):
    """Every front-end task with its own budget (what `gap-mllm predict` answers by default) on each kind of frames:
    captions are prose, detection lists labelled boxes, spatial QA one offered option."""
    model, processor = mini
    views = _frames(frames)
    for task, request in {"detection": TaskRequest("detection"), "grounding": TaskRequest("grounding", query="the bed"),
                          "captioning": TaskRequest("captioning", box=BOX),
                          "reconstruction": TaskRequest("reconstruction", marker=(0, 40, 50)),
                          "spatial_qa": TaskRequest("spatial_qa", query=CHOICE)}.items():
        result = run_task(model, processor, views, request)
        _check_answer(processor.tokenizer, task, result.raw, result.parsed, request.query)


def test_only_spatial_qa_reads_its_prompt_and_only_detection_closes_a_list():
    assert [name for name, spec in TASKS.items() if spec.grammar_reads_prompt] == ["spatial_qa"]
    assert [name for name, spec in TASKS.items() if spec.entry_list is not None] == ["detection"]


# --------------------------------------------------------------------------- a box of no size; a caption of JSON pieces


def test_a_zero_size_box_is_no_objects_box():
    # the GAP-MLLM-Mini's constrained answer to 'the chair by the window ' x 417 (a query that just fits)
    raw = '{"bbox_3d": [10.10, -10.11, -11.11, -0.0, -0.0, -0.0, -10.01, -10.01, -10.01]}'
    parsed = task_answer("grounding", raw, parse_grounding(raw))
    assert parsed.reason == ("a box of size 0x0x0 is no object's box: "
                             "[10.1, -10.11, -11.11, -0.0, -0.0, -0.0, -10.01, -10.01, -10.01]")
    raw = '{"bbox_3d": [1.0, 0.5, 2.0, 0.0, 0.4, 0.9, 0.0, 0.0, 0.0]}'  # flat, not empty: an object's box
    assert task_answer("grounding", raw, parse_grounding(raw)).reason is None


def test_a_free_caption_of_json_pieces_is_in_another_tasks_format():
    raw = '```json1.19, 3d": "refrigerator", "bbox_3d'
    assert parse_caption(raw).reason is None  # the tolerant parser (for scoring) reads any text
    assert task_answer("captioning", raw, parse_caption(raw)).reason == (
        "answer holds '```', a piece of a structured answer (JSON), not a caption's prose")
    assert task_answer("captioning", '3d": "refrigerator"', parse_caption('3d": "refrigerator"')).reason is not None
    prose = "It's an L-shaped (wooden) sofa, left of the TV; 2 chairs face it!"
    assert task_answer("captioning", prose, parse_caption(prose)).reason is None
