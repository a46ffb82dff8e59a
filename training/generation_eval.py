"""Evaluation with generation during training: the callback that shows whether a run learns the task.

Every `evaluation.every_n_steps` optimizer steps and at the end of training, each task of
`evaluation.tasks` answers the first `evaluation.max_samples` records of `evaluation.split` (a held-out
split: "val", never the test split) greedily, and the evaluation package scores them
(evaluation/in_memory.py). The figures are logged next to the loss as `gen_<task>_<metric>` (so they reach
TensorBoard / W&B / `trainer.state.log_history`), and the raw answers of the last evaluation are kept in
`callback.last_outputs`.

Runs on the main process only (the other processes wait at the next synchronisation); not available
with DeepSpeed ZeRO-3, whose sharded weights cannot generate on one process.
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from gap_mllm.evaluation.in_memory import EvaluationSlice

from .config import GenerationEvalConfig

logger = logging.getLogger(__name__)


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

    def on_step_end(self, args, state, control, **kwargs):
        if self.settings.every_n_steps > 0 and state.global_step % self.settings.every_n_steps == 0:
            self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._evaluate(state)
