"""Bad-data errors and the skip policy shared by the readers and the builders.

Every reader raises `DataError` with the offending file and, when known, the sample it belongs to.
Builders either let it propagate (default) or, with `skip_bad_samples=True`, skip the sample and
count it in a `SkipCounter` (reported at the end, per reason) so nothing is dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """A file or sample that cannot be used. The message names the file and/or the sample."""

    def __init__(self, message: str, path=None, sample=None):
        self.path = None if path is None else str(path)
        self.sample = sample
        where = []
        if sample is not None:
            where.append(f"sample {sample!r}")
        if path is not None:
            where.append(f"file {self.path}")
        super().__init__(f"{'; '.join(where)}: {message}" if where else message)

    def with_sample(self, sample) -> "DataError":
        """The same error, now also naming `sample` (readers know the file, builders the sample)."""
        if self.sample is not None:
            return self
        message = str(self)
        if self.path is not None and message.startswith(f"file {self.path}: "):
            message = message[len(f"file {self.path}: ") :]
        return DataError(message, path=self.path, sample=sample)


def exception_chain(error: BaseException | None):
    """`error`, then what caused it (`__cause__`, else `__context__`), each once: a cycle stops the walk."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


@dataclass
class SkipCounter:
    """Counts skipped samples by reason and keeps the first few messages for the report."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 5

    def skip(self, error: Exception, reason: str | None = None) -> None:
        reason = reason or type(error).__name__
        self.counts[reason] += 1
        if len(self.examples) < self.max_examples:
            self.examples.append(str(error))
        logger.warning("skipping bad sample (%s): %s", reason, error)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        if not self.total:
            return "no samples skipped"
        parts = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.counts.items()))
        return f"skipped {self.total} sample(s) ({parts}); first: " + " | ".join(self.examples)
