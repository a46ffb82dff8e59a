"""docs/publish.md's offline rehearsal as a user types it: a tiny checkpoint in the official layout, `gap-mllm
convert official`, `gap-mllm push --dry-run`, and the Space folder for ZeroGPU (the conversion, the loading and the
bundle in fresh processes; the steps that save no model folder in this one).

Fresh processes matter: `import gap_mllm` is lazy, so a process that imports the model modules directly (the
converter does) never ran the package's registration, and its saved folder had `auto_map[None]` (the conversion
failed with a TypeError while writing config.json). Tests in one pytest process cannot see that: an earlier import
has registered the classes for all of them. The rehearsal's folder is ignored by git."""

import json
import os
import subprocess
import sys
from pathlib import Path

from gap_mllm.cli.main import main as gap_mllm
from gap_mllm.tiny import official_layout

REPO = Path(__file__).resolve().parent.parent

# Loads the converted folder with gap_mllm unimportable: only the folder's remote code can serve it.
LOAD_REMOTE_CODE = """
import importlib.abc, sys

class BlockGapMllm(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "gap_mllm" or name.startswith("gap_mllm."):
            raise ImportError("gap_mllm is blocked in this process")

sys.meta_path.insert(0, BlockGapMllm())
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(sys.argv[1], trust_remote_code=True)
processor = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)
print(type(model).__name__, type(processor).__name__)
"""


def run(*command, cwd, env=None):
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})
    assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
    return done.stdout


def test_the_offline_publish_rehearsal_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert official_layout.main(["official/tiny-gapmllm"]) == 0  # (in this process: it saves no auto_map)
    run("-m", "gap_mllm.cli.main", "convert", "official", "official/tiny-gapmllm", "build/gapmllm-3d-3b", "--no-progress",
        cwd=tmp_path)
    converted = tmp_path / "build" / "gapmllm-3d-3b"
    assert json.loads((converted / "config.json").read_text())["auto_map"] == {
        "AutoConfig": "configuration_gap_mllm.GapMllmConfig",
        "AutoModel": "modeling_gap_mllm.GapMllmForConditionalGeneration",
        "AutoModelForImageTextToText": "modeling_gap_mllm.GapMllmForConditionalGeneration",
    }
    assert json.loads((converted / "processor_config.json").read_text())["auto_map"] == {
        "AutoProcessor": "processing_gap_mllm.GapMllmProcessor"}
    loaded = run("-c", LOAD_REMOTE_CODE, str(converted), cwd=tmp_path, env={"HF_HOME": str(tmp_path / "hf_home")})
    assert loaded.strip().splitlines()[-1] == "GapMllmForConditionalGeneration GapMllmProcessor"

    capsys.readouterr()
    assert gap_mllm(["push", "--model", "build/gapmllm-3d-3b", "--repo", "ORG/gapmllm-3d-3b", "--base-model",
                     "Qwen/Qwen3-VL-2B-Instruct", "--dry-run", "--untrained"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "dry run: nothing uploaded"

    run(str(REPO / "examples" / "space" / "bundle_space.py"), "--model", "ORG/gapmllm-3d-3b", "--hardware", "zero-a10g",
        "--out", "build/space", cwd=tmp_path)
    space = tmp_path / "build" / "space"
    assert json.loads((space / "space_defaults.json").read_text()) == {"GAP_MLLM_MODEL": "ORG/gapmllm-3d-3b"}
    assert "suggested_hardware: zero-a10g" in (space / "README.md").read_text()


def test_the_publish_rehearsal_folder_is_ignored():
    assert subprocess.run(["git", "check-ignore", "-q", "official/tiny-gapmllm"], cwd=REPO).returncode == 0
    assert "<this repository's URL>" not in (REPO / "README.md").read_text()
    assert "trains for seconds" not in (REPO / "examples/training/train_stage1_tiny.sh").read_text()
