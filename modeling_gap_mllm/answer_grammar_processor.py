"""Constrained decoding for `generate`: a logits processor that keeps each row inside its task's answer grammar.

    out = model.generate(**inputs, **processor.generation_kwargs("grounding", inputs, constrained=True))

Built on xgrammar (the structured-output engine of vLLM and SGLang): the task's grammar (`TaskSpec.answer_grammar`,
answer_grammar.py) is compiled once per tokenizer, vocabulary width and grammar (`compiled_grammar`), and at every
step each row's matcher takes the row's new token and fills a bitmask of the tokens that keep the answer inside the
grammar; the others get -inf. A token the model would pick anyway is never changed, so a greedy answer that already
fits the grammar is generated unchanged; once the grammar's answer is complete only the stop ids (EOS) remain.

A list answer (detection: `answer_grammar.EntryList`) is closed by the token budget, not bounded in bytes: the row
decodes inside the list without a bound until the tokens left are the list's `reserve` (what one more entry and the
close can take), then inside the list bounded to the entry it is writing (between entries: one more), so it ends
well-formed within the budget with as many entries as the budget allows. The processor counts the budget `generate`
was given (`max_new_tokens`; `fit_budget` when `generate` lowers it to the model's context). A grammar that depends
on the question (spatial QA's offered options) is built from each row's prompt, decoded once at the first step.

A row whose token the grammar refuses is no longer constrained: that happens only to a row that already stopped
(`generate` pads it, or the answer-end rule ended it), never to a live one, since its token came from the mask.
Reading each row's new token is a host sync per step, as in every grammar engine: the matchers run on the CPU.

xgrammar is imported in a `try` so that this folder's remote code loads without it (transformers checks the
imports of remote code outside `try` blocks); asking for constrained decoding without it is an ImportError naming
the install command.
"""

from __future__ import annotations

import weakref

import torch
from transformers import LogitsProcessor

from .answer_grammar import EntryList

try:  # optional for the remote code: only constrained decoding needs it
    import xgrammar
except ImportError:  # pragma: no cover - exercised in environments without xgrammar
    xgrammar = None

# The version verified here (docs/design.md §12). `make install` installs XGRAMMAR_INSTALL with --no-deps (xgrammar and
# its FFI library, 5 MB; then pydantic, which it also imports, the usual way), not triton (286 MB), which only its CUDA
# kernels use; `pip install 'gap-mllm[grammar]'` is the plain route (setup.py).
XGRAMMAR_REQUIREMENT = "xgrammar==0.2.8"
XGRAMMAR_INSTALL = (XGRAMMAR_REQUIREMENT, "apache-tvm-ffi==0.1.15.post2")
CONTROL_TOKENS_THAT_STOP = ("<|im_end|>",)  # the chat turn's end: Qwen3-VL's and the Mini's EOS

_COMPILERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # tokenizer -> {vocab width: GrammarCompiler}


def require_xgrammar():
    """The xgrammar module, or an ImportError saying how to install it."""
    if xgrammar is None:
        raise ImportError(f"constrained decoding needs xgrammar: pip install '{XGRAMMAR_REQUIREMENT}' "
                          "(make install installs it), or decode freely (constrained=False / --free)")
    return xgrammar


def stop_token_ids(tokenizer) -> list[int]:
    """The ids that end an answer: the tokenizer's EOS and `<|im_end|>` when it has one."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    vocab = tokenizer.get_vocab()
    ids |= {vocab[token] for token in CONTROL_TOKENS_THAT_STOP if token in vocab}
    if not ids:
        raise ValueError("constrained decoding needs a stop token: the tokenizer has no EOS and no <|im_end|>")
    return sorted(ids)


def compiled_grammar(tokenizer, vocab_size: int, grammar: str):
    """The xgrammar `CompiledGrammar` of `grammar` (EBNF) for `tokenizer` and logits of width `vocab_size` (the
    model's vocabulary, which may be padded past the tokenizer's). One compiler per tokenizer and width, whose
    cache keeps each compiled grammar: a task's grammar compiles once per process."""
    xgr = require_xgrammar()
    try:
        per_width = _COMPILERS.setdefault(tokenizer, {})
    except TypeError:  # a tokenizer that cannot be weakly referenced: compiled each time, still correct
        per_width = {}
    if vocab_size not in per_width:
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=int(vocab_size),
                                                  stop_token_ids=stop_token_ids(tokenizer))
        per_width[vocab_size] = xgr.GrammarCompiler(info, cache_enabled=True)
    return per_width[vocab_size].compile_grammar(grammar)


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
        require_xgrammar()
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
        """`generate` generates at most `max_new_tokens` (fewer than this processor was made for: the model's
        context ends sooner); lists close for that budget."""
        if self.max_new_tokens is not None:
            self.max_new_tokens = min(self.max_new_tokens, int(max_new_tokens))

    def _start(self, input_ids: torch.LongTensor, vocab_size: int) -> None:
        xgr = require_xgrammar()
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
        self._matchers = [xgr.GrammarMatcher(compiled_grammar(self.tokenizer, vocab_size, g)) for g in texts]
        self._tokens: list[list[int]] = [[] for _ in range(batch)]  # a list row's accepted tokens, to bound it
        self._live = [True] * batch
        self._consumed = 0
        self._vocab_size = vocab_size
        self._bitmask = xgr.allocate_token_bitmask(batch, vocab_size)

    def _close_list(self, row: int) -> None:
        """From now on the row's list begins no entry beyond what the tokens left can end (`EntryList.bounded`)."""
        xgr = require_xgrammar()
        text = self.tokenizer.decode(self._tokens[row])
        matcher = xgr.GrammarMatcher(compiled_grammar(self.tokenizer, self._vocab_size, self._lists[row].bounded(text)))
        if not all(matcher.accept_token(token) for token in self._tokens[row]):  # the bounded list holds its text
            raise RuntimeError(f"the bounded list grammar refuses the answer begun inside the list: {text!r}")
        self._matchers[row], self._lists[row] = matcher, None

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
                matcher = self._matchers[row]
                for token in tokens:
                    if not self._live[row]:
                        break
                    self._live[row] = matcher.accept_token(token) and not matcher.is_terminated()
                    if self._lists[row] is not None:
                        self._tokens[row].append(token)
            self._consumed = generated
        live = [row for row in range(batch) if self._live[row]]
        if not live:
            return scores
        for row in live:
            # the tokens left, this one included, are what the rest of the list can take at most: no new entry
            if self._lists[row] is not None and self.max_new_tokens - generated <= self._lists[row].reserve:
                self._close_list(row)
            self._matchers[row].fill_next_token_bitmask(self._bitmask, row)
        xgr = require_xgrammar()
        xgr.apply_token_bitmask_inplace(scores, self._bitmask.to(scores.device), indices=live)
        return scores


__all__ = ["GrammarLogitsProcessor", "XGRAMMAR_REQUIREMENT", "compiled_grammar", "require_xgrammar", "stop_token_ids"]
