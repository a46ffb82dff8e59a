"""SynthRooms: procedural indoor scenes with exact ground truth (geometry, masks, boxes, language).

    from gap_mllm.processing.synth import SynthConfig, SynthRooms, generate_samples, write_dataset

    generator = SynthRooms(SynthConfig(seed=0))
    scene = generator.generate_scene(0)                 # rendered frames, poses, objects
    scene, records = generate_samples(generator, 0)     # + every task's annotation records
    write_dataset("data/synth", generator, {"train": 8, "val": 2})   # ScanNet layout + official JSONs

The builders in `gap_mllm.processing.builders` read the written dataset like real ScanNet data.
"""

from .generator import SynthConfig, SynthRooms
from .scene import Part, RenderedFrame, Room, SceneObject, SynthScene
from .writer import generate_samples, write_dataset
