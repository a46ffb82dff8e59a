"""`accelerate launch` with 2 CPU processes: the evaluation runner shards the samples and merges them into the
same samples.jsonl rows and summary as a single process, for two-stage grounding in batches through scene reuse
(whole scenes per process, so the batches, and their padding, are those of one process), also resumed after a
run cut short on both ranks. (How groups are dealt, single samples round-robin: tests/test_eval_scene_reuse.py.)"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from gap_mllm.evaluation.runner import run_evaluation



def _rows(out):
    return [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]


@pytest.mark.skipif(shutil.which("accelerate", path=os.path.dirname(sys.executable)) is None, reason="accelerate not installed")
def test_two_process_grounding_equals_one_process_and_resumes_after_an_interruption(synth_data, tiny_checkpoint, tmp_path):  # noqa: F811
    """Two-stage grounding in batches of 2 through scene reuse: each scene's expressions go to one process; the
    merged samples.jsonl rows and summary are those of one process, also after a run cut short on both ranks."""
    options = ["--task", "grounding", "--data", str(synth_data), "--model", str(tiny_checkpoint), "--batch-size", "2",
               "--max-new-tokens", "4", "--no-plots", "--quiet"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): the same float sums
    try:
        single = run_evaluation("grounding", synth_data, tmp_path / "single", model_dir=tiny_checkpoint, batch_size=2,
                                max_new_tokens=4, plots=False, progress=False)
    finally:
        torch.set_num_threads(threads)
    launcher = os.path.join(os.path.dirname(sys.executable), "accelerate")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    command = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", "0", "-m", "gap_mllm.cli.evaluate", *options,
               "--out", str(tmp_path / "multi")]

    def launch():
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        return _rows(tmp_path / "multi"), json.loads((tmp_path / "multi" / "summary.json").read_text())

    rows, summary = launch()
    assert rows == _rows(tmp_path / "single") and summary == single and single["num_samples"] >= 4
    raw = [tmp_path / "multi" / f"raw_outputs.rank{r}.jsonl" for r in (0, 1)]
    per_rank = [[json.loads(line) for line in path.read_text().splitlines()] for path in raw]
    scenes = [{row["id"].rsplit("_scanrefer", 1)[0] for row in rows} for rows in per_rank]  # "synth0001_00_scanrefer1_0003"
    assert all(per_rank) and not scenes[0] & scenes[1]  # whole scenes per process

    # interrupted: rank 0 finished one sample, rank 1 one sample and half a line; outputs of the run are gone
    lines = [path.read_text().splitlines() for path in raw]
    raw[0].write_text(lines[0][0] + "\n")
    raw[1].write_text(lines[1][0] + "\n" + lines[1][1][: len(lines[1][1]) // 2])
    for name in ("samples.jsonl", "summary.json"):
        (tmp_path / "multi" / name).unlink()
    rows, summary = launch()
    resumed = summary.pop("answers")  # the one field a resumed run's summary has of its own: what it reused
    assert rows == _rows(tmp_path / "single") and summary == {k: v for k, v in single.items() if k != "answers"}
    assert resumed == {"reused": 2, "answered_again": 0, "new": single["num_samples"] - 2}
    finished = []
    for line in (line for path in raw for line in path.read_text().splitlines()):
        try:
            finished.append(json.loads(line)["index"])
        except json.JSONDecodeError:
            assert line == lines[1][1][: len(lines[1][1]) // 2]  # the torn line, left in place and skipped
    assert sorted(finished) == list(range(single["num_samples"]))  # every sample once: nothing generated twice
