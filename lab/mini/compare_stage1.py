"""Two stage-1 models on the same marker samples: the paired difference of their median point errors.

The ablation's tables give each arm's median with its own interval; whether one arm is better than another
on the same samples is a paired question (what the samples share, e.g. a hard scene, cancels):

    python -m lab.mini.compare_stage1 --data runs/mini/data \\
        runs/A/results/gap_gated_s0/reconstruction runs/B/results/gap_gated_s0/reconstruction

prints A − B (metres, negative: A is closer) with its 95 % paired-bootstrap interval, overall and for markers
in the first frame and in the other frames (evaluation/marker_metrics.py, `paired_marker_difference`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gap_mllm.evaluation.marker_metrics import paired_marker_difference

from .sample_rows import marker_answers


def compare_stage1(folder_a: Path, folder_b: Path, data: Path, split: str = "test") -> dict:
    """`paired_marker_difference` of the marker-task evaluations in `folder_a` and `folder_b` (runner output
    folders holding samples.jsonl) on the same records of `split`."""
    a, b = (marker_answers(Path(folder) / "samples.jsonl", data, split) for folder in (folder_a, folder_b))
    if a["ids"] != b["ids"]:
        raise ValueError(f"{folder_a} and {folder_b} did not answer the same marker samples in the same order "
                         f"({len(a['ids'])} and {len(b['ids'])} rows): evaluate both with the same --split and --limit")
    return {"a": str(folder_a), "b": str(folder_b), "split": split,
            **paired_marker_difference(a["predictions"], b["predictions"], a["answers"], a["marked_frames"])}


def pair_parser(description: str, folder_help: str) -> argparse.ArgumentParser:
    """The command line of a paired comparison: folders A and B, the data both were evaluated on, the split."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("a", type=Path, help=f"{folder_help} of model A")
    parser.add_argument("b", type=Path, help=f"{folder_help} of model B")
    parser.add_argument("--data", type=Path, required=True, help="the SynthRooms data both were evaluated on")
    parser.add_argument("--split", default="test")
    return parser


def main(argv=None) -> dict:
    parser = pair_parser(__doc__.split("\n\n")[0], "marker-task evaluation folder (holds samples.jsonl)")
    args = parser.parse_args(argv)
    for folder in (args.a, args.b):
        if not (folder / "samples.jsonl").is_file():
            parser.error(f"{folder} holds no samples.jsonl (a `gap-mllm evaluate --task reconstruction` output folder)")
    result = compare_stage1(args.a, args.b, args.data, args.split)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
