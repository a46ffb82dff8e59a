"""Run the example notebooks top to bottom and store their outputs in them (`make notebooks`).

    python examples/notebooks/execute_notebooks.py examples/notebooks/*.ipynb

Each notebook starts from no outputs, runs in a fresh kernel in a scratch folder (what it writes stays out of the
checkout) and is written back with the outputs of this run, so the repository view shows what a run on the
embedded GAP-MLLM-Mini prints. Kept small, free of this machine and of what changes on every run: no execution
timestamps, no progress bars, and the machine's folders in the outputs (the scratch folder, the checkout, the user's
home) replaced by placeholders.
tests/test_notebooks.py executes the notebooks with the same function and checks the stored outputs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 600  # per cell
# The kernel's warnings filter (PYTHONWARNINGS). tqdm.auto warns "IProgress not found" in a kernel without ipywidgets,
# which only its notebook progress bars use; a run's progress bars are not stored (without_progress_bars), and
# ipywidgets would store widget state in the file instead, so the note says nothing about the notebook's results
# (stored outputs carry no warning). A message filter, so the kernel imports nothing at start-up for it.
KERNEL_WARNINGS = "ignore:IProgress not found"
# a tqdm progress line, e.g. "Loading weights: 100%|██████████| 623/623 [00:00<00:00, 6338.68it/s]"
PROGRESS_LINE = re.compile(r"^.*\d+%\|.*\|\s*\d+/\d+ \[.*\]\s*$")


def clear_outputs(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop every stored output and execution count: a run never reads what a previous one left."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            cell.metadata.pop("execution", None)
    return notebook


def execute_notebook(path: Path, workdir: Path) -> nbformat.NotebookNode:
    """The notebook at `path`, cleared and executed in a fresh python3 kernel whose working folder is `workdir`.

    Raises nbclient's CellExecutionError (with the failing cell's traceback) when a cell fails."""
    notebook = clear_outputs(nbformat.read(path, as_version=4))
    client = nbclient.NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute(env={**os.environ, "PYTHONWARNINGS": KERNEL_WARNINGS})
    return notebook


def machine_folders(workdir: Path) -> dict[str, str]:
    """This machine's folders that may show up in outputs, longest first, with the placeholder written instead."""
    folders = {str(workdir): "<scratch>", str(Path(tempfile.gettempdir())): "<tmp>", str(REPO): "<checkout>",
               str(Path.home()): "~"}
    return dict(sorted(folders.items(), key=lambda item: -len(item[0])))


def without_machine_folders(notebook: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """Replace this machine's folders in the text outputs (streams, plain-text results, tracebacks)."""
    folders = machine_folders(workdir)

    def clean(text: str) -> str:
        for folder, placeholder in folders.items():
            text = text.replace(folder, placeholder)
        return text

    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if "text" in output:
                output.text = clean(output.text)
            for mime in ("text/plain", "text/html"):
                if mime in output.get("data", {}):
                    output.data[mime] = clean(output.data[mime])
    return notebook


def is_progress_output(output) -> bool:
    """A stderr stream holding only progress bars (or blank lines): its rates and times differ on every run."""
    if output.get("output_type") != "stream" or output.get("name") != "stderr":
        return False
    return all(not line.strip() or PROGRESS_LINE.match(line) for line in re.split(r"[\r\n]", output.get("text", "")))


def without_progress_bars(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Drop the progress-bar outputs, so that a new run changes the stored notebook only where its results do."""
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not is_progress_output(output)]
    return notebook


def stored_form(notebook: nbformat.NotebookNode, workdir: Path) -> nbformat.NotebookNode:
    """What `make notebooks` writes back: the run's outputs without progress bars and machine folders."""
    return without_machine_folders(without_progress_bars(notebook), workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path, help="notebooks to run and rewrite in place")
    args = parser.parse_args(argv)
    for path in args.notebooks:
        if not path.is_file():
            parser.error(f"{path}: no such notebook")
    for path in args.notebooks:
        with tempfile.TemporaryDirectory(prefix="notebook-") as scratch:
            notebook = stored_form(execute_notebook(path, Path(scratch)), Path(scratch))
        nbformat.write(notebook, path)
        print(f"ran and stored the outputs of {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
