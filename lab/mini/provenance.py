"""The words of a stage's provenance (`stage_done.json` "note", the results table's "Where each stage was trained"):
what made a stage that the pipeline took from an exported model (`--stage0`, `--stage1`) rather than trained.

Each release takes the previous one's folder (mini/gap-mllm-mini) as its stage 0, so a note that kept the whole
chain would grow by "copied from mini/gap-mllm-mini (--stage0); its stage0: " at every release; the same folder copied
again is named once (`collapse_copies`), and a final model that continued such a copy lists the trainings that made
it one after the other, not a copy inside a copy (`training_chain`). A stage whose step count is not known (a given
one) says no "None steps" (`made_by`)."""

from __future__ import annotations

import re

from .ablation import override_value

DONE_MARKER = "stage_done.json"  # the file lab/mini/pipeline.py writes into a stage folder when its training returned


def stage_device(done: dict) -> str | None:
    """The device a stage trained on, from its `stage_done.json` (`done`): its "device", else the last `device=` of its
    overrides (markers written before they recorded it)."""
    return done.get("device") or override_value(done.get("overrides"), "device")

# "copied from SOURCE (--stageN); its STAGE: " followed at once by a copy of the same SOURCE by the same flag
_REPEATED_COPY = re.compile(r"(copied from (?P<source>[^;()]+) \((?P<flag>--[\w-]+)\); its [^:;]+: )"
                            r"copied from (?P=source) \((?P=flag)\); its [^:;]+: ")


def collapse_copies(note: str) -> str:
    """`note` with each copy of a copy of the same folder named once:
    "copied from A (--stage0); its stage0: copied from A (--stage0); its stage 0: X" -> "copied from A (--stage0);
    its stage0: X"."""
    while True:
        shorter = _REPEATED_COPY.sub(r"\1", note)
        if shorter == note:
            return note
        note = shorter


def made_by(found: dict) -> str:
    """One stage entry (`recipe`, `global_step`, `device`, `note`) in words: "mini_stage2.yaml, 7200 steps, cpu"; a
    stage that was itself given (`recipe` "given (...)") is what its note says, its steps unknown."""
    recipe = str(found.get("recipe") or "")
    if recipe.startswith("given") and found.get("note"):
        return collapse_copies(found["note"])
    steps = f"{found['global_step']} steps" if found.get("global_step") is not None else None
    return ", ".join(str(part) for part in (recipe or None, steps, found.get("device")) if part)


FINAL_MODEL = "an exported final model, made by "  # how `exported_origin` starts the list of a final model's trainings


def training_chain(stages: dict[str, dict], source) -> list[str]:
    """"ARM/stageN: recipe, N steps, device" for each stage (`stages`, in order) that trained an exported final model;
    a stage that was itself a final model copied from `source` (the previous release, continued) is replaced by the
    trainings its note lists."""
    chain = []
    for name, found in stages.items():
        note = collapse_copies(str(found.get("note") or ""))
        if (str(found.get("recipe") or "").startswith("given") and note.startswith(f"copied from {source} (")
                and FINAL_MODEL in note):
            chain.append(note.split(FINAL_MODEL, 1)[1])
        else:
            chain.append(f"{name}: {made_by(found)}")
    return chain
