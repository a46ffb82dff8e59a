"""Publishing: `gap-mllm push` / `push_model` / stock `push_to_hub` against a recording fake Hub, and
loading the published repo by id from a seeded Hub cache with HF_HUB_OFFLINE=1 (docs/transformers-notes.md §14)."""

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers.utils.hub
from safetensors.torch import load_file

from gap_mllm.cli import push as push_cli
from gap_mllm.cli.hub_files import HubFolderError, plan_upload, remote_code_closure
from gap_mllm.tiny.tiny_model import build_tiny_model, save_tiny_checkpoint

REPO = "me/gap-mllm-tiny"
COMMIT = "0" * 40


class FakeHubApi:
    """Records what would be uploaded: a folder per repo under `root`, plus the calls made."""

    def __init__(self, root):
        self.root = Path(root)
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return types.SimpleNamespace(repo_id=repo_id)

    def create_branch(self, **kwargs):
        self.calls.append(("create_branch", kwargs))

    def create_commit(self, repo_id, operations, **kwargs):
        self.calls.append(("create_commit", repo_id, [op.path_in_repo for op in operations]))
        for op in operations:
            target = self.root / repo_id / op.path_in_repo
            target.parent.mkdir(parents=True, exist_ok=True)
            source = op.path_or_fileobj
            if isinstance(source, bytes):
                target.write_bytes(source)
            else:
                shutil.copy(source, target)
        return types.SimpleNamespace(commit_url="mock://commit", oid=COMMIT)

    def uploaded(self, repo_id=REPO) -> set[str]:
        base = self.root / repo_id
        return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file()} if base.exists() else set()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "gap-mllm-tiny")


@pytest.fixture
def fake_hub(tmp_path):
    """Patch the client transformers uses (and the card lookup that would hit the network)."""
    api = FakeHubApi(tmp_path / "remote")
    with mock.patch.object(transformers.utils.hub, "hf_api", lambda: api), \
         mock.patch.object(transformers.utils.hub.ModelCard, "load",
                           side_effect=transformers.utils.hub.EntryNotFoundError("no card")):
        yield api


def expected_files(folder: Path) -> set[str]:
    code = {p.name for p in folder.glob("*.py")}
    return {"model.safetensors", "config.json", "generation_config.json", "processor_config.json",
            "tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "README.md"} | code


def test_cli_push_uploads_weights_code_processor_and_card(checkpoint, fake_hub, capsys):
    args = ["--model", str(checkpoint), "--repo", REPO, "--untrained"]
    assert push_cli.main(_parse(args)) == 0
    uploaded = fake_hub.uploaded()
    assert uploaded == expected_files(checkpoint)
    # one commit, the repository created first
    assert [c[0] for c in fake_hub.calls] == ["create_repo", "create_commit"]
    card = (fake_hub.root / REPO / "README.md").read_text()
    assert f'AutoModel.from_pretrained("{REPO}", trust_remote_code=True)' in card
    assert "non-commercial" in card and "Untrained test model" in card
    assert f"file(s) to upload to {REPO}" in capsys.readouterr().out


def test_every_auto_map_module_and_its_imports_are_uploaded(checkpoint):
    closure = remote_code_closure(checkpoint)
    assert {"configuration_gap_mllm.py", "modeling_gap_mllm.py", "processing_gap_mllm.py"} <= closure
    # the chain modeling -> geometry encoder -> layers is followed, not just the auto_map entries
    assert "modeling_vggt.py" in closure and "modeling_vggt.py" in closure


def test_pickles_logs_and_stray_scripts_are_left_out(checkpoint, tmp_path, fake_hub):
    folder = tmp_path / "trainer-output"
    shutil.copytree(checkpoint, folder)
    for name in ("pytorch_model.bin", "optimizer.pt", "training_args.bin", "trainer_state.json", "notes.txt", "scratch.py"):
        (folder / name).write_bytes(b"x")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_bytes(b"x")
    plan = plan_upload(folder)
    assert set(plan.skipped) == {"pytorch_model.bin", "optimizer.pt", "training_args.bin", "trainer_state.json",
                                 "notes.txt", "scratch.py", "runs/events.out"}
    push_cli.push_folder(folder, REPO, card_text="card")
    assert fake_hub.uploaded() == expected_files(checkpoint)
    assert not any(name.endswith((".bin", ".pt")) for name in fake_hub.uploaded())


def test_pickle_only_weights_are_refused_before_any_hub_call(checkpoint, tmp_path, fake_hub):
    folder = tmp_path / "pickled"
    shutil.copytree(checkpoint, folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(HubFolderError, match="safetensors"):
        push_cli.push_folder(folder, REPO, card_text="card")
    assert fake_hub.calls == []
    assert push_cli.main(_parse(["--model", str(folder), "--repo", REPO])) == 2


@pytest.mark.parametrize("missing, message", [
    ("modeling_vggt.py", "modeling_vggt.py is missing"),
    ("chat_template.jinja", "chat template"),
    ("tokenizer_config.json", "tokenizer"),
])
def test_incomplete_folders_are_refused(checkpoint, tmp_path, missing, message):
    folder = tmp_path / "incomplete"
    shutil.copytree(checkpoint, folder)
    (folder / missing).unlink()
    with pytest.raises(HubFolderError, match=message):
        plan_upload(folder)


def test_dry_run_uploads_nothing_and_prints_the_card(checkpoint, fake_hub, capsys):
    assert push_cli.main(_parse(["--model", str(checkpoint), "--repo", REPO, "--dry-run"])) == 0
    out = capsys.readouterr().out
    assert fake_hub.calls == [] and "dry run: nothing uploaded" in out
    assert "--- README.md (generated) ---" in out and "license_name: gap-mllm-non-commercial" in out


@pytest.mark.parametrize("repo_id, reason", [
    ("../../etc", "Repo id must be in the form 'repo_name' or 'namespace/repo_name': '../../etc'"),
    ("a/b/c", "Repo id must be in the form 'repo_name' or 'namespace/repo_name': 'a/b/c'"),
    ("me/x--y", "Cannot have -- or .. in repo_id: 'me/x--y'"),
])
def test_a_repo_id_the_hub_refuses_is_refused_before_anything_else(tmp_path, fake_hub, capsys, repo_id, reason):
    message = f"repo id {repo_id!r} is not one the Hub accepts ({reason}); give namespace/name, e.g. org/gap-mllm"
    missing = tmp_path / "no-such-folder"  # the repo id is named first, before the folder is read
    assert push_cli.main(_parse(["--model", str(missing), "--repo", repo_id, "--dry-run"])) == 2
    assert capsys.readouterr().err == f"gap-mllm push: error: {message}\n"
    with pytest.raises(HubFolderError) as refused:
        push_cli.push_folder(missing, repo_id, card_text="card")
    assert str(refused.value) == message and fake_hub.calls == []


def test_a_link_to_a_file_outside_the_folder_is_refused_by_name(checkpoint, tmp_path, fake_hub, capsys):
    folder = tmp_path / "linked"
    shutil.copytree(checkpoint, folder)
    secret, notes = tmp_path / "passwd", tmp_path / "bashrc"
    secret.write_text("root:x:0:0\n")
    notes.write_text("alias ll='ls -l'\n")
    (folder / "vocab.json").symlink_to(secret)
    (folder / "README.md").symlink_to(notes)
    message = (f"{folder}: README.md -> {notes}, vocab.json -> {secret}: a link to a file outside the folder, which "
               "push would upload; copy the file into the folder (or remove the link), then push again")
    assert push_cli.main(_parse(["--model", str(folder), "--repo", REPO, "--keep-readme", "--dry-run"])) == 2
    assert capsys.readouterr().err == f"gap-mllm push: error: {message}\n"
    with pytest.raises(HubFolderError) as refused:
        push_cli.push_folder(folder, REPO)
    assert str(refused.value) == message and fake_hub.calls == []


def test_links_inside_the_folder_or_into_the_package_model_code_are_uploaded(checkpoint, tmp_path, fake_hub):
    import gap_mllm

    folder = tmp_path / "linked"
    shutil.copytree(checkpoint, folder)
    (folder / "notes").mkdir()
    (folder / "notes" / "card.md").write_text("# card\n")
    (folder / "README.md").symlink_to(Path("notes") / "card.md")
    (folder / "modeling_vggt.py").unlink()  # as the shipped GAP-MLLM-Mini folder links its code files
    (folder / "modeling_vggt.py").symlink_to(Path(gap_mllm.__file__).parent / "modeling_vggt.py")
    push_cli.push_folder(folder, REPO)
    assert fake_hub.uploaded() == expected_files(checkpoint)
    assert (fake_hub.root / REPO / "README.md").read_text() == "# card\n"


def test_only_the_weights_transformers_loads_are_uploaded(checkpoint, tmp_path):
    folder = tmp_path / "weights"
    shutil.copytree(checkpoint, folder)
    for stray in ("optimizer.safetensors", "model-copy.safetensors"):
        shutil.copy(folder / "model.safetensors", folder / stray)
    plan = plan_upload(folder)
    assert [name for name in plan.files if name.endswith(".safetensors")] == ["model.safetensors"]
    assert set(plan.skipped) == {"optimizer.safetensors", "model-copy.safetensors"}
    # sharded: the index and the shards it names; transformers loads model.safetensors first when both are there
    shard = "model-00001-of-00001.safetensors"
    (folder / "model.safetensors").rename(folder / shard)
    names = {name: shard for name in load_file(folder / shard)}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": names}))
    plan = plan_upload(folder)
    assert {name for name in plan.files if "safetensors" in name} == {shard, "model.safetensors.index.json"}
    shutil.copy(folder / shard, folder / "model.safetensors")
    assert {name for name in plan_upload(folder).files if "safetensors" in name} == {"model.safetensors"}
    (folder / "model.safetensors").unlink()
    (folder / shard).unlink()
    with pytest.raises(HubFolderError) as refused:
        plan_upload(folder)
    assert str(refused.value) == (f"{folder / 'model.safetensors.index.json'} names the shard {shard!r}, which is not "
                                  f"a file of {folder}; re-save the model with save_pretrained")


@pytest.mark.parametrize("file, content, problem", [
    ("config.json", "{bad", "not readable JSON (Expecting property name enclosed in double quotes: line 1 column 2 "
                            "(char 1)); fix or re-save the file, then push again"),
    ("processor_config.json", "[1]", "a JSON list, not an object; fix or re-save the file, then push again"),
    ("tokenizer_config.json", "", "not readable JSON (Expecting value: line 1 column 1 (char 0)); fix or re-save the "
                                  "file, then push again"),
    ("model.safetensors.index.json", "{bad", "not readable JSON (Expecting property name enclosed in double quotes: "
                                             "line 1 column 2 (char 1)); fix or re-save the file, then push again"),
])
def test_a_json_file_push_reads_is_named_when_it_cannot_be_read(checkpoint, tmp_path, capsys, file, content, problem):
    folder = tmp_path / "broken"
    shutil.copytree(checkpoint, folder)
    if file == "model.safetensors.index.json":
        (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    (folder / file).write_text(content)
    assert push_cli.main(_parse(["--model", str(folder), "--repo", REPO, "--dry-run"])) == 2
    assert capsys.readouterr().err == f"gap-mllm push: error: {folder / file}: {problem}\n"


def test_an_evaluation_summary_that_is_not_json_is_named(checkpoint, tmp_path, capsys):
    summary = tmp_path / "summary.json"
    summary.write_text("{bad")
    assert push_cli.main(_parse(["--model", str(checkpoint), "--repo", REPO, "--dry-run", "--eval-summary",
                                 str(summary)])) == 2
    assert capsys.readouterr().err == (f"gap-mllm push: error: {summary}: not readable JSON (Expecting property name enclosed "
                                       "in double quotes: line 1 column 2 (char 1)); give the summary.json gap-mllm "
                                       "evaluate wrote\n")


def test_revision_creates_the_branch_and_commits_to_it(checkpoint, fake_hub):
    push_cli.push_folder(checkpoint, REPO, card_text="card", revision="v1")
    assert ("create_branch", {"repo_id": REPO, "branch": "v1", "exist_ok": True}) in fake_hub.calls


def test_stock_push_to_hub_of_model_and_processor(checkpoint, fake_hub):
    model, processor = build_tiny_model()
    model.push_to_hub(REPO)
    processor.push_to_hub(REPO)
    uploaded = fake_hub.uploaded()
    assert expected_files(checkpoint) <= uploaded
    assert not any(name.endswith(".bin") for name in uploaded)


def test_push_model_from_memory_uploads_the_same_set_in_one_commit(checkpoint, fake_hub):
    model, processor = build_tiny_model()
    push_cli.push_model(model, processor, REPO, untrained=True)
    assert fake_hub.uploaded() == expected_files(checkpoint)
    assert sum(1 for call in fake_hub.calls if call[0] == "create_commit") == 1


LOAD_BY_REPO_ID = r"""
import importlib.abc, json, sys
class BlockPackage(importlib.abc.MetaPathFinder):
    # a real user has no gap_mllm package: everything must come from the repo's remote code
    def find_spec(self, name, path=None, target=None):
        if name == "gap_mllm" or name.startswith("gap_mllm."):
            raise ImportError("gap_mllm is blocked in this test")
sys.meta_path.insert(0, BlockPackage())
import numpy as np, torch
from transformers import AutoModel, AutoModelForImageTextToText, AutoProcessor
repo, out = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
assert type(AutoModelForImageTextToText.from_pretrained(repo, trust_remote_code=True)) is type(model)
processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
rng = np.random.default_rng(0)
views = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
inputs = processor(images=[views], text=["Where is the chair?"], return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
torch.save({"logits": logits, "input_ids": inputs["input_ids"], "model_module": type(model).__module__,
            "processor": type(processor).__name__}, out)
"""


def seed_hub_cache(hf_home: Path, repo_id: str, files_dir: Path) -> Path:
    """Lay `files_dir` out as the Hub cache's snapshot of `repo_id` at main (docs/transformers-notes.md §14)."""
    root = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    shutil.copytree(files_dir, root / "snapshots" / COMMIT)
    return root


def test_published_repo_loads_by_id_offline_without_the_package(checkpoint, fake_hub, tmp_path):
    push_cli.push_folder(checkpoint, REPO, card_text=push_cli.build_card_text(checkpoint, REPO, untrained=True))
    hf_home = tmp_path / "hf_home"
    seed_hub_cache(hf_home, REPO, fake_hub.root / REPO)
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("HF_HUB_CACHE", None)
    result_file = tmp_path / "logits.pt"
    done = subprocess.run([sys.executable, "-c", LOAD_BY_REPO_ID, REPO, str(result_file)], env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = torch.load(result_file)
    assert loaded["model_module"].startswith("transformers_modules.")  # remote code, not the package
    assert loaded["processor"] == "GapMllmProcessor"

    # same numbers as the original checkpoint loaded from its folder in this process
    import numpy as np
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(checkpoint, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    rng = np.random.default_rng(0)
    views = [rng.integers(0, 256, (64, 96, 3), dtype=np.uint8) for _ in range(2)]
    inputs = processor(images=[views], text=["Where is the chair?"], return_tensors="pt")
    assert torch.equal(inputs["input_ids"], loaded["input_ids"])
    with torch.no_grad():
        expected = model(**inputs).logits
    torch.testing.assert_close(loaded["logits"], expected)
    config = json.loads((fake_hub.root / REPO / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_gap_mllm.GapMllmForConditionalGeneration"


def _parse(argv):
    import argparse

    parser = argparse.ArgumentParser()
    push_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_a_stray_or_sparse_safetensors_file_is_neither_read_nor_counted_and_a_damaged_weight_file_is_named(
        checkpoint, tmp_path, capsys):
    """A `*.safetensors` that transformers does not load (garbage, or a sparse file of zeros) stopped push with
    "Error while deserializing header" naming no file, and a readable one was counted in the card's parameters."""
    from gap_mllm.cli.model_card import parameter_counts, weights_size

    folder = tmp_path / "stray"
    shutil.copytree(checkpoint, folder)
    expected = parameter_counts(folder), weights_size(folder)
    (folder / "garbage.safetensors").write_bytes(b"not safetensors")
    with open(folder / "sparse.safetensors", "wb") as sparse:
        sparse.truncate(2**20)  # a file of holes: its header length reads 0
    shutil.copy(folder / "model.safetensors", folder / "model-copy.safetensors")  # readable, but no weight of it
    assert push_cli.main(_parse(["--model", str(folder), "--repo", REPO, "--dry-run"])) == 0
    out = capsys.readouterr().out
    assert all(f"  - {name} (not uploaded)" in out
               for name in ("garbage.safetensors", "sparse.safetensors", "model-copy.safetensors"))
    assert (parameter_counts(folder), weights_size(folder)) == expected
    shutil.copy(folder / "sparse.safetensors", folder / "model.safetensors")  # the weights themselves: named
    assert push_cli.main(_parse(["--model", str(folder), "--repo", REPO, "--dry-run"])) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"gap-mllm push: error: {folder / 'model.safetensors'}: unreadable weights (Error while deserializing header: "
        "invalid JSON in header: EOF while parsing a value at line 1 column 0); the file is truncated or corrupt: copy "
        "or download it again"]
