"""The trivial baselines of a shipped GAP-MLLM-Mini, scored again on the samples its model answered.

A release evaluates its model on the first `--eval-limit` test samples of each task (the runners take
`records[:limit]`), and the pipeline now scores the baselines on the same samples (`compute_baselines`, and on the
fresh seeds `fresh_seeds.baselines`). A release made before scored them on every test record: its marker baseline
read 3,840 samples where the model answered 1,000 (and 4,320 fresh-seed samples where it answered 3,000). This
module scores a shipped folder's baselines again, with the pipeline's own functions, on the data it was evaluated on
(SynthRooms is deterministic: `gap-mllm synth` with the release's settings writes the same scenes, and the fresh
seeds' scenes are written when missing), and writes them into the folder's `evaluation_results.json`, its model card
and the results table. The model rows stay as the release measured them; the release decision, which reads only the
grounding baseline (under the limit already), is kept.

    gap-mllm synth --preset mini --scenes 1200 --val-scenes 60 --test-scenes 240 --out runs/mini/data --workers 2
    python -m lab.mini.shipped_baselines --model mini/gap-mllm-mini --data runs/mini/data --out runs/mini6 \\
        --eval-limit 1000 --table mini/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from gap_mllm.evaluation.baselines import all_baselines
from gap_mllm.processing.argument_types import positive_int

from .constrained_row import RESULTS_FILE, write_shipped_results
from .fresh_seeds import baselines as fresh_seed_baselines
from .fresh_seeds import fresh_data


def rescore_baselines(model: Path, data: Path, out: Path, eval_limit: int | None, table: Path | None = None) -> dict:
    """Score the baselines of the shipped folder `model` on the first `eval_limit` samples of `data`'s test split (and
    of its fresh seeds' scenes under `out`, when its results hold fresh-seed figures), write them into the folder's
    results, card and `table`; returns the new `baselines`."""
    model = Path(model)
    path = model / RESULTS_FILE
    if not path.is_file():
        raise ValueError(f"--model {model}: no {RESULTS_FILE} (not a Mini folder exported with its results)")
    results = json.loads(path.read_text(encoding="utf-8"))
    results["baselines"] = all_baselines(data, "test", limit=eval_limit)
    fresh = results.get("fresh_seeds")
    if fresh is not None:
        for seed in fresh["seeds"]:
            fresh_data(out, seed, fresh["scenes_per_seed"])
        fresh["baselines"] = fresh_seed_baselines(out, data, fresh["seeds"], limit=eval_limit)
    write_shipped_results(model, results, table)
    return results["baselines"]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="the shipped Mini folder (with evaluation_results.json)")
    parser.add_argument("--data", type=Path, required=True, help="the SynthRooms data it was evaluated on")
    parser.add_argument("--out", type=Path, required=True, help="run folder: the fresh seeds' scenes are written here")
    parser.add_argument("--eval-limit", type=positive_int, default=None, help="samples per task, as the release's run took")
    parser.add_argument("--table", type=Path, default=None, help="the results table to rewrite (mini/RESULTS.md)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    found = rescore_baselines(args.model, args.data, args.out, args.eval_limit, args.table)
    marker = found["marker"]["constant_point"]
    print(f"marker baseline on {marker['num_samples']} samples: point {marker['point_error_m_median']:.3f} m, "
          f"label {100 * marker['label_accuracy']:.1f} %")
    return found


if __name__ == "__main__":
    main()
