"""GAP-MLLM: Qwen3-VL + a frozen VGGT geometry encoder + multi-level gated fusion (arXiv 2603.16461).

Data flow of one forward with images (docs/method.md §1.6):

    ViT(pixel_values)            -> v_main, v_ds[0..L-2]       (Qwen3-VL vision tower, frozen)
    VGGT(geometry_pixel_values)  -> g[t_0 .. t_{L-1}]          (geometry encoder, frozen, once per call)
    level 0:  fusion_0(v_main,   merger_0(g[t_{L-1}]))  -> replaces the <|image_pad|> embeddings
    level k:  fusion_k(v_ds[k-1], merger_k(g[t_{k-1}])) -> added after LLM decoder layer k-1 (DeepStack)

The fused features go into Qwen3-VL through its `mm_encoder_outputs` hook, so M-RoPE, DeepStack
injection, caching and the LM loss are stock transformers code.
"""

import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel, Qwen3VLForConditionalGeneration
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .answer_task_generation import answer_task_kwargs
from .compiled_decoding import compiled_decoding_kwargs
from .config_sizes import check_memory_for_parameters
from .configuration_gap_mllm import GapMllmConfig
from .engine_embeddings import GapMllmImageEmbeddings, concatenate_levels
from .forward_checks import check_forward_inputs
from .generation_checks import budget_to_grammars, check_token_ids, fit_budget_to_context, highest_prompt_position
from .geometry_fusion import WeightedFusion
from .hub_reachability import hub_loading_kwargs
from .loading_bar import loading_bar_for
from .loading_report import GEOMETRY_GROUPS, first_non_finite_tensor, report_missing_weights
from .model_inputs import GEOMETRY_INPUT_NAMES, PREFILL_ONLY_INPUT_NAMES  # generate() drops the latter after prefill
from .modeling_geometry_encoder import GapMllmGeometryEncoder, init_geometry_weights
from .batched_qwen3_vl import use_batched_qwen3_vl
from .multi_level_fusion import GapMllmMultiLevelFusion
from .scene_cache import GapMllmScene, encode_scene, generate_from_scene
from .static_cache_pool import pooled_static_cache, static_cache_length, static_cache_pool
from .vggt_weights import load_vggt_weights

logger = logging.get_logger(__name__)


@dataclass
class GapMllmOutput(ModelOutput):
    """Output of [`GapMllmForConditionalGeneration`].

    Args:
        loss: language-modelling loss `[]` when `labels` are given.
        logits: `[B, T, vocab]` (or the last `logits_to_keep` positions).
        past_key_values: the decoder cache.
        hidden_states, attentions: as in Qwen3-VL when requested.
        rope_deltas: M-RoPE deltas `[B, 1]` of the prompt.
        fusion_gates: when `output_gates=True` and the method is `gated`, one `[N_visual]` tensor per
            level (level 0 = main tokens, then DeepStack levels): the gate averaged over channels,
            i.e. the share of the Qwen feature in each fused token (1 = pure Qwen, 0 = pure geometry).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None
    rope_deltas: torch.LongTensor | None = None
    fusion_gates: tuple[torch.FloatTensor, ...] | None = None


class GapMllmPreTrainedModel(PreTrainedModel):
    config: GapMllmConfig
    base_model_prefix = "gap"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values"]
    _no_split_modules = ["Qwen3VLTextDecoderLayer", "Qwen3VLVisionBlock", "GapMllmGeometryBlock"]

    @property
    def is_gradient_checkpointing(self) -> bool:
        """`is_activation_checkpointing` under its old name, without transformers 5.x's FutureWarning: peft 0.21 reads
        this name in `PeftModel.__init__` (every `get_peft_model` and `PeftModel.from_pretrained`), so each LoRA run
        warned of a deprecation its user cannot act on (issue 84). Same value as the new name."""
        return self.is_activation_checkpointing

    @torch.no_grad()
    def _init_weights(self, module):
        """Initialise every GAP parameter: geometry-encoder modules (VGGT tokens, LayerScale, ...) through
        `init_geometry_weights`, the weighted-fusion scalars at 0.5, everything else (Linear N(0, 0.02),
        norms at 1/0, Qwen3-VL modules) through the transformers default."""
        # init_geometry_weights matches Linear/LayerNorm by type: give it only the encoder's own modules.
        if module in getattr(self, "_geometry_encoder_modules", ()):
            init_geometry_weights(module, self.config.geometry_config)
            return
        if isinstance(module, WeightedFusion):
            init.constant_(module.weight_2d, 0.5)
            init.constant_(module.weight_3d, 0.5)
            return
        super()._init_weights(module)


class GapMllmForConditionalGeneration(GapMllmPreTrainedModel, GenerationMixin):
    """GAP-MLLM for image(s)+text → text generation.

    Modules: `vlm` (stock `Qwen3VLForConditionalGeneration`), and when `config.use_geometry`:
    `geometry_encoder` (VGGT aggregator) and `geometry_fusion` (`mergers[l]`, `fusions[l]`).
    Frozen by default: `vlm.model.visual` and `geometry_encoder`; trainable: the LLM, the mergers and
    the fusion modules (docs/method.md §8.3).
    """

    accepts_loss_kwargs = False  # Qwen3-VL's choice: Trainer then scales the loss for accumulation.

    def __init__(self, config: GapMllmConfig):
        # Refuse before allocating when even a lower bound of the weights does not fit (config_sizes.py); on
        # the meta device (from_pretrained) nothing is allocated here.
        check_memory_for_parameters(config)
        super().__init__(config)
        # Plain nn.Module sub-models never get an attention implementation from PreTrainedModel:
        # without this they would silently fall back to eager (docs/transformers-notes.md §8).
        for sub_config in (config.geometry_config, config.geometry_fusion_config):
            if sub_config._attn_implementation is None:
                sub_config._attn_implementation = config._attn_implementation
        self.vlm = Qwen3VLForConditionalGeneration(config.vlm_config)
        use_batched_qwen3_vl(self.vlm)  # position ids and ViT attention without per-image host loops
        if config.use_geometry:
            self.geometry_encoder = GapMllmGeometryEncoder(config.geometry_config)
            self.geometry_fusion = GapMllmMultiLevelFusion(config)
            self._geometry_encoder_modules = set(self.geometry_encoder.modules())
        self.post_init()
        self.apply_freezing_policy()
        # register_for_auto_class keeps one auto class per class; AutoModel must resolve as well.
        config.auto_map = {
            **(getattr(config, "auto_map", None) or {}),
            "AutoConfig": "configuration_gap_mllm.GapMllmConfig",
            "AutoModel": "modeling_gap_mllm.GapMllmForConditionalGeneration",
            "AutoModelForImageTextToText": "modeling_gap_mllm.GapMllmForConditionalGeneration",
        }

    # ---------------------------------------------------------------- parameters and freezing
    def apply_freezing_policy(self, freeze_vision_tower: bool = True, freeze_geometry_encoder: bool = True):
        """Official recipe: Qwen ViT (with its mergers) and VGGT frozen; LLM, mergers and fusion trained."""
        self.vlm.model.visual.requires_grad_(not freeze_vision_tower)
        if self.config.use_geometry:
            self.geometry_encoder.requires_grad_(not freeze_geometry_encoder)
            # the DINOv2 mask token is never used in a forward (VGGT keeps it frozen too)
            mask_token = getattr(self.geometry_encoder.aggregator.patch_embed, "mask_token", None)
            if mask_token is not None:
                mask_token.requires_grad_(False)

    def get_input_embeddings(self):
        return self.vlm.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.vlm.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.vlm.get_output_embeddings()

    def set_output_embeddings(self, new_embeddings):
        self.vlm.set_output_embeddings(new_embeddings)

    @property
    def uses_geometry(self) -> bool:
        return self.config.use_geometry

    # ---------------------------------------------------------------- geometry branch
    def _views_per_sample(self, input_ids, image_grid_thw, geometry_views_per_sample) -> list[int]:
        if geometry_views_per_sample is not None:
            counts = [int(c) for c in geometry_views_per_sample.tolist()]
        elif input_ids is not None:
            # one image = <|vision_start|> followed by <|image_pad|>
            vlm_config = self.config.vlm_config
            starts = (input_ids[:, :-1] == vlm_config.vision_start_token_id) & (
                input_ids[:, 1:] == vlm_config.image_token_id
            )
            counts = starts.sum(dim=1).tolist()
        else:
            raise ValueError("geometry_views_per_sample is required when input_ids are not given.")
        if sum(counts) != image_grid_thw.shape[0]:
            raise ValueError(
                f"geometry_views_per_sample={counts} adds up to {sum(counts)} views, but image_grid_thw has "
                f"{image_grid_thw.shape[0]} images."
            )
        return counts

    def get_geometry_features(
        self,
        geometry_pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        grids: list | None = None,
    ) -> list[list[torch.Tensor]]:
        """Run the geometry encoder once per group of same-shaped samples.

        Args:
            geometry_pixel_values: `[N_views, 3, H_max, W_max]` in [0, 1] from `GapMllmProcessor`; view i's
                valid region is the top-left `p·h_i × p·w_i` (p = VGGT patch size, (h_i, w_i) its Qwen patch grid).
            image_grid_thw: `[N_views, 3]` rows `(1, h_i, w_i)`.
            views_per_sample: views of each sample, in batch order.
            grids: `image_grid_thw` as host integers, when the caller has them (a training step: no read of the
                device's copy, which waits for the GPU).

        Returns:
            per fusion level (0 = main, then DeepStack), one `[S_b, h_b, w_b, 2·C]` tensor per sample.
        """
        patch = self.config.geometry_config.patch_size
        grids = image_grid_thw.tolist() if grids is None else [list(g) for g in grids]
        if any(t != 1 for t, _, _ in grids):
            raise ValueError("geometry fusion needs single-frame image grids (t = 1); videos bypass geometry.")
        needed_h = max(h for _, h, _ in grids) * patch
        needed_w = max(w for _, _, w in grids) * patch
        if geometry_pixel_values.shape[0] != len(grids) or tuple(geometry_pixel_values.shape[-2:]) != (needed_h, needed_w):
            raise ValueError(
                f"geometry_pixel_values has shape {tuple(geometry_pixel_values.shape)}, expected "
                f"[{len(grids)}, 3, {needed_h}, {needed_w}]: {patch} px per Qwen patch of image_grid_thw. "
                "Prepare the inputs with GapMllmProcessor."
            )
        samples, start = [], 0
        for index, count in enumerate(views_per_sample):
            sample_grids = {tuple(g[1:]) for g in grids[start : start + count]}
            if len(sample_grids) != 1:
                raise ValueError(f"sample {index}: all views must share one image size, got grids {sorted(sample_grids)}.")
            (h, w), = sample_grids
            samples.append((start, count, h, w))
            start += count

        level_layers = self.config.level_geometry_layers
        tapped = list(self.config.geometry_config.tapped_layers)
        features: list[list[torch.Tensor | None]] = [[None] * len(samples) for _ in level_layers]
        by_shape: dict[tuple[int, int, int], list[int]] = {}
        for index, (_, count, h, w) in enumerate(samples):
            by_shape.setdefault((count, h, w), []).append(index)

        encoder = self.geometry_encoder
        needs_grad = torch.is_grad_enabled() and any(p.requires_grad for p in encoder.parameters())
        dtype = next(encoder.parameters()).dtype
        with torch.set_grad_enabled(needs_grad):
            for (count, h, w), members in by_shape.items():
                images = torch.stack(
                    [geometry_pixel_values[samples[i][0] : samples[i][0] + count, :, : h * patch, : w * patch] for i in members]
                )
                output = encoder(images.to(dtype))
                for level, layer in enumerate(level_layers):
                    layer_features = output.layer_features[tapped.index(layer)]  # [B_g, S, h·w, 2C]
                    for slot, i in enumerate(members):
                        features[level][i] = layer_features[slot].reshape(count, h, w, -1)
        return features

    def fuse_geometry(self, image_outputs, geometry_features, image_grid_thw, output_gates: bool = False,
                      grids: list | None = None):
        """Replace Qwen's visual features (`pooler_output`, `deepstack_features`) in `image_outputs` by the
        fused ones, in place; returns the gates (see `GapMllmOutput.fusion_gates`). `grids`: `image_grid_thw` as
        host integers, when the caller has them."""
        merge = self.config.vlm_config.vision_config.spatial_merge_size
        grids = image_grid_thw.tolist() if grids is None else grids
        merged_grids = [(h // merge, w // merge) for _, h, w in grids]
        visual_levels = [image_outputs.pooler_output, *image_outputs.deepstack_features]
        if len(visual_levels) != len(geometry_features):
            raise ValueError(
                f"the vision tower returned {len(visual_levels)} feature levels but {len(geometry_features)} "
                "geometry levels were computed; check vision_config.deepstack_visual_indexes and tapped_layers."
            )
        for index, (visual, (h, w)) in enumerate(zip(image_outputs.pooler_output, merged_grids)):
            if visual.shape[0] != h * w:
                raise ValueError(f"image {index}: {visual.shape[0]} Qwen tokens but a {h}×{w} merged geometry grid.")
        fused, gates = self.geometry_fusion(visual_levels, geometry_features, merged_grids, output_gates=output_gates)
        image_outputs.pooler_output = fused[0]
        image_outputs.deepstack_features = fused[1:]
        return gates

    def get_fused_image_features(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        views_per_sample: list[int],
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        image_outputs=None,
        grids: list | None = None,
    ):
        """The image path of GAP-MLLM: ViT features, geometry features (computed from
        `geometry_pixel_values`, or given precomputed, e.g. from a feature cache) and their fusion.

        `image_outputs`: the ViT's output for `pixel_values`, precomputed (as `get_image_features` returns it, e.g.
        rebuilt from a training feature cache); `pixel_values` is then not read. `grids`: `image_grid_thw` as host
        integers `[(t, h, w), ...]`, when the caller has them (the training step: training/host_metadata.py).

        Returns:
            `(image_outputs, geometry_features, gates)`: Qwen's vision output with the fused `pooler_output`
            and `deepstack_features` (ready for `mm_encoder_outputs={"image": ...}`), the geometry features
            used (per level, one `[S_b, h_b, w_b, 2C]` tensor per sample) and the gates (or None).
        """
        if image_outputs is None:
            image_outputs = self.vlm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        if geometry_features is None:
            if geometry_pixel_values is None:
                raise ValueError("pass geometry_pixel_values (GapMllmProcessor) or precomputed geometry_features.")
            geometry_features = self.get_geometry_features(geometry_pixel_values, image_grid_thw, views_per_sample, grids)
        else:
            dtype = next(self.geometry_fusion.parameters()).dtype
            geometry_features = [[features.to(dtype) for features in level] for level in geometry_features]
        gates = self.fuse_geometry(image_outputs, geometry_features, image_grid_thw, output_gates=output_gates,
                                   grids=grids)
        return image_outputs, geometry_features, gates

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        image_grid_thw: torch.LongTensor,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_views_per_sample: torch.LongTensor | None = None,
        input_ids: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        **kwargs,
    ) -> GapMllmImageEmbeddings:
        """GAP-MLLM's whole image path (geometry encoder, ViT, mergers, gates: each runs once) as the precomputed
        image embeddings a stock Qwen3-VL takes, e.g. vLLM's `image_embeds` (see `engine_embeddings.py`).

        Args:
            pixel_values: `[Σ h_i·w_i, 3·2·16·16]` ViT patches (`GapMllmProcessor`).
            image_grid_thw: `[N_images, 3]` rows `(1, h_i, w_i)`.
            geometry_pixel_values: `[N_images, 3, H_max, W_max]` in [0, 1], the VGGT input of every view
                (required with geometry unless `geometry_features` are given).
            geometry_views_per_sample: `[B]` views per sample (or inferred from `input_ids`).
            input_ids: `[B, L]`, only to count the views of each sample when `geometry_views_per_sample` is absent.
            geometry_features: precomputed geometry-encoder output (as `get_geometry_features` returns).
            **kwargs: other processor outputs (`attention_mask`, `mm_token_type_ids`, ...), ignored, so that
                `model.encode_images(**processor(...))` works.

        Returns:
            `GapMllmImageEmbeddings`: per image `[h_i·w_i/4, (1 + num_deepstack) · hidden]` (`[main ‖ deepstack_0 ‖
            deepstack_1 ‖ deepstack_2]`, 8192 wide for Qwen3-VL-2B), the grids and the views per sample. With
            `use_geometry=False` (the ablation arm without geometry) the levels are stock Qwen3-VL's.
        """
        views = self._views_per_sample(input_ids, image_grid_thw, geometry_views_per_sample)
        if self.uses_geometry:
            if geometry_pixel_values is None and geometry_features is None:
                # forward() would fall back to the plain Qwen path with a warning; an engine would then
                # answer without geometry, silently: refuse instead.
                raise ValueError("encode_images needs geometry_pixel_values (GapMllmProcessor) or geometry_features: "
                                 "this model fuses geometry into its image tokens.")
            image_outputs, _, _ = self.get_fused_image_features(
                pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features
            )
        else:
            image_outputs = self.vlm.model.get_image_features(pixel_values, image_grid_thw, return_dict=True)
        vision = self.config.vlm_config.vision_config
        embeddings = concatenate_levels(tuple(image_outputs.pooler_output), list(image_outputs.deepstack_features))
        return GapMllmImageEmbeddings(
            embeddings=embeddings,
            image_grid_thw=image_grid_thw,
            views_per_sample=tuple(views),
            hidden_size=vision.out_hidden_size,
            num_deepstack_levels=len(vision.deepstack_visual_indexes),
        )

    # ---------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        geometry_pixel_values: torch.Tensor | None = None,
        geometry_views_per_sample: torch.LongTensor | None = None,
        geometry_features: list[list[torch.Tensor]] | None = None,
        output_gates: bool = False,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> GapMllmOutput:
        """
        Args:
            input_ids, attention_mask, pixel_values, image_grid_thw, mm_token_type_ids: as for Qwen3-VL
                (from `GapMllmProcessor`).
            geometry_pixel_values: `[N_views, 3, H_max, W_max]` in [0, 1], the VGGT input of every view.
            geometry_views_per_sample: `[B]` views per sample (inferred from `input_ids` when absent).
            geometry_features: precomputed geometry-encoder output instead of `geometry_pixel_values` (per
                fusion level, one `[S_b, h_b, w_b, 2C]` tensor per sample, as `get_geometry_features` returns).
            labels: `[B, T]` next-token targets (-100 = ignored) for the LM loss.
            output_gates: return the fusion gates per level (`gated` method).

        Raises:
            ValueError: naming the input, for ids outside the vocabulary and ill-shaped or empty masks, labels or
                token types (forward_checks.py).
        """
        check_forward_inputs(self, input_ids, inputs_embeds, attention_mask, labels, mm_token_type_ids, past_key_values)
        mm_encoder_outputs, gates = None, None
        if self.uses_geometry and pixel_values is not None:
            if geometry_pixel_values is None and geometry_features is None:
                logger.warning_once(
                    "GAP-MLLM got pixel_values without geometry_pixel_values: running the plain Qwen3-VL "
                    "image path, without geometry fusion. Use GapMllmProcessor to prepare both."
                )
            else:
                views = self._views_per_sample(input_ids, image_grid_thw, geometry_views_per_sample)
                image_outputs, _, gates = self.get_fused_image_features(
                    pixel_values, image_grid_thw, views, geometry_pixel_values, geometry_features, output_gates
                )
                mm_encoder_outputs, pixel_values = {"image": image_outputs}, None
        elif geometry_pixel_values is not None and pixel_values is None and past_key_values is None:
            raise ValueError("geometry_pixel_values were given without pixel_values: pass both (GapMllmProcessor).")

        outputs = self.vlm(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            labels=labels,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        return GapMllmOutput(
            loss=outputs.loss,
            logits=outputs.logits,
            past_key_values=outputs.past_key_values,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            rope_deltas=self.vlm.model.rope_deltas,
            fusion_gates=gates,
        )

    # ---------------------------------------------------------------- generation
    def encode_scene(self, input_ids=None, pixel_values=None, image_grid_thw=None, output_gates: bool = False,
                     **kwargs) -> GapMllmScene:
        """Encode one multi-view scene once (geometry encoder, vision tower, fusion, prefill of the prompt up
        to the last view) for `generate(scene=...)`; see `scene_cache.py`.

        Args:
            input_ids, pixel_values, image_grid_thw, ...: the processor output for ONE sample, e.g.
                `processor(images=frames, text=prefix)` with `prefix` from `processor.split_scene_prompt`;
                tokens after the last view are ignored.
            output_gates: keep the fusion gates in `scene.fusion_gates`.
        """
        return encode_scene(self, input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=image_grid_thw,
                            output_gates=output_gates, **kwargs)

    compile_decoding = "off"  # generate's default compile_decoding (compiled_decoding.py); front ends set "auto"

    def generate(self, inputs=None, *args, scene: GapMllmScene | list[GapMllmScene] | None = None,
                 compile_decoding=None, answer_task=None, constrained: bool = False, **kwargs):
        """`GenerationMixin.generate`, plus `scene=`: answer questions about a scene from `encode_scene`
        without encoding it again. With a scene, pass only the question tokens (`input_ids` `[B, Lq]`,
        `attention_mask`); the result continues them (`[B, Lq + new]`). A list of `B` scenes gives each row its own
        (questions about several scenes in one batch). See `scene_cache.generate_from_scene`.

        `compile_decoding`: "off" (also False), "on" (True), "auto" (on where the model is on a CUDA device) or a
        transformers `CompileConfig`: a static cache and every decode step compiled whole, replayed as a CUDA graph on a
        GPU; the same tokens, fewer launches (compiled_decoding.py). With or without a scene. Default: the model's
        `compile_decoding` attribute ("off" unless a front end set it).

        `answer_task` (a task name) with `tokenizer=`: that task's decoding settings (greedy, its budget unless
        `max_new_tokens` is given, its stop rule), and with `constrained=True` its answer grammar, built from this call's
        inputs, for callers that never see the processor's output (`pipeline(...)`; answer_task_generation.py).

        Context: a `max_new_tokens` that would pass `text_config.max_position_embeddings` after the prompt's
        highest M-RoPE position is lowered to what fits, with a warning (an INFO line when it is the task's own budget,
        `DefaultBudget`; generation_checks.py).

        Raises:
            ValueError: a token id outside the vocabulary, a prompt that itself reaches the end of the context
                or a `min_new_tokens` that cannot fit (generation_checks.py); with a scene, also a scene of
                another model or of changed weights (scene_cache.py).
        """
        if compile_decoding is None:
            compile_decoding = self.compile_decoding
        if answer_task is not None or constrained:
            kwargs = answer_task_kwargs(answer_task, constrained, kwargs.get("input_ids", inputs), kwargs)
        if scene is not None and args:
            raise TypeError("generate(scene=...) takes generation options as keyword arguments only.")
        with static_cache_pool(self).lending():  # a static cache's buffers are this call's (static_cache_pool.py)
            if scene is None:
                self._check_generate_inputs(kwargs.get("input_ids", inputs), kwargs)
                kwargs.update(compiled_decoding_kwargs(compile_decoding, self.device, kwargs))
                return super().generate(inputs, *args, **kwargs)
            input_ids = kwargs.pop("input_ids", inputs)
            return generate_from_scene(self, scene, input_ids, compile_decoding=compile_decoding, **kwargs)

    def _prepare_static_cache(self, cache_implementation, batch_size, max_cache_len, prefill_chunk_size, model_kwargs):
        """transformers' hook for the static cache of a `generate` call: here lent by the model's pool, at the same
        addresses in every call of a length, so that compiled decoding replays its recorded CUDA graphs instead of
        recording them again each call (static_cache_pool.py); its length rounded up as a scene call's."""
        if cache_implementation != "static" or prefill_chunk_size is not None:  # no chunked prefill nor offloading
            return super()._prepare_static_cache(cache_implementation, batch_size, max_cache_len, prefill_chunk_size,
                                                 model_kwargs)
        return pooled_static_cache(self, static_cache_length(self, max_cache_len))

    def _check_generate_inputs(self, input_ids, kwargs: dict) -> None:
        """Refuse ids outside the vocabulary and prompts past the context; lower a `max_new_tokens` that would
        pass it (in `kwargs`; generation_checks.py). A prompt continuing a cache given in `past_key_values` is
        not checked: its positions start after the cache."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or kwargs.get("past_key_values") is not None:
            budget_to_grammars(self, kwargs, None)  # the context is not checked; the grammars plan for the call's budget
            return
        check_token_ids(input_ids, self.get_input_embeddings().num_embeddings)
        highest = highest_prompt_position(self, input_ids, kwargs.get("attention_mask"), kwargs.get("mm_token_type_ids"),
                                          kwargs.get("image_grid_thw"))
        fit_budget_to_context(self, kwargs, highest, input_ids.shape[1])

    def prepare_inputs_for_generation(self, *args, is_first_iteration=False, **kwargs):
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        # The geometry encoder runs at prefill only; with a cache, later steps see no images, nor what places their
        # M-RoPE positions (model_inputs.py): a decode step then has the same inputs in every call.
        if not is_first_iteration and kwargs.get("use_cache", True):
            for name in PREFILL_ONLY_INPUT_NAMES:
                inputs.pop(name, None)
            # The causal mask of a static cache is a view in some calls and a tensor of its own in others (a scene
            # call's); a compiled step with a symbolic batch guards on a view's base, so a view is copied (B × L).
            mask = inputs.get("attention_mask")
            if isinstance(mask, torch.Tensor) and mask._base is not None:
                inputs["attention_mask"] = mask.clone()
        return inputs

    def _prepare_position_ids_for_generation(self, inputs_tensor, model_kwargs):
        # Qwen3-VL needs 3-D M-RoPE positions; the generic 2-D ones would be silently wrong.
        return self.vlm._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Beam search / several return sequences: repeat per-image tensors sample by sample (they are
        concatenated over views, so the generic `repeat_interleave` on dim 0 would scramble them)."""
        if expand_size == 1:
            return input_ids, model_kwargs
        grid = model_kwargs.get("image_grid_thw")
        if grid is not None and model_kwargs.get("pixel_values") is not None:
            views = self._views_per_sample(input_ids, grid, model_kwargs.get("geometry_views_per_sample"))
            patches_per_image = grid.prod(dim=-1).tolist()

            def per_sample_repeat(tensor, rows_per_image):
                if tensor is None:
                    return None
                chunks, start, image = [], 0, 0
                for count in views:
                    rows = sum(rows_per_image[image : image + count])
                    chunks.extend([tensor[start : start + rows]] * expand_size)
                    start, image = start + rows, image + count
                return torch.cat(chunks)

            model_kwargs["pixel_values"] = per_sample_repeat(model_kwargs["pixel_values"], patches_per_image)
            model_kwargs["geometry_pixel_values"] = per_sample_repeat(model_kwargs.get("geometry_pixel_values"), [1] * len(patches_per_image))
            model_kwargs["image_grid_thw"] = per_sample_repeat(grid, [1] * len(patches_per_image))
            model_kwargs["geometry_views_per_sample"] = torch.tensor(views, device=grid.device).repeat_interleave(expand_size)
            handled = {k: model_kwargs.pop(k) for k in ("pixel_values", "geometry_pixel_values", "image_grid_thw", "geometry_views_per_sample")}
        else:
            handled = {}
        input_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )
        model_kwargs.update({k: v for k, v in handled.items() if v is not None})
        return input_ids, model_kwargs

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, require_geometry_weights: bool = False,
                        allow_non_finite_weights: bool = False, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus a loud report of missing GAP components and a refusal of weights
        that are not numbers.

        Args:
            require_geometry_weights: raise instead of warning when the geometry encoder, mergers or
                fusion modules are missing from the checkpoint.
            allow_non_finite_weights: load weights holding NaN or infinities (to inspect a diverged checkpoint);
                by default such a checkpoint is a ValueError naming the first tensor that holds one.
        """
        wants_info = kwargs.pop("output_loading_info", False)
        with loading_bar_for(pretrained_model_name_or_path):  # no "Loading weights" bar for a small local checkpoint
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True, **kwargs)
        broken = None if allow_non_finite_weights else first_non_finite_tensor(model.state_dict())
        if broken is not None:  # it would load and answer nothing (every box dropped), without a word
            raise ValueError(f"{pretrained_model_name_or_path}: the weights hold NaN or infinite values (first: "
                             f"{broken}); the checkpoint is damaged or was saved from a diverged run: load another one")
        # Loading materialises fresh parameters (all trainable): restore the default frozen parts.
        model.apply_freezing_policy()
        groups = report_missing_weights(info["missing_keys"], str(pretrained_model_name_or_path))
        model.missing_weight_groups = sorted(groups)
        if require_geometry_weights and GEOMETRY_GROUPS.intersection(groups):
            raise ValueError(
                f"{pretrained_model_name_or_path!r} lacks GAP geometry weights: {sorted(GEOMETRY_GROUPS.intersection(groups))}"
            )
        return (model, info) if wants_info else model

    @classmethod
    def from_qwen3_vl(
        cls,
        qwen3_vl_name_or_path,
        geometry_config: dict | None = None,
        geometry_fusion_config: dict | None = None,
        vggt_weights=None,
        **from_pretrained_kwargs,
    ) -> "GapMllmForConditionalGeneration":
        """Build a GAP-MLLM from a stock Qwen3-VL checkpoint and, optionally, VGGT weights: the Qwen3-VL
        weights are loaded, the geometry encoder is filled from `vggt_weights` (strictly, through
        `convert_vggt_to_hf.load_vggt_weights`), the mergers and fusion are newly initialised (and reported).

        Args:
            qwen3_vl_name_or_path: a Qwen3-VL folder or Hub id (e.g. `Qwen/Qwen3-VL-2B-Instruct`).
            geometry_config, geometry_fusion_config: overrides of the GAP sub-configs (the geometry config
                must describe the VGGT architecture of `vggt_weights`; its defaults are VGGT-1B).
            vggt_weights: a VGGT state dict, a `model.pt` / `.safetensors` file, a folder holding one (also
                a `gap-mllm convert vggt` output), or a Hub id such as `facebook/VGGT-1B`. `None` leaves the
                encoder randomly initialised (reported loudly). Head weights are skipped unless the
                geometry config enables the heads; the conversion report is kept as
                `model.vggt_conversion_report`.
            from_pretrained_kwargs: passed to `Qwen3VLForConditionalGeneration.from_pretrained` (dtype, ...).
        """
        # an unreachable Hub: the cached checkpoint at once, or one line, not a minute of retries (hub_reachability.py)
        from_pretrained_kwargs = {**hub_loading_kwargs(qwen3_vl_name_or_path, "Qwen3-VL"), **from_pretrained_kwargs}
        vlm = Qwen3VLForConditionalGeneration.from_pretrained(qwen3_vl_name_or_path, **from_pretrained_kwargs)
        config = GapMllmConfig(
            vlm_config=vlm.config,
            geometry_config=geometry_config or {},
            geometry_fusion_config=geometry_fusion_config or {},
            attn_implementation=vlm.config._attn_implementation,
        )
        model = cls(config).to(vlm.dtype)
        model.vlm = vlm
        use_batched_qwen3_vl(vlm)
        loaded = set()
        if vggt_weights is not None:
            if not config.use_geometry:
                raise ValueError("vggt_weights were given but use_geometry=False: the model has no geometry encoder.")

            report = load_vggt_weights(model.geometry_encoder, vggt_weights)
            model.vggt_conversion_report = report
            loaded = {"geometry_encoder." + key for key in report.mapped}
            if isinstance(vggt_weights, (str, os.PathLike)):
                config.geometry_config.source_checkpoint = str(vggt_weights)
        model.apply_freezing_policy()
        new_keys = [k for k in model.state_dict() if not k.startswith("vlm.") and k not in loaded]
        groups = report_missing_weights(new_keys, str(qwen3_vl_name_or_path))
        model.missing_weight_groups = sorted(groups)
        return model


# `save_pretrained` writes the auto_map entry and copies the remote code for this class, however it was imported
# (without it a folder saved by a process that imported this module directly had `auto_map[None]`)
GapMllmForConditionalGeneration.register_for_auto_class("AutoModelForImageTextToText")

__all__ = ["GapMllmForConditionalGeneration", "GapMllmImageEmbeddings", "GapMllmOutput", "GapMllmPreTrainedModel", "GapMllmScene"]
