"""Synthetic model inputs in the processor's layout, for models without a real tokenizer (bench only).

A prompt is laid out as GapMllmProcessor builds it: `<|im_start|>` + header text, then per view
`<|vision_start|>` + N × `<|image_pad|>` + `<|vision_end|>` (the scene prefix), then the question text,
`<|im_end|>`, a newline, `<|im_start|>` + "assistant" text (the question suffix), and for training the
answer and `<|im_end|>`. Text tokens are random ordinary ids; pixels are random. With random weights
the values do not matter, the shapes and the special tokens do.

Frame settings (Qwen patch grid (h, w) of 16 px; VGGT gets 14 px per Qwen patch):
    "train"  official training frames: Qwen 384×512 (24×32 patches, 192 tokens/view), VGGT 336×448
    "infer"  official inference frames: Qwen 416×544 (26×34 patches, 221 tokens/view), VGGT 364×476
    "small"  4×6 patches (6 tokens/view), VGGT 56×84, for the CPU run of the small config
"""

from __future__ import annotations

import torch

QWEN_GRIDS = {"train": (24, 32), "infer": (26, 34), "small": (4, 6)}
HEADER_TOKENS, ASSISTANT_TOKENS = 20, 2


def _text(ids: dict, count: int, generator: torch.Generator) -> torch.Tensor:
    low, high = ids["text_range"]
    return torch.randint(low, high, (count,), generator=generator)


def scene_prefix(ids: dict, views: int, grid: tuple[int, int], generator: torch.Generator) -> torch.Tensor:
    """`[P]` ids: header, then every view's vision tokens (merged tokens = h·w / 4)."""
    tokens_per_view = grid[0] * grid[1] // 4
    view = torch.tensor([ids["vision_start"], *[ids["image"]] * tokens_per_view, ids["vision_end"]])
    return torch.cat([torch.tensor([ids["im_start"]]), _text(ids, HEADER_TOKENS, generator), *[view] * views])


def question_suffix(ids: dict, length: int, generator: torch.Generator) -> torch.Tensor:
    """`[length + 3 + ASSISTANT_TOKENS]` ids: question text, `<|im_end|>`, newline, assistant header."""
    return torch.cat([_text(ids, length, generator), torch.tensor([ids["im_end"], ids["newline"], ids["im_start"]]),
                      _text(ids, ASSISTANT_TOKENS, generator)])


def image_inputs(config, views: int, grid: tuple[int, int], generator: torch.Generator) -> dict:
    """pixel_values `[V·h·w, 3·2·16·16]`, image_grid_thw `[V, 3]`, geometry_pixel_values `[V, 3, 14h, 14w]`."""
    vision = config.vision_config
    patch_dim = 3 * vision.temporal_patch_size * vision.patch_size**2
    height, width = grid
    geometry_patch = config.geometry_config.patch_size
    return {
        "pixel_values": torch.randn(views * height * width, patch_dim, generator=generator),
        "image_grid_thw": torch.tensor([[1, height, width]] * views),
        "geometry_pixel_values": torch.rand(views, 3, geometry_patch * height, geometry_patch * width, generator=generator),
    }


def full_inputs(config, ids: dict, views: int, grid, question_length: int = 24, answer_length: int = 0,
                batch: int = 1, seed: int = 0) -> dict:
    """Processor-style inputs for `batch` samples of `views` views each (same length, no padding); with
    `answer_length` > 0 also the answer tokens and `labels` (-100 except the answer + `<|im_end|>`)."""
    generator = torch.Generator().manual_seed(seed)
    rows, labels, images = [], [], []
    for _ in range(batch):
        prompt = torch.cat([scene_prefix(ids, views, grid, generator), question_suffix(ids, question_length, generator)])
        answer = torch.cat([_text(ids, answer_length, generator), torch.tensor([ids["im_end"]])]) if answer_length else None
        row = prompt if answer is None else torch.cat([prompt, answer])
        rows.append(row)
        if answer is not None:
            labels.append(torch.cat([torch.full((len(prompt),), -100), answer]))
        images.append(image_inputs(config, views, grid, generator))
    input_ids = torch.stack(rows)
    out = {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "mm_token_type_ids": (input_ids == ids["image"]).int(),
        "pixel_values": torch.cat([i["pixel_values"] for i in images]),
        "image_grid_thw": torch.cat([i["image_grid_thw"] for i in images]),
        "geometry_pixel_values": torch.cat([i["geometry_pixel_values"] for i in images]),
        "geometry_views_per_sample": torch.tensor([views] * batch),
    }
    if labels:
        out["labels"] = torch.stack(labels)
    return out


def to_device(inputs: dict, device, dtype) -> dict:
    """Floating tensors to `dtype` (pixels), every tensor to `device`; other values (a packed batch's host
    `packed_segments`) as they are."""
    return {k: (v if not isinstance(v, torch.Tensor) else v.to(device, dtype) if v.is_floating_point() else v.to(device))
            for k, v in inputs.items()}
