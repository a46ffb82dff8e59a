"""Which words of a caption the ablation's arms get right (issue 63): a one-off reading of their answers.

    python reports/mini/caption_words.py --run runs/ablation --data runs/mini/data \
        --arms gap_gated_s0 gap_gated_s1 no_geometry_s0 no_geometry_s1 gap_add_s0 gap_gated_stage2_only_s0

CIDEr@0.5 moved by 0.2-0.3 between two seeds of one arm, as much as any claim moved it. CIDEr says how far a caption
is from its references, not which of its words are wrong. SynthRooms' first reference caption of an object reads
"this is a [size] [colour] [texture] category. it is ..." (processing/synth/language.py `captions`), and every
trained Mini answers in that form, so each word of an answer can be read against the truth's: the category (one of
13), the colour (one of 12), the texture ("plain" when none is said) and the size word ("small", "large", or none).

For each arm, on the run's test split and on the ablation's fresh seeds (the answers `python -m lab.mini --ablation`
wrote under `--run`): the share of answers whose word is right, with its Wilson interval, and the difference to the
first of `--arms` on the same samples, with a 95 % interval from a bootstrap over scenes. An answer not in the form
counts as wrong in every word (its count is printed). Prints the markdown table; `--out FILE` also writes the JSON.
The report: reports/mini/claims-in-miniature.md ("What retraining alone moves").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gap_mllm.evaluation.confidence import paired_difference, wilson_interval
from gap_mllm.processing.synth.categories import CATEGORY_NAMES
from gap_mllm.processing.synth.palette import COLOUR_NAMES, TEXTURES

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # lab/, the research pipeline (not installed)
from lab.mini.ablation import ABLATION_FRESH_SEEDS  # noqa: E402
from lab.mini.fresh_seeds import pooled_rows, seed_parts  # noqa: E402

WORDS = ("category", "colour", "texture", "size")
SIZE_WORDS = ("small", "large")
OPENING = ("this", "is", "a")


def caption_words(caption: str) -> dict[str, str] | None:
    """{word kind: word} of a caption's first sentence, "this is a [size] [colour] [texture] category", or None when
    it is not in that form (texture "plain" and size "" when the caption says none)."""
    tokens = caption.strip().lower().split(".")[0].split()
    if tuple(tokens[:3]) != OPENING or len(tokens) < 4 or tokens[-1] not in CATEGORY_NAMES:
        return None
    middle = tokens[3:-1]
    size = middle.pop(0) if middle and middle[0] in SIZE_WORDS else ""
    colour = middle.pop(0) if middle and middle[0] in COLOUR_NAMES else ""
    texture = middle.pop(0) if middle and middle[0] in TEXTURES else "plain"
    if middle:  # a word the form has no place for
        return None
    return {"category": tokens[-1], "colour": colour, "texture": texture, "size": size}


def word_hits(rows: list[dict], records: list[dict]) -> tuple[dict[str, np.ndarray], int]:
    """({word kind: 1.0 where answer i says the truth's word}, answers not in the form) over pooled rows and their
    records (lab/mini/fresh_seeds.py `pooled_rows`): the truth is each record's first reference caption."""
    hits = {kind: np.zeros(len(rows)) for kind in WORDS}
    unread = 0
    for i, (row, record) in enumerate(zip(rows, records)):
        truth = caption_words(record["annotations"][0])
        if truth is None:
            raise ValueError(f"{record['id']}: its first reference caption is not in SynthRooms' form: "
                             f"{record['annotations'][0]!r}")
        said = caption_words(str(row["parsed"] or ""))
        if said is None:
            unread += 1
            continue
        for kind in WORDS:
            hits[kind][i] = float(said[kind] == truth[kind])
    return hits, unread


def arm_words(label: str, parts) -> dict:
    """One arm's word hits over `parts` ([(prefix, results folder, data folder)], as `figures_of` takes)."""
    rows, records = pooled_rows(parts, label, "captioning", "captioning")
    hits, unread = word_hits(rows, records)
    return {"ids": [row["id"] for row in rows], "scenes": [record["scene"] for record in records],
            "hits": hits, "unread": unread}


def words_table(arms: dict[str, dict], resamples: int = 1000) -> dict:
    """{arm: {kind: share, kind_ci95, kind_minus_first: paired difference}, num_samples, unread} over the arms of one
    set of samples; the first arm is the one every other is paired against."""
    first_label, first = next(iter(arms.items()))
    table = {}
    for label, found in arms.items():
        if found["ids"] != first["ids"]:
            raise ValueError(f"{label} and {first_label} did not caption the same samples in the same order")
        n = len(found["ids"])
        row: dict = {"num_samples": n, "unread": found["unread"]}
        for kind in WORDS:
            hits = found["hits"][kind]
            row[kind] = float(hits.mean())
            row[f"{kind}_ci95"] = wilson_interval(int(hits.sum()), n)
            if label != first_label:
                row[f"{kind}_minus_{first_label}"] = paired_difference(hits, first["hits"][kind], resamples=resamples,
                                                                       groups=found["scenes"])
        table[label] = row
    return table


def table_lines(where: str, table: dict) -> list[str]:
    """The markdown of one `words_table`: a row per arm, each word's share in % and, after the first arm, its
    difference to the first arm in points with the interval."""
    first = next(iter(table))
    lines = [f"{where}: the share of captions whose word is the truth's (difference to {first}, points, 95 % "
             "interval over scenes)", "", "| arm | " + " | ".join(WORDS) + " | not in the form |",
             "|---|" + "---|" * (len(WORDS) + 1)]
    for label, row in table.items():
        cells = []
        for kind in WORDS:
            cell = f"{100 * row[kind]:.1f} %"
            difference = row.get(f"{kind}_minus_{first}")
            if difference is not None:
                low, high = (100 * value for value in difference["ci95"])
                cell += f" ({100 * difference['difference']:+.1f} [{low:+.1f}, {high:+.1f}])"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {row['unread']} of {row['num_samples']} |")
    return lines + [""]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the ablation's --out folder (results/, fresh/)")
    parser.add_argument("--data", type=Path, required=True, help="the run's data folder (its test split)")
    parser.add_argument("--arms", nargs="+", required=True, help="arms to read; the first is the one paired against")
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--out", type=Path, help="also write the tables as JSON here")
    args = parser.parse_args(argv)
    sets = {"the test split": lambda arm: [("test", args.run / "results" / arm, args.data)],
            f"the fresh seeds {ABLATION_FRESH_SEEDS[0]}-{ABLATION_FRESH_SEEDS[-1]}":
                lambda arm: seed_parts(args.run, arm, ABLATION_FRESH_SEEDS)}
    tables = {where: words_table({arm: arm_words(arm, parts(arm)) for arm in args.arms}, args.resamples)
              for where, parts in sets.items()}
    for where, table in tables.items():
        print("\n".join(table_lines(where, table)))
    if args.out:
        args.out.write_text(json.dumps(tables, indent=1), encoding="utf-8")
    return tables


if __name__ == "__main__":
    main()
