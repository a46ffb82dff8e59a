"""The installed folders are layers: a folder imports only the folders of the layers below it, and no import,
at the top of a module or inside a function, goes up a layer or closes a cycle (between folders or modules).

    layer  folder (import name)                what it is                           may import
    0      modeling_gap_mllm (gap_mllm)        the Hub folder: model, processor,    nothing of the package: it is
                                               task registry                        copied next to the weights
    1      tiny, processing                    test models; multi-view data         layer 0
    2      evaluation                          metrics and runners: score any       0-1 (reads processing's data)
                                               model on processing's data
    3      training                            trains a model, and scores it        0-2 (logs evaluation's metrics
                                               while it trains                      as it trains)
    4      mini                                GAP-MLLM-Mini: its config,           0-3
                                               tokenizer and shipped folder
    5      serving                             the encoder half for engines,        0-4
                                               export-llm, vLLM requests
    6      cli                                 the gap-mllm command, the Space      0-5
    7      evaluation/lmms_eval_plugin         lmms-eval's `gap_mllm` model and     everything
           (gap_mllm.evaluation.lmms_eval_     tasks: a front end for the harness,
           plugin)                             loading models as the CLI does
    —      lab (lab, not installed)            the research pipelines, run from a   every installed module; no
                                               checkout (`python -m lab.mini`)      installed module imports it

Evaluation sits below training because scoring needs no knowledge of how a model was trained, while a training
run logs the evaluation's metrics (as Trainer logs `compute_metrics`); the pieces both use (the clip collator)
live in processing. Training builds a fresh "mini" through an entry point (training/model_loading.py), not an
import. Each module's imports are read with `ast`, function-local ones included. The lab's imports of the package
name only modules the package installs (tests/test_installed_modules.py: the wheel holds none of the lab).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# folder -> import name (setup.py's PACKAGE_DIRS), in layer order
IMPORT_NAMES = {"modeling_gap_mllm": "gap_mllm", "tiny": "gap_mllm.tiny", "processing": "gap_mllm.processing",
                "evaluation": "gap_mllm.evaluation", "training": "gap_mllm.training", "mini": "gap_mllm.mini",
                "serving": "gap_mllm.serving", "cli": "gap_mllm.cli",
                "evaluation/lmms_eval_plugin": "gap_mllm.evaluation.lmms_eval_plugin"}
LAYERS = {"modeling_gap_mllm": 0, "tiny": 1, "processing": 1, "evaluation": 2, "training": 3, "mini": 4, "serving": 5,
          "cli": 6, "evaluation/lmms_eval_plugin": 7}
LAB = "lab"  # folder and import name of the research pipelines: not installed (setup.py), run from a checkout
OWN_NAMES = ("gap_mllm", LAB)  # the top-level import names whose imports are read


def module_files(root: Path, import_names: dict[str, str] = IMPORT_NAMES) -> dict[str, tuple[Path, str]]:
    """{module name: (file, folder)} of every module of the folders `import_names` names (default: the installed
    ones) under `root`."""
    modules = {}
    for folder, package in import_names.items():
        nested = [other for other in import_names if other.startswith(folder + "/")]  # a layer of its own
        for path in sorted((root / folder).rglob("*.py")):
            if any((root / other) in path.parents for other in nested):
                continue
            if path.is_symlink():  # the shipped Hub folder's links (mini/gap-mllm-mini) are modeling_gap_mllm's modules
                continue
            parts = [part for part in path.relative_to(root / folder).with_suffix("").parts if part != "__init__"]
            modules[".".join([package, *parts])] = (path, folder)
    return modules


def folder_of(module: str) -> str:
    """The folder a `gap_mllm...` (or `lab...`) module name lives in."""
    if module.split(".")[0] == LAB:
        return LAB
    for folder, package in sorted(IMPORT_NAMES.items(), key=lambda item: -len(item[1])):
        if module == package or module.startswith(package + "."):
            return folder
    raise ValueError(module)


def imports_of(module: str, path: Path, modules: dict) -> list[tuple[int, str]]:
    """`(line, imported module)` for every import of the package's own modules and of the lab's in `path`, wherever it
    stands. `from a import b` names the module `a.b` when that is one (`from gap_mllm import training`), else `a`."""
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: None if is_package else -1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            names = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source for alias in node.names]
        else:
            continue
        found += [(node.lineno, name) for name in names if name.split(".")[0] in OWN_NAMES]
    return found


@functools.lru_cache(maxsize=None)
def import_graph(root: Path) -> tuple[dict, dict]:
    """(modules, {module: [(line, imported module)]}) of the installed folders under `root`."""
    modules = module_files(root)
    return modules, {name: imports_of(name, path, modules) for name, (path, _) in modules.items()}


@functools.lru_cache(maxsize=None)
def lab_graph(root: Path) -> tuple[dict, dict]:
    """(modules, {module: [(line, imported module)]}) of the lab under `root` (not installed)."""
    installed, _ = import_graph(root)
    modules = module_files(root, {LAB: LAB})
    known = {**installed, **modules}
    return modules, {name: imports_of(name, path, known) for name, (path, _) in modules.items()}


def layering_violations(root: Path) -> list[str]:
    modules, graph = import_graph(root)
    out = []
    for name, edges in graph.items():
        path, folder = modules[name]
        for line, target in edges:
            other = folder_of(target)
            if other == LAB:
                out.append(f"{path.relative_to(root)}:{line} imports {target}: {folder} is installed, the lab is not")
            elif other != folder and LAYERS[other] >= LAYERS[folder]:
                out.append(f"{path.relative_to(root)}:{line} imports {target}: {folder} (layer {LAYERS[folder]}) may not "
                           f"import {other} (layer {LAYERS[other]})")
    return out


def lab_violations(root: Path) -> list[str]:
    """The lab's imports of a module that the package does not install, or that the lab does not hold."""
    installed, _ = import_graph(root)
    modules, graph = lab_graph(root)
    out = []
    for name, edges in graph.items():
        for line, target in edges:
            if target not in installed and target not in modules:
                holder = "the package does not install" if target.split(".")[0] == "gap_mllm" else "the lab does not hold"
                out.append(f"{modules[name][0].relative_to(root)}:{line} imports {target}, which {holder}")
    return out


def cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def folder_edges(root: Path) -> dict[str, set[str]]:
    modules, graph = import_graph(root)
    edges = {folder: set() for folder in IMPORT_NAMES}
    for name, imports in graph.items():
        edges[modules[name][1]].update(folder_of(target) for _, target in imports)
    for folder, targets in edges.items():
        targets.discard(folder)
    return edges


def module_edges(root: Path, graph_of=import_graph) -> dict[str, set[str]]:
    """Module → the modules it imports (a package's own `__init__` left out: importing a submodule runs it anyway),
    among the installed modules (`graph_of`: `import_graph`) or the lab's (`lab_graph`)."""
    modules, graph = graph_of(root)
    return {name: {target for _, target in imports if target in modules and target != name and not name.startswith(target + ".")}
            for name, imports in graph.items()}


# ------------------------------------------------------------------------------------------------ tests


def test_the_parser_sees_every_folder_and_its_imports():
    modules, graph = import_graph(REPO)
    assert len(modules) > 150 and {folder for _, folder in modules.values()} == set(IMPORT_NAMES)
    # a function-local import is read like a top one (the lazy optional imports stand inside functions)
    assert ("gap_mllm.evaluation.in_memory" in {target for _, target in graph["gap_mllm.training.generation_eval"]})
    assert folder_edges(REPO)["training"] >= {"modeling_gap_mllm", "processing", "evaluation", "tiny"}


def test_no_import_goes_against_the_layering():
    assert layering_violations(REPO) == []


def test_no_cycle_between_folders_or_between_modules():
    assert cycle(folder_edges(REPO)) is None
    assert cycle(module_edges(REPO)) is None
    assert cycle(module_edges(REPO, lab_graph)) is None


def test_the_lab_imports_only_what_the_package_installs_and_nothing_installed_imports_it():
    """The lab (lab/, not installed) may import any installed module; an import of a module the package does not
    install (one that moved into the lab, say) or of an installed module of the lab fails here."""
    modules, graph = lab_graph(REPO)
    assert {"lab.mini", "lab.mini.pipeline", "lab.mini.ablation", "lab.mini.export"} <= set(modules)
    assert {"gap_mllm.training.run", "gap_mllm.mini.default_model"} <= {target for _, target in graph["lab.mini.pipeline"]
                                                                       + graph["lab.mini.export"]}
    assert lab_violations(REPO) == []
    installed, installed_graph = import_graph(REPO)
    assert not any(name.split(".")[0] == LAB for name in installed)
    assert [f"{name} imports {target}" for name, edges in installed_graph.items() for _, target in edges
            if folder_of(target) == LAB] == []


# The function-local imports of the package's own modules, each keeping an optional dependency out of a command
# that runs without it (the comment beside each import says so); any other one would be hiding a cycle.
LAZY_FOR_OPTIONAL_DEPENDENCIES = {
    "cli/predict.py": "datasets, through the evaluation package that the pictures import (--out)",
    "cli/space.py": "gradio and datasets: the Space's modules, after the check that gradio is there",
    "modeling_gap_mllm/modeling_gap_mllm.py": "the converter behind `from_qwen3_vl` (VGGT checkpoints, the Hub probe): "
                                              "installed with the package, never copied into a model folder",
    "processing/tasks/captioning.py": "the builders' shared features (datasets), for its builder: the task's scoring "
                                      "runs without the data extra",
    "processing/tasks/detection.py": "the builders' shared features (datasets), for its builder: the task's scoring "
                                     "runs without the data extra",
    "processing/tasks/grounding.py": "the builders' shared features (datasets), for its stages' builders: the task's "
                                     "scoring runs without the data extra",
}
# ... and the ones keeping torch and transformers out of `import gap_mllm` and of the light modules that
# `gap-mllm --help` reads (tests/test_cli_startup.py): package exports on first use, the registry's stop criterion,
# and scipy out of every command's --help but `evaluate`'s.
LAZY_FOR_START_UP = {
    "modeling_gap_mllm/__init__.py": "the model, config and processor classes, on first use (and their registration)",
    "training/__init__.py": "the training exports (torch, transformers, accelerate), on first use",
    "cli/command_arguments.py": "the benchmarks' names of `evaluate` (the evaluation package imports scipy)",
    "cli/main.py": "the early checks (numpy, PIL, huggingface_hub), once a command's arguments parsed: --help and an "
                   "argument mistake import none of them",
    "training/checkpoints.py": "the model folder's names of the earlier layout (transformers), when weights are read: "
                              "the commands' --help read this module",
    "processing/tasks/reconstruction.py": "the marker check (scannet_layout: PIL), when a record is built: the "
                                          "commands' --help read the task modules",
}


def test_function_local_imports_are_of_optional_dependencies_only():
    """A function-local import of the package's own modules is how a cycle hides; the lazy imports left are of
    optional dependencies (matplotlib, pycocoevalcap, peft, accelerate, gradio, av, trimesh), or of the package's
    modules that need one (`LAZY_FOR_OPTIONAL_DEPENDENCIES`), or keep torch out of start-up (`LAZY_FOR_START_UP`).
    The cycle check above reads them all the same."""
    modules, _ = import_graph(REPO)
    local = []
    for name, (path, _) in modules.items():
        for function in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(function):
                    if isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").split(".")[0] == "gap_mllm"):
                        local.append(f"{path.relative_to(REPO)}:{node.lineno}")
                    if isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "gap_mllm" for alias in node.names):
                        local.append(f"{path.relative_to(REPO)}:{node.lineno}")
    allowed = {**LAZY_FOR_OPTIONAL_DEPENDENCIES, **LAZY_FOR_START_UP}
    assert sorted({place.split(":")[0] for place in local}) == sorted(allowed), local
    expected = {place: 1 for place in allowed}  # one import each
    assert len(local) == sum(expected.values()), local


def test_the_checks_catch_an_upward_import_a_cycle_and_the_lab_crossed(tmp_path):
    """The same checks on a copy of the layout with one import going up (processing → training), one pair of
    modules importing each other, an installed module importing the lab, and lab modules importing a module the
    package does not install and one the lab does not hold."""
    for folder in IMPORT_NAMES:
        (tmp_path / folder).mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "processing" / "upward.py").write_text("def f():\n    from gap_mllm.training import run\n")
    (tmp_path / "training" / "run.py").write_text("from gap_mllm.processing import upward\n")
    (tmp_path / "evaluation" / "a.py").write_text("from . import b\n")
    (tmp_path / "evaluation" / "b.py").write_text("def f():\n    from .a import x\n")
    (tmp_path / "cli" / "research.py").write_text("from lab.mini.pipeline import main\n")
    (tmp_path / "lab" / "mini").mkdir(parents=True)
    (tmp_path / "lab" / "__init__.py").write_text("")
    (tmp_path / "lab" / "mini" / "__init__.py").write_text("")
    (tmp_path / "lab" / "mini" / "pipeline.py").write_text("from gap_mllm.training import run\nfrom .report import x\n")
    (tmp_path / "lab" / "mini" / "moved.py").write_text("from gap_mllm.mini.pipeline import main\n")
    assert layering_violations(tmp_path) == [
        "processing/upward.py:2 imports gap_mllm.training.run: processing (layer 1) may not import training (layer 3)",
        "cli/research.py:1 imports lab.mini.pipeline: cli is installed, the lab is not"]
    assert lab_violations(tmp_path) == ["lab/mini/moved.py:1 imports gap_mllm.mini.pipeline, which the package does "
                                        "not install",
                                        "lab/mini/pipeline.py:2 imports lab.mini.report, which the lab does not hold"]
    assert cycle(folder_edges(tmp_path)) == ["processing", "training", "processing"]
    assert cycle(module_edges(tmp_path)) == ["gap_mllm.evaluation.a", "gap_mllm.evaluation.b", "gap_mllm.evaluation.a"]


def test_training_finds_the_mini_through_its_entry_point():
    """`model.tiny: mini` without training importing mini: the builder is declared as an entry point (setup.py)."""
    from gap_mllm.mini.mini_config import build_mini_model
    from gap_mllm.tiny.tiny_model import build_tiny_model
    from gap_mllm.training.model_loading import fresh_model_builder, fresh_sizes

    assert fresh_sizes() == ("tiny", "small", "mini")
    assert fresh_model_builder("mini") is build_mini_model
    small = fresh_model_builder("small")
    assert small.func is build_tiny_model and small.keywords == {"size": "small"}
    with pytest.raises(ValueError, match=r"model.tiny='huge'; choose from \('tiny', 'small', 'mini'\)"):
        fresh_model_builder("huge")
