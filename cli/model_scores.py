"""What a model folder's own evaluation says about each task: one line per task, its held-out score next to the
score of a trivial baseline, for every front end (`gap-mllm demo`, `predict`, the Space, the notebooks).

The figures come from the folder's `evaluation_results.json` (written by `make mini` next to GAP-MLLM-Mini's
weights): the shipped arm's row and `baselines`. Nothing is computed or typed in here; a figure the file does not
hold is "not scored", and a folder without the file gets no line at all.

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

RESULTS_FILE = "evaluation_results.json"


@dataclass(frozen=True)
class Metric:
    """One figure of a results row (`key`, its interval `key + "_ci95"`) and the baseline figure it is compared to.

    Attributes:
        name: how the line names it ("Acc@0.25").
        key: the row's key without its task prefix ("acc@0.25" → `grounding_acc@0.25`).
        unit: "%" (fractions printed as percentages), "m" (metres), "°" (degrees) or "" (a plain score).
        higher_is_better: the direction of "better".
        digits: decimals of values that are not percentages (percentages: 1).
        baseline: `(baseline name as printed, path in results["baselines"])`, if the file has one.
    """

    name: str
    key: str
    unit: str = "%"
    higher_is_better: bool = True
    digits: int = 2
    baseline: tuple[str, tuple[str, ...]] | None = None

    def format(self, value: float, unit: bool = False) -> str:
        text = f"{100 * value:.1f}" if self.unit == "%" else f"{value:.{self.digits}f}"
        if not unit or not self.unit:
            return text
        return f"{text}°" if self.unit == "°" else f"{text} {self.unit}"

    def figure(self, value: float, interval=None) -> str:
        """`<name> <value> <unit> [<low>, <high>]`."""
        text = f"{self.name} {self.format(value, unit=True)}"
        if interval:
            text += f" [{self.format(interval[0])}, {self.format(interval[1])}]"
        return text

    def beats(self, interval, baseline: float) -> bool:
        low, high = interval
        return low > baseline if self.higher_is_better else high < baseline


@dataclass(frozen=True)
class TaskScore:
    """How one front-end task is scored: the arm's key prefix, its metrics and what "it does not X yet" says."""

    prefix: str
    metrics: tuple[Metric, ...]
    skill: str  # "this miniature does not {skill} yet"


GROUNDING = TaskScore("grounding", (
    Metric("Acc@0.25", "acc@0.25", baseline=("best constant box", ("grounding", "best_constant_box", "acc@0.25"))),
), "ground")
DETECTION = TaskScore("detection", (
    Metric("F1@0.25", "f1@0.25", baseline=("category-mean boxes", ("detection", "category_mean_boxes", "f1"))),
), "detect")
CAPTIONING = TaskScore("captioning", (
    Metric("CIDEr@0.5", "cider@0.5", unit="", baseline=("constant caption", ("captioning", "constant_caption", "cider"))),
), "caption")
_MARKER_METRICS = (
    Metric("point error (median)", "point_error_m_median", unit="m", higher_is_better=False,
           baseline=("constant point", ("marker", "constant_point", "point_error_m_median"))),
    Metric("label accuracy", "label_accuracy",
           baseline=("most frequent label", ("marker", "constant_point", "label_accuracy"))),
)
# The shipped model's marker task: the final model's figures ("final_marker_*"); a release that has none is
# described by its stage-1 checkpoint's ("stage1_*"), said so.
FINAL_MARKER = TaskScore("final_marker", _MARKER_METRICS, "locate marked points")
STAGE1_MARKER = TaskScore("stage1", _MARKER_METRICS, "locate marked points")
# The geometry encoder (VGGT aggregator + camera and depth heads), scored at stage 0 after scale alignment.
GEOMETRY_METRICS = (
    Metric("depth AbsRel", "depth_abs_rel", unit="", higher_is_better=False, digits=3),
    Metric("camera rotation error (median)", "rotation_error_deg_median", unit="°", higher_is_better=False, digits=1),
)
GEOMETRY_BASELINE = "training-mean depth and identity rotations"
TASK_SCORES = {"grounding": GROUNDING, "detection": DETECTION, "captioning": CAPTIONING, "reconstruction": FINAL_MARKER}
# how a card names each task of `TASK_SCORES` (`HeldOutScores.markdown`)
CARD_TASK_NAMES = {"grounding": "3D visual grounding", "detection": "3D object detection",
                   "captioning": "3D dense captioning", "reconstruction": "marker point and label"}


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
        if task not in TASK_SCORES:
            return f"held-out: {task} not scored (the model's evaluation did not cover it)"
        if task == "reconstruction" and not self._has(FINAL_MARKER):
            return self._stage1_marker_line()
        score = TASK_SCORES[task]
        if not self._has(score):
            return f"held-out: {task} not scored"
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
        items += [(CARD_TASK_NAMES[task], self.line(task)) for task in TASK_SCORES]
        return "\n".join(f"- {name}: {line}" for name, line in items if line is not None)

    def _has(self, score: TaskScore) -> bool:
        return any(f"{score.prefix}_{metric.key}" in self.row for metric in score.metrics)

    def _figures(self, score: TaskScore) -> tuple[int | None, str]:
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

    def _stage1_marker_line(self) -> str:
        if not self._has(STAGE1_MARKER):
            return "held-out: reconstruction not scored"
        count, figures = self._figures(STAGE1_MARKER)
        return ("held-out: this release's final model is not scored on the marker task; its stage-1 checkpoint, "
                f"before the task fine-tuning{_samples(count, decoding=self.decoding)}: {figures}")


def _samples(count, what: str = "test samples", decoding: str | None = None) -> str:
    """` (N test samples, <decoding>)`, its parts where known; "" when neither is."""
    parts = [f"{count} {what}"] if count is not None else []
    parts += [decoding] if decoding else []
    return f" ({', '.join(parts)})" if parts else ""


def _verdict(verdicts: list[tuple[Metric, bool]], skill: str) -> str:
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
