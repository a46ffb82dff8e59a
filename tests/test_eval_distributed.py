"""`accelerate launch` with 2 CPU processes: the evaluation runner shards the samples and merges them
into the same per-sample answers and summary as a single process (batch size 1 on both sides, so that
padding cannot differ between the runs)."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from .test_eval_runner import synth_data, tiny_checkpoint  # noqa: F401  (module fixtures)


def _evaluate(command_prefix, synth_data, checkpoint, out, env):
    command = [*command_prefix, "--task", "detection", "--data", str(synth_data), "--model", str(checkpoint), "--out", str(out),
               "--batch-size", "1", "--max-new-tokens", "8", "--no-plots", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return sorted(rows, key=lambda row: row["index"]), json.loads((out / "summary.json").read_text())


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate not installed")
def test_two_process_evaluation_equals_one_process(synth_data, tiny_checkpoint, tmp_path):  # noqa: F811
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    single_rows, single = _evaluate([sys.executable, "-m", "gap_mllm.cli.evaluate"],
                                    synth_data, tiny_checkpoint, tmp_path / "single", env)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    # accelerate's launcher starts several processes only in its multi-device mode; on a machine
    # without a GPU the runner then forms a gloo group (ACCELERATE_USE_CPU makes that explicit).
    env = {**env, "ACCELERATE_USE_CPU": "1"}
    multi_rows, multi = _evaluate([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                                   "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
                                   "-m", "gap_mllm.cli.evaluate"],
                                  synth_data, tiny_checkpoint, tmp_path / "multi", env)
    assert len(single_rows) == single["num_samples"] >= 2
    assert [row["index"] for row in multi_rows] == [row["index"] for row in single_rows]
    assert [row["raw"] for row in multi_rows] == [row["raw"] for row in single_rows]
    assert multi["metrics"] == single["metrics"]
    # the samples really were shared: each rank wrote its own raw outputs, round-robin
    per_rank = [[json.loads(line) for line in (tmp_path / "multi" / f"raw_outputs.rank{r}.jsonl").read_text().splitlines()]
                for r in (0, 1)]
    assert per_rank[0] and per_rank[1]
    assert len(per_rank[0]) + len(per_rank[1]) == len(single_rows)
