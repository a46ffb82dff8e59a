"""VGGT aggregator as GAP-MLLM's frozen geometry encoder.

`GapMllmVggtAggregator` reproduces VGGT's `Aggregator` with the same parameter names, so a VGGT
checkpoint maps onto `GapMllmGeometryEncoder` by the pure prefix `aggregator.` → `aggregator.`.
It differs from the reference only in what it runs and keeps: blocks after the deepest requested
layer are skipped (they cannot influence earlier outputs) and only requested layers are returned.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.utils import ModelOutput

from .config_sizes import check_memory_for_parameters
from .configuration_gap_mllm import GapMllmGeometryConfig
from .geometry_heads_camera import GapMllmCameraHead
from .geometry_heads_dpt import GapMllmDptHead
from .geometry_layers import GapMllmGeometryBlock, GapMllmGeometryLayerScale
from .geometry_patch_embed import GapMllmDinov2PatchEmbed
from .geometry_reconstruction import GeometryReconstructionOutput, run_reconstruction
from .geometry_rope import GapMllmGeometryRotaryEmbedding2D, build_token_positions
from .vggt_weights import infer_vggt_geometry_config, load_vggt_weights


@dataclass
class GeometryEncoderOutput(ModelOutput):
    """Output of [`GapMllmGeometryEncoder`].

    Args:
        layer_features (`tuple[torch.Tensor]`): one `[B, S, P, 2·hidden_size]` tensor per tapped layer, in
            `config.tapped_layers` order: the frame-block output ⊕ the global-block output of that layer,
            patch tokens only (`P = h·w`, row-major), frames in input order.
        patch_grid (`tuple[int, int]`): the patch grid `(h, w) = (H / patch_size, W / patch_size)`.
    """

    layer_features: tuple[torch.Tensor, ...] | None = None
    patch_grid: tuple[int, int] | None = None


AUTOCAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast_dtype_for(config: GapMllmGeometryConfig, device: torch.device) -> torch.dtype | None:
    """The dtype the aggregator runs under autocast for input on `device`, or None (no autocast).

    `config.autocast_dtype == "auto"` gives bf16 on CUDA devices (the official encode path: VGGT under bf16
    autocast) and None elsewhere, so CPU fp32 runs stay exact; an explicit dtype applies on any device."""
    setting = getattr(config, "autocast_dtype", "auto")
    if setting is None:
        return None
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return AUTOCAST_DTYPES[setting]


def _expand_token_pair(token_pair: torch.Tensor, batch_size: int, num_frames: int) -> torch.Tensor:
    """Copy 0 of a learned pair for frame 0, copy 1 for every other frame.

    Args:
        token_pair: `[1, 2, X, C]`.

    Returns:
        `[B·S, X, C]`, frames of one sample contiguous.
    """
    first = token_pair[:, :1].expand(batch_size, 1, -1, -1)
    others = token_pair[:, 1:].expand(batch_size, num_frames - 1, -1, -1)
    return torch.cat([first, others], dim=1).flatten(0, 1)


class GapMllmVggtAggregator(nn.Module):
    """VGGT's alternating-attention aggregator (DINOv2 patch embedding + frame/global blocks).

    Parameters: `camera_token [1, 2, 1, C]`, `register_token [1, 2, R, C]`, `patch_embed.*` (DINOv2),
    `frame_blocks.N.*` and `global_blocks.N.*` for N < `num_hidden_layers`. The ImageNet mean and std
    are non-persistent buffers (not in VGGT's checkpoint either).
    """

    def __init__(self, config: GapMllmGeometryConfig):
        super().__init__()
        self.config = config
        hidden_size = config.hidden_size
        self.patch_size = config.patch_size
        self.num_special_tokens = config.num_special_tokens

        self.patch_embed = GapMllmDinov2PatchEmbed(config)
        # One copy for the reference frame (frame 0), one shared by all others: this is how VGGT
        # knows which frame defines the world coordinate system.
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, hidden_size))
        self.register_token = nn.Parameter(torch.zeros(1, 2, config.num_register_tokens, hidden_size))
        self.rotary_emb = (
            GapMllmGeometryRotaryEmbedding2D(config.head_dim, config.rope_frequency)
            if config.rope_frequency > 0
            else None
        )

        def alternating_block() -> GapMllmGeometryBlock:
            return GapMllmGeometryBlock(
                config,
                use_qk_norm=config.qk_norm,
                layer_norm_eps=config.layer_norm_eps,
                layer_scale_init=config.layer_scale_init,
            )

        self.frame_blocks = nn.ModuleList([alternating_block() for _ in range(config.num_hidden_layers)])
        self.global_blocks = nn.ModuleList([alternating_block() for _ in range(config.num_hidden_layers)])

        self.register_buffer("image_mean", self._normalisation_buffer(config.image_mean), persistent=False)
        self.register_buffer("image_std", self._normalisation_buffer(config.image_std), persistent=False)

    @staticmethod
    def _normalisation_buffer(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.float32).view(1, 1, 3, 1, 1)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise a `ValueError` naming the shape unless it is `[B, S, 3, H, W]` with H, W multiples of `patch_size`."""
        shape = tuple(images.shape)
        if images.ndim != 5 or shape[2] != 3 or shape[0] < 1 or shape[1] < 1:
            raise ValueError(
                f"geometry encoder images must be [batch, frames, 3, height, width], got shape {shape}."
            )
        height, width = shape[-2:]
        if height == 0 or width == 0 or height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"geometry encoder images have shape {shape}: height {height} and width {width} must be positive "
                f"multiples of the patch size {self.patch_size}."
            )

    def forward(self, images: torch.Tensor, output_layers: list[int] | None = None) -> tuple[torch.Tensor, ...]:
        """
        Args:
            images: `[B, S, 3, H, W]` float RGB in [0, 1]; H and W multiples of `patch_size`. Frame 0 is the
                reference frame.
            output_layers: 0-based block-pair indices to return, in the wanted order; defaults to
                `config.tapped_layers`. Blocks after `max(output_layers)` are not run.

        Returns:
            One `[B, S, T, 2·C]` tensor per requested layer, `T = 1 + num_register_tokens + h·w`: tokens are
            camera, registers, then patches (row-major); channels are frame-block output ⊕ global-block output.
            Runs under autocast as `config.autocast_dtype` says (`autocast_dtype_for`); the outputs are
            in the weights' dtype either way.
        """
        autocast_dtype = autocast_dtype_for(self.config, images.device)
        if autocast_dtype is None:
            return self._aggregate(images, output_layers)
        with torch.autocast(device_type=images.device.type, dtype=autocast_dtype):
            outputs = self._aggregate(images, output_layers)
        weights_dtype = self.patch_embed.patch_embed.proj.weight.dtype
        return tuple(output.to(weights_dtype) for output in outputs)

    def _aggregate(self, images: torch.Tensor, output_layers: list[int] | None) -> tuple[torch.Tensor, ...]:
        self.check_images(images)
        layers = list(self.config.tapped_layers if output_layers is None else output_layers)
        for layer in layers:
            if not 0 <= layer < len(self.frame_blocks):
                raise ValueError(
                    f"output layer {layer} does not exist: valid layers are 0..{len(self.frame_blocks) - 1}."
                )
        batch_size, num_frames, _, height, width = images.shape
        grid_height, grid_width = height // self.patch_size, width // self.patch_size

        # Normalise in fp32 whatever the input dtype, then match the weights (bf16 checkpoints).
        pixel_values = (images.float() - self.image_mean) / self.image_std
        pixel_values = pixel_values.to(self.patch_embed.patch_embed.proj.weight.dtype).flatten(0, 1)
        patch_tokens = self.patch_embed(pixel_values)  # [B·S, P, C]

        special_tokens = torch.cat(
            [
                _expand_token_pair(self.camera_token, batch_size, num_frames),
                _expand_token_pair(self.register_token, batch_size, num_frames),
            ],
            dim=1,
        ).to(patch_tokens.dtype)
        tokens = torch.cat([special_tokens, patch_tokens], dim=1)  # [B·S, T, C]
        num_tokens, channels = tokens.shape[1:]

        frame_rope = global_rope = None
        if self.rotary_emb is not None:
            positions = build_token_positions(grid_height, grid_width, self.num_special_tokens, images.device)
            frame_rope = self.rotary_emb(positions)  # each [T, D]
            # Global attention sees the frames one after another; each frame keeps its own grid positions.
            global_rope = tuple(table.repeat(num_frames, 1) for table in frame_rope)  # each [S·T, D]

        wanted = set(layers)
        collected = {}
        per_frame = (batch_size * num_frames, num_tokens, channels)  # frame attention: one sequence per frame
        per_sample = (batch_size, num_frames * num_tokens, channels)  # global attention: one sequence per sample
        per_token = (batch_size, num_frames, num_tokens, channels)
        for index in range(max(layers) + 1):
            tokens = self.frame_blocks[index](tokens.reshape(per_frame), frame_rope)
            frame_output = tokens.reshape(per_token)
            tokens = self.global_blocks[index](tokens.reshape(per_sample), global_rope)
            if index in wanted:
                global_output = tokens.reshape(per_token)
                collected[index] = torch.cat([frame_output, global_output], dim=-1)
        return tuple(collected[layer] for layer in layers)


class GapMllmGeometryEncoder(nn.Module):
    """Frozen geometry encoder of GAP-MLLM: the VGGT aggregator, plus VGGT's reconstruction heads when
    the config enables them (`camera_head`, `depth_head`, `point_head`; names as in VGGT's checkpoint).

    `forward` returns the aggregator features GAP-MLLM fuses; `reconstruct` runs the heads as well.
    `config.reference_frame == "last"` reverses the frames before the aggregator and the outputs
    back after it, so the last input frame is VGGT's reference while outputs stay in input order.
    """

    def __init__(self, config: GapMllmGeometryConfig):
        # Built alone (VGGT conversion, benches) nothing else prices the weights: refuse before allocating when
        # even their lower bound does not fit (config_sizes.py).
        check_memory_for_parameters(config)
        super().__init__()
        self.config = config
        self.aggregator = GapMllmVggtAggregator(config)
        if config.use_camera_head:
            self.camera_head = GapMllmCameraHead(config)
        if config.use_depth_head:
            self.depth_head = GapMllmDptHead(config, "depth")
        if config.use_point_head:
            self.point_head = GapMllmDptHead(config, "points")

    @classmethod
    def from_vggt_state_dict(cls, state_dict, config: GapMllmGeometryConfig | None = None) -> "GapMllmGeometryEncoder":
        """Build an encoder holding the weights of a VGGT checkpoint, strictly (fp32 unless `config` says otherwise).

        Args:
            state_dict: a flat VGGT state dict (`torch.load("model.pt")`, `safetensors.torch.load_file(...)`),
                possibly nested under a wrapper prefix such as `geometry_encoder.vggt.` (detected).
            config: the target config; when `None` the architecture is inferred from the weights
                (`vggt_weights.infer_vggt_geometry_config`: heads present in the checkpoint are
                enabled, `tapped_layers` default to [4, 11, 17, 23]).

        Returns:
            the encoder in eval mode, with `conversion_report` (a `ConversionReport`) attached. Raises
            `ConversionError` naming the keys when an encoder tensor is missing or mis-shaped or a source
            tensor has no place (heads the config disables and VGGT's track head are skipped and reported).

        Output structure: `encoder(images)` with `images [B, S, 3, H, W]` in [0, 1] (H, W multiples of
        14) returns a `GeometryEncoderOutput` whose `layer_features[i]` is `[B, S, (H/14)·(W/14), 2·hidden_size]`
        for layer `config.tapped_layers[i]`: channels `[:hidden_size]` are the frame-attention block's
        output, `[hidden_size:]` the global-attention block's output of that layer, patch tokens row-major,
        camera and register tokens dropped — VGGT's `aggregator(images)[0][layer][:, :, 5:]`.
        """
        if config is None:
            config = infer_vggt_geometry_config(state_dict)
        encoder = cls(config)
        encoder.conversion_report = load_vggt_weights(encoder, state_dict)
        return encoder.eval()

    def reconstruct(self, images: torch.Tensor, frames_chunk_size: int | None = None) -> GeometryReconstructionOutput:
        """VGGT's 3D outputs for `images [B, S, 3, H, W]` in [0, 1]: cameras (`pose_encoding`, `extrinsics`,
        `intrinsics`), `depth`/`depth_conf`, `world_points`/`world_points_conf`, and the tapped `layer_features`,
        from one aggregator pass. `output.point_cloud(images)` fuses the frames into a point cloud.
        See [`GeometryReconstructionOutput`] for shapes and conventions."""
        return run_reconstruction(self, images, frames_chunk_size)

    def forward(self, images: torch.Tensor) -> GeometryEncoderOutput:
        """
        Args:
            images: `[B, S, 3, H, W]` float RGB in [0, 1]; H and W multiples of `config.patch_size`.

        Returns:
            [`GeometryEncoderOutput`] with `layer_features` (one `[B, S, h·w, 2·hidden_size]` per tapped
            layer, in `config.tapped_layers` order; camera and register tokens dropped) and
            `patch_grid = (h, w)`.
        """
        self.aggregator.check_images(images)
        reverse = self.config.reference_frame == "last"
        if reverse:
            images = images.flip(1)
        outputs = self.aggregator(images, self.config.tapped_layers)
        num_special = self.aggregator.num_special_tokens
        features = tuple(output[:, :, num_special:] for output in outputs)
        if reverse:
            features = tuple(feature.flip(1) for feature in features)
        patch_size = self.config.patch_size
        return GeometryEncoderOutput(
            layer_features=features, patch_grid=(images.shape[-2] // patch_size, images.shape[-1] // patch_size)
        )


@torch.no_grad()
def init_geometry_weights(module: nn.Module, config: GapMllmGeometryConfig) -> bool:
    """Initialise ONE module of the geometry encoder (not its children); meant for `_init_weights`.

    Uses `transformers.initialization`, whose functions skip tensors already loaded from a checkpoint.
    Covers every parameter of the encoder, bare `nn.Parameter`s included, and refills the
    non-persistent normalisation buffers (they are empty after a meta-device build):

    - aggregator: `camera_token`, `register_token` ~ N(0, 1e-6); ImageNet mean/std buffers from the config;
    - DINOv2: `cls_token`, `register_tokens` ~ N(0, 1e-6); `mask_token` = 0; `pos_embed` ~ trunc-N(0, 0.02);
    - LayerScale `gamma` = its configured init value;
    - camera head: `empty_pose_tokens` = 0;
    - Linear, Conv2d and ConvTranspose2d: weight ~ trunc-N(0, `config.initializer_range`), bias 0; LayerNorm: weight 1, bias 0.

    Linear, Conv2d and LayerNorm are matched by type, so the caller must pass only modules of the
    geometry encoder (e.g. those in `set(encoder.modules())`).

    Returns:
        `True` if the module was one of the above (handled), `False` otherwise.
    """
    if isinstance(module, GapMllmVggtAggregator):
        init.normal_(module.camera_token, std=1e-6)
        init.normal_(module.register_token, std=1e-6)
        init.copy_(module.image_mean, module._normalisation_buffer(config.image_mean))
        init.copy_(module.image_std, module._normalisation_buffer(config.image_std))
        return True
    if isinstance(module, GapMllmDinov2PatchEmbed):
        init.normal_(module.cls_token, std=1e-6)
        if module.register_tokens is not None:
            init.normal_(module.register_tokens, std=1e-6)
        init.zeros_(module.mask_token)
        init.trunc_normal_(module.pos_embed, std=0.02)
        return True
    if isinstance(module, GapMllmGeometryLayerScale):
        init.constant_(module.gamma, module.init_value)
        return True
    if isinstance(module, GapMllmCameraHead):
        init.zeros_(module.empty_pose_tokens)
        return True
    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
        init.trunc_normal_(module.weight, std=config.initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    if isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            init.ones_(module.weight)
        if module.bias is not None:
            init.zeros_(module.bias)
        return True
    return False


__all__ = [
    "autocast_dtype_for",
    "GapMllmGeometryEncoder",
    "GeometryReconstructionOutput",
    "GapMllmVggtAggregator",
    "GeometryEncoderOutput",
    "init_geometry_weights",
]
