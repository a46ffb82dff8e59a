"""The example notebooks run top to bottom on the embedded GAP-MLLM-Mini (their own asserts check the results):
01 answers every task of a bundled room next to the exact answer and the held-out score, and builds the
real-size model on the meta device; 02 fine-tunes the mini with LoRA; 03 evaluates it."""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="pip install nbformat nbclient ipykernel (dev extra)")
nbclient = pytest.importorskip("nbclient", reason="pip install nbformat nbclient ipykernel (dev extra)")

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "examples" / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == ["01_inference.ipynb", "02_finetune_lora.ipynb", "03_evaluation.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    assert not any(cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), "commit without outputs"
    client = nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors
    assert any(o.output_type == "stream" for o in outputs)
    if path.name == "01_inference.ipynb":  # real answers, each next to the reference and the held-out score
        printed = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
        assert printed.count("held-out") >= 4 and printed.count("truth") >= 4, printed[-3000:]
