"""The training view of a GAP-MLLM: precomputed (cached) geometry features, the LM loss as a token
sum, and the auxiliary heads and losses.

`GeometryAlignedModel(model, aux)` wraps a `GapMllmForConditionalGeneration` (or a PEFT model around
one) and the auxiliary heads in one `nn.Module`, so that DDP / FSDP / DeepSpeed wrap, synchronise and
checkpoint both together. Its image path is the model's own (`get_fused_image_features`, or Qwen3-VL's
plain image features when the model has `use_geometry=False`); on top of it:

    geometry_features   per fusion level, one `[S_b, h_b, w_b, 2C]` tensor per sample: the frozen encoder's
                        output, precomputed (training/feature_cache.py); the encoder is then not run
    vision_features     the frozen ViT's output (`FrozenVisionFeatures`, training/frozen_towers.py), precomputed
                        likewise; the ViT then runs only its trainable mergers, if any
    packed rows         `position_ids` `[4, R, T]` and no `attention_mask`: several samples per row, attention kept
                        inside each (training/sample_tensors.py)
    LM loss as a sum    logits only at answer positions; `lm_loss_sum` + `lm_num_tokens`, so the trainer
                        can normalise over the whole optimizer step (exact gradient accumulation / DDP); with
                        `liger_cross_entropy`, Liger's fused linear cross-entropy instead (no logits at all);
                        with `label_weights` (data.task_loss_weights) a sum of w·cross-entropy, the count unchanged
    auxiliary losses    from the visual-token hidden states and the tapped VGGT features

The auxiliary heads (`GeometryAuxHeads`, docs/method.md §9) read the LLM's hidden states at visual-token positions
(`D` = text hidden size) and exist only for the enabled losses, so a run without auxiliary losses has no extra
parameters and saves none.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX

from .aux_losses import (
    camera_loss,
    cosine_alignment_loss,
    depth_loss,
    pool_to_merged_grid,
    proportional_llm_layer,
    scale_loss,
)
from .config import AuxLossConfig
from .frozen_towers import vision_outputs_from_features
from .host_metadata import answer_index
from .loss_weights import LIGER_WEIGHTS_REFUSAL
from .packed_attention import cu_seq, packed_attention, recompute_as_forward
from .param_groups import unwrap_gap_model
from .sample_tensors import FrozenVisionFeatures

# ------------------------------------------------------------------------------------------ auxiliary heads

CAMERA_ENCODING_SIZE = 9  # VGGT absT_quaR_FoV: translation 3, quaternion XYZW 4, FoV (h, w) 2


class FeatureAlignHead(nn.Sequential):
    """GeoVR's per-layer projector `LayerNorm → Linear → GELU → Linear`: `[N, D]` → `[N, T]` (T = 2·C of VGGT)."""

    def __init__(self, hidden_size: int, head_hidden_size: int, teacher_size: int):
        super().__init__(
            nn.LayerNorm(hidden_size),
            nn.Linear(hidden_size, head_hidden_size),
            nn.GELU(),
            nn.Linear(head_hidden_size, teacher_size),
        )


def _mlp(hidden_size: int, output_size: int) -> nn.Sequential:
    return nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, output_size))


class GeometryAuxHeads(nn.Module):
    """The heads of the enabled auxiliary losses.

    align[str(level)]  FeatureAlignHead per aligned fusion level: visual tokens `[N, D]` → `[N, 2C]`
    camera             pooled view tokens `[V, D]` → `[V, 9]` (absT_quaR_FoV)
    depth              visual tokens `[N, D]` → `[N, 2·k·k]`: a k×k patch of log-depth and confidence
                       logits per merged token (k = `aux.depth_patch`)
    scale              pooled sample tokens `[B, D]` → `[B, 1]` log-scale (exp gives metres)
    """

    def __init__(self, aux: AuxLossConfig, hidden_size: int, teacher_size: int):
        super().__init__()
        enabled = aux.enabled
        if not enabled:
            raise ValueError("GeometryAuxHeads built with every auxiliary loss disabled")
        if "feature_align" in enabled:
            head_hidden = aux.align_head_hidden_size or 2 * hidden_size
            self.align = nn.ModuleDict(
                {str(level): FeatureAlignHead(hidden_size, head_hidden, teacher_size) for level in aux.align_levels}
            )
        if "camera" in enabled:
            self.camera = _mlp(hidden_size, CAMERA_ENCODING_SIZE)
        if "depth" in enabled:
            self.depth = nn.Sequential(nn.LayerNorm(hidden_size), nn.Linear(hidden_size, 2 * aux.depth_patch**2))
        if "scale" in enabled:
            self.scale = _mlp(hidden_size, 1)


# ------------------------------------------------------------------------------------------ the training model


@dataclass
class GeometryAlignedOutput(ModelOutput):
    """Output of [`GeometryAlignedModel`].

    loss: token-mean cross-entropy of this micro-batch `[]` (for evaluation and inspection; weighted as `lm_loss_sum`).
    lm_loss_sum: summed cross-entropy over the answer tokens `[]` (each times its `label_weights`, when given).
    lm_num_tokens: number of answer tokens (shifted labels ≠ -100) `[]`.
    aux_losses: unweighted auxiliary losses by name ("feature_align", "camera", "depth", "scale").
    """

    loss: torch.Tensor | None = None
    lm_loss_sum: torch.Tensor | None = None
    lm_num_tokens: torch.Tensor | None = None
    aux_losses: dict | None = None


class GeometryAlignedModel(nn.Module):
    """A GAP-MLLM plus the auxiliary heads, with the training forward described in the module docstring.

    Args:
        model: a `GapMllmForConditionalGeneration`, or a `peft.PeftModel` around one.
        aux: the auxiliary-loss settings; heads are built only for the enabled losses (`aux_heads` is
            None when none is).
        liger_cross_entropy: the LM head + cross-entropy at the answer tokens as Liger's fused kernel
            (`kernels.liger_fused_linear_cross_entropy`; needs liger-kernel and CUDA: training/kernels.py).
        packed_rows: the run trains on packed rows (`data.packing`): activation checkpointing then recomputes each
            layer under the attention its forward ran with (`activation_checkpointing_enable`).
    """

    _keys_to_ignore_on_save = None  # read by Trainer after loading a checkpoint

    def __init__(self, model: nn.Module, aux: AuxLossConfig | None = None, liger_cross_entropy: bool = False,
                 packed_rows: bool = False):
        super().__init__()
        self.model = model
        self.aux = aux or AuxLossConfig()
        self.liger_cross_entropy = liger_cross_entropy
        self.packed_rows = packed_rows
        gap = self.gap_model
        if not gap.config.use_geometry and self.aux.feature_align_weight > 0:
            raise ValueError("aux.feature_align_weight > 0 aligns hidden states with geometry features, but the model "
                             "has use_geometry=False (no geometry encoder): set it to 0")
        text = gap.config.text_config
        self.aux_heads = (
            GeometryAuxHeads(self.aux, text.hidden_size, gap.config.geometry_config.feature_size)
            if self.aux.enabled
            else None
        )
        if self.aux_heads is not None:
            self.aux_heads.to(device=gap.device, dtype=gap.dtype)

    # ------------------------------------------------------------------ conveniences for Trainer
    @property
    def gap_model(self) -> nn.Module:
        return unwrap_gap_model(self.model)

    @property
    def config(self):
        return self.gap_model.config

    @property
    def device(self) -> torch.device:
        return self.gap_model.device

    def tie_weights(self, *args, **kwargs):
        """Re-tie the GAP-MLLM's tied weights (LM head = input embeddings). accelerate's FSDP2 preparation
        moves the model to the meta device, which unties them, and then calls this; without it the LM head
        silently trains as a separate matrix and the saved model differs from the tied one."""
        return self.gap_model.tie_weights(*args, **kwargs)

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs):
        """Trainer's `activation_checkpointing=True` lands here: checkpoint the GAP-MLLM's layers. With packed rows,
        the non-reentrant checkpoint (transformers' default) recomputes each layer under the attention implementation
        its forward ran with (training/packed_attention.py `recompute_as_forward`), so they attend per sample in the
        backward too; a `context_fn` of the caller's own is kept. Without packed rows none is given: torch.compile
        takes no context_fn but its own (compiled layers: training/config.py refuses them with packed rows)."""
        checkpoint = dict(activation_checkpointing_kwargs or {"use_reentrant": False})
        if self.packed_rows:
            checkpoint.setdefault("use_reentrant", False)  # kwargs without it: transformers' default (training/config.py)
            if checkpoint["use_reentrant"] is False:
                checkpoint.setdefault("context_fn", recompute_as_forward(self.gap_model.model.language_model))
        self.gap_model.activation_checkpointing_enable(activation_checkpointing_kwargs=checkpoint, **kwargs)

    def llm_layer_for_level(self, level: int) -> int:
        """Index into the hidden-state tuple that is aligned with fusion level `level`."""
        config = self.gap_model.config
        num_llm = config.text_config.num_hidden_layers
        if self.aux.align_llm_layers is not None:
            index = self.aux.align_llm_layers[self.aux.align_levels.index(level)]
            return index % (num_llm + 1)
        geometry_layer = config.level_geometry_layers[level]
        return proportional_llm_layer(geometry_layer, config.geometry_config.num_hidden_layers, num_llm)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.LongTensor,
        image_grid_thw: torch.LongTensor,
        geometry_views_per_sample: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        vision_features: FrozenVisionFeatures | None = None,
        labels: torch.LongTensor | None = None,
        label_weights: torch.Tensor | None = None,
        aux_camera: torch.Tensor | None = None,
        aux_depth: list[torch.Tensor] | None = None,
        aux_scale: torch.Tensor | None = None,
        packed_segments: tuple[int, ...] | None = None,
        views_per_sample: tuple[int, ...] | None = None,
        image_grids: tuple[tuple[int, int, int], ...] | None = None,
        answer_index: torch.LongTensor | None = None,
        **unused,
    ) -> GeometryAlignedOutput:
        """
        Args:
            input_ids, attention_mask, mm_token_type_ids `[B, T]`, pixel_values, image_grid_thw `[V, 3]`,
                geometry_pixel_values `[V, 3, H, W]`, geometry_views_per_sample `[B]`: from GapMllmProcessor.
            attention_mask: `[B, T]`; None for packed rows, which give `position_ids` `[4, R, T]` instead (text
                positions restarting at 0 in each sample, then the M-RoPE rows).
            geometry_features: precomputed encoder output (see module docstring); replaces
                `geometry_pixel_values`.
            vision_features: the frozen ViT's precomputed output; replaces `pixel_values`.
            labels: `[B, T]`, -100 outside the answer.
            label_weights: `[B, T]` float, each label's weight in the loss (training/loss_weights.py); None: all 1.
            aux_camera `[V, 9]`, aux_depth (V tensors `[h_m·k, w_m·k]`), aux_scale `[B]`: targets of the
                enabled auxiliary losses (training/aux_targets.py).
            packed_segments: packed rows' segment lengths (host integers, `collate_samples`): the attention's sample
                boundaries, read without a look at the device (training/packed_attention.py).
            views_per_sample, image_grids, answer_index: `geometry_views_per_sample` and `image_grid_thw` as host
                integers, and the flat answer positions (training/host_metadata.py): with them the step reads no
                device value; without them they are read from the tensors.
        """
        gap = self.gap_model
        views = (list(views_per_sample) if views_per_sample is not None
                 else [int(v) for v in geometry_views_per_sample.tolist()])
        if attention_mask is not None and position_ids is not None:
            # with a mask transformers would ignore the packed rows' sample boundaries: attention across samples
            raise ValueError("pass attention_mask (padded rows) or position_ids (packed rows), not both")
        image_outputs = None
        if vision_features is not None:
            image_outputs = vision_outputs_from_features(gap, vision_features, image_grid_thw, image_grids)
        elif pixel_values is None:
            raise ValueError("pass pixel_values or the ViT's cached vision_features")
        if gap.config.use_geometry:
            image_outputs, geometry_features, _ = gap.get_fused_image_features(
                pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features, image_outputs=image_outputs,
                grids=image_grids,
            )
        elif image_outputs is None:  # plain Qwen3-VL (the no-geometry ablation arm): the geometry inputs are ignored
            image_outputs = gap.model.get_vision_features(pixel_values, image_grid_thw)

        needs_hidden = self.aux_heads is not None
        # packed rows: attention within each sample without a block mask (training/packed_attention.py)
        attention = (packed_attention(gap.model.language_model, rows=input_ids.shape[0]) if position_ids is not None
                     else nullcontext())
        with attention as per_segment:
            segments = {}
            if per_segment and packed_segments is not None:  # the segment starts go to the device once, not per layer
                segments = {"packed_segments": tuple(packed_segments),
                            "packed_cu_seq": cu_seq(packed_segments, input_ids.device)}
            outputs = gap.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                image_grid_thw=image_grid_thw,
                mm_token_type_ids=mm_token_type_ids,
                mm_encoder_outputs={"image": image_outputs},
                output_hidden_states=needs_hidden,
                use_cache=False,
                **segments,
            )
        result = GeometryAlignedOutput(aux_losses={})
        if labels is not None:
            result.lm_loss_sum, result.lm_num_tokens = self._lm_loss_sum(gap, outputs.last_hidden_state, labels,
                                                                         self.liger_cross_entropy, answer_index,
                                                                         label_weights)
            result.loss = result.lm_loss_sum / result.lm_num_tokens.clamp(min=1)
        if needs_hidden:
            result.aux_losses = self._aux_losses(
                gap, outputs.hidden_states, input_ids, image_grids or image_grid_thw.tolist(), views, geometry_features,
                aux_camera, aux_depth, aux_scale,
            )
        return result

    @staticmethod
    def _lm_loss_sum(gap, hidden: torch.Tensor, labels: torch.Tensor, liger: bool = False,
                     index: torch.LongTensor | None = None,
                     weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed next-token cross-entropy; the LM head runs only where a label is set (answers are a
        few dozen tokens of a sequence of thousands, so this saves most of the logits memory). `liger`: Liger's
        fused linear cross-entropy, which computes the same sum in chunks without holding the logits. `index`: the
        flat answer positions (training/host_metadata.py), gathered without the host reading how many there are;
        None: found from `labels` (a boolean mask: one wait for the device). `weights` `[B, T]` (`label_weights`):
        each target token's cross-entropy times its weight (the count stays the number of answer tokens); not with
        `liger`, which takes no per-token weight (refused here and in the recipe, never ignored)."""
        if index is None:
            index = answer_index(labels)
        # `index` counts positions of `[B, T - 1]`; the same positions of `[B, T]` (a view of `hidden`, not a copy)
        # lie one further per row before them, and their targets one after
        positions = index + index // (labels.shape[1] - 1)
        answer_hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)
        answer_targets = labels.reshape(-1).index_select(0, positions + 1)
        count = (labels[:, 1:] != IGNORE_INDEX).sum()
        if liger:
            if weights is not None:
                raise ValueError(LIGER_WEIGHTS_REFUSAL)
            from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

            head = gap.lm_head
            loss_sum = liger_fused_linear_cross_entropy(answer_hidden, head.weight, answer_targets, bias=head.bias,
                                                        reduction="sum")
            return loss_sum, count
        logits = gap.lm_head(answer_hidden).float()
        if weights is None:
            return F.cross_entropy(logits, answer_targets, reduction="sum"), count
        answer_weights = weights.reshape(-1).index_select(0, positions + 1).float()  # each target token's weight
        loss_sum = (F.cross_entropy(logits, answer_targets, reduction="none") * answer_weights).sum()
        return loss_sum, count

    def _aux_losses(self, gap, hidden_states, input_ids, grids, views, geometry_features, aux_camera, aux_depth, aux_scale) -> dict:
        """The enabled auxiliary losses; `grids`: the image grids as host integers `[(t, h, w), ...]`."""
        config = gap.config
        merge = config.vision_config.spatial_merge_size
        visual = input_ids == config.image_token_id  # [B, T]; row-major = sample, view, token order
        tokens_per_view = [int(h // merge) * int(w // merge) for _, h, w in grids]
        merged_grids = [(int(h // merge), int(w // merge)) for _, h, w in grids]
        heads, aux, losses = self.aux_heads, self.aux, {}
        head_tokens = hidden_states[self.aux.head_layer][visual]  # [N, D]

        if hasattr(heads, "align"):
            per_level = []
            for level in aux.align_levels:
                student = heads.align[str(level)](hidden_states[self.llm_layer_for_level(level)][visual])
                with torch.no_grad():
                    teacher = torch.cat([pool_to_merged_grid(f, merge) for f in geometry_features[level]])
                if teacher.shape[0] != student.shape[0]:
                    raise ValueError(f"level {level}: {student.shape[0]} visual tokens but {teacher.shape[0]} teacher tokens")
                per_level.append(cosine_alignment_loss(student, teacher))
            losses["feature_align"] = torch.stack(per_level).mean()

        if hasattr(heads, "camera"):
            if aux_camera is None:
                raise ValueError("camera loss enabled but the batch has no aux_camera (build the data with load_poses)")
            pooled = torch.stack([t.mean(0) for t in torch.split(head_tokens, tokens_per_view)])
            losses["camera"] = camera_loss(heads.camera(pooled), aux_camera)

        if hasattr(heads, "depth"):
            if aux_depth is None:
                raise ValueError("depth loss enabled but the batch has no aux_depth (build the data with load_depth)")
            k = aux.depth_patch
            raw = heads.depth(head_tokens).float()
            per_view = []
            for view_raw, (h, w), target in zip(torch.split(raw, tokens_per_view), merged_grids, aux_depth):
                grid = view_raw.reshape(h, w, 2, k, k).permute(2, 0, 3, 1, 4).reshape(2, h * k, w * k)
                per_view.append(depth_loss(grid[0].exp(), 1 + grid[1].exp(), target, aux.depth_gradient_weight, aux.depth_confidence_alpha))
            losses["depth"] = torch.stack(per_view).mean()

        if hasattr(heads, "scale"):
            if aux_scale is None:
                raise ValueError("scale loss enabled but the batch has no aux_scale (build the data with load_depth)")
            tokens_per_sample, start = [], 0
            for count in views:
                tokens_per_sample.append(sum(tokens_per_view[start : start + count]))
                start += count
            pooled = torch.stack([t.mean(0) for t in torch.split(head_tokens, tokens_per_sample)])
            losses["scale"] = scale_loss(heads.scale(pooled).squeeze(-1).float().exp(), aux_scale)
        return losses
