"""The first fine-tune of training/README.md: SynthRooms data, a short run from the embedded
GAP-MLLM-Mini named `mini` (as predict and evaluate name it), then `predict --model` on the result; and the feature
cache built only when the run's own numbers say it pays off (training/cache_cost.py `cache_skip_reason`).

The default test runs the same commands on one small room and 2 steps (the training in its own process, to read
what a terminal shows); the README block itself, verbatim in a shell, is the `slow` test."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import safetensors.torch

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.mini import default_model_path
from gap_mllm.processing.synth.generator import SynthRooms
from gap_mllm.processing.synth.presets import synth_config
from gap_mllm.processing.synth.writer import write_dataset
from gap_mllm.training.cache_cost import cache_skip_reason
from gap_mllm.training.config import load_recipe
from gap_mllm.training.model_loading import check_model_folder

REPO = Path(__file__).resolve().parent.parent
RECIPE = REPO / "training" / "recipes" / "first_finetune.yaml"
README = REPO / "training" / "README.md"


def first_run_block() -> str:
    """The shell block under training/README.md's "A first fine-tune" heading."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## A first fine-tune", 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def test_the_readme_block_is_the_recipe_and_the_commands_of_this_test():
    block = first_run_block()
    lines = [line for line in block.splitlines() if line.strip()]
    assert lines == ["gap-mllm synth --preset mini --scenes 2 --out data/first-finetune",
                     "gap-mllm train --config training/recipes/first_finetune.yaml --model mini",
                     'gap-mllm predict --model runs/first-finetune --example "synthetic room A" --task detection']
    recipe = load_recipe(RECIPE)
    assert recipe.model.name_or_path == "mini" and recipe.data.data_root == "data/first-finetune"
    assert recipe.training["output_dir"] == "runs/first-finetune" and recipe.training["max_steps"] == 4
    assert recipe.cache.enabled is True  # on, and decided by the run's numbers


PROGRESS_BAR = re.compile(r"^ *\d+%\|.*\| *\d+/\d+ \[.*\]$")  # one state of a tqdm bar, as Trainer draws it


def printed_lines(output: str) -> list[str]:
    """What a terminal keeps of `output` (stdout and stderr together) besides the progress bar: the lines, each cut
    at its carriage returns (a bar redraws itself after one, and a line written under it clears it with spaces first),
    without the bar's states and the blank clearings."""
    return [part for line in output.splitlines() for part in line.split("\r")
            if part.strip() and not PROGRESS_BAR.match(part)]


def test_a_short_run_from_mini_trains_without_a_cache_and_predict_answers_with_it(tmp_path, capsys):
    """The first fine-tune's command (2 steps on one room) in its own process, as a terminal shows it: the run's plan,
    the bar with its loss lines and where the model and the log went, in at most 40 lines besides the bar; the
    libraries' INFO records (configuration dumps, Trainer's banner and farewell) are in the output folder's
    train.log instead. Then predict answers with the model it wrote."""
    data, out = tmp_path / "data", tmp_path / "run"
    write_dataset(data, SynthRooms(synth_config("mini", num_frames=12)), {"train": 1})  # 4 detection samples
    done = subprocess.run([sys.executable, "-m", "gap_mllm.cli.main", "train", "--config", str(RECIPE), "--model",
                           "mini", "--data", str(data), "--out", str(out), "--set",
                           f"data.cache_dir={tmp_path / 'hf'}", "--set", "training.max_steps=2"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = printed_lines(done.stdout)
    assert len(lines) <= 40, "\n".join(lines)
    assert any(PROGRESS_BAR.match(part) for part in done.stdout.replace("\r", "\n").splitlines())  # Trainer's bar
    log = out / "train.log"
    assert lines[0] == f"log    : {log} (the INFO records of transformers, datasets, accelerate)"
    # the plan: model, data, steps; 2 steps of 2 read 4 samples, the 4 the cache would encode first: not built
    assert (f"model  : {default_model_path()}; 6,477,312 of 15,242,596 parameters train" in lines
            and f"data   : detection from {data}: 4 training samples, no evaluation" in lines
            and f"steps  : 2 steps of 2 samples (4 samples read), learning rate 0.0001; saved to {out}" in lines)
    assert ("feature cache not built: this run reads 4 samples (2 step(s) of 2), no more than the 4 the cache would "
            "encode first, so the frozen towers run in the steps instead (cache.enabled: always builds it anyway)"
            in lines)
    assert len([line for line in lines if line.startswith("{'loss': ")]) == 2  # Trainer's loss line of each step
    assert lines[-1].startswith("trained 2 steps, final train loss ") and lines[-1].endswith(
        f"; saved to {out} (log: {log})")
    assert not [line for line in lines if line.startswith(("[transformers", "[datasets", "[accelerate"))]
    kept = log.read_text(encoding="utf-8")
    for info in ("[transformers.configuration_utils] INFO: loading configuration file",
                 "[transformers.configuration_utils] INFO: Model config GapMllmConfig {",
                 "[transformers.trainer] INFO: ***** Running training *****",
                 "Do not forget to share your model on huggingface.co/models",
                 f"[transformers.modeling_utils] INFO: Model weights saved in {out / 'model.safetensors'}",
                 "[gap_mllm.training.run] INFO: feature cache not built"):
        assert info in kept, info
    assert not (out / "feature_cache").exists()
    # it started from the embedded Mini's weights: the frozen towers kept them bit for bit, the LLM moved
    mini = {}
    for shard in sorted(default_model_path().glob("model-*.safetensors")):
        mini.update(safetensors.torch.load_file(str(shard)))
    tuned = safetensors.torch.load_file(str(out / "model.safetensors"))
    towers = [name for name in tuned if name.startswith(("model.geometry_encoder.", "model.visual.blocks."))]
    assert towers and all(mini[name].equal(tuned[name]) for name in towers)
    llm = [name for name in tuned if name.startswith("model.language_model.layers.")]
    assert llm and any(not mini[name].equal(tuned[name]) for name in llm)
    record = json.loads((out / "gap_mllm_training.json").read_text())
    assert record["tasks"] == ["detection"]
    # what it descends from, by name: its card is the Mini's licence, with no Qwen base model nor VGGT weights
    mini = json.loads((default_model_path() / "gap_mllm_training.json").read_text())
    assert record["started_from"] == f"GAP-MLLM-Mini (version {mini['version']})"
    assert record["lineage"] == {"origin": {"name": "GAP-MLLM-Mini", "version": mini["version"], "license": "apache-2.0"},
                                 "weights": []}
    assert gap_mllm(["push", "--model", str(out), "--repo", "newcomer/x", "--dry-run"]) == 0
    pushed = capsys.readouterr()
    assert pushed.err == "" and "\nlicense: apache-2.0\n" in pushed.out and "base_model" not in pushed.out
    for false in ("gap-mllm-non-commercial", "Qwen/Qwen3-VL-2B-Instruct", "not recorded", default_model_path().name):
        assert false not in pushed.out[pushed.out.index("## This checkpoint"):pushed.out.index("## Model")], false
    assert f"| started from | GAP-MLLM-Mini (version {mini['version']}) |" in pushed.out

    # constrained decoding (the default) keeps the answer in detection's format: it parses (status 0)
    assert gap_mllm(["predict", "--model", str(out), "--example", "synthetic room A", "--task", "detection",
                     "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["task"] == "detection" and isinstance(answer["boxes"], list)


def test_mini_outside_gap_mllm_train_names_what_to_give():
    with pytest.raises(ValueError, match=r"model.name_or_path=mini names the embedded GAP-MLLM-Mini under `gap-mllm "
                                         r"train` only; started otherwise, give its folder: python -c"):
        check_model_folder("mini")


def arguments(max_steps=-1, epochs=1.0, batch=16, accumulation=1, world=1, eval_strategy="no", eval_steps=None,
              logging_steps=500):
    return SimpleNamespace(max_steps=max_steps, num_train_epochs=epochs, train_batch_size=batch,
                           gradient_accumulation_steps=accumulation, world_size=world, eval_strategy=eval_strategy,
                           eval_steps=eval_steps, logging_steps=logging_steps)


def test_the_cache_is_built_only_when_the_run_reads_more_samples_than_it_encodes():
    # the run: 2 steps of 16 from 1,216 samples
    assert cache_skip_reason(arguments(max_steps=2), 1216) == (
        "feature cache not built: this run reads 32 samples (2 step(s) of 16), no more than the 1,216 the cache would "
        "encode first, so the frozen towers run in the steps instead (cache.enabled: always builds it anyway)")
    # GAP-MLLM-Mini's stage 2: 7,200 steps of 16 from 29,226 samples (3.9 epochs)
    assert cache_skip_reason(arguments(max_steps=7200), 29226) is None
    # one epoch reads each sample once: the cache saves no tower pass; two epochs save one per sample
    assert cache_skip_reason(arguments(epochs=1.0, batch=1, accumulation=16), 1000).startswith(
        "feature cache not built: this run reads 1,000 samples (63 step(s) of 16)")
    assert cache_skip_reason(arguments(epochs=2.0, batch=1, accumulation=16), 1000) is None
    # held-out samples count at every evaluation: 8 steps of 4 × 2 processes = 64 reads, + 4 evaluations of 30 (every
    # quarter of the run, as Trainer rounds it: every 2 steps) = 184 > 150 + 30 encoded; every 4 steps, 2: 124, not
    # built
    assert cache_skip_reason(arguments(max_steps=8, batch=4, world=2, eval_strategy="steps", eval_steps=0.25), 150,
                             30) is None
    assert cache_skip_reason(arguments(max_steps=8, batch=4, world=2, eval_strategy="steps", eval_steps=4), 150,
                             30).startswith("feature cache not built: this run reads 124 samples (8 step(s) of 8 and "
                                            "2 evaluation(s) of 30), no more than the 180 the cache would encode first")


@pytest.mark.slow
def test_the_readme_block_runs_as_written(tmp_path):
    """training/README.md's first block in bash, verbatim, from a folder holding the recipe where the block names it
    (a checkout's root; data/ and runs/ then go to the test's folder, not the checkout)."""
    (tmp_path / "training" / "recipes").mkdir(parents=True)
    shutil.copy(RECIPE, tmp_path / "training" / "recipes")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}  # gap-mllm
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", first_run_block()], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "trained 4 steps" in done.stdout and "parsed     :" in done.stdout
    assert "feature cache not built: this run reads 8 samples" in done.stderr
    assert (tmp_path / "runs" / "first-finetune" / "model.safetensors").is_file()
