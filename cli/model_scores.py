"""What a model folder's own evaluation says about each task: one line per task, its held-out score next to the
score of a trivial baseline, for every front end (`gap-mllm demo`, `predict`, the Space, the notebooks).

The figures come from the folder's `evaluation_results.json` (written by `make mini` next to GAP-MLLM-Mini's
weights): the shipped arm's row and `baselines`. Nothing is computed or typed in here: which figures of the row a
task reports, against which baselines, is its task module's `PackageTask.reported_score` (gap_mllm.processing.tasks);
a figure the file does not hold is "not scored", and a folder without the file gets no line at all.

The row is the one of the decoding that ran: `constrained=True` (the front ends' default: answers decoded inside each
task's grammar) reads the shipped arm's constrained row (`arms[<main arm>_constrained]`, `python -m lab.mini
--constrained-row` in a checkout), `constrained=False` (`--free`) its free row (`arms[<main arm>]`). A file with both
rows names the decoding in each line; a file without a constrained row gives the free figures and says so when constrained decoding ran.

    scores = held_out_scores(folder, constrained=True)   # None: no evaluation_results.json in that folder
    if scores is not None:
        print(scores.line("grounding"))
    # held-out (991 test samples, constrained decoding): Acc@0.25 12.4 % [10.5, 14.6]; best constant box 2.1 %: ...

A verdict compares the model's 95 % interval with the baseline's value: it "beats the trivial baseline" only
when the whole interval is on the better side.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from gap_mllm.mini.identity import CONSTRAINED_SUFFIX, SHIPPED_ARM
from gap_mllm.processing.scoring.reported_scores import ReportedMetric, ReportedScore
from gap_mllm.processing.tasks import PackageTask, package_task, package_task_names, package_tasks

RESULTS_FILE = "evaluation_results.json"


# The geometry encoder (VGGT aggregator + camera and depth heads), scored at stage 0 after scale alignment.
GEOMETRY_METRICS = (
    ReportedMetric("depth AbsRel", "depth_abs_rel", unit="", higher_is_better=False, digits=3),
    ReportedMetric("camera rotation error (median)", "rotation_error_deg_median", unit="°", higher_is_better=False,
                   digits=1),
)
GEOMETRY_BASELINE = "training-mean depth and identity rotations"


def reported_tasks() -> list[PackageTask]:
    """The tasks whose held-out score a results file reports (`PackageTask.reported_score`), in a card's order."""
    entries = [entry for entry in package_tasks() if entry.reported_score is not None]
    return sorted(entries, key=lambda entry: entry.reported_score.order)


def _lookup(tree: dict, path: tuple[str, ...]):
    for name in path:
        if not isinstance(tree, dict) or name not in tree:
            return None
        tree = tree[name]
    return tree


def shipped_arm(results: dict) -> str | None:
    """The arm whose model the folder holds: the pipeline's main arm (the reference of its paired table), or
    the only arm; None when the file names several and none of them is the main arm."""
    arms = results.get("arms") or {}
    for name in ((results.get("paired") or {}).get("reference"), SHIPPED_ARM):
        if name in arms:
            return name
    return next(iter(arms)) if len(arms) == 1 else None


def scored_row(results: dict, constrained: bool) -> tuple[str | None, str | None]:
    """`(arm, decoding words)` of the row that scores the decoding that ran (module docstring): the words are None for
    a file with one decoding only when it is the one that ran (nothing to tell apart)."""
    shipped = shipped_arm(results)
    arms = results.get("arms") or {}
    if shipped is None:
        return None, None
    with_constrained = f"{shipped}{CONSTRAINED_SUFFIX}" in arms
    if constrained and with_constrained:
        return f"{shipped}{CONSTRAINED_SUFFIX}", "constrained decoding"
    if constrained:
        return shipped, "free decoding: the file has no constrained row"
    return shipped, "free decoding" if with_constrained else None


@dataclass
class HeldOutScores:
    """The held-out figures of one model folder (`evaluation_results.json`), as lines a person reads.

    Attributes:
        arm: the row read (`scored_row`); decoding: how its answers were decoded, in words, or None where the file
            tells only one decoding and it is the one that ran.
    """

    results: dict
    arm: str | None
    decoding: str | None = None

    @property
    def row(self) -> dict:
        return (self.results.get("arms") or {}).get(self.arm) or {}

    def line(self, task: str) -> str:
        """`held-out (N test samples): <figure> [interval]; <baseline> <figure>: <verdict>`, or why there is none."""
        score = package_task(task).reported_score if task in package_task_names() else None
        if score is None:
            return f"held-out: {task} not scored (the model's evaluation did not cover it)"
        if not self._has(score):
            if score.stand_in is None or not self._has(score.stand_in):
                return f"held-out: {task} not scored"
            count, figures = self._figures(score.stand_in)
            return f"held-out: {score.stand_in_words}{_samples(count, decoding=self.decoding)}: {figures}"
        count, figures = self._figures(score)
        return f"held-out{_samples(count, decoding=self.decoding)}: {figures}"

    def geometry_line(self) -> str | None:
        """The geometry encoder's depth and cameras on held-out clips (`stage0_geometry`) next to the baseline
        that knows nothing about the clip (the training clips' mean depth, identity rotations); None when the
        file has no such figures."""
        geometry = self.results.get("stage0_geometry") or {}
        model, baseline = geometry.get("model") or {}, geometry.get("baseline") or {}
        figures, baselines, verdicts = [], [], []
        for metric in GEOMETRY_METRICS:
            if model.get(metric.key) is None:
                continue
            interval = model.get(f"{metric.key}_ci95")
            figures.append(metric.figure(model[metric.key], interval))
            if baseline.get(metric.key) is not None:
                baselines.append(metric.format(baseline[metric.key], unit=True))
                verdicts.append((metric, bool(interval) and metric.beats(interval, baseline[metric.key])))
        if not figures:
            return None
        text = f"held-out geometry encoder{_samples(model.get('num_clips'), 'test clips')}: " + ", ".join(figures)
        if baselines:
            text += f"; {GEOMETRY_BASELINE} " + ", ".join(baselines) + ": " + _verdict(verdicts, "reconstruct")
        return text

    def markdown(self) -> str:
        """Every line of the file as a Markdown list, one item per task (the geometry encoder first), in the
        front ends' own words: the Space's card (examples/space/README.md) says what the model can do with it."""
        items = [("geometry encoder (depth, cameras)", self.geometry_line())]
        items += [(entry.reported_score.card_name, self.line(entry.name)) for entry in reported_tasks()]
        return "\n".join(f"- {name}: {line}" for name, line in items if line is not None)

    def _has(self, score: ReportedScore) -> bool:
        return any(f"{score.prefix}_{metric.key}" in self.row for metric in score.metrics)

    def _figures(self, score: ReportedScore) -> tuple[int | None, str]:
        """`(number of test samples, "figures; baselines: verdict")` for the metrics of `score`."""
        figures, baselines, verdicts = [], [], []
        for metric in score.metrics:
            key = f"{score.prefix}_{metric.key}"
            value = self.row.get(key)
            if key not in self.row:
                figures.append(f"{metric.name} not scored")
                continue
            if value is None:  # scored, but no answer could be read
                figures.append(f"{metric.name}: no parsable answer")
                verdicts.append((metric, False))
                continue
            interval = self.row.get(f"{key}_ci95")
            figures.append(metric.figure(value, interval))
            baseline_name, path = metric.baseline
            baseline = _lookup(self.results.get("baselines") or {}, path)
            if baseline is not None:
                baselines.append(f"{baseline_name} {metric.format(baseline, unit=True)}")
                verdicts.append((metric, bool(interval) and metric.beats(interval, baseline)))
        text = ", ".join(figures)
        if baselines:
            text += "; " + ", ".join(baselines) + ": " + _verdict(verdicts, score.skill)
        else:
            text += "; no baseline recorded"
        return self.row.get(f"{score.prefix}_num_samples"), text


def _samples(count, what: str = "test samples", decoding: str | None = None) -> str:
    """` (N test samples, <decoding>)`, its parts where known; "" when neither is."""
    parts = [f"{count} {what}"] if count is not None else []
    parts += [decoding] if decoding else []
    return f" ({', '.join(parts)})" if parts else ""


def _verdict(verdicts: list[tuple[ReportedMetric, bool]], skill: str) -> str:
    if verdicts and all(beaten for _, beaten in verdicts):
        return "beats the trivial baseline"
    if not any(beaten for _, beaten in verdicts):
        return f"this miniature does not {skill} yet"
    return "; ".join(f"{metric.name} {'beats' if beaten else 'does not beat'} it" for metric, beaten in verdicts)


def held_out_scores(model_folder, constrained: bool) -> HeldOutScores | None:
    """The held-out scores of a local model folder, for answers decoded inside their grammar (`constrained`) or freely
    (the row: `scored_row`); None when it has no `evaluation_results.json` (a Hub id, the tiny test model, any
    checkpoint the pipeline did not export): the front ends then print nothing of the sort. A file that is not valid
    JSON raises ValueError naming it."""
    if model_folder is None:
        return None
    path = Path(model_folder) / RESULTS_FILE
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(results, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(results).__name__}")
    return HeldOutScores(results, *scored_row(results, constrained))
