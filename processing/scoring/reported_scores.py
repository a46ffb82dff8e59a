"""How a task's held-out score is reported from a model folder's `evaluation_results.json`: the figures of the row
read, their units and intervals, and the trivial baseline each is compared to (`PackageTask.reported_score`; the
front ends' and the model card's lines are written by gap_mllm.cli.model_scores).

    ReportedScore("detection", (
        ReportedMetric("F1@0.25", "f1@0.25", baseline=("category-mean boxes", ("detection", "category_mean_boxes", "f1"))),
    ), skill="detect", card_name="3D object detection")
    # held-out (937 test samples): F1@0.25 30.0 % [25.0, 35.0]; category-mean boxes 0.1 %: beats the trivial baseline
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ReportedMetric:
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
        """The value as printed (a fraction as a percentage), with its unit when `unit`."""
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
        """Whether the whole 95 % interval `(low, high)` is on the better side of `baseline`."""
        low, high = interval
        return low > baseline if self.higher_is_better else high < baseline


@dataclass(frozen=True)
class ReportedScore:
    """How one task's held-out score is reported.

    Attributes:
        prefix: the row's key prefix of its figures (`<prefix>_<metric key>`, `<prefix>_num_samples`).
        metrics: its figures, in the order printed.
        skill: what "this miniature does not {skill} yet" says when no figure beats its baseline.
        card_name: how a model card names the task (the item of its line in `HeldOutScores.markdown`).
        order: where that item comes among the tasks': lower first, ties in the registry's order.
        stand_in: the score reported when the row has none of `metrics` (an earlier checkpoint's figures of the
            same task); None: "not scored".
        stand_in_words: what a line of `stand_in` says of itself before its sample count ("this release's final
            model is not scored on ...; its stage-1 checkpoint ...").
    """

    prefix: str
    metrics: tuple[ReportedMetric, ...]
    skill: str
    card_name: str = ""
    order: int = 1
    stand_in: ReportedScore | None = None
    stand_in_words: str = ""


__all__ = ["ReportedMetric", "ReportedScore"]
