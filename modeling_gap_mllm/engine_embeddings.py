"""GAP-MLLM's image path as the precomputed image embeddings that serving engines feed to a stock Qwen3-VL.

GAP-MLLM changes only what Qwen3-VL receives for its image tokens: the fused main-level features (they
replace the `<|image_pad|>` embeddings) and the fused DeepStack features (added to the hidden states after
LLM decoder layers 0, 1, …). A stock Qwen3-VL vision tower hands both to its language model as ONE tensor
per image, the levels side by side:

    [tokens_i, (1 + num_deepstack) · hidden]  =  [ main ‖ deepstack_0 ‖ deepstack_1 ‖ … ]   (hidden = out_hidden_size)

and vLLM's Qwen3-VL (`image_embeds` + `image_grid_thw`) splits exactly that layout back into the main level
(the first `hidden` columns) and the DeepStack levels (the next `hidden` columns each, level k added after
decoder layer k). So a Qwen3-VL engine given these tensors runs GAP-MLLM's language half unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GapMllmImageEmbeddings:
    """What `GapMllmForConditionalGeneration.encode_images` returns.

    Attributes:
        embeddings: one `[tokens_i, (1 + num_deepstack) · hidden]` tensor per image, in input order
            (views in sample order, samples in batch order); `tokens_i = h_i · w_i / merge²`.
        image_grid_thw: `[N_images, 3]` rows `(1, h_i, w_i)`, the patch grid of each image (before the merge).
        views_per_sample: the number of images of each sample, in batch order.
        hidden_size: the width of one level (Qwen3-VL's `vision_config.out_hidden_size`).
        num_deepstack_levels: DeepStack levels after the main one (3 for Qwen3-VL-2B).
    """

    embeddings: tuple[torch.Tensor, ...]
    image_grid_thw: torch.LongTensor
    views_per_sample: tuple[int, ...]
    hidden_size: int
    num_deepstack_levels: int

    def __post_init__(self):
        if len(self.embeddings) != self.image_grid_thw.shape[0] or sum(self.views_per_sample) != len(self.embeddings):
            raise ValueError(
                f"{len(self.embeddings)} embeddings, {self.image_grid_thw.shape[0]} grid rows and views_per_sample="
                f"{list(self.views_per_sample)} do not describe the same images"
            )

    @property
    def width(self) -> int:
        """`(1 + num_deepstack_levels) · hidden_size`: 8192 for Qwen3-VL-2B."""
        return (1 + self.num_deepstack_levels) * self.hidden_size

    def per_sample(self) -> list[tuple[tuple[torch.Tensor, ...], torch.LongTensor]]:
        """`[(embeddings of the sample's images, its [V_b, 3] grid rows), …]`, one entry per sample."""
        samples, start = [], 0
        for count in self.views_per_sample:
            samples.append((self.embeddings[start : start + count], self.image_grid_thw[start : start + count]))
            start += count
        return samples


def concatenate_levels(main: tuple[torch.Tensor, ...], deepstack: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    """Per image, `[main ‖ deepstack_0 ‖ …]` along the feature axis.

    Args:
        main: one `[tokens_i, hidden]` tensor per image (Qwen's `pooler_output`, or GAP's fused level 0).
        deepstack: per DeepStack level, one `[tokens_i, hidden]` tensor per image.

    Returns:
        one `[tokens_i, (1 + len(deepstack)) · hidden]` tensor per image.
    """
    levels = [main, *deepstack]
    for level, tensors in enumerate(levels):
        if len(tensors) != len(main):
            raise ValueError(f"level {level} has {len(tensors)} images, the main level {len(main)}")
    return tuple(torch.cat([tensors[image] for tensors in levels], dim=-1) for image in range(len(main)))


__all__ = ["GapMllmImageEmbeddings", "concatenate_levels"]
