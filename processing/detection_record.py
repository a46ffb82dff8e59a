"""The `boxes` field of a detection record: required, the one rule the builders and the evaluation read it by.

An annotation record of the detection task lists its ground-truth objects in `boxes` (docs/method.md §6): `[]` is a
sample without objects, and a record without the field is a data error naming the sample. Read as "no objects",
a missing field would score every predicted box as a false positive (evaluation) and give the built dataset a
typed target that contradicts the answer text it trains on (builders).
"""

from __future__ import annotations

from .errors import DataError


def detection_box_entries(record, sample=None) -> object:
    """The value of `record["boxes"]` as written (each reader checks its entries in its own terms).

    Raises:
        DataError: naming `sample`, when `record` is not an object or has no `boxes`.
    """
    if not isinstance(record, dict) or "boxes" not in record:
        found = "no 'boxes'" if isinstance(record, dict) else f"a {type(record).__name__}, not an object"
        raise DataError(f"the detection record has {found}: its ground-truth objects are unknown (write \"boxes\": [] "
                        "for a sample without objects)", sample=sample)
    return record["boxes"]


__all__ = ["detection_box_entries"]
