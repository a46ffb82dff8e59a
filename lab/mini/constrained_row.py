"""The constrained row of a shipped GAP-MLLM-Mini, scored after its release.

`python -m lab.mini --constrained-row` scores the final model a second time, decoding inside each task's answer grammar,
as its own table row. A release exported before that flag existed (or by a run without it) has only the free row:
this module scores the shipped folder itself, on the test split of the data it was evaluated on, with the same
settings as the pipeline (sample limit, batch size, each task's token budget: `evaluate_arm`), and writes the row
into the folder's `evaluation_results.json`, its model card and the results table (`--table`, keeping the section a
refused candidate added there). The free row stays as the release measured it; the constrained one is on the same
test samples (the runners take the first `limit` records of the same split) and says so in its sample counts.

    python -m lab.mini.constrained_row --model mini/gap-mllm-mini --data runs/mini/data \\
        --out runs/release-constrained --eval-limit 1000 --table mini/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import torch

from gap_mllm.loading import load_model
from gap_mllm.mini.default_model import replace_atomically
from gap_mllm.processing.argument_types import positive_int

from .arms import MAIN_ARM
from .card import mini_model_card
from .export import parameter_counts
from .pipeline import MiniRun, constrained_arm, evaluate_final_tasks
from .report import arm_results, results_document

RESULTS_FILE = "evaluation_results.json"


def _replace_file(path: Path, text: str) -> None:
    """Write `path` whole or not at all: a kill leaves the old file or the new one."""
    replace_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))


def add_constrained_row(model: Path, data: Path, out: Path, *, budget: str = "full", eval_limit: int | None = None,
                        eval_batch_size: int | None = None, table: Path | None = None) -> dict:
    """Score `model` (a shipped Mini folder with its `evaluation_results.json`) decoding inside each task's grammar
    on `data`'s test split (answers under `<out>/results/<arm>_constrained/`, skipped where already written), and
    write its row into the folder's results and model card, and `table`. Returns the row."""
    model, out = Path(model), Path(out)
    results_path = model / RESULTS_FILE
    if not results_path.is_file():
        raise ValueError(f"--model {model}: no {RESULTS_FILE} (not a Mini folder exported with its results)")
    results = json.loads(results_path.read_text(encoding="utf-8"))
    if MAIN_ARM.name not in results.get("arms", {}):
        raise ValueError(f"--model {model}: {RESULTS_FILE} has no row of the main arm {MAIN_ARM.name}")
    if results["budget"] != budget:
        raise ValueError(f"--model {model} was evaluated at budget {results['budget']!r}, not {budget!r}: its "
                         "constrained row would be scored with other settings than its free row")
    run = MiniRun(out=out, data=Path(data), budget=budget, device="cpu", eval_limit=eval_limit,
                  eval_batch_size=eval_batch_size, constrained_row=True)
    row_arm = constrained_arm(MAIN_ARM)
    evaluate_final_tasks(run, model, row_arm.name, constrained=True)
    row = arm_results(run, row_arm)
    results["arms"] = {**{name: found for name, found in results["arms"].items() if name != row_arm.name},
                       row_arm.name: row}
    write_shipped_results(model, results, table)
    return row


def write_shipped_results(model: Path, results: dict, table: Path | None = None) -> None:
    """Write `results` as the shipped folder `model`'s `evaluation_results.json`, its model card (the writer's text
    of them: lab/mini/card.py) and, given, the results table `table` (keeping a refused candidate's section), each whole
    or not at all."""
    model = Path(model)
    loaded = load_model(model, dtype=torch.float32)
    _replace_file(model / RESULTS_FILE, json.dumps(results, indent=1))
    _replace_file(model / "README.md", mini_model_card(loaded.config, parameter_counts(loaded), results))
    if table is not None:
        table = Path(table)
        _replace_file(table, results_document(results, table.read_text(encoding="utf-8") if table.is_file() else None))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the shipped Mini folder (with evaluation_results.json)")
    parser.add_argument("--data", type=Path, required=True, help="the SynthRooms data it was evaluated on (its test split)")
    parser.add_argument("--out", type=Path, required=True, help="where the constrained answers are written")
    parser.add_argument("--budget", default="full", help="the budget the release was evaluated at (its settings)")
    parser.add_argument("--eval-limit", type=positive_int, default=None, help="samples per task, as the release's run took")
    parser.add_argument("--eval-batch-size", type=positive_int, default=None)
    parser.add_argument("--table", type=Path, default=None, help="the results table to rewrite (mini/RESULTS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    row = add_constrained_row(args.model, args.data, args.out, budget=args.budget, eval_limit=args.eval_limit,
                              eval_batch_size=args.eval_batch_size, table=args.table)
    print(json.dumps({key: value for key, value in row.items() if not key.endswith("_ci95")}, indent=1))
    return row


if __name__ == "__main__":
    main()
