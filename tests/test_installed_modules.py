"""What a wheel of this checkout installs: the package (`gap_mllm` and its sub-packages, setup.py's PACKAGE_DIRS), and
none of the repository's research pipelines (lab/, run from a checkout as `python -m lab.mini`). The module list is
setup.py's own: its `packages` and `package_dir` as setuptools' `build_py` reads them for a wheel (the same modules and
package data, without building one)."""

from __future__ import annotations

import runpy
from pathlib import Path
from unittest import mock

import pytest
import setuptools
from setuptools.dist import Distribution

REPO = Path(__file__).resolve().parents[1]
LAB = REPO / "lab"
# what the installed `gap_mllm.mini` keeps: GAP-MLLM-Mini's config and tokenizer, how a folder is known as a Mini, and
# the shipped folder's loader (`default_model_path`)
MINI_MODULES = {"__init__", "default_model", "identity", "mini_config"}


@pytest.fixture(scope="module")
def build_py():
    """`([(package, module, file)], [(package, data file)])`: the modules and package data that setuptools'
    `build_py` command of setup.py copies into a wheel."""
    arguments = {}
    # setup.py calls `setup(...)` when run: keep what it passes instead of building
    with mock.patch.object(setuptools, "setup", lambda **given: arguments.update(given)):
        runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    # the folders as absolute paths: setup.py's are relative to the repository, where pip runs it
    arguments["package_dir"] = {name: str(REPO / folder) for name, folder in arguments["package_dir"].items()}
    distribution = Distribution(arguments)
    distribution.script_name = str(REPO / "setup.py")
    command = distribution.get_command_obj("build_py")
    command.ensure_finalized()
    modules = [(package, module, Path(file).resolve()) for package, module, file in command.find_all_modules()]
    data = [(package, Path(source, name)) for package, source, _, names in command.data_files for name in names]
    return modules, data


def test_the_wheel_holds_no_module_or_file_of_the_lab(build_py):
    modules, data = build_py
    lab_modules = sorted(path for path in LAB.rglob("*.py") if "__pycache__" not in path.parts)
    assert len(lab_modules) > 20 and (LAB / "mini" / "pipeline.py") in lab_modules
    assert len(modules) > 150
    assert [f"{package}.{module}" for package, module, path in modules if LAB in path.parents] == []
    assert [str(path) for _, path in data if LAB in path.parents or LAB in path.resolve().parents] == []
    assert sorted({package for package, _, _ in modules if not package.startswith("gap_mllm")}) == []
    assert {path for _, _, path in modules}.isdisjoint(lab_modules)


def test_the_installed_mini_is_the_model_not_its_research_pipeline(build_py):
    """`gap_mllm.mini` installs the Mini users load (config, tokenizer, `default_model_path`, the shipped folder as
    package data), and nothing of `make mini`'s pipeline (lab/mini/)."""
    modules, data = build_py
    assert {module for package, module, _ in modules if package == "gap_mllm.mini"} == MINI_MODULES
    assert sorted(package for package, _, _ in modules if package.startswith("gap_mllm.mini.")) == []
    shipped = {path.relative_to(REPO / "mini") for package, path in data if package == "gap_mllm.mini"}
    assert {Path("README.md"), Path("RESULTS.md"), Path("gap-mllm-mini/config.json"),
            Path("gap-mllm-mini/model.safetensors.index.json")} <= shipped, sorted(map(str, shipped))
    moved = {path.stem for path in (LAB / "mini").glob("*.py")} - {"__init__", "__main__"}
    assert moved and moved.isdisjoint(MINI_MODULES)
