"""Bad samples at training time: name them, then stop or skip-and-count (`data.on_bad_sample`).

Files that cannot be read are caught when the dataset is built (the builders decode every frame and
honour `skip_bad_samples`). What is left can only fail when a batch is collated (a prompt whose
`<image>` count does not match its views, a marker outside its frame, ...): `BadSampleGuard` finds the
failing sample(s) of such a batch and raises a `DataError` naming them, or drops them and reports how
many it dropped in the batch itself (`num_skipped_samples`), so the count survives dataloader worker
processes and is summed by the trainer (logged as `skipped_samples`).
"""

from __future__ import annotations

import logging

import torch

from gap_mllm.processing.errors import DataError

from .config import BAD_SAMPLE_POLICIES

logger = logging.getLogger(__name__)
SKIPPED_KEY = "num_skipped_samples"


SHOWN_NAMES = 5  # skipped samples named in a one-line summary


def sample_name(example: dict, index: int) -> str:
    return str(example.get("id", f"batch item {index}"))


def names_text(names: list[str], shown: int = SHOWN_NAMES) -> str:
    """The first `shown` of `names`, quoted, and how many more."""
    text = ", ".join(repr(name) for name in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def skipped_samples_warning(count: int, names: list[str]) -> str:
    """The end-of-run line about `count` skipped bad samples, naming the first few of `names` (those known by name
    in this process: a feature cache's marked samples; without a cache, each was named in a warning when skipped)."""
    text = f"skipped {count} bad sample(s) on this process"
    if names:
        return f"{text}: {names_text(names)}"
    return f"{text}; see the warnings above for their names"


def reason_of(error: Exception) -> str:
    """What is wrong with a sample, from the error its collation raised, without the sample's name when the error
    names it already (a `DataError` with its sample): the line names the sample once."""
    text = str(error)
    prefix = f"sample {error.sample!r}: " if isinstance(error, DataError) and error.sample is not None else None
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


class BadSampleGuard:
    """Wrap a collator. `policy="raise"`: a failing sample stops the run with a `DataError` naming it;
    `"skip"`: it is dropped, logged by name and counted in the batch's `num_skipped_samples`."""

    def __init__(self, collator, policy: str = "raise"):
        if policy not in BAD_SAMPLE_POLICIES:
            raise ValueError(f"policy={policy!r}; choose from {BAD_SAMPLE_POLICIES}")
        self.collator = collator
        self.policy = policy

    def __call__(self, examples: list[dict]):
        try:
            batch = self.collator(examples)
            skipped = 0
        except Exception as batch_error:  # noqa: BLE001 - any failure is examined sample by sample
            good, bad = self._split(examples)
            if not bad:
                raise  # the samples only fail together: not a bad-sample problem
            if self.policy == "raise":
                (index, error), *_ = bad
                raise DataError(f"cannot be collated: {reason_of(error)}", sample=sample_name(examples[index], index)
                                ) from error
            for index, error in bad:
                logger.warning("skipping bad sample %r: %s", sample_name(examples[index], index), reason_of(error))
            if not good:
                names = [sample_name(examples[i], i) for i, _ in bad]
                raise DataError(f"every sample of a batch is bad ({names}); fix the data") from batch_error
            batch = self.collator(good)
            skipped = len(bad)
        batch[SKIPPED_KEY] = torch.tensor(skipped)
        return batch

    def _split(self, examples):
        good, bad = [], []
        for index, example in enumerate(examples):
            try:
                self.collator([example])
                good.append(example)
            except Exception as error:  # noqa: BLE001
                bad.append((index, error))
        return good, bad
