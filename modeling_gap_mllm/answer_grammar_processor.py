"""Constrained decoding for `generate`: a logits processor that keeps each row inside its task's answer grammar.

    out = model.generate(**inputs, **processor.generation_kwargs("grounding", inputs, constrained=True))

Built on llguidance (the grammar engine of vLLM's `guidance` backend, llama.cpp and SGLang): the task's grammar
(`TaskSpec.answer_grammar`, answer_grammar.py, GBNF read as vLLM reads it: `llguidance.grammar_from("grammar", ...)`)
is compiled once per tokenizer, vocabulary width and grammar (`grammar_matcher` copies the compiled matcher), and at
every step each row's matcher takes the row's new token and fills a bitmask of the tokens that keep the answer inside
the grammar; the others get -inf (`apply_bitmask`: the bits unpacked on the logits' device, no torch.compile, no
triton). A token the model would pick anyway is never changed, so a greedy answer that already fits the grammar is
generated unchanged; once the grammar's answer is complete only the stop ids (EOS) remain. Where the grammar forces
the next bytes (a key, the detection fence) llguidance allows their greedy tokenization only (with Qwen's vocabulary
these are the BPE tokens of every task's reference answer: tests/test_grammar_engine_real_vocab.py); elsewhere its
masks equal xgrammar's, the engine before it (issue 81: the Mini's answers are the same texts, tests/
test_constrained_answers_kept.py). A batch's rows take their tokens and fill their masks in parallel, off the GIL.

A list answer (detection: `answer_grammar.EntryList`) is closed by the token budget, not bounded in bytes: the row
decodes inside the list without a bound until the tokens left are the list's `reserve` (what one more entry and the
close can take), then inside the list bounded to the entry it is writing (between entries: one more), so it ends
well-formed within the budget with as many entries as the budget allows. The processor counts the budget `generate`
was given (`max_new_tokens`; `fit_budget` when `generate` runs with another budget: the caller's own, or the model's
context's). A grammar that depends
on the question (spatial QA's offered options) is built from each row's prompt, decoded once at the first step.

A row whose token the grammar refuses is no longer constrained: that happens only to a row that already stopped
(`generate` pads it, or the answer-end rule ended it), never to a live one, since its token came from the mask. So a
grammar holding a character the tokenizer cannot write is refused at its first step (`unwritable_character`): there
the engine's mask leads to a token it then refuses, and the row would decode on without its grammar.
Reading each row's new token is a host sync per step, as in every grammar engine: the matchers run on the CPU.

llguidance is imported in a `try` so that this folder's remote code loads without it (transformers checks the
imports of remote code outside `try` blocks); asking for constrained decoding without it is an ImportError naming
the install command (`require_grammar_engine`).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from transformers import LogitsProcessor

from .answer_grammar import ENGINE_REQUIREMENT, EntryList, engine_missing, grammar_characters

try:  # optional for the remote code: only constrained decoding needs it
    import llguidance
    import llguidance.hf
except ImportError:  # pragma: no cover - exercised in environments without llguidance
    llguidance = None

# ENGINE_REQUIREMENT (answer_grammar.py): the version verified here; a 3 MB abi3 wheel without requirements, so a
# plain `pip install` brings it and nothing else.
CONTROL_TOKENS_THAT_STOP = ("<|im_end|>",)  # the chat turn's end: Qwen3-VL's and the Mini's EOS

# tokenizer -> {vocab width: (llguidance tokenizer, {grammar text: compiled matcher, copied for each answer}, stop ids,
#                            {character: whether the tokenizer can write it})}
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_EXECUTOR = None  # _executor()


def require_grammar_engine():
    """The llguidance module, or an ImportError saying how to install it."""
    if llguidance is None:
        raise ImportError(engine_missing() or f"constrained decoding needs {ENGINE_REQUIREMENT}, which did not import")
    return llguidance


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS and `<|im_end|>` when it has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in CONTROL_TOKENS_THAT_STOP if token in vocab}
    if not ids:
        raise ValueError("constrained decoding needs a stop token: the tokenizer has no EOS and no <|im_end|>")
    return sorted(ids)


def _engine(tokenizer, vocab_size: int) -> tuple:
    """`(llguidance tokenizer, {grammar text: compiled matcher}, stop ids, {character: writable})` of `tokenizer` at
    width `vocab_size`, made once (the conversion takes about a second at Qwen's vocabulary, and the stop ids read the
    whole vocabulary)."""
    require_grammar_engine()
    try:
        per_width = _COMPILED.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: converted each time, still correct
        per_width = {}
    if vocab_size not in per_width:
        stops = stop_token_ids(tokenizer)
        engine_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=int(vocab_size), eos_token=stops)
        per_width[vocab_size] = (engine_tokenizer, {}, frozenset(stops), {})
    return per_width[vocab_size]


def unwritable_character(tokenizer, vocab_size: int, grammar: str) -> str | None:
    """The first character an answer of `grammar` may write (`grammar_characters`) that `tokenizer` has no tokens
    for (its tokens do not spell it back), or None. Where a grammar forces a character the tokenizer cannot write,
    the engine masks the logits to other tokens, then refuses the one chosen, and the answer would go on without
    its grammar: such a grammar cannot be applied (`grammar_matcher` refuses it)."""
    engine_tokenizer, _, _, writable = _engine(tokenizer, vocab_size)
    for char in grammar_characters(grammar):
        if char not in writable:
            text = char.encode("utf-8")
            writable[char] = engine_tokenizer.decode_bytes(engine_tokenizer.tokenize_bytes(text)) == text
        if not writable[char]:
            return char
    return None


def grammar_matcher(tokenizer, vocab_size: int, grammar: str):
    """A fresh llguidance `LLMatcher` of `grammar` (GBNF) for `tokenizer` and logits of width `vocab_size` (the
    model's vocabulary, which may be padded past the tokenizer's: ids past it are never allowed). The grammar is
    compiled once per tokenizer, width and text; each call copies the compiled matcher (`deep_copy`, microseconds).

    Raises:
        ValueError: the tokenizer cannot write a character of the grammar (`unwritable_character`), or the grammar does
            not compile (llguidance's message).
    """
    engine_tokenizer, compiled, _, _ = _engine(tokenizer, vocab_size)
    if grammar not in compiled:
        missing = unwritable_character(tokenizer, vocab_size, grammar)
        if missing is not None:
            raise ValueError(f"the answer grammar cannot be applied with this tokenizer: it has no token for "
                             f"{missing!r}, which the grammar's answers write; constrained decoding needs the model's "
                             "own tokenizer, or decode freely (constrained=False; gap-mllm: --free)")
        matcher = llguidance.LLMatcher(engine_tokenizer, llguidance.grammar_from("grammar", grammar), log_level=0)
        if matcher.is_error():
            raise ValueError(f"the answer grammar does not compile in llguidance: {matcher.get_error()}")
        compiled[grammar] = matcher
    return compiled[grammar].deep_copy()


def _executor():
    """llguidance's thread pool for a batch's masks (its default size: 80 % of the CPUs, at most 32), made once."""
    global _EXECUTOR
    if _EXECUTOR is None:
        _EXECUTOR = require_grammar_engine().LLExecutor()
    return _EXECUTOR


def fill_bitmask(matcher, bitmask: torch.Tensor, row: int) -> None:
    """Write the tokens `matcher` allows next into `bitmask[row]` (a contiguous CPU int32 tensor `[B, ceil(V / 32)]`),
    llguidance's layout: bit `t % 32` of word `t // 32` is token `t`. The matcher fills it off the GIL."""
    if bitmask.dtype != torch.int32 or bitmask.device.type != "cpu" or not bitmask.is_contiguous():
        raise ValueError("the bitmask must be a contiguous CPU int32 tensor")
    matcher.unsafe_compute_mask_ptr(bitmask[row].data_ptr(), bitmask.shape[1] * 4)


def grammar_accepts(tokenizer, vocab_size: int, grammar: str, text: str, whole: bool = True) -> bool:
    """`text` is an answer of `grammar` (`whole`), or the beginning of one (an answer cut by its budget), whatever
    tokens spell it."""
    matcher = grammar_matcher(tokenizer, vocab_size, grammar)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    consumed = not tokens or matcher.consume_tokens(tokens)
    return consumed and not matcher.is_error() and (not whole or matcher.is_accepting())


def apply_bitmask(scores: torch.FloatTensor, bitmask: torch.Tensor, rows: list[int]) -> None:
    """Set `scores[row, token]` to -inf in place for each of `rows` where bit `token` of `bitmask[row]` (int32 words,
    32 token ids each, the least significant bit first) is 0. The bits are unpacked on the scores' device: on the CPU
    by numpy's `unpackbits` (a byte table, microseconds), on an accelerator by shifts there; then one `masked_fill`.
    No torch.compile and no triton (llguidance's own torch kernel is a compiled function)."""
    width = scores.shape[1]
    if bitmask.shape[1] * 32 < width:
        raise ValueError(f"a bitmask of {bitmask.shape[1] * 32} token ids for logits of {width}")
    refused_words = ~bitmask[rows]  # a set bit: a refused token
    if scores.device.type == "cpu":
        bits = np.unpackbits(refused_words.numpy().view(np.uint8), axis=1, count=width, bitorder="little")
        refused = torch.from_numpy(bits.view(np.bool_))
    else:
        words = refused_words.to(scores.device, non_blocking=True)
        shifts = torch.arange(32, dtype=torch.int32, device=scores.device)
        refused = ((words.unsqueeze(-1) >> shifts) & 1).flatten(1)[:, :width].bool()
    if len(rows) == scores.shape[0] and list(rows) == list(range(scores.shape[0])):
        scores.masked_fill_(refused, float("-inf"))
    else:
        index = torch.tensor(rows, device=scores.device)
        scores[index] = scores[index].masked_fill(refused, float("-inf"))


class GrammarLogitsProcessor(LogitsProcessor):
    """Masks each row's logits to the tokens its task's grammar allows next (module docstring).

    Args:
        tokenizer: the processor's tokenizer (the grammar is compiled for its vocabulary).
        grammar: the answer grammar of every row, or one per row of the batch; each is the EBNF text
            (`TaskSpec.grammar_for`), an `EntryList` (a list closed at the budget: `TaskSpec.entry_list`), or a
            callable that builds one of those from the row's prompt text (spatial QA's offered options).
        prompt_length: length of the rows given to `generate` before the answer (the new tokens start there; under
            `generate(scene=...)` the scene prefix plus the question).
        max_new_tokens: the token budget of the `generate` call; needed by an `EntryList`.

    One instance serves one `generate` call; a later call on the same instance (the row lengths start over) starts
    its matchers afresh.
    """

    def __init__(self, tokenizer, grammar, prompt_length: int, max_new_tokens: int | None = None):
        require_grammar_engine()
        if isinstance(prompt_length, bool) or int(prompt_length) < 0:
            raise ValueError(f"prompt_length must be a whole number >= 0, got {prompt_length!r}")
        if max_new_tokens is not None and (isinstance(max_new_tokens, bool) or int(max_new_tokens) < 1):
            raise ValueError(f"max_new_tokens must be a whole number >= 1, got {max_new_tokens!r}")
        self.tokenizer = tokenizer
        self.grammar = grammar
        self.prompt_length = int(prompt_length)
        self.max_new_tokens = None if max_new_tokens is None else int(max_new_tokens)
        self._matchers: list | None = None

    def fit_budget(self, max_new_tokens: int) -> None:
        """`generate` generates at most `max_new_tokens`: the call's own budget, which may differ from the one this
        processor was made for (the caller's `max_new_tokens` beside `generation_kwargs`'s, or the model's context
        ending sooner: generation_checks.py `budget_to_grammars`); lists close for that budget."""
        self.max_new_tokens = int(max_new_tokens)

    def _start(self, input_ids: torch.LongTensor, vocab_size: int) -> None:
        batch = input_ids.shape[0]
        grammars = list(self.grammar) if isinstance(self.grammar, (list, tuple)) else [self.grammar] * batch
        if len(grammars) != batch:
            raise ValueError(f"{len(grammars)} grammars for a batch of {batch} rows")
        if any(callable(g) for g in grammars):
            prompts = self.tokenizer.batch_decode(input_ids[:, : self.prompt_length].tolist(), skip_special_tokens=True)
            grammars = [g(prompt) if callable(g) else g for g, prompt in zip(grammars, prompts)]
        if self.max_new_tokens is None and any(isinstance(g, EntryList) for g in grammars):
            raise ValueError("a list answer closed at the token budget (EntryList) needs the budget: max_new_tokens=")
        self._lists = [g if isinstance(g, EntryList) else None for g in grammars]  # None once bounded
        texts = [g.grammar(None) if isinstance(g, EntryList) else g for g in grammars]
        self._matchers = [grammar_matcher(self.tokenizer, vocab_size, g) for g in texts]
        self._stops = _engine(self.tokenizer, vocab_size)[2]
        self._tokens: list[list[int]] = [[] for _ in range(batch)]  # a list row's accepted tokens, to bound it
        self._live = [True] * batch
        self._consumed = 0
        self._vocab_size = vocab_size
        self._bitmask = torch.full((batch, (vocab_size + 31) // 32), -1, dtype=torch.int32)

    def _close_list(self, row: int) -> None:
        """From now on the row's list begins no entry beyond what the tokens left can end (`EntryList.bounded`). The
        bounded grammar depends on the entries begun only, so it compiles once per count (`grammar_matcher`)."""
        text = self.tokenizer.decode(self._tokens[row])
        matcher = grammar_matcher(self.tokenizer, self._vocab_size, self._lists[row].bounded(text))
        if not matcher.consume_tokens(self._tokens[row]):  # the bounded list holds its text
            raise RuntimeError(f"the bounded list grammar refuses the answer begun inside the list: {text!r}")
        self._matchers[row], self._lists[row] = matcher, None

    def _consume(self, new_tokens: list[list[int]]) -> None:
        """Each live row's matcher takes its new tokens; a row whose token the grammar refuses is no longer live. One
        token a row (every step but the first of a resumed call): the rows in parallel, off the GIL."""
        rows = [row for row, tokens in enumerate(new_tokens) if self._live[row] is not False and tokens]
        if len(rows) > 1 and all(len(new_tokens[row]) == 1 for row in rows):
            accepted = _executor().consume_token_par([(self._matchers[row], new_tokens[row][0]) for row in rows])
        else:
            accepted = [self._matchers[row].consume_tokens(new_tokens[row]) for row in rows]
        for row, ok in zip(rows, accepted):
            if not ok:
                self._live[row] = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """`input_ids` `[B, prompt_length + n]`, `scores` `[B, V]` → `scores` with the refused tokens at -inf."""
        batch, vocab_size = scores.shape
        generated = input_ids.shape[1] - self.prompt_length
        if generated < 0:
            raise ValueError(f"the rows hold {input_ids.shape[1]} tokens, fewer than the prompt length "
                             f"{self.prompt_length} this processor was made for")
        if self._matchers is None or len(self._matchers) != batch or generated < self._consumed:
            self._start(input_ids, vocab_size)
        if generated > self._consumed:
            new_tokens = input_ids[:, self.prompt_length + self._consumed :].tolist()  # the host sync (docstring)
            for row, tokens in enumerate(new_tokens):
                if self._lists[row] is not None and self._live[row]:
                    self._tokens[row].extend(tokens)
                # a stop token ends the row (llguidance's matcher may stop before it, at the grammar's end, and then
                # allows the stop ids only)
                if self._live[row] and any(token in self._stops for token in tokens):
                    tokens[:] = tokens[: next(i for i, t in enumerate(tokens) if t in self._stops)]
                    self._live[row] = None  # consumes what precedes the stop, then ends
            self._consume(new_tokens)
            self._live = [live is True for live in self._live]
            self._consumed = generated
        live = [row for row in range(batch) if self._live[row]]
        if not live:
            return scores
        for row in live:
            # the tokens left, this one included, are what the rest of the list can take at most: no new entry
            if self._lists[row] is not None and self.max_new_tokens - generated <= self._lists[row].reserve:
                self._close_list(row)
        if len(live) == 1:
            fill_bitmask(self._matchers[live[0]], self._bitmask, live[0])
        else:  # the rows' masks filled in parallel, off the GIL (llguidance's thread pool, as vLLM fills a batch)
            _executor().unsafe_compute_mask_ptr([(self._matchers[row], row) for row in live], self._bitmask.data_ptr(),
                                                self._bitmask.shape[1] * 4, self._bitmask.shape[0])
        apply_bitmask(scores, self._bitmask, live)
        return scores


__all__ = ["ENGINE_REQUIREMENT", "GrammarLogitsProcessor", "apply_bitmask", "fill_bitmask", "grammar_accepts",
           "grammar_matcher", "require_grammar_engine", "stop_token_ids", "unwritable_character"]
