"""Per-task loss weights (`data.task_loss_weights`, training/loss_weights.py): every answer token of a task's samples
weighs w in the LM loss, the normaliser stays the count of answer tokens; on every path a training batch takes
(padded, packed, length buckets, the feature cache, the Trainer's own chain), and the recipe refuses bad weights."""

from __future__ import annotations

import math

import datasets
import pytest
import torch
import torch.nn.functional as F

from gap_mllm.configuration_gap_mllm import IGNORE_INDEX
from gap_mllm.training.config import recipe_from_dict
from gap_mllm.training.data import build_collator, load_split, sample_collator, sample_collator_settings
from gap_mllm.training.feature_cache import CachedCollator, FeatureCache, sample_key, undecoded_images
from gap_mllm.training.geometry_aligned_model import GeometryAlignedModel
from gap_mllm.training.loss_weights import LABEL_WEIGHTS_KEY, LOSS_WEIGHT_COLUMN
from gap_mllm.training.run import build_trainer, run_definition
from gap_mllm.training.sample_tensors import collate_samples, split_batch

from .test_train_fixtures import recipe, tiny, train_data_root  # noqa: F401

TASKS = ["detection", "grounding_stage1", "captioning"]
WEIGHTS = {"grounding_stage1": 5.0, "detection": 0.5}  # captioning: not named, weighs 1
ID_PARTS = {"_det_": 0.5, "_scanrefer1_": 5.0, "_scan2cap_": 1.0}  # how a SynthRooms sample id names its task


def settings_for(root, cache_dir, weights, **data):
    values = {"data_root": str(root), "tasks": TASKS, "cache_dir": str(cache_dir), **data}
    if weights is not None:
        values["task_loss_weights"] = weights
    return recipe_from_dict({"data": values})


def mix(settings):
    return load_split(settings.data, "train", settings.aux, task_loss_weights=settings.data.task_loss_weights)


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """One datasets cache for the module: the builders prepare each task once."""
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module")
def weighted(train_data_root, hf_cache):
    settings = settings_for(train_data_root, hf_cache, WEIGHTS)
    return settings, mix(settings)


def task_weight(sample_id: str) -> float:
    (weight,) = [w for part, w in ID_PARTS.items() if part in sample_id]
    return weight


def batch_of(processor, settings, examples):
    batch = sample_collator(processor, settings.data, settings.aux)(examples)
    batch.pop("num_skipped_samples")
    return batch


def spread(dataset, count=6):
    """Examples spread over the concatenated tasks (a batch mixes all three)."""
    return [dataset[round(i * (len(dataset) - 1) / (count - 1))] for i in range(count)]


def test_every_sample_carries_its_tasks_weight_and_the_batch_puts_it_on_its_answer_tokens(weighted):
    settings, dataset = weighted
    assert settings.data.task_loss_weights == WEIGHTS
    assert dataset[LOSS_WEIGHT_COLUMN] == [task_weight(sample_id) for sample_id in dataset["id"]]
    _, processor = tiny()
    examples = spread(dataset)
    batch = batch_of(processor, settings, examples)
    weights = batch[LABEL_WEIGHTS_KEY]
    assert weights.shape == batch["labels"].shape and weights.dtype == torch.float32
    for row, example in enumerate(examples):
        supervised = batch["labels"][row] != IGNORE_INDEX
        assert supervised.any()
        assert torch.equal(weights[row][supervised], torch.full((int(supervised.sum()),), task_weight(example["id"])))
        assert not weights[row][~supervised].any()  # prompt and padding weigh nothing


@pytest.mark.parametrize("weights", [None, {"grounding_stage1": 1.0, "detection": 1}], ids=["absent", "all-one"])
def test_weights_of_one_are_todays_dataset_batch_and_loss_bit_for_bit(train_data_root, hf_cache, weights):
    plain_settings = settings_for(train_data_root, hf_cache, None)
    settings = settings_for(train_data_root, hf_cache, weights)
    plain, dataset = mix(plain_settings), mix(settings)
    assert dataset.column_names == plain.column_names and LOSS_WEIGHT_COLUMN not in dataset.column_names
    assert dataset.to_dict() == plain.to_dict()
    model, processor = tiny()
    examples = spread(dataset)
    batch = batch_of(processor, settings, examples)
    assert LABEL_WEIGHTS_KEY not in batch
    wrapped = GeometryAlignedModel(model)
    with torch.no_grad():
        out = wrapped(**batch)
        reference = wrapped(**batch_of(processor, plain_settings, spread(plain)))
        # the weighted branch with every weight 1 sums the same cross-entropies (in another order)
        ones = wrapped(**batch, label_weights=(batch["labels"] != IGNORE_INDEX).float())
    assert torch.equal(out.lm_loss_sum, reference.lm_loss_sum) and torch.equal(out.lm_num_tokens, reference.lm_num_tokens)
    torch.testing.assert_close(ones.lm_loss_sum, out.lm_loss_sum, rtol=1e-6, atol=0)


def manual_weighted_loss(model, batch, examples):
    """Σ_i w_i · CE_i / (answer tokens) from the full logits of the model's own forward, row by row."""
    inputs = {key: value for key, value in batch.items() if key not in ("labels", LABEL_WEIGHTS_KEY)}
    logits = model(**inputs).logits.float()
    total, count = torch.zeros((), dtype=torch.float64), 0
    for row, example in enumerate(examples):
        targets = batch["labels"][row, 1:]
        supervised = targets != IGNORE_INDEX
        ce = F.cross_entropy(logits[row, :-1][supervised], targets[supervised], reduction="sum")
        total += task_weight(example["id"]) * ce.double()
        count += int(supervised.sum())
    return total / count, count


def test_the_loss_is_the_weighted_sum_of_the_answer_tokens_cross_entropy_over_their_count(weighted):
    settings, dataset = weighted
    model, processor = tiny()
    model.eval()
    examples = spread(dataset)
    batch = batch_of(processor, settings, examples)
    with torch.no_grad():
        out = GeometryAlignedModel(model)(**batch)
        expected, count = manual_weighted_loss(model, batch, examples)
    assert int(out.lm_num_tokens) == count  # the normaliser: the answer tokens, not their weights
    torch.testing.assert_close(out.loss.double(), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.lm_loss_sum.double(), expected * count, rtol=1e-5, atol=0)


def per_sample_losses(wrapped, processor, settings, examples):
    """Each example's lm_loss_sum alone (weighted by `settings`)."""
    with torch.no_grad():
        return [wrapped(**batch_of(processor, settings, [example])).lm_loss_sum for example in examples]


def test_packed_rows_and_length_buckets_carry_each_samples_weight(weighted):
    settings, dataset = weighted
    model, processor = tiny()
    model.eval()
    wrapped = GeometryAlignedModel(model)
    examples = spread(dataset)
    alone = per_sample_losses(wrapped, processor, settings, examples)
    unweighted = [loss / task_weight(example["id"]) for loss, example in zip(alone, examples)]
    plain_examples = [{k: v for k, v in example.items() if k != LOSS_WEIGHT_COLUMN} for example in examples]
    with torch.no_grad():  # per sample: w × its unweighted loss
        for example, expected in zip(plain_examples, unweighted):
            torch.testing.assert_close(wrapped(**batch_of(processor, settings, [example])).lm_loss_sum, expected,
                                       rtol=1e-6, atol=0)
    padded = batch_of(processor, settings, examples)
    packed = collate_samples(split_batch(padded), processor.tokenizer.pad_token_id, packing=True, row_tokens=10**6)
    assert packed["input_ids"].shape[0] == 1 and packed[LABEL_WEIGHTS_KEY].shape == packed["labels"].shape
    chain = build_collator(processor, recipe_from_dict({"data": {**vars(settings.data), "packing": True,
                                                                 "length_buckets": [64]}}).data, settings.aux, model=model)
    bucketed = chain(examples)
    bucketed.pop("num_skipped_samples")
    assert bucketed["input_ids"].shape[1] % 64 == 0 and bucketed[LABEL_WEIGHTS_KEY].shape == bucketed["labels"].shape
    expected = torch.stack(alone).sum()
    with torch.no_grad():
        for batch in (padded, packed, bucketed):
            torch.testing.assert_close(wrapped(**batch).lm_loss_sum, expected, rtol=1e-5, atol=0)
    for batch in (packed, bucketed):  # every supervised token weighs its sample's weight, nothing else weighs
        supervised = batch["labels"] != IGNORE_INDEX
        assert not batch[LABEL_WEIGHTS_KEY][~supervised].any()
        assert sorted(batch[LABEL_WEIGHTS_KEY][supervised].tolist()) == sorted(padded[LABEL_WEIGHTS_KEY][padded["labels"] != IGNORE_INDEX].tolist())


def test_the_feature_cache_serves_the_weights_of_the_examples_not_of_its_entries(tmp_path, weighted):
    settings, dataset = weighted
    model, processor = tiny()
    model.eval()
    examples = spread(undecoded_images(dataset))  # the cache holds only these
    chosen = datasets.Dataset.from_list(examples, features=undecoded_images(dataset).features)
    collator_settings = sample_collator_settings(settings.data, settings.aux)
    cache = FeatureCache(tmp_path / "cache", model, processor, collator_settings, "float32")
    cache.build(model, chosen, sample_collator(processor, settings.data, settings.aux), batch_size=6)
    plain_examples = [{k: v for k, v in e.items() if k != LOSS_WEIGHT_COLUMN} for e in examples]
    # the weights are not part of an entry: the same folder and keys as the unweighted mix's
    assert cache.folder == FeatureCache(tmp_path / "cache", model, processor, collator_settings, "float32").folder
    assert [sample_key(e) for e in examples] == [sample_key(e) for e in plain_examples]
    wrapped = GeometryAlignedModel(model)
    expected = torch.stack(per_sample_losses(wrapped, processor, settings, spread(dataset))).sum()
    tokenizer = processor.tokenizer
    for packing in (False, True):
        served = CachedCollator(sample_collator(processor, settings.data, settings.aux), cache, tokenizer.pad_token_id,
                                tokenizer.padding_side, packing=packing, row_tokens=10**6 if packing else None)
        batch = served(examples)
        assert int(batch.pop("num_skipped_samples")) == 0 and LABEL_WEIGHTS_KEY in batch
        assert batch["input_ids"].shape[0] == (1 if packing else len(examples))
        with torch.no_grad():
            torch.testing.assert_close(wrapped(**batch).lm_loss_sum, expected, rtol=1e-5, atol=0)
        unweighted = served(plain_examples)
        assert LABEL_WEIGHTS_KEY not in unweighted


def test_the_trainers_own_chain_trains_the_weighted_loss(train_data_root, hf_cache, tmp_path):
    """build_trainer loads the weighted mix and its collator: a batch of its dataloader holds the weights, and
    compute_loss divides the weighted sum by the step's answer tokens."""
    model, processor = tiny()
    settings = recipe(tmp_path, train_data_root, data={"data_root": str(train_data_root), "tasks": TASKS,
                                                       "cache_dir": str(hf_cache), "task_loss_weights": WEIGHTS,
                                                       "packing": True},
                      training={"per_device_train_batch_size": 4})
    setup = build_trainer(settings, model=model, processor=processor)
    assert LOSS_WEIGHT_COLUMN in setup.trainer.train_dataset.column_names
    batch = next(iter(setup.trainer.get_train_dataloader()))
    assert LABEL_WEIGHTS_KEY in batch and set(batch[LABEL_WEIGHTS_KEY][batch["labels"] != IGNORE_INDEX].tolist()) <= {0.5, 1.0, 5.0}
    count = int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    setup.trainer.current_gradient_accumulation_steps = 1  # set by Trainer's loop; one micro-batch per step here
    with torch.no_grad():
        out = setup.trainer.model(**{k: v for k, v in batch.items() if k != "num_skipped_samples"})
        loss = setup.trainer.compute_loss(setup.trainer.model, dict(batch), num_items_in_batch=torch.tensor(count))
    torch.testing.assert_close(loss, out.lm_loss_sum / count, rtol=1e-6, atol=0)


def test_the_weights_define_the_run_and_an_unset_key_matches_older_states(train_data_root):
    plain = settings_for(train_data_root, "hf", None)
    assert "data.task_loss_weights" not in run_definition(plain)  # as recorded before the setting existed
    assert run_definition(settings_for(train_data_root, "hf", WEIGHTS))["data.task_loss_weights"] == WEIGHTS


@pytest.mark.parametrize("data, extra, message", [
    ({"task_loss_weights": {"spatial_qa": 2.0}}, {}, r"data.task_loss_weights names \['spatial_qa'\], which data.tasks"),
    ({"task_loss_weights": {"detection": 0}}, {}, "finite and above 0 per task, got {'detection': 0}"),
    ({"task_loss_weights": {"detection": -1.5}}, {}, "finite and above 0"),
    ({"task_loss_weights": {"detection": math.inf}}, {},
     r"data.task_loss_weights.detection: expected float, got float inf \(a finite number"),
    ({"task_loss_weights": {"detection": "much"}}, {}, r"data.task_loss_weights.*float"),
    ({"task_loss_weights": {"detection": 2.0}}, {"kernels": {"liger_fused_linear_cross_entropy": True}},
     "data.task_loss_weights with kernels.liger_fused_linear_cross_entropy=true"),
])
def test_bad_weights_are_refused_by_name(data, extra, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"data": {"tasks": TASKS, **data}, **extra})


def test_deprecated_task_names_resolve_and_the_liger_loss_never_ignores_weights(weighted):
    with pytest.warns(FutureWarning, match="'frame_selection' is deprecated"):  # weights of 1 change no loss: Liger may stay
        settings = recipe_from_dict({"data": {"tasks": TASKS, "task_loss_weights": {"frame_selection": 1, "det": 1}},
                                     "kernels": {"liger_fused_linear_cross_entropy": True}})
    assert settings.data.task_loss_weights == {"grounding_stage1": 1, "detection": 1}
    with pytest.raises(ValueError, match="data.task_loss_weights with kernels.liger_fused_linear_cross_entropy=true"):
        recipe_from_dict({"data": {"tasks": TASKS, "task_loss_weights": {"frame_selection": 3}},
                          "kernels": {"liger_fused_linear_cross_entropy": True}})
    model, processor = tiny()  # a model built with Liger's loss (by hand) refuses weights before it imports Liger
    batch = batch_of(processor, weighted[0], spread(weighted[1], 3))
    with pytest.raises(ValueError, match="takes no per-token weight"), torch.no_grad():
        GeometryAlignedModel(model, liger_cross_entropy=True)(**batch)
