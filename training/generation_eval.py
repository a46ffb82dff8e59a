"""Evaluation with generation during training: the callback that shows whether a run learns the task.

Every `evaluation.every_n_steps` optimizer steps and at the end of training, each task of
`evaluation.tasks` answers the first `evaluation.max_samples` records of `evaluation.split` (a held-out
split: "val", never the test split) greedily, and the evaluation package scores them
(evaluation/in_memory.py). The figures are logged next to the loss as `gen_<task>_<metric>` (so they reach
TensorBoard / W&B / `trainer.state.log_history`), and the raw answers of the last evaluation are kept in
`callback.last_outputs`.

With `evaluation.best_metric`, the model of the best evaluation so far is kept in `<output_dir>/best` (written to a
temporary folder, then renamed, so a killed run never leaves half a model there) with `best.json`; a resumed run reads
`best.json` and goes on comparing against it, and `use_best_model` makes it the run's final model.

Runs on the main process only (the other processes wait at the next synchronisation); not available
with DeepSpeed ZeRO-3, whose sharded weights cannot generate on one process.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from transformers import TrainerCallback

from gap_mllm.evaluation.in_memory import EvaluationSlice

from .config import GenerationEvalConfig

logger = logging.getLogger(__name__)
BEST_FOLDER = "best"
BEST_RECORD = "best.json"


class GenerationEvalCallback(TrainerCallback):
    """See the module docstring. `trainer` must be set before training (build_trainer does it)."""

    def __init__(self, settings: GenerationEvalConfig, data_root, model, processor):
        self.settings = settings
        self.slices = [EvaluationSlice(name, data_root, settings.split, settings.max_samples) for name in settings.tasks]
        self.model = model  # the GAP-MLLM (not the training wrapper): generate() lives there
        self.processor = processor
        self.trainer = None
        self.history: list[dict] = []
        self.last_outputs: dict[str, list] = {}
        self._last_step = -1

    def run(self, step: int) -> dict:
        """Score every slice now; returns the flat `gen_*` figures."""
        logs = {}
        for evaluation_slice in self.slices:
            metrics, outputs = evaluation_slice.score(self.model, self.processor, self.settings.batch_size, self.settings.max_new_tokens)
            self.last_outputs[evaluation_slice.name] = outputs
            logs.update({f"gen_{evaluation_slice.name}_{key}": value for key, value in metrics.items()})
        self.history.append({"step": step, **logs})
        self._last_step = step
        return logs

    def _evaluate(self, state):
        if not state.is_world_process_zero or state.global_step == self._last_step:
            return
        logs = self.run(state.global_step)
        logger.info("generation eval at step %d: %s", state.global_step, logs)
        if self.trainer is not None:
            self.trainer.log(logs)
            self._keep_if_best(state.global_step, logs)

    def _keep_if_best(self, step: int, logs: dict) -> None:
        name = self.settings.best_metric
        if not name:
            return
        if name not in logs:
            raise KeyError(f"evaluation.best_metric={name!r} is not among the logged figures {sorted(logs)}")
        value, best = logs[name], read_best(self.trainer.args.output_dir)
        if best is not None:
            better = value >= best["value"] if self.settings.greater_is_better else value <= best["value"]
            if not better:
                return
        output = Path(self.trainer.args.output_dir)
        staging = output / f"{BEST_FOLDER}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        self.trainer.save_model(str(staging))
        (staging / BEST_RECORD).write_text(json.dumps({"step": step, "metric": name, "value": value, "figures": logs}, indent=1))
        shutil.rmtree(output / BEST_FOLDER, ignore_errors=True)
        staging.rename(output / BEST_FOLDER)
        logger.info("best model so far (%s = %s at step %d) kept in %s", name, value, step, output / BEST_FOLDER)

    def on_step_end(self, args, state, control, **kwargs):
        # the last step is validated here too, before its checkpoint is saved: the run state written with that
        # checkpoint (training/run_state.py) then keeps the best model this validation may choose, and a run rebuilt
        # from the state ends with the same final model as the run that trained it
        last = 0 < state.max_steps <= state.global_step
        if (self.settings.every_n_steps > 0 and state.global_step % self.settings.every_n_steps == 0) or last:
            self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):
        # the last step was validated at its end (`on_step_end`) unless no step ran there; a run stopped before its
        # last step (time limit, SIGTERM) is not validated here: its validation points stay the schedule's
        # (every_n_steps and the end), whatever the sessions it was trained in
        if state.max_steps <= 0 or state.global_step >= state.max_steps:
            self._evaluate(state)


def read_best(output_dir) -> dict | None:
    """`best.json` of the model kept by `evaluation.best_metric` in `output_dir` (None when none is kept yet)."""
    path = Path(output_dir) / BEST_FOLDER / BEST_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def use_best_model(output_dir) -> dict | None:
    """Make the kept best model `output_dir`'s final model (its files copied over the last step's); returns its
    `best.json`, or None when no best model was kept."""
    best = read_best(output_dir)
    if best is None:
        return None
    for path in (Path(output_dir) / BEST_FOLDER).iterdir():
        if path.is_file() and path.name != BEST_RECORD:
            shutil.copy2(path, Path(output_dir) / path.name)
    return best
