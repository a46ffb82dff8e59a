"""FSDP2 (accelerate's FSDP plugin, `configs/accelerate_fsdp.yaml`) on 2 CPU processes (gloo) ends with the
weights of one process training on the same global batch, and its final save loads with `from_pretrained`.

accelerate 1.15 enables FSDP only on accelerator devices: on a CPU it silently falls back to plain
data parallelism (`AcceleratorState` keeps `MULTI_CPU` and drops the plugin). The worker therefore
turns the state into FSDP after accelerate has set it up (`force_fsdp_on_cpu`), so that the very code
path of a GPU run (Trainer + accelerate's FSDP2 preparation, torch `fully_shard` of the decoder, ViT
and VGGT blocks, full-state-dict gathering at save) runs on gloo; the test checks that the parameters
really are sharded. Tolerance: 1e-5 absolute, as the DDP test (reduce-scatter sums in another order).
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
    from .test_train_distributed import prepared_data  # noqa: F401  (module fixture)
    from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)

TOLERANCE = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]
FSDP_CONFIG = REPO_ROOT / "training" / "configs" / "accelerate_fsdp.yaml"


def force_fsdp_on_cpu() -> None:
    """Make AcceleratorState keep the FSDP plugin on a CPU (gloo) process group (see the module docstring)."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__

    def init(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            # every later AcceleratorState() copies PartialState's fields back, so set it in both
            PartialState._shared_state["distributed_type"] = self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = init


def train(data_root: str, hf_cache: str, output: str, per_device_batch: int, after_training=None) -> None:
    """3 steps of the tiny model on the first 12 samples; the final model saved to `<output>/final`."""
    from gap_mllm.training.data import load_split
    from gap_mllm.training.run import build_trainer, save_final_model

    sys.path.insert(0, str(REPO_ROOT))
    from tests.test_train_fixtures import recipe, tiny

    model, processor = tiny()
    settings = recipe(Path(output), data_root=data_root, training={
        "max_steps": 3, "per_device_train_batch_size": per_device_batch, "learning_rate": 1e-3,
        "dataloader_num_workers": 0})
    settings.data.cache_dir = hf_cache
    dataset = load_split(settings.data, "train", settings.aux, max_samples=12)
    setup = build_trainer(settings, model=model, processor=processor, train_dataset=dataset)
    setup.trainer.train()
    if after_training is not None:
        after_training(setup.trainer)
    if setup.trainer.is_fsdp_enabled:
        from torch.distributed.tensor import DTensor

        layer = setup.model.gap_model.model.language_model.layers[0]
        sharded = isinstance(layer.self_attn.q_proj.weight, DTensor)
        (Path(output) / f"sharded.rank{setup.trainer.args.process_index}").write_text(str(sharded))
    save_final_model(setup.trainer, str(Path(output) / "final"))


def launch(args: list[str], processes: int, config=FSDP_CONFIG, worker=__file__) -> None:
    """`accelerate launch --config_file config` of `worker` on `processes` CPU processes, fp32."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
               "--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", str(worker), *args]
    result = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]


def assert_same_trained_model(single, sharded, label: str) -> None:
    """The final saves of the 1-process and the sharded run load with `load_model` and agree to TOLERANCE."""
    from gap_mllm.loading import load_model

    from .test_train_fixtures import tiny

    one = load_model(single / "final", require_geometry_weights=True)
    two = load_model(sharded / "final", require_geometry_weights=True)
    assert one.missing_weight_groups == two.missing_weight_groups == []
    one_state, two_state = dict(one.named_parameters()), dict(two.named_parameters())
    assert one_state.keys() == two_state.keys()
    worst = max((one_state[k] - two_state[k]).abs().max().item() for k in one_state)
    print(f"largest weight difference, {label} on 2 processes vs 1 process: {worst:.2e}")
    assert worst <= TOLERANCE, f"largest weight difference {worst:.2e}"
    initial = dict(tiny()[0].named_parameters())
    moved = max((two_state[k] - initial[k]).abs().max().item() for k in two_state)
    assert moved > 100 * TOLERANCE  # training really changed the weights


def test_fsdp_on_two_processes_matches_one_process_and_saves_a_loadable_model(tmp_path, prepared_data):
    data_root, cache = prepared_data
    single, sharded = tmp_path / "one", tmp_path / "fsdp"
    single.mkdir(), sharded.mkdir()
    train(data_root, cache, str(single), per_device_batch=4)
    launch(["--data-root", data_root, "--hf-cache", cache, "--output", str(sharded), "--batch", "2"], processes=2)
    assert [(sharded / f"sharded.rank{r}").read_text() for r in (0, 1)] == ["True", "True"]
    assert_same_trained_model(single, sharded, "FSDP")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root"), parser.add_argument("--hf-cache"), parser.add_argument("--output")
    parser.add_argument("--batch", type=int)
    options = parser.parse_args()
    force_fsdp_on_cpu()
    train(options.data_root, options.hf_cache, options.output, options.batch)
