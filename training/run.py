"""One training run from a recipe: model, data, collators, cache, trainer; used by `gap-mllm train`.

    recipe = load_recipe("training/recipes/stage1_pretrain.yaml", ["data.data_root=data/synthrooms"])
    result = run_training(recipe)                       # or build_trainer(recipe) to drive it yourself
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import get_model_param_count
from transformers.trainer_utils import TrainOutput, align_special_tokens

from gap_mllm.processing.dataset_identity import TRAINING_RECORD, describe_data_root
from gap_mllm.processing.folder_lock import holding_folder
from gap_mllm.processing.held_out import trained_scenes
from gap_mllm.processing.model_lineage import LINEAGE, folder_lineage, merged, origin_text, read_record, released_model
from gap_mllm.processing.output_folder import (OutputFolderRefused, check_outside_data, check_output_folder,
                                                mark_output_folder, read_marker)

from .cache_cost import ALWAYS, cache_skip_reason
from .checkpoints import (MissingSafetensorsWeights, check_resume_checkpoint, checkpoint_problem,
                          find_resumable_checkpoint, incomplete_checkpoints, load_model_weights)
from .config import TrainRecipe, output_dir_of, training_arguments, without_defaults
from .cuda_graph_forward import ungraph_geometry_encoder
from .data import add_length_column, build_collator, load_split, sample_collator, sample_collator_settings
from .data_sketch import sketch_data_root
from .device import apply_device_plan
from .encoder_stage_run import build_encoder_stage_trainer
from .feature_cache import FeatureCache, cache_unusable_reason, undecoded_images
from .generation_eval import GenerationEvalCallback, use_best_model
from .geometry_aligned_model import GeometryAlignedModel
from .kernels import (
    GRAPH_OPTION,
    KernelUnavailableError,
    apply_attention_implementation,
    apply_kernels,
    check_kernels,
    check_liger_distribution,
    graph_distribution_problem,
    kernel_context,
    resolve_kernels,
    under_zero3,
)
from .lora import apply_lora
from .model_loading import load_model_and_processor
from .param_groups import apply_freezing, unwrap_gap_model
from .run_state import (
    STATE_WRITER,
    RunStateCallback,
    RunStateError,
    check_same_run,
    check_state_folder,
    put_back_interrupted_write,
    describe_differences,
    read_run_state,
    record_run_data,
    record_run_settings,
    restore_if_newer,
    resumed_data,
    resumed_settings,
    state_folder,
)
from .state_steering import steering_of
from .time_limit import TimeLimitCallback
from .trainer import GeometryAlignedTrainer

logger = logging.getLogger(__name__)


@dataclass
class TrainingSetup:
    trainer: GeometryAlignedTrainer
    model: GeometryAlignedModel
    processor: object
    cache: object | None


def build_trainer(recipe: TrainRecipe, model=None, processor=None, train_dataset=None, eval_dataset=None, callbacks=None,
                  resume_from_checkpoint: str | None = None) -> TrainingSetup:
    """Everything of a run, ready to `trainer.train()`. Pass `model`/`processor`/datasets to override
    what the recipe would load (tests, notebooks). The device and precision come from `recipe.device`
    (training/device.py: CUDA when available, else a CPU setup), and are logged. Kernels the run cannot use
    (training/kernels.py) are refused before the model is loaded; those the recipe leaves unset are decided for the
    device (compiled layers and Liger on CUDA). `resume_from_checkpoint`: the complete
    checkpoint the run will resume from; its weights are loaded before the feature cache is keyed and filled, so
    the cache holds the features of the towers the checkpoint trained with, not of the model the recipe built. A
    checkpoint at the run's last step trains nothing (`finish_from_checkpoint`): no cache is filled for it."""
    recipe, plan = apply_device_plan(recipe)
    asked_liger = recipe.kernels.liger_fused_linear_cross_entropy
    asked_graph = recipe.kernels.graph_geometry_encoder
    recipe = resolve_kernels(recipe, plan)
    check_kernels(recipe, plan)
    args = training_arguments(recipe)
    if model is None:
        model, processor = load_model_and_processor(recipe.model)
    apply_attention_implementation(model, recipe.model.attn_implementation, recipe.training)
    model.train()
    apply_freezing(model, recipe.freezing)
    if resume_from_checkpoint is not None and not recipe.lora.enabled:
        load_checkpoint_weights(model, resume_from_checkpoint)
    if recipe.lora.enabled:
        model = apply_lora(model, recipe.lora)
    apply_kernels(unwrap_gap_model(model), recipe.kernels, recipe.data.length_buckets)
    wrapped = GeometryAlignedModel(model, recipe.aux, liger_cross_entropy=recipe.kernels.liger_fused_linear_cross_entropy,
                                   packed_rows=recipe.data.packing)

    if train_dataset is None:
        train_dataset = load_split(recipe.data, recipe.data.train_split, recipe.aux, recipe.data.max_train_samples,
                                   task_max_samples=recipe.data.task_max_samples, seed=args.seed,
                                   task_repeats=recipe.data.task_repeats,
                                   task_loss_weights=recipe.data.task_loss_weights)
    if eval_dataset is None and recipe.data.eval_split:
        eval_dataset = load_split(recipe.data, recipe.data.eval_split, recipe.aux, recipe.data.max_eval_samples)
    if args.train_sampling_strategy == "group_by_length" and args.length_column_name not in train_dataset.column_names:
        train_dataset = add_length_column(train_dataset, processor, args.length_column_name)

    cache = None
    if recipe.cache.enabled and finished_checkpoint(resume_from_checkpoint, args.max_steps):
        # nothing will train: the cache would be filled (half an hour for the Mini's stage 2 on a CPU) for no step
        logger.info("feature cache not filled: %s is the run's last step", resume_from_checkpoint)
    elif recipe.cache.enabled:
        reason = cache_unusable_reason(model)
        # before any feature is written: a run that reads fewer samples than the cache would encode trains without it
        skip = None if recipe.cache.enabled == ALWAYS else cache_skip_reason(
            args, len(train_dataset), len(eval_dataset) if eval_dataset is not None else 0)
        if reason is not None:
            logger.warning("feature cache DISABLED for this run: %s.", reason)
        elif skip is not None:
            logger.info(skip)
        else:
            train_dataset = undecoded_images(train_dataset)
            eval_dataset = undecoded_images(eval_dataset) if eval_dataset is not None else None
            cache = _fill_feature_cache(recipe, args, model, processor, train_dataset, eval_dataset)

    callbacks = list(callbacks or [])
    generation_eval = None
    if recipe.evaluation.tasks:
        generation_eval = GenerationEvalCallback(recipe.evaluation, recipe.data.data_root, wrapped.gap_model, processor)
        callbacks.append(generation_eval)
    trainer = GeometryAlignedTrainer(
        wrapped,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        data_collator=build_collator(processor, recipe.data, recipe.aux, cache, model),
        processing_class=processor,
        callbacks=callbacks,
        learning_rates=recipe.learning_rates,
        loss_normalization=recipe.loss_normalization,
    )
    if generation_eval is not None:
        generation_eval.trainer = trainer
    trainer.kernel_context = kernel_context(recipe.kernels, recipe.data.length_buckets)  # named if a step diverges
    if recipe.kernels.liger_fused_linear_cross_entropy:
        if asked_liger is None and under_zero3(trainer):  # on by default, but it cannot run here: off, not refused
            wrapped.liger_cross_entropy = False
            logger.info("kernels.liger_fused_linear_cross_entropy=false: DeepSpeed ZeRO-3 partitions the LM head")
        else:
            check_liger_distribution(trainer)
    if recipe.kernels.graph_geometry_encoder and (problem := graph_distribution_problem(trainer)):
        if asked_graph is not None:
            raise KernelUnavailableError(f"{GRAPH_OPTION}=true does not run under {problem} (its hooks gather the "
                                         "encoder's weights inside its forward); set it to false")
        ungraph_geometry_encoder(unwrap_gap_model(model))  # on by default, but it cannot run here: off, not refused
        logger.info("%s=false: %s gathers the encoder's weights inside its forward", GRAPH_OPTION, problem)
    return TrainingSetup(trainer=trainer, model=wrapped, processor=processor, cache=cache)


def finished_checkpoint(checkpoint, max_steps: int) -> bool:
    """Whether `checkpoint` (a resumed `checkpoint-N`, or None) is the run's last step: its trainer state's
    `global_step` reached `max_steps` (> 0; a run counted in epochs is left to Trainer)."""
    if checkpoint is None or max_steps <= 0:
        return False
    state = Path(checkpoint) / TRAINER_STATE_NAME
    return state.is_file() and json.loads(state.read_text(encoding="utf-8")).get("global_step", 0) >= max_steps


def finish_from_checkpoint(trainer, checkpoint) -> TrainOutput:
    """The end of a run whose checkpoint is its last step: its weights and trainer state, no step trained; the
    output's `metrics` name the checkpoint (`ALREADY_FINISHED`); its `training_loss` is NaN unless the checkpoint's
    log holds the run's.

    Trainer resumed at its last step trains one step more (transformers 5.23 checks `max_steps` only after a step:
    a run state or a checkpoint at step N of N came back as step N + 1, at a learning rate past its schedule), so the
    finished run is taken as it is and its final model written from the checkpoint."""
    trainer._load_from_checkpoint(checkpoint)  # Trainer's own loader: full weights, adapters, FSDP / DeepSpeed
    trainer.state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
    if hasattr(trainer.model, "config") and trainer.processing_class is not None:
        # what `Trainer.train` does first (the tokenizer's special tokens into the model's configs): the final model's
        # config.json is the same as the run's that trained this step (evaluation fingerprints compare it)
        align_special_tokens(trainer.model, trainer.processing_class)
    losses = [entry["train_loss"] for entry in trainer.state.log_history if "train_loss" in entry]
    logger.info("%s is the run's last step (%d of %d): nothing left to train; the final model is written from it",
                checkpoint, trainer.state.global_step, trainer.args.max_steps)
    # the checkpoint was saved before the run's closing summary: its mean training loss is not known here
    return TrainOutput(trainer.state.global_step, losses[-1] if losses else float("nan"),
                       {ALREADY_FINISHED: str(checkpoint)})


ALREADY_FINISHED = "already_finished"  # `TrainOutput.metrics` of a run resumed at its last step: that checkpoint


def load_checkpoint_weights(model, checkpoint) -> None:
    """Load a checkpoint's full weights into the (unwrapped) model before anything is derived from them (the feature
    cache's key). Trainer loads the same weights again when it resumes. A checkpoint without safetensors weights
    (pickled ones) is left to Trainer, with a warning that the cache is keyed by the recipe's model."""
    try:
        tensors = load_model_weights(checkpoint)
    except MissingSafetensorsWeights:
        logger.warning("%s has no safetensors weights: the feature cache is keyed by the model the recipe built, "
                       "which is the checkpoint's only if its frozen towers were not changed", checkpoint)
        return
    result = model.load_state_dict(tensors, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"resume from {checkpoint}: its weights hold tensors this model does not have "
                         f"({', '.join(result.unexpected_keys[:5])}); it is a checkpoint of another model")


def _fill_feature_cache(recipe: TrainRecipe, args, model, processor, train_dataset, eval_dataset):
    """The run's `FeatureCache`, filled for every sample of both datasets."""
    # "~" expanded here: a recipe or a recorded command (a run state's) names the user's cache without a machine path
    directory = str(Path(recipe.cache.directory).expanduser()) if recipe.cache.directory else str(Path(args.output_dir) / "feature_cache")
    cache = FeatureCache(directory, model, processor, sample_collator_settings(recipe.data, recipe.aux), recipe.cache.dtype)
    logger.info("feature cache: %s", cache.describe())
    fill_collator = sample_collator(processor, recipe.data, recipe.aux, model)
    # the main process fills the cache; the others then find every entry (same keys)
    with args.main_process_first(desc="feature cache"):
        for name, dataset in (("train", train_dataset), ("eval", eval_dataset)):
            if dataset is not None:
                stats = cache.build(model, dataset, fill_collator, batch_size=recipe.cache.batch_size,
                                    skip_errors=recipe.data.on_bad_sample == "skip")
                logger.info("feature cache (%s): %s, folder %s", name, stats, cache.folder)
    return cache


def resolve_resume(resume: str | None, output_dir: str, max_steps: int | None = None) -> str | None:
    """`"auto"` → the newest COMPLETE checkpoint in `output_dir` (None if there is none; incomplete ones
    are skipped with a warning naming them; ValueError when there are only incomplete ones); a path must be a
    complete checkpoint (ValueError if not). `max_steps`: the run's (training/checkpoints.py `checkpoint_problem`)."""
    if resume is None:
        return None
    if resume != "auto":
        return check_resume_checkpoint(resume, max_steps)
    checkpoint = find_resumable_checkpoint(output_dir, max_steps)
    if checkpoint is None and (incomplete := incomplete_checkpoints(output_dir, max_steps)):
        # a new run there would replace them step by step (and rotate them away): refused, nothing written
        raise ValueError(f"--resume auto: {output_dir} holds no complete checkpoint to resume from ({incomplete[0]}: "
                         f"{checkpoint_problem(incomplete[0], max_steps)}); a new run there would write over them: "
                         "move them away (or the whole folder), or give another --out")
    if checkpoint is not None:
        logger.info("resuming from %s", checkpoint)
    return checkpoint


def _geometry_objective(recipe: TrainRecipe) -> str:
    settings = recipe.geometry
    parts = [name for name, weight in (("depth", settings.depth_weight), ("cameras", settings.camera_weight),
                                       ("pointmaps", settings.point_weight), ("cross-view matching", settings.match_weight),
                                       ("frame-0 offsets", settings.flow_weight)) if weight]
    return "stage-0 geometry objective: " + ", ".join(parts)


# what a stage-0 run trains on, in the record's `tasks` (training/encoder_stage_run.py)
ENCODER_STAGE_OBJECTIVES = {
    "geometry": _geometry_objective,
    "vision": lambda recipe: "stage-0 vision objective: per-token semantics and position",
}


def training_record(recipe: TrainRecipe, global_step: int, data_given: bool = False,
                    setting_changes: list[dict] | None = None) -> dict:
    """What the saved model was trained on and how, for its model card (`gap-mllm push`): stage,
    tasks, the data root described by `describe_data_root` (its folder name, never its path), steps,
    what was frozen, LoRA, where its weights come from (`lineage`: processing/model_lineage.py; a released model it
    started from, as GAP-MLLM-Mini, named with its version in `started_from`) and the SynthRooms scenes it and the
    model it started from trained on (`trained_scenes`). `data_given`: the datasets were passed in, not read from
    `data.data_root`. `setting_changes`: the deliberate changes of settings its resumes made (training/run_state.py
    `resumed_settings`: `{"at_step", "from", "settings": {name: {"then", "now"}}}`), recorded as `changed_settings`;
    the other fields say the settings of the last part of the run."""
    started_from = None
    if recipe.model.tiny:
        source = f"the {recipe.model.tiny} test model, randomly initialised"
        # fresh weights (`[]`: none of a third party's), with those of the folder its encoders came from; encoders of
        # a folder that records nothing leave the whole unknown
        encoders = folder_lineage(recipe.model.encoders_from) if recipe.model.encoders_from else {"weights": []}
        lineage = None if encoders is None else merged({"origin": None, "weights": []}, encoders)
    else:
        source = recipe.model.name_or_path
        lineage = folder_lineage(source) if source else None
        if source and Path(source).exists():
            started_from, source = source, Path(source).name  # a local folder: its name only
        released = released_model(read_record(started_from)) if started_from else None
        if released is not None:  # a released model by its name and version, not its folder's (a cache folder's hash)
            source = origin_text(released)
    data_root = None if data_given else recipe.data.data_root
    data = describe_data_root(data_root) if data_root else None
    tasks, freezing = list(recipe.data.tasks), dataclasses.asdict(recipe.freezing)
    if recipe.stage in ENCODER_STAGE_OBJECTIVES:
        # a stage-0 run trains one encoder on its own objective: neither the LLM tasks nor the LLM stages' freezing apply
        tasks = [ENCODER_STAGE_OBJECTIVES[recipe.stage](recipe)]
        trained = "freeze_geometry_encoder" if recipe.stage == "geometry" else "freeze_vision_tower"
        freezing = {name: name != trained for name in freezing}
    return {"stage": recipe.stage, "tasks": tasks, "data": data, "global_step": int(global_step),
            "started_from": source, "freezing": freezing, "lora": recipe.lora.enabled,
            "aux_losses": recipe.aux.enabled,
            # where its weights come from, for its card's lineage and licence (processing/model_lineage.py)
            LINEAGE: lineage,
            # what `gap-mllm evaluate` must not score it on (processing/held_out.py)
            "trained_scenes": trained_scenes(data_root, recipe.data.train_split, started_from),
            **({"changed_settings": setting_changes} if setting_changes else {})}


def save_final_model(trainer, output_dir=None) -> None:
    """`trainer.save_model()`, loadable with `from_pretrained` under FSDP too.

    With FSDP's sharded state-dict type (the checkpoint setting of configs/accelerate_fsdp.yaml, fast to
    save and resume) `Trainer.save_model` writes no model at all; the final model is gathered into a full
    state dict first (on the main process, offloaded to the CPU) and saved with `save_pretrained`."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None)
    if trainer.is_fsdp_enabled and plugin is not None and "FULL_STATE_DICT" not in str(plugin.state_dict_type):
        plugin.set_state_dict_type("FULL_STATE_DICT")
    clear_call_settings(trainer.processing_class)
    trainer.save_model(output_dir)


def clear_call_settings(processing_class) -> None:
    """Clear the padding and truncation that a fast tokenizer's backend keeps from its last call.

    `save_pretrained` writes them into tokenizer.json and tokenizer_config.json, so a final model's files depended on
    what ran last (a validation's left-padded generation, or nothing for a run finished from its last checkpoint),
    and an evaluation's fingerprint of the model with them. Every call sets its own padding and truncation, so
    clearing them changes no encoding."""
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()


# the command a training output folder's marker names (processing/output_folder.py): `gap-mllm train`, and the
# stages of the Mini's research pipeline (`python -m lab.mini` in a checkout), which train through run_training as well
TRAIN_WRITER = "gap-mllm train"
# recipe settings that say where a run writes and how it reports, not what it trains: a run state is continued under
# other values of these (the source model, `model.name_or_path` or a fresh model's `model.encoders_from`, and the data
# are checked by their digests instead of their paths; the rebuilt weights are checked whole)
NOT_DEFINING = ("time_limit_s", "device", "run_state.", "model.name_or_path", "model.encoders_from", "data.data_root",
                "data.cache_dir", "cache.directory", "cache.batch_size", "training.output_dir", "training.logging_dir",
                "training.report_to", "training.run_name", "training.disable_tqdm", "training.dataloader_num_workers",
                "training.logging_steps", "training.save_steps", "training.save_total_limit", "evaluation.batch_size",
                # speed, not the run: kernels follow the device (training/kernels.py), buckets only add masked padding
                "kernels.", "data.length_buckets")
# settings added after run states were written, with the value that trains as before: recorded only when set, so an
# older state (which lacks them) still continues its run, and a state of a run with them set is refused without them
RECORDED_WHEN_SET = {"data.task_loss_weights": None}


# settings that apply to the one resume that is given them, left out of the command that continues the run:
# `accept_other_data` lets a state continue on data whose digests differ, `accept_other_settings` a checkpoint with
# other recipe settings, and the run records the data and settings it trains on from then on, so the next resume
# needs no such word (and should not carry it unasked)
ONE_RESUME_SETTINGS = ("run_state.accept_other_data", "run_state.accept_other_settings")


# the options that give a recipe setting: `--set NAME=VALUE`, and the Mini pipeline's setting of one of its stages,
# `--stage-set STAGE:NAME=VALUE` (python -m lab.mini)
SETTING_OPTIONS = ("--set", "--stage-set")


def _without_one_resume_settings(arguments: list[str]) -> list[str]:
    """`arguments` without a setting (`SETTING_OPTIONS`, as `--option VALUE` or `--option=VALUE`) of a
    `ONE_RESUME_SETTINGS` name."""
    kept, index = [], 0
    while index < len(arguments):
        argument, width, value = arguments[index], 1, None
        option = argument.split("=", 1)[0]
        if argument in SETTING_OPTIONS and index + 1 < len(arguments):
            width, value = 2, arguments[index + 1]
        elif option in SETTING_OPTIONS and "=" in argument:
            value = argument.split("=", 1)[1]
        if value is not None and option == "--stage-set":
            value = value.split(":", 1)[-1]  # the stage's name before the setting
        if value is None or value.split("=", 1)[0].strip() not in ONE_RESUME_SETTINGS:
            kept.extend(arguments[index:index + width])
        index += width
    return kept


def _module_run_as_main(script: Path) -> str | None:
    """The module `python -m MODULE` ran as this process's `__main__` from the file `script` (a package's
    `__main__.py` gives the package), or None when `script` is not that file."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is None or not spec.name or not spec.origin or Path(spec.origin).resolve() != script.resolve():
        return None
    return spec.name.removesuffix(".__main__")


def continuation_command(argv: list[str] | None = None) -> str:
    """The command that continues this process's run, as a person types it: `gap-mllm train ...` with
    `--resume auto` (replacing another `--resume`), a module run as `python -m MODULE ...` as it is (the Mini's
    pipeline, `python -m lab.mini ...`, resumes by itself); a run started from Python (a notebook, a test) is
    continued by calling `run_training(recipe, resume_from_checkpoint="auto")` again. Only what the next resume
    needs: the settings of one resume (`ONE_RESUME_SETTINGS`) are left out."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0])
    modules = {("cli", "main.py"): "gap_mllm.cli.main", ("training", "train_cli.py"): "gap_mllm.training.train_cli"}
    if script.name == "gap-mllm":
        program = ["gap-mllm"]
    elif (script.parent.name, script.name) in modules:
        program = ["python", "-m", modules[(script.parent.name, script.name)]]
    elif _module_run_as_main(script) is not None:
        program = ["python", "-m", _module_run_as_main(script)]
    else:
        return 'run_training(recipe, resume_from_checkpoint="auto") with the same recipe'
    arguments = _without_one_resume_settings(argv[1:])
    if program[-1] == "gap_mllm.training.train_cli" or arguments[:1] == ["train"]:
        kept, skip = [], False
        for argument in arguments:
            if skip:
                skip = False
            elif argument == "--resume":
                skip = True
            elif not argument.startswith("--resume="):
                kept.append(argument)
        arguments = [*kept, "--resume", "auto"]
    return shlex.join([*program, *arguments])


def run_definition(recipe: TrainRecipe) -> dict:
    """The settings that define a run, flat (`"training.learning_rate": 0.001`, JSON values): the whole recipe but
    `NOT_DEFINING`, those of `RECORDED_WHEN_SET` at their old value, and the `training.*` values given at
    TrainingArguments' own default (config.py `without_defaults`: the resolved recipe is compared, not the text
    given). A run state records them, and a run with other values is refused its state."""
    flat = {}
    for section, value in dataclasses.asdict(recipe).items():
        items = value.items() if isinstance(value, dict) else [(None, value)]
        for key, item in items:
            name = section if key is None else f"{section}.{key}"
            if name in RECORDED_WHEN_SET and item == RECORDED_WHEN_SET[name]:
                continue
            if not any(name == skip or (skip.endswith(".") and name.startswith(skip)) for skip in NOT_DEFINING):
                flat[name] = item
    return without_defaults(json.loads(json.dumps(flat, default=str)))


def run_state_source(recipe: TrainRecipe) -> str | None:
    """The model folder whose tensors a run state of this recipe does not copy: `model.name_or_path`, or for a fresh
    model the folder its encoders came from (`model.encoders_from`: the frozen encoders are most of a Mini's weights,
    and a state that carried them would be too large for git). Either is checked by its tensor digest on restore."""
    for folder in (recipe.model.name_or_path, recipe.model.encoders_from):
        if folder and Path(folder, "config.json").is_file():
            return folder
    return None


def run_state_settings(recipe: TrainRecipe, data) -> dict | None:
    """What a run state of this recipe records beside the checkpoint (None without `run_state.directory`): the
    model folder it started from (its tensors are not copied), the sketch of the data (`data`, training/data_sketch.py;
    None for datasets given in-process), the command that continues it, the settings that define the run."""
    if recipe.run_state.directory is None:
        return None
    return {"source": run_state_source(recipe), "data_description": data, "command": continuation_command(), "run": run_definition(recipe)}


def data_of_the_run(recipe: TrainRecipe, resume: str | None, data):
    """The sketch of the data this run records (in its output folder, and in its run states): for a resumed run the
    data its checkpoint trained on, checked against `data`, the sketch of its data root (`resumed_data`: a resume on
    other data is refused, whichever way the checkpoint was found); for a new run `data`."""
    if resume is None or data is None:
        return data
    return resumed_data(resume, data, recipe.data.data_root, state_dir=recipe.run_state.directory,
                        accept_other_data=recipe.run_state.accept_other_data)


def run_steering(recipe: TrainRecipe):
    """The recipe's values that steer its steps (training/state_steering.py), which a restored run state must hold;
    None for a stage-0 recipe (its own trainer: the state's step is still checked)."""
    if recipe.stage in ("geometry", "vision"):
        return None
    return steering_of(training_arguments(recipe), recipe.learning_rates)


def resume_from_run_state(recipe: TrainRecipe, resume: str | None, settings: dict) -> str | None:
    """`--resume auto` with a run state: its checkpoint, rebuilt in the output folder when that holds none as new
    (a fresh machine), after the state was checked (its files, its run's settings, source and data). Without
    `--resume auto`, a run state of another run is refused rather than overwritten."""
    directory, output_dir = recipe.run_state.directory, recipe.training["output_dir"]
    if resume == "auto":
        data = settings["data_description"]  # None: datasets given in-process, nothing to check
        return restore_if_newer(directory, output_dir, source=settings["source"],
                                data_root=recipe.data.data_root if data is not None else None, data_description=data,
                                run=settings["run"], accept_other_data=recipe.run_state.accept_other_data,
                                steering=run_steering(recipe),
                                accept_other_settings=recipe.run_state.accept_other_settings)
    record = read_run_state(directory)
    if resume is None and record is not None:
        # the command printed is this process's own, never the record's (a state is untrusted input)
        raise RunStateError(f"run_state.directory={directory} holds step {record['global_step']} of a run; continue it "
                            f"with --resume auto ({continuation_command()}), or give another run_state.directory")
    if record is not None:
        check_same_run(record, settings["run"], directory, recipe.run_state.accept_other_settings)
    return resume


def _trains_here() -> bool:
    """This process writes the run's folders (the main process of a distributed run; every plain run)."""
    return int(os.environ.get("RANK", "0")) == 0


def check_training_output(recipe: TrainRecipe) -> None:
    """The output-folder rule for a training run (processing/output_folder.py): `training.output_dir` is missing,
    empty or a training run's own folder (its marker names `gap-mllm train`; a folder of an earlier version without
    one is refused as the user's), and never the folder of the model the run starts from; then marked as a
    training run's. OutputFolderRefused otherwise, before anything is built."""
    output = Path(recipe.training["output_dir"])
    named = f"training.output_dir {output}"
    source = recipe.model.name_or_path
    if source and Path(source).is_dir() and output.exists() and output.resolve() == Path(source).resolve():
        raise OutputFolderRefused(f"{named} is the folder of the model the run starts from (model.name_or_path); the "
                                  "run would write over it: give another output folder")
    check_output_folder(output, TRAIN_WRITER, option="--out", overwrite_option=None, named=named)
    if read_marker(output) is None:
        output.mkdir(parents=True, exist_ok=True)
        mark_output_folder(output, TRAIN_WRITER, settings={"stage": recipe.stage})


# the libraries whose INFO records (configuration dumps, Trainer's banner, saved files) a run's log file keeps
LIBRARY_LOGGERS = ("transformers", "datasets", "accelerate")
TRAIN_LOG = "train.log"  # `gap-mllm train`'s log file, in the run's output folder


@contextlib.contextmanager
def training_log(path, echo: bool = False):
    """While the block runs, the INFO records of `LIBRARY_LOGGERS` and of the package's logger (`gap_mllm`) are
    appended to the file `path` (None: no file, e.g. on a process that does not write the output folder), and the
    terminal shows the libraries' warnings and errors only, without their progress bars (Trainer's own bar stays:
    it is tqdm's, not the libraries' switchable one). `echo=True` (`gap-mllm train --debug`) shows their INFO records
    and progress bars on the terminal as well. Everything is put back as it was when the block ends, however it ends.

    The libraries' own terminal handlers (transformers' and datasets' default ones) are set aside for the block, and
    one handler on stderr, made when the block starts, stands for them: the records reach whichever stream is stderr
    now, once."""
    import datasets.utils as datasets_utils
    from transformers.utils import logging as hf_logging

    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(logging.INFO if echo else logging.WARNING)
    terminal.setFormatter(logging.Formatter("[%(name)s] %(levelname)s: %(message)s"))
    handlers = [terminal]
    if path is not None:
        log_file = logging.FileHandler(path, encoding="utf-8")  # appended: a resumed run continues its file
        log_file.setLevel(logging.INFO)
        log_file.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))
        handlers.append(log_file)
    package = logging.getLogger("gap_mllm")  # its terminal handler is the caller's (`gap-mllm train`: train_cli.py)
    saved_package_level = package.level
    if path is not None:
        package.addHandler(log_file)
        if package.getEffectiveLevel() > logging.INFO:
            package.setLevel(logging.INFO)
    saved = []
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        saved.append((library, library.level, list(library.handlers)))
        for handler in list(library.handlers):
            library.removeHandler(handler)
        for handler in handlers:
            library.addHandler(handler)
        if library.getEffectiveLevel() > logging.INFO:  # a DEBUG level a user set stays
            library.setLevel(logging.INFO)
    bars = [] if echo else [(on, off) for enabled, on, off in (
        (hf_logging.is_progress_bar_enabled(), hf_logging.enable_progress_bar, hf_logging.disable_progress_bar),
        (not datasets_utils.are_progress_bars_disabled(), datasets_utils.enable_progress_bars,
         datasets_utils.disable_progress_bars)) if enabled]
    for _, off in bars:
        off()
    try:
        yield
    finally:
        for on, _ in bars:
            on()
        for library, level, own in saved:
            for handler in handlers:
                library.removeHandler(handler)
            for handler in own:
                library.addHandler(handler)
            library.setLevel(level)
        package.setLevel(saved_package_level)
        if path is not None:
            package.removeHandler(log_file)
            log_file.close()


def run_plan(recipe: TrainRecipe, trainer, data_root: str | None = None, resume: str | None = None,
             changed: dict | None = None) -> list[str]:
    """What a run is about to do, in the lines `run_training` logs before its first step: the model it starts from
    (and how many of its parameters train), the data (`data_root`, None for datasets given in-process: the samples
    to train on and to evaluate), the steps and the samples they read; for a resumed run the checkpoint (`resume`) and
    the settings changed from there on (`changed`, training/run_state.py `resumed_settings`). The feature cache's
    decision is logged where it is taken (`build_trainer`)."""
    args, model = trainer.args, trainer.model
    source = recipe.model.name_or_path or (f"a freshly initialised {recipe.model.tiny} model (seed {recipe.model.seed})"
                                           if recipe.model.tiny else "a freshly initialised model")
    total, trained = get_model_param_count(model), get_model_param_count(model, trainable_only=True)  # ZeRO-3 too
    train, held_out = trainer.train_dataset, trainer.eval_dataset
    tasks = ", ".join(recipe.data.tasks) if recipe.stage not in ("geometry", "vision") else f"stage {recipe.stage}"
    where = f" from {data_root}" if data_root else ""
    samples = f"{len(train):,} training samples" if hasattr(train, "__len__") else "a stream of training samples"
    evaluated = hasattr(held_out, "__len__") and args.eval_strategy != "no"
    evaluation = f"{len(held_out):,} held out for evaluation" if evaluated else "no evaluation"
    batch = args.train_batch_size * args.gradient_accumulation_steps * args.world_size
    if args.max_steps > 0:
        steps = f"{args.max_steps:,} steps of {batch:,} samples ({args.max_steps * batch:,} samples read)"
    else:
        steps = f"{args.num_train_epochs:g} epoch(s) in steps of {batch:,} samples"
    lines = [f"model  : {source}; {trained:,} of {total:,} parameters train",
             f"data   : {tasks}{where}: {samples}, {evaluation}",
             f"steps  : {steps}, learning rate {args.learning_rate:g}; saved to {args.output_dir}"]
    if resume is not None:
        said = (f"; settings changed from there on (run_state.accept_other_settings): "
                f"{describe_differences(changed, shown=len(changed))}" if changed else "")
        lines.append(f"resume : from {resume}{said}")
    return lines


def run_training(recipe: TrainRecipe, resume_from_checkpoint: str | None = None, log_file: str | None = None,
                 echo_library_log: bool = False, **build_kwargs):
    """Train, save the final model (+ auxiliary heads) to `training.output_dir`, return Trainer's output.
    Stage-0 recipes (`stage: geometry` / `vision`) train an encoder (training/encoder_stage_run.py).
    Beside the model, `gap_mllm_training.json` records what it was trained on (`training_record`).

    `log_file`: a file name in the output folder (`gap-mllm train`: `TRAIN_LOG`) that receives the libraries' INFO
    records and the package's for the whole run, while the terminal shows their warnings only (`training_log`;
    `echo_library_log=True` shows their INFO there too). None leaves logging as the caller set it up.

    The run holds its output folder (and its run state folder) for its whole life (processing/folder_lock.py): a
    second run writing either is refused at its start. The output folder follows the output-folder rule
    (`check_training_output`).

    Raises:
        TrainingStoppedAtTimeLimit: the run stopped before its last step (`recipe.time_limit_s`, or a SIGTERM at any
            time: the next step end saves a checkpoint, and its run state); no final model is written, and the
            message names the command that continues it.
    """
    output_dir = output_dir_of(recipe)  # a recipe without one is refused by name, before anything is made
    # before any lock file is made beside them: an output inside the data root would be read as the run's data
    data_root = None if build_kwargs.get("train_dataset") is not None else recipe.data.data_root
    for folder, named in ((output_dir, "training.output_dir"), (recipe.run_state.directory, "run_state.directory")):
        if folder is not None:
            check_outside_data(folder, data_root, f"{named} {folder}", f"data.data_root {data_root}")
    if recipe.run_state.directory is not None:  # a link is written through to its target, and locked as it
        recipe = dataclasses.replace(recipe, run_state=dataclasses.replace(
            recipe.run_state, directory=str(state_folder(recipe.run_state.directory))))
    with contextlib.ExitStack() as held:
        if _trains_here():
            held.enter_context(holding_folder(output_dir, TRAIN_WRITER, what="another training run", option="--out"))
            if recipe.run_state.directory is not None:
                held.enter_context(holding_folder(recipe.run_state.directory, STATE_WRITER, what="another training run",
                                                  option="run_state.directory (--run-state)"))
                # a write killed between its two renames: the state it had moved aside comes back before anything
                # reads the folder; a folder of the user's files, or an output folder inside the state, is refused
                # now (not at the first checkpoint), before the output folder is marked
                put_back_interrupted_write(recipe.run_state.directory)
                check_state_folder(recipe.run_state.directory, output_dir)
            check_training_output(recipe)
        if log_file is not None:  # after the output folder is checked and marked: the file is the run's own
            path = Path(output_dir, log_file) if _trains_here() else None
            held.enter_context(training_log(path, echo=echo_library_log))
            if path is not None:
                logger.info("log    : %s (the INFO records of %s)", path, ", ".join(LIBRARY_LOGGERS))
        return _run_training(recipe, resume_from_checkpoint, **build_kwargs)


def _run_training(recipe: TrainRecipe, resume_from_checkpoint: str | None = None, **build_kwargs):
    data_root = None if build_kwargs.get("train_dataset") is not None else recipe.data.data_root
    # sketched once a run: checked against the data of the checkpoint it resumes, recorded in its folder and states
    data = sketch_data_root(data_root) if data_root else None
    run_state = run_state_settings(recipe, data)
    if run_state is not None:  # checked, and restored, before the model and the feature cache are built
        resume_from_checkpoint = resume_from_run_state(recipe, resume_from_checkpoint, run_state)
    # the checkpoint is known before anything is built: the feature cache is keyed by its frozen towers
    resume = resolve_resume(resume_from_checkpoint, recipe.training["output_dir"], recipe.training.get("max_steps"))
    # the one rule of a resume's settings (training/run_state.py `check_same_settings`), whichever way the checkpoint
    # was found: refused by name, or a deliberate change (run_state.accept_other_settings) recorded
    definition = run_definition(recipe)
    changes, changed_now = ([], {}) if resume is None else resumed_settings(
        resume, definition, state_dir=recipe.run_state.directory,
        accept_other_settings=recipe.run_state.accept_other_settings)
    data = data_of_the_run(recipe, resume, data)
    if run_state is not None:  # the states it writes hold what it trains on, and the changes accepted on the way
        run_state["data_description"], run_state["changes"] = data, changes
    if _trains_here():
        record_run_data(recipe.training["output_dir"], data)
        record_run_settings(recipe.training["output_dir"], definition, changes)
    if recipe.stage in ("geometry", "vision"):
        setup = build_encoder_stage_trainer(recipe, **build_kwargs)
    else:
        setup = build_trainer(recipe, resume_from_checkpoint=resume, **build_kwargs)
    trainer = setup.trainer
    if _trains_here():
        for line in run_plan(recipe, trainer, data_root, resume=resume, changed=changed_now):
            logger.info(line)
    # the time limit, and a SIGTERM with or without one: a checkpoint at the next step end
    stop = TimeLimitCallback(recipe.time_limit_s)
    trainer.add_callback(stop)
    if run_state is not None:
        trainer.add_callback(RunStateCallback(recipe.run_state.directory, moments_dtype=recipe.run_state.moments_dtype,
                                              best_dtype=recipe.run_state.best_dtype, **run_state))
    try:
        finished = finished_checkpoint(resume, trainer.args.max_steps)
        result = finish_from_checkpoint(trainer, resume) if finished else trainer.train(resume_from_checkpoint=resume)
    finally:
        stop.release()  # the signals' own handlers back, however training ended
    if stop.reached:
        # unfinished: the checkpoint holds the state, and a final model here would pass for the finished one
        why = f"on {stop.stop_signal}" if stop.terminated else f"at its time limit ({recipe.time_limit_s:g} s)"
        state = f" and the run state {recipe.run_state.directory}" if run_state is not None else ""
        stopped = stop.stopped(
            f"training stopped {why} after step {result.global_step} of {trainer.state.max_steps}; the checkpoint in "
            f"{trainer.args.output_dir}{state} holds the full state; continue it with: {continuation_command()}")
        stopped.result = result
        raise stopped
    save_final_model(trainer)
    if trainer.args.should_save:
        record = training_record(recipe, trainer.state.global_step, data_given=build_kwargs.get("train_dataset") is not None,
                                 setting_changes=changes)
        best = use_best_model(trainer.args.output_dir) if recipe.evaluation.best_metric else None
        if best is not None:
            logger.info("final model: the best of the validation (%s = %s at step %d of %d)", best["metric"], best["value"],
                        best["step"], trainer.state.global_step)
            record["best_of_validation"] = {key: best[key] for key in ("step", "metric", "value")}
        Path(trainer.args.output_dir, TRAINING_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return result
