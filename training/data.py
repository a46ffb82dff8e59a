"""Datasets and the collator chain of a training run.

    datasets     one `processing.builders` builder per task in `data.tasks`, their columns reduced to
                 those every task shares (id, images, prompt, answer, + pixel_coords / depth / poses when
                 present in all), concatenated (stage 2 mixes grounding, detection and captioning)
    collator     GapMllmDataCollator (processor, marker prompt, answer-only labels; a sample longer than the
                 model's context is a bad sample)
                 → LossWeightCollator (`label_weights` beside the labels, with `data.task_loss_weights`)
                 → AuxTargetCollator (targets of the enabled auxiliary losses)
                 → BadSampleGuard (name, then raise or skip-and-count a sample that fails)
                 → PackingCollator (the batch's samples packed into rows), with `data.packing`
                 → BucketCollator (rows padded to a sequence-length bucket), with `data.length_buckets`
                 → HostMetadataCollator (what the step reads on the host, read before the batch leaves it)
                 With the feature cache on, `CachedCollator` makes the batches from the cache instead, padded or
                 packed, and runs the chain above only for a tower that is not cached.
"""

from __future__ import annotations

import dataclasses
import logging

import datasets

from gap_mllm.checks import context_limit
from gap_mllm.processing.builders import builder_for_task
from gap_mllm.processing.collator import GapMllmDataCollator
from gap_mllm.tasks_gap_mllm import IMAGE_PLACEHOLDER

from .aux_targets import AuxTargetCollator
from .bad_samples import SKIPPED_KEY, BadSampleGuard
from .config import AuxLossConfig, DataConfig, check_data_tasks
from .feature_cache import CachedCollator
from .host_metadata import HostMetadataCollator
from .length_buckets import BucketCollator
from .loss_weights import LOSS_WEIGHT_COLUMN, LossWeightCollator, weighted_mix
from .packed_attention import is_flash
from .sample_tensors import collate_samples, split_batch

logger = logging.getLogger(__name__)
SHARED_COLUMNS = ("id", "images", "image_paths", "prompt", "answer", "pixel_coords", "depth", "intrinsics", "cam_to_world",
                  LOSS_WEIGHT_COLUMN)
MARKER_COLUMN = "pixel_coords"  # the marker task's [view, x, y]; None in the samples of other tasks
LENGTH_COLUMN = "length"  # TrainingArguments.length_column_name's default


def load_split(data: DataConfig, split: str, aux: AuxLossConfig, max_samples: int | None = None,
               task_max_samples: dict[str, int] | None = None, seed: int = 0, task_repeats: dict[str, int] | None = None,
               task_loss_weights: dict[str, float] | None = None):
    """The concatenated `datasets.Dataset` of `data.tasks` for `split`; `task_max_samples` ({task: N})
    keeps a random N of that task's samples (drawn with `seed`) before the concatenation, and `task_repeats`
    ({task: k}) puts them k times into it (training mixes only). `task_loss_weights` ({task: w}): each sample gets
    its task's weight (1 for a task not named) in a float column `loss_weight` (training/loss_weights.py), only when
    some weight differs from 1 (otherwise the dataset is the unweighted one, column for column). A task without an
    annotation file for the split is a FileNotFoundError naming the file looked for; one whose file holds no
    usable sample is a `DataError` naming that file (prepared builders refuse empty splits)."""
    if data.data_root is None:
        raise ValueError("data.data_root is not set: point it at a ScanNet-layout folder (or SynthRooms output)")
    check_data_tasks(data.tasks)
    parts = []
    for task in data.tasks:
        builder = builder_for_task(task)(
            data_root=data.data_root,
            cache_dir=data.cache_dir,
            load_depth=aux.needs_depth,
            load_poses=aux.needs_poses,
            skip_bad_samples=data.on_bad_sample == "skip",
        )
        builder.annotation_file(split)  # a split without a file: named here, not as datasets' "Unknown split"
        builder.download_and_prepare()  # a file without a usable sample: a DataError naming it
        part = builder.as_dataset(split=split)
        cap = (task_max_samples or {}).get(builder.SPEC.name)
        if cap is not None and cap < len(part):
            logger.info("%s %s: %d of %d samples (data.task_max_samples)", task, split, cap, len(part))
            part = part.shuffle(seed=seed).select(range(cap))
        repeats = (task_repeats or {}).get(builder.SPEC.name, 1)
        if repeats > 1:
            logger.info("%s %s: %d samples, each %d times in the mix (data.task_repeats)", task, split, len(part), repeats)
            part = datasets.concatenate_datasets([part] * repeats)
        if weighted_mix(task_loss_weights):
            weight = float(task_loss_weights.get(builder.SPEC.name, 1.0))
            logger.info("%s %s: answer tokens weigh %g in the loss (data.task_loss_weights)", task, split, weight)
            part = part.add_column(LOSS_WEIGHT_COLUMN, [weight] * len(part), feature=datasets.Value("float32"))
        parts.append(part)
        counter = builder.skipped.get(split)
        if counter is not None and counter.total:
            logger.warning("%s %s: %s", task, split, counter.summary())
    parts = [_with_marker_column(part, parts) for part in parts]
    shared = [c for c in SHARED_COLUMNS if all(c in part.column_names for part in parts)]
    dataset = datasets.concatenate_datasets([part.select_columns(shared) for part in parts])
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


def _with_marker_column(part, parts):
    """`part` with a `pixel_coords` column: its own, or all None when another task of the mix has one. A column
    that some tasks lack would be dropped from the concatenation, and the marker task's samples would then train
    without their marker (the prompt asks about a marker the views do not show)."""
    if MARKER_COLUMN in part.column_names:
        return part
    owner = next((other for other in parts if MARKER_COLUMN in other.column_names), None)
    if owner is None:
        return part
    return part.add_column(MARKER_COLUMN, [None] * len(part), feature=owner.features[MARKER_COLUMN])


def add_length_column(dataset, processor, name: str = LENGTH_COLUMN):
    """`dataset` with a `name` column: each sample's token count as the processor will make it (views ×
    the visual tokens of one view of the first sample + the tokens of prompt and answer, the chat markup
    left out), so `train_sampling_strategy="group_by_length"` batches samples of similar length: mixed
    tasks (a 4-view detection with a long answer next to an 8-view frame selection) otherwise pad every
    batch to its longest sample. Uses `image_paths`, so no image is decoded (but the first)."""
    first = dataset[0]["images"][0]
    patch, merge = processor.image_processor.patch_size, processor.image_processor.merge_size
    height, width = processor.qwen_size(first.height, first.width)
    per_view = (height // patch) * (width // patch) // (merge * merge) + 2  # + <|vision_start|>, <|vision_end|>
    tokenizer = processor.tokenizer

    def lengths(prompts, answers, paths):
        texts = [prompt.replace(IMAGE_PLACEHOLDER, "") + answer for prompt, answer in zip(prompts, answers)]
        counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        return {name: [count + per_view * len(views) for count, views in zip(counts, paths)]}

    return dataset.map(lengths, batched=True, input_columns=["prompt", "answer", "image_paths"], desc="sample lengths")


class PackingCollator:
    """Wrap a collator: its batch with the samples packed into rows (training/sample_tensors.py)."""

    def __init__(self, collator, pad_token_id: int, spatial_merge_size: int, row_tokens: int | None = None):
        self.collator = collator
        self.layout = {"pad_token_id": pad_token_id, "packing": True, "spatial_merge_size": spatial_merge_size,
                       "row_tokens": row_tokens}

    def __call__(self, examples: list[dict]):
        batch = self.collator(examples)
        skipped = batch.pop(SKIPPED_KEY, None)
        packed = collate_samples(split_batch(batch), **self.layout)
        if skipped is not None:
            packed[SKIPPED_KEY] = skipped
        return packed


# Training batches pad their rows on the right, whatever the tokenizer's side (left, for generation). A left-padded
# row's padding queries see only padding keys: fully masked attention rows, whose SDPA backward wrote NaN into every
# weight gradient on an H100 (bench/bisect_compile_nan.py: left-padded rows at bucket widths gave non-finite
# gradients from the first step, with or without compile; right padding and packed rows stayed finite). A right-padded
# padding query sees the real tokens before it, and no loss reads it, so the loss is the same (tests/test_train_padding_side.py).
TRAINING_PADDING_SIDE = "right"
ONE_ROW = 10**12  # a row cap no batch reaches: the whole batch in one row


def packing_row_tokens(data: DataConfig, model=None) -> int | None:
    """The longest packed row: `data.packing_row_tokens`, else the whole batch in one row where the attention costs
    each sample alone (Σ L²: flash-attn's variable-length path, which transformers takes for one packed row only, and
    sdpa through training/packed_attention.py), else (eager, whose block mask costs T² a row) the longest sample."""
    attention = getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if data.packing_row_tokens is None and (is_flash(attention) or attention == "sdpa"):
        return ONE_ROW
    return data.packing_row_tokens


def sample_collator(processor, data: DataConfig, aux: AuxLossConfig, model=None):
    """The chain that turns samples into one padded batch: processor and labels, auxiliary targets, bad-sample guard.
    `model`: the model the batches are for; a sample longer than its context (`context_limit`) is a bad sample, named,
    then refused or skipped and counted (None: no bound)."""
    config = getattr(model, "config", None)
    max_tokens = context_limit(config) if config is not None else None
    collator = LossWeightCollator(GapMllmDataCollator(processor, train=True, marker=data.marker, max_tokens=max_tokens,
                                                      padding_side=TRAINING_PADDING_SIDE))
    if aux.enabled:
        collator = AuxTargetCollator(collator, aux, merge_size=processor.image_processor.merge_size)
    return BadSampleGuard(collator, policy=data.on_bad_sample)


def sample_collator_settings(data: DataConfig, aux: AuxLossConfig) -> dict:
    """What besides the processor decides the tensors `sample_collator` makes (part of the feature cache's key)."""
    return {"train": True, "marker": data.marker, "aux": dataclasses.asdict(aux) if aux.enabled else None}


def build_collator(processor, data: DataConfig, aux: AuxLossConfig, cache=None, model=None):
    """The collator chain of the module docstring (`model`: to choose packed rows for its attention kernel)."""
    collator = sample_collator(processor, data, aux, model)
    tokenizer, merge = processor.tokenizer, processor.image_processor.merge_size
    if cache is not None:
        collator = CachedCollator(collator, cache, tokenizer.pad_token_id, TRAINING_PADDING_SIDE, packing=data.packing,
                                  spatial_merge_size=merge, row_tokens=packing_row_tokens(data, model))
    elif data.packing:
        collator = PackingCollator(collator, tokenizer.pad_token_id, merge, packing_row_tokens(data, model))
    if data.length_buckets is not None:
        collator = BucketCollator(collator, data.length_buckets, tokenizer.pad_token_id, TRAINING_PADDING_SIDE)
    return HostMetadataCollator(collator)
