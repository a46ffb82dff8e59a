"""Public names that moved or left since version 0.1.0, each answering with an error that names its new home.

A script written against an older layout gets one line saying where the name went, not a bare AttributeError or
ModuleNotFoundError. For one release; then this module goes, and the names give Python's own errors.

- A module (`MOVED_MODULES`): `import gap_mllm.target_format`, `from gap_mllm import target_format` and the attribute
  `gap_mllm.target_format` raise ModuleNotFoundError naming its new home. `MovedNamesFinder`, put on
  `sys.meta_path` by `import gap_mllm`, answers only for a module no other finder finds.
- A function, class or constant of a module that still exists (`MOVED_NAMES`): `from gap_mllm.modeling_vggt import
  fuse_point_cloud` and `gap_mllm.modeling_vggt.fuse_point_cloud` raise ImportError naming its new home (an
  ImportError, not an AttributeError: Python words a failed `from ... import` itself otherwise, without the hint).
  `hasattr` on such a name raises it too.
- A method (`MOVED_METHODS`): `GapMllmGeometryEncoder.from_vggt_state_dict` raises AttributeError naming its new
  home, and so does calling `model.encode_images(...)` (on an instance, the name is a function that raises when
  called: `torch.nn.Module` words a failed attribute lookup itself).

Names of the package's own copy of the model folder only (`gap_mllm.*`): a folder loaded with `trust_remote_code`
runs its own copy of the code. The finder adds the module `__getattr__` and the method stubs as it loads the modules
named below, so that none of those modules carries them; `gap_mllm/__init__.py` asks `moved_module_error` itself.
"""

from __future__ import annotations

import sys

LAB = "moved to lab.mini.{}, the repository's research pipeline (not installed: run from a checkout)"

# old module -> the module that holds its contents now, or what became of it
MOVED_MODULES = {
    **{f"gap_mllm.{old}": f"gap_mllm.{new}" for old, new in {
        "answer_grammar": "tasks_gap_mllm", "answer_grammar_processor": "tasks_gap_mllm",
        "answer_stopping": "tasks_gap_mllm", "answer_stopping_criteria": "tasks_gap_mllm",
        "answer_task_generation": "generation", "batched_qwen3_vl": "speedups", "chat_format": "tasks_gap_mllm",
        "compiled_decoding": "generation", "config_sizes": "checks", "control_tokens": "tasks_gap_mllm",
        "conversion_report": "convert_vggt_to_hf", "engine_embeddings": "speedups", "forward_checks": "checks",
        "generation_checks": "checks", "geometry_fusion": "modeling_gap_mllm", "geometry_heads_camera": "modeling_vggt",
        "geometry_heads_dpt": "modeling_vggt", "geometry_layers": "modeling_vggt", "geometry_merger": "modeling_gap_mllm",
        "generation_gap_mllm": "generation (the package's explicit call, generate(model, ...); no longer in a model "
                               "folder)",
        "geometry_patch_embed": "modeling_vggt", "geometry_reconstruction": "modeling_vggt",
        "geometry_rope": "modeling_vggt", "hub_reachability": "convert_vggt_to_hf",
        "image_alignment": "processing_gap_mllm", "image_files": "image_utils_gap_mllm",
        "image_files_gap_mllm": "image_utils_gap_mllm", "loading_bar": "processing.model_paths",
        "loading_report": "checks", "model_identity": "checks", "model_inputs": "configuration_gap_mllm",
        "modeling_geometry_encoder": "modeling_vggt (the encoder; its interface: configuration_gap_mllm)",
        "mrope_positions": "speedups", "multi_level_fusion": "modeling_gap_mllm",
        "output_parsing": "tasks_gap_mllm (the answer-format checks of the front ends: gap_mllm.cli.tasks)",
        "point_maps": "modeling_vggt (depth to points) and gap_mllm.point_cloud",
        "pose_encoding": "modeling_vggt", "regular_files": "files", "scene_cache": "generation",
        "static_cache_pool": "speedups", "target_format": "tasks_gap_mllm", "vggt_weights": "convert_vggt_to_hf",
        "visual_prompt": "image_utils_gap_mllm",
        "cli.answer_checks": "cli.tasks", "cli.space_gpu": "cli.space_backend",
        "evaluation.evaluate_cli": "cli.evaluate", "evaluation.geometry_metrics": "evaluation.geometry_eval",
        "evaluation.lmms_eval_plugin.upstream_requests": "evaluation.lmms_eval_plugin.models.gap_mllm",
        "evaluation.lmms_eval_plugin.visual_frames": "evaluation.lmms_eval_plugin.models.gap_mllm",
        "evaluation.spatial_qa_metrics": "processing.tasks.spatial_qa",
        "evaluation.vsibench_answers": "processing.tasks.spatial_qa", "mini.mini_tokenizer": "mini.mini_config",
        "processing.vsibench_answers": "processing.tasks.spatial_qa",
        "processing.vsibench_questions": "processing.tasks.spatial_qa",
        "training.aux_heads": "training.geometry_aligned_model", "training.encoder_weights": "training.model_loading",
        "training.geometry_stage": "training.encoder_stage_run", "training.vision_stage": "training.encoder_stage_run",
        "training.gpu_verdicts": "training.kernels", "training.liger_qwen3_vl": "training.kernels",
    }.items()},
    # the task scores: functions on numbers and texts below evaluation, which the task modules import
    **{f"gap_mllm.evaluation.{name}": f"gap_mllm.processing.scoring.{name}" for name in (
        "box_iou", "caption_metrics", "category_lists", "detection_metrics", "detection_parsing", "grounding_metrics",
        "meteor", "reconstruction_metrics")},
    **{f"gap_mllm.mini.{name}": LAB.format(name) for name in (
        "ablation", "archived_states", "arm_provenance", "card", "claims", "claims_table", "code_links",
        "compare_stage1", "constrained_row", "export", "fresh_seeds", "kept_answers", "markdown_sections",
        "paired_arms", "pipeline", "pipeline_settings", "provenance", "report", "sample_rows", "shipped_baselines",
        "synth_data")},
    **{f"gap_mllm.mini.{name}": "removed, a one-off experiment of the research log (reports/mini/ holds its "
                                "findings, git history its code)"
       for name in ("frame_selection", "grounding_mix", "input_use", "probes", "referring_2d")},
    "gap_mllm.cli.requirements": "removed: llguidance is a core requirement of the package now (setup.py)",
    "gap_mllm.processing.prompts": "removed: the task specs of gap_mllm.tasks_gap_mllm write the prompts "
                                   "(DETECTION.annotation_prompt(n), ...; the processor: processor(images, task=...))",
}

# module -> {new home: the names that went there, space-separated}; a name "old=new" was also renamed
MOVED_NAMES = {
    "gap_mllm.checks": {
        "gap_mllm.configuration_gap_mllm": (
            "GEOMETRY_AUTOCAST_DTYPES TEXT_SIZES VISION_SIZES check_config check_fusion_config check_geometry_config "
            "check_qwen3_vl_sizes check_sizes quiet_default_sub_configs"),
        "gap_mllm.processing_gap_mllm": (
            "POSITIVE_IMAGE_PROCESSOR_SIZES TOKENIZER_FILES check_call_arguments check_call_kwargs check_conversation "
            "check_image_processor_sizes check_no_video_or_audio check_patch_grids check_task_marker "
            "check_text_placeholders check_token_ids_in_vocabulary message_segments modality_kwargs "
            "name_unreadable_tokenizer_file unreadable_tokenizer_file=name_unreadable_tokenizer_file "
            "check_image_array=array_to_pil check_image_nesting=split_samples check_point_prompts=split_point_prompts "
            "check_texts=split_texts check_token_id_rows=token_id_rows"),
        "gap_mllm.image_utils_gap_mllm": "view_file_errors"},
    "gap_mllm.cli.convert": {"gap_mllm.cli.command_arguments": "DTYPES"},
    "gap_mllm.cli.export_llm": {"gap_mllm.cli.command_arguments": "DTYPES"},
    "gap_mllm.cli.model_scores": {"gap_mllm.tasks_gap_mllm": "CAPTIONING DETECTION GROUNDING"},
    "gap_mllm.cli.task_names": {"gap_mllm.evaluation.tasks": "TASKS"},
    "gap_mllm.cli.tasks": {"gap_mllm.evaluation.tasks": "TASKS"},
    "gap_mllm.configuration_gap_mllm": {
        "gap_mllm.checks": ("MAX_PARAMETERS available_memory check_memory_for_parameters check_parameter_count "
                            "estimate_num_parameters largest_part parameter_parts"),
        "gap_mllm.configuration_gap_mllm": "check_vlm_sizes=check_qwen3_vl_sizes"},
    "gap_mllm.evaluation.folder_lock": {"gap_mllm.processing.folder_lock": "acquire release"},
    "gap_mllm.evaluation.grounding_identification": {"gap_mllm.evaluation.grounding_identification_cli": "generated"},
    "gap_mllm.evaluation.metric_modules.gap_captioning.gap_captioning": {
        "gap_mllm.evaluation.metric_modules.gap_captioning.gap_captioning": "GapCaptioning=GapTaskMetric"},
    "gap_mllm.evaluation.metric_modules.gap_detection.gap_detection": {
        "gap_mllm.evaluation.metric_modules.gap_detection.gap_detection": "GapDetection=GapTaskMetric"},
    "gap_mllm.evaluation.metric_modules.gap_grounding.gap_grounding": {
        "gap_mllm.evaluation.metric_modules.gap_grounding.gap_grounding": "GapGrounding=GapTaskMetric"},
    "gap_mllm.evaluation.metric_modules.gap_reconstruction.gap_reconstruction": {
        "gap_mllm.evaluation.metric_modules.gap_reconstruction.gap_reconstruction": "GapReconstruction=GapTaskMetric"},
    "gap_mllm.evaluation.metric_modules.gap_spatial_qa.gap_spatial_qa": {
        "gap_mllm.evaluation.metric_modules.gap_spatial_qa.gap_spatial_qa": "GapSpatialQA=GapTaskMetric"},
    "gap_mllm.evaluation.tasks": {
        "gap_mllm.processing.tasks.grounding": "frame_number official_frame official_stage2_box stage2_images",
        "gap_mllm.evaluation.tasks": "CaptionTask=CaptioningTask SpatialQATask=SpatialQaTask"},
    "gap_mllm.image_utils_gap_mllm": {
        "gap_mllm.files": ("NotARegularFile PICKLE_REFUSED kind_of open_regular_file read_regular_bytes "
                           "read_regular_text"),
        "gap_mllm.image_utils_gap_mllm": "check_one_aspect_ratio=vggt_pad_boxes"},
    "gap_mllm.mini": {"gap_mllm.mini": "DEFAULT_MODEL_DIR=SHIPPED_DIR"},
    "gap_mllm.modeling_gap_mllm": {
        "gap_mllm.checks": ("GEOMETRY_GROUPS MissingWeightsWarning WEIGHT_GROUPS check_forward_inputs "
                            "first_non_finite_tensor group_missing_keys report_missing_weights"),
        "gap_mllm.speedups": ("GapMllmImageEmbeddings GapMllmQwen3VLModel GapMllmQwen3VLTextModel "
                              "GapMllmQwen3VLVisionAttention concatenate_levels mrope_position_ids "
                              "use_batched_qwen3_vl vision_rotary_position_ids")},
    "gap_mllm.modeling_vggt": {
        "gap_mllm.point_cloud": "PointCloud fuse_point_cloud",
        "gap_mllm.training.aux_targets": "extrinsics_intrinsics_to_pose_encoding matrix_to_quaternion"},
    "gap_mllm.processing.annotation_files": {"gap_mllm.evaluation.tasks": "TASKS"},
    "gap_mllm.processing.builders": {
        "gap_mllm.processing.record_schema": "AXIS_ALIGN OBJECT_ID camera_poses",
        "gap_mllm.processing.builders": "SpatialQABuilder=SpatialQaBuilder"},
    "gap_mllm.processing.collator": {"gap_mllm.tasks_gap_mllm": "SYSTEM_PROMPT"},
    "gap_mllm.processing.scannet_layout": {
        "gap_mllm.processing.tasks.grounding": "OFFICIAL_STAGE2_NEIGHBOURS POSED_FRAME_STEP"},
    "gap_mllm.processing.synth.samples": {
        "gap_mllm.processing.tasks.captioning": "caption_record",
        "gap_mllm.processing.tasks.detection": "detection_record",
        "gap_mllm.processing.tasks.grounding": "grounding_records stage2_frames",
        "gap_mllm.processing.tasks.reconstruction": "reconstruction_records",
        "gap_mllm.processing.tasks.spatial_qa": "spatial_qa_records=synth_records"},
    "gap_mllm.processing_gap_mllm": {
        "gap_mllm.image_utils_gap_mllm": (
            "ASPECT_RATIO_TOLERANCE AnimatedImageError MARKER_ARM MARKER_COLOR MARKER_HALF_THICKNESS ORIENTATION_TAG "
            "SIXTEEN_BIT_MODES SWAPPED_ORIENTATIONS UINT16_MAX check_marker_inside displayed_size draw_marker "
            "marker_mask parse_point_prompt upright check_one_aspect_ratio=vggt_pad_boxes"),
        "gap_mllm.configuration_gap_mllm": "GEOMETRY_INPUT_NAMES",
        "gap_mllm.files": "NotARegularFile kind_of open_regular_file read_regular_bytes read_regular_text "
                          "regular_file_problem",
        "gap_mllm.tasks_gap_mllm": "SYSTEM_PROMPT",
        "gap_mllm.processing_gap_mllm": "unreadable_tokenizer_file=name_unreadable_tokenizer_file"},
    "gap_mllm.tasks_gap_mllm": {
        "gap_mllm.processing.tasks": "SHIPPED_TASK_NAMES register_task task_name_problem unregister_task",
        "gap_mllm.cli.tasks": "ANSWER_FORMATS answer_format other_task_format",
        "gap_mllm.processing.collator": "ASSISTANT_HEADER",
        "gap_mllm.processing.annotation_files": "extract_query segments_from_placeholders",
        "gap_mllm.processing.coordinates": "rotation_matrix=euler_to_matrix"},
    "gap_mllm.training.checkpoints": {"gap_mllm.processing.errors": "DISK_FULL_ERRNOS DISK_FULL_TEXTS"},
    "gap_mllm.training.feature_cache": {
        "gap_mllm.training.feature_cache": "GeometryFeatureCache=FeatureCache CachedGeometryCollator=CachedCollator"},
    "gap_mllm.training.geometry_data": {"gap_mllm.processing.collator": "collate_clips"},
    "gap_mllm.training.run": {"gap_mllm.training.config": "REQUIRED_ARGUMENTS",
                              "gap_mllm.training.model_loading": "build_fresh_model"},
}

# (module, class, method) -> what to call instead
MOVED_METHODS = {
    ("gap_mllm.modeling_gap_mllm", "GapMllmForConditionalGeneration", "encode_images"):
        "gap_mllm.speedups.encode_images(model, ...)",
    ("gap_mllm.modeling_gap_mllm", "GapMllmForConditionalGeneration", "encode_scene"):
        "gap_mllm.generation.encode_scene(model, ...)",
    ("gap_mllm.modeling_vggt", "GapMllmGeometryEncoder", "from_vggt_state_dict"):
        "gap_mllm.convert_vggt_to_hf.load_vggt_encoder(state_dict, config)",
    ("gap_mllm.modeling_vggt", "GeometryReconstructionOutput", "point_cloud"):
        "gap_mllm.point_cloud.reconstruction_point_cloud(output, images)",
    ("gap_mllm.tasks_gap_mllm", "Box3D", "corners"): "gap_mllm.processing.coordinates.box_corners(box.to_list())",
    ("gap_mllm.tasks_gap_mllm", "Box3D", "rotation_matrix"):
        "gap_mllm.processing.coordinates.euler_to_matrix(box.angles)",
    ("gap_mllm.tasks_gap_mllm", "TaskSpec", "answer_grammar"): "spec.grammar_for()",
}


def moved_name(module: str, name: str) -> str | None:
    """Where `module.name` went (`MOVED_MODULES`, `MOVED_NAMES`), as `from X import Y` or a sentence; None if it did
    not move."""
    home = MOVED_MODULES.get(f"{module}.{name}")
    if home is not None:
        return f"its contents are in {home}" if home.startswith("gap_mllm.") else home
    for home, names in MOVED_NAMES.get(module, {}).items():
        for entry in names.split():
            old, _, new = entry.partition("=")
            if old == name:
                return f"from {home} import {new or old}"
    return None


def moved_module_error(module: str, name: str) -> ImportError | None:
    """The error `module.name` raises, or None when it did not move: ModuleNotFoundError for a module, ImportError for
    a name of a module (the one error Python lets through a failed `from module import name` unchanged)."""
    home = moved_name(module, name)
    if home is None:
        return None
    if f"{module}.{name}" in MOVED_MODULES:
        return ModuleNotFoundError(f"{module}.{name} is no module of gap-mllm any more: {home}")
    return ImportError(f"{module}.{name} has moved: {home}")


def _module_getattr(module, own):
    def __getattr__(name: str):
        error = moved_module_error(module.__name__, name)
        if error is not None:
            raise error
        if own is not None:
            return own(name)
        raise AttributeError(f"module {module.__name__!r} has no attribute {name!r}")
    return __getattr__


class _MovedMethod:
    """A method that moved: AttributeError naming `home` on the class, or when called on an instance."""

    def __init__(self, qualname: str, home: str):
        self.message = f"{qualname} has moved: call {home}"

    def __get__(self, instance, owner=None):
        if instance is None:
            raise AttributeError(self.message)

        def moved(*args, **kwargs):
            raise AttributeError(self.message)
        return moved


def add_hints(module) -> None:
    """Give `module` (just executed) the `__getattr__` of its moved names (after its own, if any) and its moved
    methods' stubs."""
    name = module.__name__
    if name in MOVED_NAMES or any(old.rpartition(".")[0] == name for old in MOVED_MODULES):
        module.__getattr__ = _module_getattr(module, module.__dict__.get("__getattr__"))
    for (owner, class_name, method), home in MOVED_METHODS.items():
        if owner == name and hasattr(module, class_name):  # a class that moved on: tests/test_moved_names.py says so
            setattr(getattr(module, class_name), method, _MovedMethod(f"{class_name}.{method}", home))


class _HintingLoader:
    """The loader of a module with moved names: the module's own loader (everything delegated to it), then
    `add_hints`."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        add_hints(module)


_HINTED = (frozenset(MOVED_NAMES) | {old.rpartition(".")[0] for old in MOVED_MODULES}
           | {owner for owner, _, _ in MOVED_METHODS}) - {"gap_mllm"}


class MovedNamesFinder:  # a meta path finder by its find_spec (importlib.abc would cost `gap-mllm --help` 8 ms)
    """Finds no module itself: asks the other finders, then gives a module of `_HINTED` the hinting loader, and
    answers a module of `MOVED_MODULES` that no finder found with its ModuleNotFoundError."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _HINTED and fullname not in MOVED_MODULES:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None) if finder is not self else None
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if fullname in _HINTED and spec.loader is not None:
                    spec.loader = _HintingLoader(spec.loader)
                return spec
        parent, _, name = fullname.rpartition(".")
        error = moved_module_error(parent, name)
        if error is not None:
            raise error  # its name left unset: `from parent import name` lets it through
        return None


def install() -> None:
    """Put `MovedNamesFinder` on `sys.meta_path` (first, so that it sees a module before its loader runs; once)."""
    if not any(isinstance(finder, MovedNamesFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedNamesFinder())
