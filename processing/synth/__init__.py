"""SynthRooms: procedural indoor scenes with exact ground truth (geometry, masks, boxes, language).

`SynthRooms(config).generate_scene(index)` builds and renders one scene; `write_dataset` writes scenes
in the ScanNet `posed_images` layout plus the official annotation JSONs, so the same builders and
evaluators read real and synthetic data.
"""

from .scene import Part, Room, SceneObject, SynthScene, RenderedFrame
