"""Every public name that moved since version 0.1.0 answers with an error naming its new home, and that home holds
it (gap_mllm/moved_names.py): modules, names of a module, methods; names that never existed keep Python's errors."""

import importlib
import re
from pathlib import Path

import pytest

from gap_mllm import moved_names
from gap_mllm.moved_names import MOVED_METHODS, MOVED_MODULES, MOVED_NAMES

ROOT = Path(__file__).resolve().parents[1]


def _resolve(dotted: str):
    """The object a dotted path names, importing its longest module prefix."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part)
        return value
    raise ModuleNotFoundError(dotted)


@pytest.mark.parametrize("old", sorted(MOVED_MODULES))
def test_a_moved_module_names_its_new_home_however_it_is_imported(old):
    parent, _, name = old.rpartition(".")
    said = moved_names.moved_name(parent, name)
    expected = f"{old} is no module of gap-mllm any more: {said}"
    with pytest.raises(ModuleNotFoundError) as imported:
        importlib.import_module(old)
    assert str(imported.value) == expected
    parent_module = importlib.import_module(parent)
    if name not in vars(parent_module):  # gap_mllm.evaluation.box_iou is the function its package re-exports
        with pytest.raises(ModuleNotFoundError) as from_imported:
            exec(f"from {parent} import {name}", {})
        assert str(from_imported.value) == expected
        with pytest.raises(ModuleNotFoundError) as attribute:
            getattr(parent_module, name)
        assert str(attribute.value) == expected
    # the home it names exists: a module of the package, or the lab's file in the repository
    home = re.search(r"\b(gap_mllm(?:\.\w+)+|lab\.mini\.\w+)", said)
    if home is not None and home.group(1).startswith("lab."):
        assert (ROOT / (home.group(1).replace(".", "/") + ".py")).is_file()
    elif home is not None:
        importlib.import_module(home.group(1))


# (module, old name, new home, new name): "old=new" in the table is a name renamed as it moved
NAME_MOVES = [(module, entry.partition("=")[0], home, entry.partition("=")[2] or entry)
              for module, homes in sorted(MOVED_NAMES.items()) for home, names in homes.items() for entry in names.split()]


@pytest.mark.parametrize("module, old, home, new", NAME_MOVES)
def test_a_moved_name_names_its_new_home_which_holds_it(module, old, home, new):
    expected = f"{module}.{old} has moved: from {home} import {new}"
    with pytest.raises(ImportError) as from_imported:
        exec(f"from {module} import {old}", {})
    assert str(from_imported.value) == expected
    with pytest.raises(ImportError) as attribute:
        getattr(importlib.import_module(module), old)
    assert str(attribute.value) == expected
    assert getattr(importlib.import_module(home), new) is not None


@pytest.mark.parametrize("module, class_name, method", sorted(MOVED_METHODS))
def test_a_moved_method_names_its_new_home_which_exists(module, class_name, method):
    home = MOVED_METHODS[(module, class_name, method)]
    owner = getattr(importlib.import_module(module), class_name)
    with pytest.raises(AttributeError) as on_class:
        getattr(owner, method)
    assert str(on_class.value) == f"{class_name}.{method} has moved: call {home}"
    target = home.split("(")[0]
    if target.startswith("gap_mllm."):
        assert callable(_resolve(target))


def test_the_moved_methods_of_the_issue_raise_on_an_instance_too(build_model):
    """`model.encode_images(...)` and `Box3D.corners()` on an instance: AttributeError naming the new home when called
    (an nn.Module words a failed attribute lookup itself, so the stub raises when called)."""
    from gap_mllm.tasks_gap_mllm import Box3D

    tiny_model = build_model()
    with pytest.raises(AttributeError, match=r"^GapMllmForConditionalGeneration.encode_images has moved: call "
                                             r"gap_mllm.speedups.encode_images\(model, ...\)$"):
        tiny_model.encode_images(None)
    with pytest.raises(AttributeError, match=r"^Box3D.corners has moved: call gap_mllm.processing.coordinates."):
        Box3D("chair", (0.0, 0.0, 2.0), (1.0, 1.0, 1.0)).corners()
    with pytest.raises(AttributeError, match=r"^GapMllmGeometryEncoder.from_vggt_state_dict has moved: call "
                                             r"gap_mllm.convert_vggt_to_hf.load_vggt_encoder\(state_dict, config\)$"):
        type(tiny_model.geometry_encoder).from_vggt_state_dict({})


def test_names_that_never_existed_keep_pythons_own_errors():
    import gap_mllm
    import gap_mllm.evaluation

    with pytest.raises(ModuleNotFoundError, match=r"^No module named 'gap_mllm.no_such_module'$"):
        importlib.import_module("gap_mllm.no_such_module")
    with pytest.raises(AttributeError, match=r"^module 'gap_mllm' has no attribute 'no_such_name'$"):
        gap_mllm.no_such_name  # noqa: B018
    with pytest.raises(ImportError, match=r"^cannot import name 'no_such_name' from 'gap_mllm.evaluation'"):
        exec("from gap_mllm.evaluation import no_such_name", {})
    assert not hasattr(gap_mllm.evaluation, "no_such_name")
    assert callable(gap_mllm.evaluation.box_iou)  # a function re-exported under a moved module's name still is one
