"""Stop a run after a wall-clock limit, or at a SIGTERM, with a checkpoint that resumes it (`time_limit_s` of a recipe).

A job scheduler's slot (a Slurm allocation, a lent GPU for ten minutes at a time) ends at a fixed time;
killed there, a run loses everything since its last `save_steps` checkpoint, and a kill while a checkpoint is
being written leaves a half-written one. `TimeLimitCallback` ends training at the first optimizer step after
the limit and has Trainer save a full checkpoint there (model, optimizer, scheduler, RNG, data position), so
the run continues with the same schedule and batch order. Such a run is not finished: `run_training` then writes
no final model and raises `TrainingStoppedAtTimeLimit`, whose message names the command that continues it
(`gap-mllm train ... --resume auto`; `gap-mllm mini ...` as it was typed), whether the run counts steps or epochs;
the command line prints it as one line and exits with status 75 (`RUN_STOPPED_STATUS`), so `train && evaluate`
stops there.

A scheduler that ends a slot early says so with SIGTERM (Slurm's `--signal`, `timeout`, a session that must stop
now): every run (with or without `time_limit_s`) ends the same way then, at the next step end with a checkpoint,
instead of being killed between checkpoints. The handler is installed only for the training loop and only in the
main thread; outside it (building the feature cache, evaluation) SIGTERM keeps its default meaning, since nothing
there is lost.
"""

from __future__ import annotations

import signal
import threading
import time

from transformers import TrainerCallback

from gap_mllm.processing.errors import RunStoppedEarly


class TrainingStoppedAtTimeLimit(RunStoppedEarly):
    """A run stopped at its `time_limit_s` (or a SIGTERM) before its last step; its newest checkpoint resumes it.
    `result`: Trainer's output of the stopped run (set by `run_training`)."""

    result = None


class TimeLimitCallback(TrainerCallback):
    """Ends training at the first step end at least `limit_s` seconds after training began (the model,
    data and optimizer built; a resume's skipped batches included; None: no limit), or after a SIGTERM received
    while it trains, with a checkpoint saved there.

    `clock` is injectable for tests (`time.monotonic` by default)."""

    def __init__(self, limit_s: float | None, clock=time.monotonic):
        if limit_s is not None and not limit_s > 0:
            raise ValueError(f"time_limit_s={limit_s!r}: expected a positive number of seconds")
        self.limit_s = None if limit_s is None else float(limit_s)
        self.clock = clock
        self.started = None
        self.reached = False
        self.terminated = False  # a SIGTERM arrived while training
        self._previous_handler = None

    def _on_sigterm(self, signum, frame):
        self.terminated = True

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()
        self.reached = self.terminated = False
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def on_step_end(self, args, state, control, **kwargs):
        late = self.limit_s is not None and self.started is not None and self.clock() - self.started >= self.limit_s
        if (late or self.terminated) and state.global_step < state.max_steps:
            self.reached = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
