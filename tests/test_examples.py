"""Every example script runs as written, at a toy size (the notebooks: tests/test_notebooks.py)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "training"


def run(command, tmp_path, **env):
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                   "HF_HOME": str(tmp_path / "hf_home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    done = subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"exit {done.returncode}\n--- stdout ---\n{done.stdout[-3000:]}\n--- stderr ---\n{done.stderr[-6000:]}"
    return done


def test_examples_are_all_covered():
    assert sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".sh", ".py")) == ["sft_trl.py", "train_stage1_tiny.sh"]


def test_train_stage1_tiny_script_runs_as_written(tmp_path):
    """No CPU flags: the recipes pick the device and precision themselves and log the choice. The data has a
    validation split, so the evaluation the script documents runs right after it."""
    out = tmp_path / "run"
    done = run(["bash", str(EXAMPLES / "train_stage1_tiny.sh"), str(out)], tmp_path,
               SCENES="1", STEPS="1", FRAMES="8", HEIGHT="60", WIDTH="80")
    for stage in ("stage1", "stage2"):
        assert (out / stage / "model.safetensors").is_file(), stage
    log = done.stdout + done.stderr
    expected = "device: cuda" if torch.cuda.is_available() else "device: cpu (auto: torch sees no CUDA device); precision: float32 weights, no autocast"
    assert log.count(expected) == 2
    assert done.stdout.count("trained 1 steps") == 2

    # the evaluation the script documents (its header, then its closing hint), run as written on this OUT
    evaluate = [arg.replace("runs/tiny", str(out)) for arg in documented_command("gap-mllm evaluate")]
    assert "  " + " ".join(evaluate) in done.stdout.splitlines()
    scored = run(evaluate, tmp_path)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert summary["task"] == "detection" and summary["num_samples"] > 0
    assert f"({summary['num_samples']} samples) -> {out / 'eval'}" in scored.stdout


def documented_command(prefix: str) -> list[str]:
    """The command of train_stage1_tiny.sh's header comment that starts with `prefix`, split as a shell would."""
    lines = (EXAMPLES / "train_stage1_tiny.sh").read_text().splitlines()
    found = [line.lstrip("# ") for line in lines if line.lstrip("# ").startswith(prefix)]
    assert len(found) == 1, found
    return shlex.split(found[0])


def test_sft_trl_example_runs(tmp_path):
    done = run([sys.executable, str(EXAMPLES / "sft_trl.py"), "--out", str(tmp_path / "sft"), "--steps", "2"], tmp_path)
    assert (tmp_path / "sft" / "model.safetensors").is_file()
    assert "losses:" in done.stdout
