"""Data parallelism: 2 CPU processes (gloo) under `accelerate launch` end with the weights of one
process training on the same global batch (accelerate launch, CPU, gloo backend).

The worker is this file itself (`__main__`): it trains the tiny model for 3 steps on the first 12
samples in dataset order and saves its trainable weights. Single process: batch 4; two processes:
batch 2 each. Tolerance: 1e-5 absolute (gloo all-reduce sums in another order than one batched
matmul; AdamW's normalisation makes early updates sensitive to that rounding).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if __name__ != "__main__":  # the worker runs this file as a script, outside the tests package
    from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)

TOLERANCE = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]


def train(data_root: str, hf_cache: str, output: str, per_device_batch: int) -> None:
    from gap_mllm.training.data import load_split
    from gap_mllm.training.run import build_trainer

    sys.path.insert(0, str(REPO_ROOT))
    from tests.test_train_fixtures import recipe, tiny

    model, processor = tiny()
    settings = recipe(Path(output), data_root=data_root, training={
        "max_steps": 3, "per_device_train_batch_size": per_device_batch, "learning_rate": 1e-3,
        "ddp_find_unused_parameters": False, "dataloader_num_workers": 0})
    settings.data.cache_dir = hf_cache
    dataset = load_split(settings.data, "train", settings.aux, max_samples=12)
    setup = build_trainer(settings, model=model, processor=processor, train_dataset=dataset)
    setup.trainer.train()
    if setup.trainer.args.process_index == 0:
        state = {n: p.detach().cpu() for n, p in setup.model.named_parameters() if p.requires_grad}
        torch.save({"state": state, "world_size": setup.trainer.args.world_size}, Path(output) / "weights.pt")


@pytest.fixture(scope="module")
def prepared_data(train_data_root, tmp_path_factory):
    """Builder cache prepared once, so the workers only read it."""
    from gap_mllm.training.config import DataConfig, AuxLossConfig
    from gap_mllm.training.data import load_split

    cache = tmp_path_factory.mktemp("hf_ddp")
    load_split(DataConfig(data_root=str(train_data_root), cache_dir=str(cache)), "train", AuxLossConfig())
    return str(train_data_root), str(cache)


def launch(args: list[str], processes: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # `--multi_gpu` selects accelerate's torchrun launcher (`--cpu` would start a single process); the
    # workers' `use_cpu=True` then makes accelerate join a gloo process group on the CPU.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
               __file__, *args]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def test_two_processes_match_one_process_on_the_same_global_batch(tmp_path, prepared_data):
    from .test_train_fixtures import tiny

    data_root, cache = prepared_data
    single, double = tmp_path / "one", tmp_path / "two"
    single.mkdir(), double.mkdir()
    train(data_root, cache, str(single), per_device_batch=4)
    launch(["--data-root", data_root, "--hf-cache", cache, "--output", str(double), "--batch", "2"], processes=2)
    one, two = torch.load(single / "weights.pt"), torch.load(double / "weights.pt")
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert one["state"].keys() == two["state"].keys()
    worst = max((one["state"][k] - two["state"][k]).abs().max().item() for k in one["state"])
    print(f"largest weight difference, 2 processes vs 1: {worst:.2e}")
    assert worst <= TOLERANCE, f"largest weight difference {worst:.2e}"
    initial = dict(tiny()[0].named_parameters())
    moved = max((one["state"][k] - initial[k.removeprefix("model.")]).abs().max().item() for k in one["state"] if k.startswith("model."))
    assert moved > 100 * TOLERANCE  # the comparison is not trivially satisfied


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root"), parser.add_argument("--hf-cache"), parser.add_argument("--output")
    parser.add_argument("--batch", type=int)
    options = parser.parse_args()
    train(options.data_root, options.hf_cache, options.output, options.batch)
