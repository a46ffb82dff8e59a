"""The example notebooks run top to bottom on the embedded GAP-MLLM-Mini (their own asserts check the results):
01 answers every task of a bundled room next to the exact answer and the held-out score, and builds the
real-size model on the meta device; 02 fine-tunes the mini with LoRA; 03 evaluates it.

They are committed with the outputs of a run (`make notebooks`, examples/notebooks/execute_notebooks.py). The run
here starts from cleared outputs (the same function as `make notebooks`) and compares nothing that varies between
runs; the stored outputs are checked for what a reader relies on: every code cell ran, none failed, and nothing
names this machine's folders or changes on every run (timestamps, progress bars)."""

import importlib.util
import json
import os
import tempfile
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel (dev extra)")

FOLDER = Path(__file__).resolve().parent.parent / "examples" / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.ipynb"))
MAX_NOTEBOOK_BYTES = 200_000  # outputs stay small: text and small PNGs, no printed tensors


def runner():
    """examples/notebooks/execute_notebooks.py, the code `make notebooks` runs (examples are not a package)."""
    spec = importlib.util.spec_from_file_location("execute_notebooks", FOLDER / "execute_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_inference.ipynb", "02_finetune_lora.ipynb", "03_evaluation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = runner().execute_notebook(path, tmp_path)  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
    assert any(o.output_type == "stream" for o in outputs)
    if path.name == "01_inference.ipynb":  # real answers, each next to the reference and the held-out score
        printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert printed.count("held-out") >= 4 and printed.count("truth") >= 4, printed[-3000:]


def test_the_run_ignores_stored_outputs(tmp_path):
    """A stored output (even an error) never reaches the run: execute_notebook starts from cleared cells."""
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1 + 1)")])
    notebook.cells[0].outputs = [nbformat.v4.new_output("error", ename="E", evalue="stale", traceback=[])]
    notebook.cells[0].execution_count = 7
    path = tmp_path / "n.ipynb"
    nbformat.write(notebook, path)
    ran = runner().execute_notebook(path, tmp_path)
    assert [(o.output_type, o.text) for o in ran.cells[0].outputs] == [("stream", "2\n")]
    assert ran.cells[0].execution_count == 1 and "execution" not in ran.cells[0].metadata  # no timestamps stored


def test_machine_folders_become_placeholders(tmp_path):
    module = runner()
    home = str(Path.home())
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    notebook.cells[0].outputs = [
        nbformat.v4.new_output("stream", name="stderr", text=f"{tmp_path}/eval\n{home}/.cache/x\n{module.REPO}/cli/a.py\n"),
        nbformat.v4.new_output("execute_result", data={"text/plain": f"'{tmp_path}'"}, execution_count=1),
    ]
    cleaned = module.without_machine_folders(notebook, tmp_path)
    assert cleaned.cells[0].outputs[0].text == "<scratch>/eval\n~/.cache/x\n<checkout>/cli/a.py\n"
    assert cleaned.cells[0].outputs[1].data["text/plain"] == "'<scratch>'"


def test_progress_bars_are_not_stored():
    """They differ on every run; the warnings and prints around them stay."""
    module = runner()
    bar = "Loading weights:  82%|████████▏ | 509/623 [00:00<00:00, 4958.90it/s]\rLoading weights: 100%|██████████| 623/623"
    outputs = [nbformat.v4.new_output("stream", name="stderr", text=bar + " [00:00<00:00, 5076.00it/s]\n"),
               nbformat.v4.new_output("stream", name="stderr", text="\n"),
               nbformat.v4.new_output("stream", name="stderr", text="max_new_tokens lowered\n"),
               nbformat.v4.new_output("stream", name="stdout", text="100%|██| 1/1 [00:00<00:00]\n")]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("")])
    notebook.cells[0].outputs = outputs
    kept = module.without_progress_bars(notebook).cells[0].outputs
    assert [o.text for o in kept] == ["max_new_tokens lowered\n", "100%|██| 1/1 [00:00<00:00]\n"]  # stdout is the cell's own


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_holds_the_outputs_of_a_full_run(path):
    """`make notebooks` stored them: every code cell ran in order with its outputs, none failed, the file is small and
    names none of this machine's folders."""
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run `make notebooks`"
    assert any(cell.outputs for cell in code)
    assert not [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert path.stat().st_size < MAX_NOTEBOOK_BYTES
    text = path.read_text(encoding="utf-8")
    folders = {str(Path.home()), str(runner().REPO), tempfile.gettempdir(), os.getcwd()} - {"/"}
    assert not [folder for folder in folders if folder in text], "machine folders in the stored outputs"
    assert '"execution": {' not in json.dumps(json.loads(text)["cells"]), "execution timestamps stored"
    assert not [o for cell in code for o in cell.outputs if runner().is_progress_output(o)], "progress bars stored"
    # no warning: a fixed cause, or a filter saying why (execute_notebooks.KERNEL_WARNINGS)
    assert not [o for cell in code for o in cell.outputs if "Warning" in o.get("text", "")], "a warning stored"
