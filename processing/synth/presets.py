"""Named SynthRooms configurations.

    default   ScanNet-like scans: 640x480 frames, 48 per scene, 8-14 objects, the official frame counts
              (4-frame clips, 32-frame grounding and captioning, 9 stage-2 neighbours each way).
    mini      the data of GAP-MLLM-Mini, sized so that each training stage of the miniature runs in about
              an hour on 2 CPU cores (see mini/README.md for the measurements behind each value):
              160x128 frames (20 visual tokens per view), 24 frames per scene, 3-6 objects, 4-frame
              clips for reconstruction and detection, 8-frame grounding stage 1 with 3 stage-2 neighbours
              each way (at most 7 frames), 6-frame captioning, more samples per scene.

Every preset is a plain `SynthConfig`; `synth_config(preset, **overrides)` returns a copy with overrides.
"""

from __future__ import annotations

import dataclasses

from .generator import SynthConfig

SYNTH_PRESETS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "mini": SynthConfig(
        image_size=(128, 160),
        num_frames=24,
        min_objects=3,
        max_objects=6,
        clip_frames=4,
        grounding_frames=8,
        caption_frames=6,
        qa_frames=8,
        recon_samples_per_scene=16,
        detection_clips_per_scene=4,
        captions_per_scene=4,
        stage2_neighbours=3,
        # at 160x128 an object must cover ~20 pixels (about one ViT patch) to count as seen
        min_visible_fraction=0.001,
    ),
}


def synth_config(preset: str = "default", **overrides) -> SynthConfig:
    """The `preset` configuration with `overrides` (SynthConfig field names) applied."""
    if preset not in SYNTH_PRESETS:
        raise ValueError(f"unknown SynthRooms preset {preset!r}; choose from {sorted(SYNTH_PRESETS)}")
    fields = {field.name for field in dataclasses.fields(SynthConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown SynthRooms setting(s) {sorted(unknown)}; expected SynthConfig fields")
    return dataclasses.replace(SYNTH_PRESETS[preset], **overrides)
