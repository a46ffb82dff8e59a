"""The bundled example rooms (`--example`, the Space's examples): names and seeds only, light to import (the commands'
`--help` lists them). The scenes themselves are rendered on the fly by cli/scenes.py."""

# Bundled examples are scenes of SynthRooms' "mini" preset (the data GAP-MLLM-Mini was trained on, at its
# 160x128 frames) drawn with seeds that no training, validation or test split uses: held-out rooms.
EXAMPLE_PRESET = "mini"
EXAMPLE_SEED_BASE = 9000
EXAMPLE_SEEDS = {"synthetic room A": 0, "synthetic room B": 1, "synthetic room C": 2}
# What a bundled room gives the model: its number of frames and their (height, width), the preset's own (tests/
# test_first_hour.py holds it to the preset); here, so that `gap-mllm predict --example` checks a marker before
# anything is rendered
EXAMPLE_FRAMES = 4
EXAMPLE_IMAGE_SIZE = (128, 160)

__all__ = ["EXAMPLE_FRAMES", "EXAMPLE_IMAGE_SIZE", "EXAMPLE_PRESET", "EXAMPLE_SEEDS", "EXAMPLE_SEED_BASE"]
