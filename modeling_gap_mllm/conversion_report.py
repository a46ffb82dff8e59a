"""What a checkpoint conversion did with every key: the shared report of the VGGT and official converters.

A conversion is strict: each source key is mapped, or skipped for a stated reason (a disabled head,
an identical duplicate, ...); each target key is filled. Anything else (a missing target key, an
unexpected source key, a shape mismatch, disagreeing duplicates) is an error that names the key.
"""

from collections import Counter
from dataclasses import dataclass, field


class ConversionError(ValueError):
    """A checkpoint does not convert exactly; the message names every offending key."""


@dataclass
class ConversionReport:
    """Key-level account of a conversion.

    Attributes:
        mapped: target key → source key.
        skipped: source key → why it was not used (not an error).
        missing: target keys no source key fills (error).
        unexpected: source key → why it cannot be placed (error).
        mismatched: target key → (source key, source shape, target shape) (error).
        conflicts: source key → description of a disagreeing duplicate (error).
        notes: free-form facts worth telling the user (detected settings, tied weights, ...).
    """

    mapped: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: dict[str, str] = field(default_factory=dict)
    mismatched: dict[str, tuple] = field(default_factory=dict)
    conflicts: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched or self.conflicts)

    def error_message(self, source: str = "the checkpoint", limit: int = 20) -> str:
        lines = []

        def section(title, items):
            items = list(items)
            if items:
                lines.append(f"{title} ({len(items)}):")
                lines.extend(f"  - {item}" for item in items[:limit])
                if len(items) > limit:
                    lines.append(f"  ... and {len(items) - limit} more")

        section("missing (no source key fills these target keys)", sorted(self.missing))
        section("unexpected source keys", (f"{k}: {why}" for k, why in sorted(self.unexpected.items())))
        section(
            "shape mismatches",
            (f"{k} <- {src}: source shape {tuple(s)} vs expected {tuple(t)}" for k, (src, s, t) in sorted(self.mismatched.items())),
        )
        section("conflicting duplicates", (f"{k}: {why}" for k, why in sorted(self.conflicts.items())))
        return f"{source} does not convert exactly:\n" + "\n".join(lines)

    def raise_if_errors(self, source: str = "the checkpoint") -> None:
        if not self.ok:
            raise ConversionError(self.error_message(source))

    def summary(self, depth: int = 2) -> str:
        """Counts of mapped and skipped keys grouped by their first `depth` name components."""

        def grouped(keys):
            return Counter(".".join(key.split(".")[:depth]) for key in keys)

        lines = [f"mapped {len(self.mapped)} tensors:"]
        lines += [f"  {group:<48} {count:>6}" for group, count in sorted(grouped(self.mapped).items())]
        if self.skipped:
            reasons = Counter(self.skipped.values())
            lines.append(f"skipped {len(self.skipped)} source tensors:")
            lines += [f"  {count:>6} × {reason}" for reason, count in sorted(reasons.items())]
        lines += [f"note: {note}" for note in self.notes]
        if not self.ok:
            lines.append(self.error_message())
        return "\n".join(lines)


__all__ = ["ConversionError", "ConversionReport"]
