"""Datasets and the collator chain of a training run.

    datasets     one `processing.builders` builder per task in `data.tasks`, their columns reduced to
                 those every task shares (id, images, prompt, answer, + pixel_coords / depth / poses when
                 present in all), concatenated (stage 2 mixes grounding, detection and captioning)
    collator     GapMllmDataCollator (processor, marker prompt, answer-only labels)
                 → AuxTargetCollator (targets of the enabled auxiliary losses)
                 → BadSampleGuard (name, then raise or skip-and-count a sample that fails)
                 → CachedGeometryCollator (precomputed encoder features), when the cache is on
"""

from __future__ import annotations

import logging

import datasets

from gap_mllm.chat_format import IMAGE_PLACEHOLDER
from gap_mllm.processing.builders import builder_for_task
from gap_mllm.processing.collator import GapMllmDataCollator

from .aux_targets import AuxTargetCollator
from .bad_samples import BadSampleGuard
from .config import AuxLossConfig, DataConfig
from .feature_cache import CachedGeometryCollator

logger = logging.getLogger(__name__)
SHARED_COLUMNS = ("id", "images", "image_paths", "prompt", "answer", "pixel_coords", "depth", "intrinsics", "cam_to_world")
LENGTH_COLUMN = "length"  # TrainingArguments.length_column_name's default


def load_split(data: DataConfig, split: str, aux: AuxLossConfig, max_samples: int | None = None,
               task_max_samples: dict[str, int] | None = None, seed: int = 0):
    """The concatenated `datasets.Dataset` of `data.tasks` for `split`; `task_max_samples` ({task: N})
    keeps a random N of that task's samples (drawn with `seed`) before the concatenation. A task without an
    annotation file for the split is a FileNotFoundError naming the file looked for; one whose file holds no
    usable sample is a `DataError` naming that file (prepared builders refuse empty splits)."""
    if data.data_root is None:
        raise ValueError("data.data_root is not set: point it at a ScanNet-layout folder (or SynthRooms output)")
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
        parts.append(part)
        counter = builder.skipped.get(split)
        if counter is not None and counter.total:
            logger.warning("%s %s: %s", task, split, counter.summary())
    shared = [c for c in SHARED_COLUMNS if all(c in part.column_names for part in parts)]
    dataset = datasets.concatenate_datasets([part.select_columns(shared) for part in parts])
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset


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


def build_collator(processor, data: DataConfig, aux: AuxLossConfig, cache=None):
    """The collator chain of the module docstring."""
    collator = GapMllmDataCollator(processor, train=True, marker=data.marker)
    if aux.enabled:
        merge = processor.image_processor.merge_size
        collator = AuxTargetCollator(collator, aux, merge_size=merge)
    collator = BadSampleGuard(collator, policy=data.on_bad_sample)
    if cache is not None:
        collator = CachedGeometryCollator(collator, cache)
    return collator
