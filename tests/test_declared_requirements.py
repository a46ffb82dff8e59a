"""The default path runs on the package's declared requirements: constrained decoding's engine is a core requirement
with the verified pin, `make install` is one pip install of the package with its requirements, each README command's
defaults import only what a plain `pip install gap-mllm` brings, and the one format a plain install cannot write
(`--formats glb`, trimesh) is refused in one line naming the extra before the model."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name as normalised

REPO = Path(__file__).resolve().parent.parent


def setup_constant(name: str):
    """The value of a top-level constant of setup.py (read, not run: running it would call setup())."""
    tree = ast.parse((REPO / "setup.py").read_text(encoding="utf-8"))
    names = {node.targets[0].id: node.value for node in tree.body
             if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    value = names[name]
    if isinstance(value, ast.List):  # CORE names GRAMMAR_ENGINE: resolve the names it lists
        return [setup_constant(item.id) if isinstance(item, ast.Name) else ast.literal_eval(item) for item in value.elts]
    return ast.literal_eval(value)


def test_constrained_decoding_is_a_core_requirement_with_the_verified_pin():
    from gap_mllm.tasks_gap_mllm import ENGINE_REQUIREMENT

    assert setup_constant("GRAMMAR_ENGINE") == ENGINE_REQUIREMENT
    assert ENGINE_REQUIREMENT in setup_constant("CORE")


def test_make_install_is_one_pip_install_of_the_package_with_its_requirements():
    """llguidance requires nothing, so `make install` installs the package with its requirements and the dev extra's
    in one pip call: no grammar engine installed with `--no-deps`, no other engine (lmms-eval's `--no-deps` stays:
    setup.py)."""
    done = subprocess.run(["make", "-n", "-B", "install"], cwd=REPO, capture_output=True, text=True, check=True)
    assert 'install -e ".[dev]"' in done.stdout
    assert "xgrammar" not in done.stdout and "gap_mllm.cli.requirements" not in done.stdout
    assert [line for line in done.stdout.splitlines() if "--no-deps" in line and "lmms" not in line.lower()] == []


def declared_closure(roots: list[str]) -> set[str]:
    """The distributions `roots` (requirement strings) bring, recursively through the installed ones' metadata, with
    their markers evaluated here (no extras): what a plain `pip install gap-mllm` installs on this platform."""
    found, pending = {"gap-mllm"}, list(roots)
    while pending:
        requirement = Requirement(pending.pop())
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = normalised(requirement.name)
        if name in found:
            continue
        found.add(name)
        try:
            pending.extend(requires(requirement.name) or [])
        except PackageNotFoundError:  # required but not installed here (one for another platform): imports nothing
            continue
    return found


# Run `gap-mllm predict` with its defaults on a bundled room, recording every top-level module that the package's own
# code (gap_mllm.*, or its remote-code copies) imports, with the distributions that provide it.
IMPORT_RECORDER = """
import json, sys
from importlib.metadata import packages_distributions

DISTRIBUTIONS = packages_distributions()
imported = {}

class Recorder:
    def find_spec(self, name, path=None, target=None):
        if "." not in name and name not in sys.stdlib_module_names and name in DISTRIBUTIONS:
            frame = sys._getframe(1)
            while frame is not None and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
                frame = frame.f_back
            importer = frame.f_globals.get("__name__", "") if frame is not None else ""
            if importer.split(".")[0] in ("gap_mllm", "transformers_modules"):
                imported.setdefault(name, sorted(DISTRIBUTIONS[name]))
        return None  # only recording: the usual finders import it

sys.meta_path.insert(0, Recorder())
from gap_mllm.cli.main import main
status = main(json.loads(sys.argv[1]))
print(json.dumps({"status": status, "imported": imported}))
"""


# The README's commands with their defaults: predict, predict writing its pictures, the demo (pictures too)
DEFAULT_COMMANDS = {
    "predict": ["predict", "--example", "synthetic room A", "--task", "grounding"],
    "predict --out": ["predict", "--example", "synthetic room A", "--task", "detection", "--out", "saved"],
    "demo": ["demo", "--out", "demo_output"],
}


@pytest.mark.parametrize("command", sorted(DEFAULT_COMMANDS))
def test_each_default_command_imports_only_declared_requirements(command, tmp_path):
    """What `pip install gap-mllm` (or the wheel) holds is enough for each README command's defaults: every package
    the package's code imports on that path (constrained decoding's llguidance, the pictures' matplotlib) is a
    requirement of setup.py's core list or of one of them. A package of an extra imported there would fail on a plain
    install."""
    done = subprocess.run([sys.executable, "-c", IMPORT_RECORDER, json.dumps(DEFAULT_COMMANDS[command])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] in (0, 3), done.stderr[-2000:]  # 3: an answer that did not parse cleanly
    imported = result["imported"]
    assert "llguidance" in imported and "xgrammar" not in imported  # the default decodes inside the task's grammar
    if command != "predict":  # the pictures were drawn: matplotlib (the gate heat map) ran on this path
        assert "matplotlib" in imported and "trimesh" not in imported
    declared = declared_closure(setup_constant("CORE"))
    undeclared = {module: dists for module, dists in imported.items()
                  if not any(normalised(dist) in declared for dist in dists)}
    assert undeclared == {}, f"imported by the default {command}, required by no core requirement: {undeclared}"


# `gap-mllm predict --formats glb` where trimesh is not installed (a None entry in sys.modules: find_spec finds nothing)
GLB_WITHOUT_TRIMESH = """
import contextlib, io, json, runpy, sys
sys.modules["trimesh"] = None
sys.argv = ["gap-mllm", *json.loads(sys.argv[1])]
err = io.StringIO()
try:
    with contextlib.redirect_stderr(err):
        runpy.run_module("gap_mllm.cli.main", run_name="__main__")
    status = 0
except SystemExit as stop:
    status = stop.code
print(json.dumps({"status": status, "err": err.getvalue(), "torch": "torch" in sys.modules}))
"""


def test_formats_glb_without_trimesh_is_one_line_naming_the_extra_before_the_model(tmp_path):
    """The one format a plain install cannot write: refused in one line naming the `glb` extra, exit 2, before torch
    (so before the model) and with nothing written; a plain `--out` does not ask for it."""
    from gap_mllm.cli.command_arguments import DEFAULT_SAVE_FORMATS

    assert "glb" not in DEFAULT_SAVE_FORMATS and '"glb": ["trimesh>=4"]' in (REPO / "setup.py").read_text()
    argv = ["predict", "--example", "synthetic room A", "--task", "detection", "--out", "saved",
            "--formats", "png", "glb"]
    done = subprocess.run([sys.executable, "-c", GLB_WITHOUT_TRIMESH, json.dumps(argv)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=300)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["status"] == 2 and result["torch"] is False, result
    assert result["err"].splitlines() == [
        "gap-mllm predict: error: --formats glb needs trimesh, which a plain install leaves out: pip install "
        "'gap-mllm[glb]' (or pip install trimesh), or leave glb out of --formats"], result["err"]
    assert list(tmp_path.iterdir()) == []
