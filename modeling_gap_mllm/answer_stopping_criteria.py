"""The `generate` stopping criterion of the answer-end rules (answer_stopping.py): each row stops once its answer is
complete. Kept apart from the rules, which import neither torch nor transformers."""

from __future__ import annotations

import torch
from transformers import StoppingCriteria

from .answer_stopping import ANSWER_ENDS, answer_complete


class AnswerEndCriteria(StoppingCriteria):
    """Stops each row of a `generate` call once its answer is complete (`answer_complete`).

    Args:
        tokenizer: decodes the new tokens (special tokens skipped).
        prompt_length: length of the prompt rows given to `generate` (the new tokens start there; left
            padding keeps every row's prompt the same length).
        answer_end: one of `ANSWER_ENDS`.
        shortest_answer: `(task name, text)` of the task's shortest whole answer (`TaskSpec.shortest_answer`), or
            None: `generate` refuses a context that leaves fewer new tokens than its text's (generation_checks.py).
    """

    def __init__(self, tokenizer, prompt_length: int, answer_end: str, shortest_answer: tuple[str, str] | None = None):
        if answer_end not in ANSWER_ENDS:
            raise ValueError(f"unknown answer end {answer_end!r}; expected one of {ANSWER_ENDS}")
        self.tokenizer = tokenizer
        self.prompt_length = int(prompt_length)
        self.answer_end = answer_end
        self.shortest_answer = shortest_answer

    def shortest_answer_tokens(self) -> tuple[str, int] | None:
        """`(task name, tokens)` of the task's shortest whole answer, or None when not given."""
        if self.shortest_answer is None:
            return None
        task, text = self.shortest_answer
        return task, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        # A host synchronisation per generated token that must stay: the rules read the text, so the new tokens come
        # to the host (`batch_decode` reads them with one `.tolist()`). It falls where `generate`'s own per-token stop
        # check waits for the device anyway (after the step's argmax), so the device is drained once per token, not
        # twice (tests/test_compiled_decoding.py counts both).
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        done = [answer_complete(text, self.answer_end) for text in texts]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


__all__ = ["AnswerEndCriteria"]
