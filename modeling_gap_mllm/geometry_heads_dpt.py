"""VGGT's DPT heads: four aggregator layers → a dense map per frame (depth or world points) + confidence.

Architecture (docs/vggt.md §4; DPT, arXiv 2103.13413, as in Depth-Anything-V2):

    per layer l (4 of them): LayerNorm → 1×1 conv to out_channels[l] → + UV position embedding →
        resize ×4 (transposed conv), ×2 (transposed conv), ×1, ×½ (stride-2 conv)
    3×3 convs to `features` channels → 4 fusion (refinement) blocks, deepest first →
    output_conv1 (3×3, features → features/2) → bilinear upsample to (H, W) → + UV position embedding →
    output_conv2: 3×3 → 32, ReLU, 1×1 → output channels → activation

Parameter names equal VGGT's `depth_head.*` / `point_head.*` leaves, so its checkpoint maps by a pure prefix.
"""

import torch
from torch import nn

from .configuration_gap_mllm import GapMllmGeometryConfig

HEAD_HIDDEN_CHANNELS = 32  # width of output_conv2's hidden layer in VGGT
POSITION_EMBEDDING_SCALE = 0.1
POSITION_EMBEDDING_OMEGA = 100.0


def uv_position_embedding(height: int, width: int, channels: int, aspect_ratio: float, dtype, device) -> torch.Tensor:
    """Sinusoidal embedding of a normalised UV grid, `[channels, height, width]` (VGGT's `_apply_pos_embed`).

    The grid spans `±aspect/diag` horizontally and `±1/diag` vertically (`diag = sqrt(aspect² + 1)`),
    at cell centres of a `height × width` map. The first half of the channels encodes u, the second v,
    each as `[sin(p·ω), cos(p·ω)]` with `ω_k = 100^(-k / (channels/4))`, computed in float64.
    """
    diagonal = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diagonal, 1.0 / diagonal
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height, dtype=dtype, device=device)
    grid_u, grid_v = torch.meshgrid(xs, ys, indexing="xy")  # each [height, width]

    def sincos(positions: torch.Tensor, dim: int) -> torch.Tensor:
        omega = torch.arange(dim // 2, dtype=torch.float64, device=device) / (dim / 2.0)
        omega = 1.0 / POSITION_EMBEDDING_OMEGA**omega
        angles = positions.reshape(-1).double()[:, None] * omega[None]
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()

    embedding = torch.cat([sincos(grid_u, channels // 2), sincos(grid_v, channels // 2)], dim=-1)
    return embedding.view(height, width, channels).permute(2, 0, 1)


class GapMllmDptResidualUnit(nn.Module):
    """`conv2(relu(conv1(relu(x)))) + relu(x)`.

    The skip adds `relu(x)`, not `x`: the reference applies an in-place ReLU to its input before the
    convolutions, which also rewrites the tensor the skip connection reads. Reproduced explicitly.
    """

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(hidden_states)
        return self.conv2(torch.relu(self.conv1(activated))) + activated


class GapMllmDptFusionBlock(nn.Module):
    """`out_conv(upsample(unit2(x + unit1(skip))))` — bilinear, align_corners=True; the deepest block has no skip."""

    def __init__(self, features: int, has_skip: bool = True):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, kernel_size=1)
        if has_skip:
            self.resConfUnit1 = GapMllmDptResidualUnit(features)
        self.resConfUnit2 = GapMllmDptResidualUnit(features)

    def forward(self, hidden_states: torch.Tensor, skip: torch.Tensor | None = None, size=None) -> torch.Tensor:
        if skip is not None:
            hidden_states = hidden_states + self.resConfUnit1(skip)
        hidden_states = self.resConfUnit2(hidden_states)
        if size is None:
            size = (hidden_states.shape[-2] * 2, hidden_states.shape[-1] * 2)
        hidden_states = nn.functional.interpolate(hidden_states, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(hidden_states)


class GapMllmDptScratch(nn.Module):
    """Container with VGGT's `scratch.*` names: `layer{1..4}_rn`, `refinenet{1..4}`, `output_conv1`, `output_conv2`."""

    def __init__(self, in_channels: list[int], features: int, output_dim: int):
        super().__init__()
        for index, channels in enumerate(in_channels, start=1):
            setattr(self, f"layer{index}_rn", nn.Conv2d(channels, features, kernel_size=3, padding=1, bias=False))
        self.refinenet1 = GapMllmDptFusionBlock(features)
        self.refinenet2 = GapMllmDptFusionBlock(features)
        self.refinenet3 = GapMllmDptFusionBlock(features)
        self.refinenet4 = GapMllmDptFusionBlock(features, has_skip=False)
        self.output_conv1 = nn.Conv2d(features, features // 2, kernel_size=3, padding=1)
        self.output_conv2 = nn.Sequential(
            nn.Conv2d(features // 2, HEAD_HIDDEN_CHANNELS, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(HEAD_HIDDEN_CHANNELS, output_dim, kernel_size=1),
        )


def activate_depth(raw: torch.Tensor) -> torch.Tensor:
    """Depth: `exp(x)` (positive, scale-normalised)."""
    return torch.exp(raw)


def activate_points(raw: torch.Tensor) -> torch.Tensor:
    """World points: `sign(x)·(exp(|x|) − 1)` (VGGT's `inv_log`)."""
    return torch.sign(raw) * torch.expm1(torch.abs(raw))


ACTIVATIONS = {"depth": (2, activate_depth), "points": (4, activate_points)}


class GapMllmDptHead(nn.Module):
    """DPT dense head. `kind="depth"`: 2 output channels (depth, confidence); `kind="points"`: 4 (x, y, z, confidence).

    Confidence is `1 + exp(c)` for both.
    """

    def __init__(self, config: GapMllmGeometryConfig, kind: str):
        super().__init__()
        if kind not in ACTIVATIONS:
            raise ValueError(f"unknown DPT head kind {kind!r}; expected one of {sorted(ACTIVATIONS)}")
        output_dim, self.activation = ACTIVATIONS[kind]
        self.kind = kind
        self.patch_size = config.patch_size
        self.layers = list(config.dpt_layers)
        self.frames_chunk_size = config.dpt_frames_chunk_size
        width = 2 * config.hidden_size
        channels = list(config.dpt_out_channels)

        self.norm = nn.LayerNorm(width)
        self.projects = nn.ModuleList([nn.Conv2d(width, c, kernel_size=1) for c in channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(channels[0], channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(channels[1], channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(channels[3], channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = GapMllmDptScratch(channels, config.dpt_features, output_dim)

    def forward(
        self, layer_patch_tokens: list[torch.Tensor], image_size: tuple[int, int], frames_chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """
        Args:
            layer_patch_tokens: the patch tokens (special tokens already dropped) of the 4 layers
                `config.dpt_layers`, in that order, each `[B, S, h·w, 2·C]` (row-major patches).
            image_size: `(H, W)` of the input images, `h = H / patch_size`, `w = W / patch_size`.
            frames_chunk_size: frames per chunk (default `config.dpt_frames_chunk_size`); chunking only
                bounds memory, every frame is processed independently.

        Returns:
            `(prediction, confidence)`: prediction `[B, S, H, W, 1]` (depth) or `[B, S, H, W, 3]` (points),
            confidence `[B, S, H, W]`, in the head's dtype.
        """
        batch_size, num_frames = layer_patch_tokens[0].shape[:2]
        chunk = frames_chunk_size or self.frames_chunk_size
        predictions, confidences = [], []
        for start in range(0, num_frames, chunk):
            prediction, confidence = self._forward_frames(
                [tokens[:, start : start + chunk] for tokens in layer_patch_tokens], image_size
            )
            predictions.append(prediction)
            confidences.append(confidence)
        return torch.cat(predictions, dim=1), torch.cat(confidences, dim=1)

    def _forward_frames(self, layer_patch_tokens: list[torch.Tensor], image_size: tuple[int, int]):
        height, width = image_size
        grid_height, grid_width = height // self.patch_size, width // self.patch_size
        batch_size, num_frames = layer_patch_tokens[0].shape[:2]
        dtype = self.norm.weight.dtype
        maps = []
        for index, tokens in enumerate(layer_patch_tokens):
            tokens = self.norm(tokens.to(dtype).reshape(batch_size * num_frames, grid_height * grid_width, -1))
            feature_map = tokens.permute(0, 2, 1).reshape(batch_size * num_frames, -1, grid_height, grid_width)
            feature_map = self._add_position_embedding(self.projects[index](feature_map), width / height)
            maps.append(self.resize_layers[index](feature_map))

        scratch = self.scratch
        layer_1, layer_2, layer_3, layer_4 = (getattr(scratch, f"layer{i}_rn")(m) for i, m in enumerate(maps, start=1))
        fused = scratch.refinenet4(layer_4, size=layer_3.shape[2:])
        fused = scratch.refinenet3(fused, layer_3, size=layer_2.shape[2:])
        fused = scratch.refinenet2(fused, layer_2, size=layer_1.shape[2:])
        fused = scratch.refinenet1(fused, layer_1)
        fused = scratch.output_conv1(fused)
        fused = nn.functional.interpolate(
            fused, size=(grid_height * self.patch_size, grid_width * self.patch_size), mode="bilinear", align_corners=True
        )
        fused = self._add_position_embedding(fused, width / height)
        raw = scratch.output_conv2(fused).permute(0, 2, 3, 1)  # [B·S, H, W, out]
        prediction = self.activation(raw[..., :-1])
        confidence = 1 + torch.exp(raw[..., -1])
        return (
            prediction.reshape(batch_size, num_frames, *prediction.shape[1:]),
            confidence.reshape(batch_size, num_frames, *confidence.shape[1:]),
        )

    @staticmethod
    def _add_position_embedding(feature_map: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        channels, height, width = feature_map.shape[1:]
        embedding = uv_position_embedding(height, width, channels, aspect_ratio, feature_map.dtype, feature_map.device)
        return feature_map + (embedding * POSITION_EMBEDDING_SCALE).to(feature_map.dtype)[None]


__all__ = ["GapMllmDptHead", "activate_depth", "activate_points", "uv_position_embedding"]
