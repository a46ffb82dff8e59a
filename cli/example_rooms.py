"""The bundled example rooms (`--example`, the Space's examples): names and seeds only, light to import (the commands'
`--help` lists them). The scenes themselves are rendered on the fly by cli/scenes.py."""

# Bundled examples are scenes of SynthRooms' "mini" preset (the data GAP-MLLM-Mini was trained on, at its
# 160x128 frames) drawn with seeds that no training, validation or test split uses: held-out rooms.
EXAMPLE_PRESET = "mini"
EXAMPLE_SEED_BASE = 9000
EXAMPLE_SEEDS = {"synthetic room A": 0, "synthetic room B": 1, "synthetic room C": 2}

__all__ = ["EXAMPLE_PRESET", "EXAMPLE_SEEDS", "EXAMPLE_SEED_BASE"]
