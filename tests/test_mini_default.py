"""The committed GAP-MLLM-Mini (mini/gap-mllm-mini) is a Hub folder that loads through the Auto classes
with trust_remote_code and answers a bundled held-out room with parsable results. Its scores are in
mini/RESULTS.md, not here: this checks the artefact, not its quality. The folder's remote code is links into the
package (lab/mini/code_links.py), so the folder loads by path as a Hub folder; the default (`default_model_path`) writes
the installed package's code next to links to the shipped data (mini/default_model.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModel, AutoProcessor

import gap_mllm
from gap_mllm.cli.scenes import synthetic_scene
from gap_mllm.mini import SHIPPED_DIR, default_model_path
from gap_mllm.mini.default_model import assemble, remote_code_sources

from lab.mini.code_links import link_problems
from lab.mini.export import MAX_FOLDER_BYTES

PACKAGE = Path(gap_mllm.__file__).resolve().parent
REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_folder_carries_links_to_the_package_code_not_copies():
    """Every file its auto_map reaches is a relative link to the package's file of the same name, and nothing else is;
    git tracks them as links (mode 120000) and ignores none of them."""
    assert (SHIPPED_DIR / "config.json").is_file() and list(SHIPPED_DIR.glob("*.safetensors"))
    assert link_problems(SHIPPED_DIR) == [], "run: python -m lab.mini.code_links"
    links = sorted(SHIPPED_DIR.glob("*.py"))
    assert {p.name for p in links} == {p.name for p in remote_code_sources()}
    for link in links:
        assert os.readlink(link) == f"../../{PACKAGE.name}/{link.name}" and link.resolve() == PACKAGE / link.name
    if (REPO / ".git").exists():
        names = [str(p.relative_to(REPO)) for p in links]
        ignored = subprocess.run(["git", "check-ignore", *names], cwd=REPO, capture_output=True, text=True)
        assert ignored.stdout == "", ignored.stdout
        tracked = subprocess.run(["git", "ls-files", "-s", "--", *names], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.splitlines()
        assert all(line.startswith("120000 ") for line in tracked), tracked  # links, never copies


def test_the_shipped_folder_loads_by_path_in_a_fresh_process(tmp_path):
    """As the card promises (library_name transformers, custom code): AutoModel, AutoProcessor and transformers'
    pipeline load the committed folder by its path, offline, from the folder's own remote code (the package is never
    imported), without transformers' "Loading weights" bar, and the pipeline answers a picture."""
    script = (
        "import sys, json\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from transformers import AutoModel, AutoProcessor, pipeline\n"
        f"path = {str(SHIPPED_DIR)!r}\n"
        "model = AutoModel.from_pretrained(path, trust_remote_code=True)\n"
        "processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)\n"
        "pipe = pipeline('image-text-to-text', model=path, trust_remote_code=True)\n"
        "image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8))\n"
        "out = pipe(text=[{'role': 'user', 'content': [{'type': 'image', 'image': image},\n"
        "                  {'type': 'text', 'text': 'Detect every object. Output a JSON.'}]}], max_new_tokens=8)\n"
        "print(json.dumps({'model': type(model).__name__, 'module': type(model).__module__,\n"
        "                  'processor': type(processor).__name__, 'pipe_model': type(pipe.model).__name__,\n"
        "                  'answer': out[0]['generated_text'][-1]['content'], 'package': 'gap_mllm' in sys.modules}))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["model"] == loaded["pipe_model"] == "GapMllmForConditionalGeneration"
    assert loaded["processor"] == "GapMllmProcessor" and loaded["module"].startswith("transformers_modules.")
    assert not loaded["package"] and isinstance(loaded["answer"], str)
    # transformers' own loading bar is what a remote-code user sees: the quiet load of a small local checkpoint is the
    # installed package's (`processing.model_paths.loading_bar_for`, used by every front end)


def test_an_upload_of_the_shipped_folder_sends_the_code_not_the_links():
    """`gap-mllm push` plans every linked file, and huggingface_hub's CommitOperationAdd (what push_folder commits)
    reads the package file's bytes through each link."""
    from huggingface_hub import CommitOperationAdd

    from gap_mllm.cli.hub_files import plan_upload

    plan = plan_upload(SHIPPED_DIR)
    assert {p.name for p in remote_code_sources()} <= set(plan.files)
    for name in (n for n in plan.files if n.endswith(".py")):
        operation = CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(SHIPPED_DIR / name))
        source = (PACKAGE / name).read_bytes()
        assert operation.upload_info.size == len(source)
        assert operation.upload_info.sha256 == hashlib.sha256(source).digest(), name
        with operation.as_file() as handle:
            assert handle.read() == source


def test_the_default_folder_holds_the_package_remote_code_byte_for_byte():
    folder = default_model_path()
    sources = remote_code_sources()
    assert {p.name for p in sources} >= {"configuration_gap_mllm.py", "modeling_gap_mllm.py", "processing_gap_mllm.py"}
    assert all(p.parent == PACKAGE for p in sources)
    for source in sources:
        assert (folder / source.name).read_bytes() == source.read_bytes(), source.name
    assert sorted(p.name for p in folder.glob("*.py")) == sorted(p.name for p in sources)
    for shipped in SHIPPED_DIR.iterdir():  # and every shipped file, unchanged
        assert (folder / shipped.name).read_bytes() == shipped.read_bytes(), shipped.name


def test_a_changed_or_stale_file_is_rewritten_from_the_package(tmp_path):
    folder = assemble(destination=tmp_path / "mini")
    (folder / "modeling_gap_mllm.py").write_text("raise RuntimeError('an old copy')\n")
    (folder / "model-99999-of-99999.safetensors").write_bytes(b"an earlier release's shard")
    assemble(destination=folder)
    assert (folder / "modeling_gap_mllm.py").read_bytes() == (PACKAGE / "modeling_gap_mllm.py").read_bytes()
    assert not (folder / "model-99999-of-99999.safetensors").exists()


def test_loaded_without_the_package_the_default_runs_the_package_code(tmp_path):
    """In a process that never imports gap_mllm, AutoModel loads the folder's remote code: its modules are files
    of the assembled folder, equal to the package's."""
    folder = default_model_path()
    script = (
        "import sys, json\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
        "module = sys.modules[type(model).__module__]\n"
        "assert 'gap_mllm' not in sys.modules, 'the package was imported'\n"
        "print(json.dumps({'module': module.__name__, 'file': module.__file__}))\n"
    )
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded["module"].startswith("transformers_modules.")
    assert Path(loaded["file"]).read_bytes() == (PACKAGE / "modeling_gap_mllm.py").read_bytes()


@pytest.fixture(scope="module")
def mini():
    folder = default_model_path()
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    # (loading with gap_mllm blocked, from the folder's remote code alone, is tests/test_remote_code.py's)
    assert type(model).__name__ == "GapMllmForConditionalGeneration"
    return folder, model.eval(), processor


def test_the_folder_is_small_and_carries_its_card_and_results(mini):
    folder, model, _ = mini
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) <= MAX_FOLDER_BYTES
    card = (folder / "README.md").read_text(encoding="utf-8")
    results = json.loads((folder / "evaluation_results.json").read_text(encoding="utf-8"))
    assert "gap_gated_s0" in results["arms"] and "| gap_gated_s0 |" in card
    assert model.config.use_geometry and model.config.geometry_fusion_config.method == "gated"


@pytest.mark.parametrize("constrained", [False, True])
@pytest.mark.parametrize("task", ["grounding_stage1", "grounding_stage2"])
def test_it_answers_a_bundled_room_with_a_parsable_result(mini, task, constrained):
    """Free and constrained decoding both give a parsed answer. Stage 1's frame is one of this scene's views: inside
    the grammar by construction; decoded freely, the model trained on 8-view records may name a later view of a
    4-view room, which the official protocol clamps to the last view when it is told the number of views."""
    _, model, processor = mini
    scene = synthetic_scene(seed=0)
    request = scene.example_inputs
    task_inputs = {"query": request["grounding"]["query"]}
    inputs = processor(images=scene.views, task=task, return_tensors="pt", **task_inputs)
    out = model.generate(**inputs, **processor.generation_kwargs(task, inputs, constrained=constrained))
    if task == "grounding_stage2":
        result = processor.post_process(out, task=task, input_ids=inputs["input_ids"])[0]
        assert result.box is not None and len(result.box.to_list()) == 9, result
        return
    as_answered = processor.post_process(out, task=task, input_ids=inputs["input_ids"])[0]
    clamped = processor.post_process_frame_selection(out, input_ids=inputs["input_ids"], num_frames=len(scene.views))[0]
    assert as_answered.frame is not None and clamped.frame == min(as_answered.frame, len(scene.views) - 1), as_answered
    if constrained:  # the grammar allows only the indices of the scene's views
        assert 0 <= as_answered.frame < len(scene.views), as_answered


def test_two_installations_assemble_their_own_folders(tmp_path):
    """The assembled folder is keyed by the shipped folder it links to: another checkout's default never
    overwrites this one's links."""
    from gap_mllm.mini.default_model import default_destination

    other = tmp_path / "other-checkout" / "gap-mllm-mini"
    other.mkdir(parents=True)
    assert default_destination(other) != default_destination(SHIPPED_DIR)
    assert default_destination(SHIPPED_DIR) == default_model_path()
    for link in default_model_path().iterdir():
        if link.is_symlink():
            assert Path(os.readlink(link)).parent == SHIPPED_DIR


def test_its_reconstruction_answer_parses_on_a_bundled_room(mini):
    """The marker task stays in stage 2's mix, so the final model answers it in its own format (a point and a
    label), not with another task's {"frame": k}."""
    _, model, processor = mini
    scene = synthetic_scene(seed=0)
    marker = scene.example_inputs["reconstruction"]["marker"]
    inputs = processor(images=scene.views, task="reconstruction", point_prompts=marker, return_tensors="pt")
    out = model.generate(**inputs, **processor.generation_kwargs("reconstruction", inputs))
    result = processor.post_process(out, task="reconstruction", input_ids=inputs["input_ids"])[0]
    assert result.point is not None and len(result.point) == 3, result
    assert isinstance(result.label, str) and result.label, result


def test_an_export_into_the_shipped_folder_writes_links_and_elsewhere_copies(tmp_path, monkeypatch):
    """`make mini --export mini/gap-mllm-mini` keeps the folder complete and copy-free: the remote code as links into
    the package (targets relative to the folder, written from its staging sibling); any other export is a
    self-contained Hub folder with `save_pretrained`'s copies."""
    from lab.mini import export
    from gap_mllm.tiny.tiny_model import save_tiny_checkpoint

    checkpoint = save_tiny_checkpoint(tmp_path / "tiny")
    shipped = tmp_path / "mini" / "gap-mllm-mini"
    monkeypatch.setattr(export, "SHIPPED_DIR", shipped)
    export.export_default(checkpoint, shipped)
    assert link_problems(shipped) == []
    for link in shipped.glob("*.py"):
        assert link.is_symlink() and not os.path.isabs(os.readlink(link)) and link.resolve() == PACKAGE / link.name
    copied = export.export_default(checkpoint, tmp_path / "elsewhere")
    code = sorted(copied.glob("*.py"))
    assert code and not any(p.is_symlink() for p in code)
    assert all(p.read_bytes() == (PACKAGE / p.name).read_bytes() for p in code)
