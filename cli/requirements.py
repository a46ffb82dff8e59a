"""The requirements the installed gap-mllm declares (setup.py), for pip: what `make install` installs after the package.

`make install` installs the package with `--no-deps`, then this list (the core requirements and those of the extras
it names) without the packages it names, then xgrammar with `--no-deps` (modeling_gap_mllm/answer_grammar_processor.py
XGRAMMAR_INSTALL): pip would otherwise add triton (286 MB), which xgrammar requires on Linux x86-64 and only its CUDA
kernels use, beside the CPU torch (setup.py, XGRAMMAR). A plain `pip install gap-mllm` installs everything.

    python -m gap_mllm.cli.requirements --extra dev --without xgrammar

Light: the standard library only (it runs before the requirements are installed).
"""

from __future__ import annotations

import argparse
import re
from importlib.metadata import requires

DISTRIBUTION = "gap-mllm"
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_EXTRA_MARKER = re.compile(r'^extra\s*==\s*["\']([A-Za-z0-9._-]+)["\']$')


def normalised(name: str) -> str:
    """A distribution name as PEP 503 compares them (`Pillow`, `pillow` and `PIL-low` alike: lower case, `-`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def declared_requirements(entries: list[str], extras: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> list[str]:
    """The requirement strings of `entries` (Requires-Dist lines) that apply with `extras`: those without a marker and
    those marked `extra == "<one of extras>"`, markers removed, each once, in order; none of the names in `without`.

    Raises:
        ValueError: an entry has another marker (a platform or Python version), which this list cannot evaluate.
    """
    skipped = {normalised(name) for name in without}
    found = []
    for entry in entries:
        requirement, _, marker = entry.partition(";")
        marker = marker.strip()
        extra = _EXTRA_MARKER.match(marker) if marker else None
        if marker and extra is None:
            raise ValueError(f"{DISTRIBUTION}: requirement {entry!r} has a marker other than extra == NAME")
        name = _NAME.match(requirement)
        if name is None or normalised(name.group(1)) in skipped or (extra and extra.group(1) not in extras):
            continue
        if requirement.strip() not in found:
            found.append(requirement.strip())
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extra", action="append", default=[], help="an extra whose requirements to add (repeatable)")
    parser.add_argument("--without", action="append", default=[], help="a distribution to leave out (repeatable)")
    args = parser.parse_args(argv)
    print(" ".join(declared_requirements(requires(DISTRIBUTION) or [], tuple(args.extra), tuple(args.without))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
