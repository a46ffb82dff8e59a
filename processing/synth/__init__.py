"""SynthRooms: procedural indoor scenes with exact ground truth (geometry, masks, boxes, language).

    from gap_mllm.processing.synth import SynthConfig, SynthRooms, generate_samples, write_dataset

    generator = SynthRooms(SynthConfig(seed=0))
    scene = generator.generate_scene(0)                 # rendered frames, poses, objects
    scene, records = generate_samples(generator, 0)     # + every task's annotation records
    write_dataset("data/synth", generator, {"train": 8, "val": 2})   # ScanNet layout + official JSONs

The builders in `gap_mllm.processing.builders` read the written dataset like real ScanNet data.
"""

import importlib

# exported name -> the module of this package that defines it, imported on first use (PEP 562): the task modules
# (gap_mllm.processing.tasks) write their samples with `samples`, which needs neither the renderer (scipy) nor the
# writer (PIL), and a command's --help reads the tasks
_EXPORTS = {
    **dict.fromkeys(("SynthConfig", "SynthRooms"), "generator"),
    **dict.fromkeys(("Part", "RenderedFrame", "Room", "SceneObject", "SynthScene"), "scene"),
    **dict.fromkeys(("generate_samples", "write_dataset"), "writer"),
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
