"""Answer and score a fixed slice of an evaluation split with a model in memory (no folder, no files).

What the task runners do (evaluation/runner.py) for a model that is still training: the same requests
per stage (two for grounding), greedy batched generation, and the task's own `evaluate`, so the figures
logged during training are the official metrics of the evaluation package on held-out data.

    slice_ = EvaluationSlice("grounding", data_root, split="val", max_samples=64)
    metrics = slice_.score(model, processor, batch_size=16)      # {"acc@0.25": ..., ...}

`annotated_frame=True` (a task run in stages, as grounding; a diagnostic): stage 1 is not asked; its answer is the
record's own (grounding: the annotated first clear frame k*), so the figures measure the later stages alone.

Besides its logged metrics, a task logs the figure sets its entry names (`PackageTask.training_figures`, this module's
`TRAINING_FIGURES`): reconstruction each marker's point error and label, grounding on SynthRooms which object its
boxes point at.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gap_mllm.processing.annotation_files import find_annotation_file
from gap_mllm.processing.builders import load_annotation_file
from gap_mllm.processing.scannet_layout import posed_images_dir

from .generation import BatchGenerator
from .grounding_identification import from_rows, has_scene_truth
from .marker_metrics import marker_scores
from .tasks import check_markers, check_prompt_texts, get_task, gt_answer, headline_value, sample_id


@dataclass(frozen=True)
class TrainingFigures:
    """A set of figures a training run logs of a task's answers besides its logged metrics.

    Attributes:
        compute: `(records, outputs, rows, data_root) -> dict` of the slice's answers (`outputs`: one `[text per
            stage]` per record; `rows`: the task's `evaluate` rows).
        keys: the figures of that dict that are logged (each where present).
        applies: `(data_root) -> bool`: whether the data holds what they need; None: any data.
    """

    compute: Callable[..., dict]
    keys: tuple[str, ...]
    applies: Callable[..., bool] | None = None


def _marker_figures(records, outputs, rows, data_root) -> dict:
    return marker_scores([texts[0] for texts in outputs], [gt_answer(record) for record in records])


def _identification_figures(records, outputs, rows, data_root) -> dict:
    return from_rows(records, rows, data_root)


# the figure sets a task's entry may name (`PackageTask.training_figures`)
TRAINING_FIGURES = {
    # per-sample point error and label of each marked pixel (marker_metrics.py)
    "marker": TrainingFigures(_marker_figures, ("label_accuracy", "point_error_m_median", "unparsed")),
    # SynthRooms knows every object of a scene: which object the boxes point at (grounding_identification.py)
    "identification": TrainingFigures(_identification_figures,
                                      ("identification", "median_centre_error_m", "frame_accuracy"), has_scene_truth),
}


class EvaluationSlice:
    """The first `max_samples` records of a task's annotation file of `split` under `data_root`."""

    def __init__(self, task_name: str, data_root, split: str = "val", max_samples: int | None = 64,
                 annotated_frame: bool = False):
        self.task = get_task(task_name)
        self.task.check_scoring_dependencies()  # a training run's evaluation fails before step 1, not at its first evaluation
        if annotated_frame and self.task.stages < 2:
            raise ValueError("annotated_frame answers the first stage of a task run in stages (its frame selection) "
                             f"with the record's own answer; {task_name!r} is asked in one stage")
        self.annotated_frame = annotated_frame
        self.name = self.task.name
        path = find_annotation_file(data_root, self.task.annotation_task, split)
        records = load_annotation_file(path)
        self.records = records if max_samples is None else records[:max_samples]
        if not self.records:
            raise ValueError(f"{path} has no record to evaluate")
        self.ids = [sample_id(r, i) if isinstance(r, dict) else f"{i:06d}" for i, r in enumerate(self.records)]
        check_prompt_texts(self.records, self.ids, path)  # before step 1, not at the first evaluation
        self.task.check_ground_truth(self.records, self.ids)
        self.media_root = posed_images_dir(data_root)
        check_markers(self.task, self.records, self.ids, self.media_root)
        self.data_root = data_root
        # {name: figure set} of what the task logs besides its metrics, where this data holds what it needs
        self.figures = {name: TRAINING_FIGURES[name] for name in self.task.entry.training_figures
                        if TRAINING_FIGURES[name].applies is None or TRAINING_FIGURES[name].applies(data_root)}

    def answer(self, generator: BatchGenerator, batch_size: int = 16) -> list[list[str]]:
        """Per record, the texts of each stage (what the runner writes as `raw`)."""
        outputs = []
        for start in range(0, len(self.records), batch_size):
            batch = self.records[start : start + batch_size]
            texts = [[] for _ in batch]
            for stage in range(self.task.stages):
                if stage == 0 and self.annotated_frame:
                    for j, record in enumerate(batch):
                        texts[j].append(self.task.oracle(record, self.media_root)[0])
                    continue
                requests = [self.task.request(record, stage, texts[j], self.media_root) for j, record in enumerate(batch)]
                for j, request in enumerate(requests):
                    request.images = [str(Path(self.media_root) / p) for p in request.images]
                    request.sample = self.ids[start + j]
                for j, text in enumerate(generator.generate(requests)):
                    texts[j].append(text)
            outputs.extend(texts)
        return outputs

    def score(self, model, processor, batch_size: int = 16, max_new_tokens: int | None = None) -> tuple[dict, list[list[str]]]:
        """(flat metrics, raw outputs): the task's logged metrics (`Benchmark.logged_metrics`), plus its figure sets
        (`self.figures`: reconstruction's marker scores; on SynthRooms, grounding's identification and median centre
        error). The model is put in eval mode for the call and restored after."""
        was_training = model.training
        model.eval()
        try:
            outputs = self.answer(BatchGenerator.from_model(model, processor, max_new_tokens), batch_size)
        finally:
            model.train(was_training)
        # METEOR (a Java process per call) is left to the final evaluation; CIDEr is the headline
        rows, summary = self.task.evaluate(self.records, outputs, meteor=False)
        metrics = {name: headline_value(summary, key) for name, key in self.task.logged_metrics.items()}
        for figures in self.figures.values():
            found = figures.compute(self.records, outputs, rows, self.data_root)
            metrics.update({key: found[key] for key in figures.keys if key in found})
        return {key: float(value) for key, value in metrics.items() if isinstance(value, (int, float))}, outputs
