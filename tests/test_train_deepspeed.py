"""DeepSpeed ZeRO-2 / ZeRO-3 (`configs/accelerate_deepspeed_zero{2,3}.yaml`) on 2 CPU processes end with the
weights of one process training on the same global batch, and the final save loads with `from_pretrained`.

DeepSpeed runs on a CPU through its CPU accelerator (detected when no GPU is present; gloo when oneCCL is
not installed) and accelerate selects it for Trainer's `use_cpu=True` run, so this is the GPU code path
(Trainer + accelerate's DeepSpeed plugin + ZeRO partitioning of gradients / parameters) on gloo.
`deepspeed` is not a dependency of the package: the test is skipped without it. Tolerance: 1e-5, as DDP.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

if __name__ != "__main__":  # the worker runs this file as a script, outside the tests package
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (not a dependency of the package)")
    from .test_train_distributed import prepared_data  # noqa: F401  (module fixture)
    from .test_train_fixtures import train_data_root  # noqa: F401  (session fixture)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"


@pytest.mark.parametrize("stage", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_zero_on_two_processes_matches_one_process(stage, tmp_path, prepared_data):
    from .test_train_fsdp import assert_same_trained_model, launch, train

    data_root, cache = prepared_data
    single, sharded = tmp_path / "one", tmp_path / f"zero{stage}"
    single.mkdir(), sharded.mkdir()
    train(data_root, cache, str(single), per_device_batch=4)
    launch(["--data-root", data_root, "--hf-cache", cache, "--output", str(sharded), "--batch", "2"], processes=2,
           config=CONFIGS / f"accelerate_deepspeed_zero{stage}.yaml", worker=__file__)
    assert (sharded / "deepspeed.rank0").read_text() == f"ZeRO-{stage}"
    assert_same_trained_model(single, sharded, f"DeepSpeed ZeRO-{stage}")


def train_worker(data_root: str, hf_cache: str, output: str, batch: int) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.test_train_fsdp import train

    def record_stage(trainer):
        if trainer.is_deepspeed_enabled and trainer.args.process_index == 0:
            stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
            (Path(output) / "deepspeed.rank0").write_text(f"ZeRO-{stage}")

    train(data_root, hf_cache, output, batch, after_training=record_stage)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root"), parser.add_argument("--hf-cache"), parser.add_argument("--output")
    parser.add_argument("--batch", type=int)
    options = parser.parse_args()
    train_worker(options.data_root, options.hf_cache, options.output, options.batch)
