"""What a checkpoint conversion did with every key: the shared report of the VGGT and official converters.

A conversion is strict: each source key is mapped, or skipped for a stated reason (a disabled head,
an identical duplicate, ...); each target key is filled. Anything else (a missing target key, an
unexpected source key, a shape mismatch, disagreeing duplicates) is an error that names the key.
"""

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# Why a pickled checkpoint that torch's safe loader refuses is not loaded anyway (one wording for the
# converters and the command line).
PICKLE_REFUSED = (
    "pickle weights are refused: unpickling a file can run arbitrary code, so only plain tensors are loaded "
    "(torch.load(weights_only=True)) and this file holds other objects. Convert it to safetensors where you "
    "trust it (load it there, then save_pretrained or safetensors.torch.save_file)"
)

# First bytes of files people hand to a converter by mistake.
_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"PK\x03\x04", "a zip archive"),
)


class ConversionError(ValueError):
    """A checkpoint does not convert exactly; the message names every offending key."""


class CheckpointFileError(ValueError):
    """A checkpoint file that cannot be read at all (wrong kind of file, truncated, refused pickle);
    the message names the file and says what to do."""


def describe_file_content(path) -> str:
    """What a file looks like from its first bytes: "a JPEG image", "an empty file", "a safetensors
    file", "a PyTorch (zip) checkpoint", "a pickle", "text", or "unknown binary data"."""
    path = Path(path)
    with open(path, "rb") as handle:
        head = handle.read(16)
    if not head:
        return "an empty file"
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "a safetensors file"
    if head.startswith(b"PK\x03\x04") and path.suffix in (".pt", ".pth", ".bin", ".ckpt"):
        return "a PyTorch (zip) checkpoint"
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle"
    if all(32 <= b < 127 or b in (9, 10, 13) for b in head):
        return "text"
    return "unknown binary data"


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
