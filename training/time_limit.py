"""Stop a run after a wall-clock limit with a checkpoint that resumes it (`time_limit_s` of a recipe).

A job scheduler's slot (a Slurm allocation, a lent GPU for ten minutes at a time) ends at a fixed time;
killed there, a run loses everything since its last `save_steps` checkpoint, and a kill while a checkpoint is
being written leaves a half-written one. `TimeLimitCallback` ends training at the first optimizer step after
the limit and has Trainer save a full checkpoint there (model, optimizer, scheduler, RNG, data position), so
the same command with `--resume auto` continues with the same schedule and batch order. Such a run is not
finished: `run_training` then writes no final model and `TrainingStoppedAtTimeLimit.check` raises for callers
that need the whole schedule (the `make mini` pipeline).

A scheduler that ends a slot early says so with SIGTERM (Slurm's `--signal`, `timeout`, a session that must stop
now): while such a run trains, SIGTERM ends it the same way, at the next step end with a checkpoint, instead of
killing it between checkpoints. The handler is installed only for the training loop and only in the main thread;
outside it (building the feature cache, evaluation) SIGTERM keeps its default meaning, since nothing there is lost.
"""

from __future__ import annotations

import signal
import threading
import time

from transformers import TrainerCallback

from gap_mllm.processing.errors import RunStoppedEarly


class TrainingStoppedAtTimeLimit(RunStoppedEarly):
    """A run stopped at its `time_limit_s` (or a SIGTERM) before `max_steps`; its newest checkpoint resumes it."""

    @classmethod
    def check(cls, global_step: int, max_steps: int, output_dir: str) -> None:
        """Raise when a run ended before its last step (what a time-limited stop leaves)."""
        if max_steps > 0 and global_step < max_steps:
            raise cls(f"training stopped at its time limit (or a SIGTERM) after step {global_step} of {max_steps}; a checkpoint in "
                      f"{output_dir} holds the full state, and the same command with --resume auto (the make mini "
                      "pipeline: the same command) continues it")


class TimeLimitCallback(TrainerCallback):
    """Ends training at the first step end at least `limit_s` seconds after training began (the model,
    data and optimizer built; a resume's skipped batches included), or after a SIGTERM received while it
    trains, with a checkpoint saved there.

    `clock` is injectable for tests (`time.monotonic` by default)."""

    def __init__(self, limit_s: float, clock=time.monotonic):
        if not limit_s > 0:
            raise ValueError(f"time_limit_s={limit_s!r}: expected a positive number of seconds")
        self.limit_s = float(limit_s)
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
        late = self.started is not None and self.clock() - self.started >= self.limit_s
        if (late or self.terminated) and state.global_step < state.max_steps:
            self.reached = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None
