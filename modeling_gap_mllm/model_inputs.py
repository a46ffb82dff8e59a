"""Names and special values of the inputs GAP-MLLM adds to Qwen3-VL's, shared by the model, the processor,
the training collator and the trainer."""

# What the processor returns besides the Qwen3-VL inputs: the VGGT input of every view
# (`[V, 3, H, W]`) and the number of views of each sample (`[B]`).
PROCESSOR_GEOMETRY_INPUT_NAMES = ("geometry_pixel_values", "geometry_views_per_sample")
# Every geometry input the model's forward accepts (plus precomputed encoder output); `generate` drops
# them after prefill, since the geometry tokens are in the KV cache by then.
GEOMETRY_INPUT_NAMES = (*PROCESSOR_GEOMETRY_INPUT_NAMES, "geometry_features")
# Everything `generate` drops after prefill besides transformers' own (pixel values): the geometry inputs, and what
# describes the images to the prefill's M-RoPE (token types, image and video grids). A decode step's positions come
# from the rope deltas, so these only made its inputs differ between a full call and a scene call (scene_cache.py)
# and between scenes of other view counts, and compiled decoding recompiled for each (compiled_decoding.py).
PREFILL_ONLY_INPUT_NAMES = (*GEOMETRY_INPUT_NAMES, "mm_token_type_ids", "image_grid_thw", "video_grid_thw")
# `labels` value the loss skips: system and user turns, the assistant header, padding.
IGNORE_INDEX = -100

__all__ = ["GEOMETRY_INPUT_NAMES", "IGNORE_INDEX", "PREFILL_ONLY_INPUT_NAMES", "PROCESSOR_GEOMETRY_INPUT_NAMES"]
