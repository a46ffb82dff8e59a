"""Stop a run after a wall-clock limit, or at a SIGTERM, with a checkpoint that resumes it (`time_limit_s` of a recipe).

A job scheduler's slot (a Slurm allocation, a lent GPU for ten minutes at a time) ends at a fixed time;
killed there, a run loses everything since its last `save_steps` checkpoint, and a kill while a checkpoint is
being written leaves a half-written one. `TimeLimitCallback` ends training at the first optimizer step after
the limit and has Trainer save a full checkpoint there (model, optimizer, scheduler, RNG, data position), so
the run continues with the same schedule and batch order. Such a run is not finished: `run_training` then writes
no final model and raises `TrainingStoppedAtTimeLimit`, whose message names the command that continues it
(`gap-mllm train ... --resume auto`; `python -m lab.mini ...` as it was typed), whether the run counts steps or epochs;
the command line prints it as one line and exits with status 75 (`RUN_STOPPED_STATUS`), so `train && evaluate`
stops there.

A scheduler that ends a slot early says so with SIGTERM (Slurm's `--signal`, `timeout`, a session that must stop
now): every run (with or without `time_limit_s`) ends the same way then, at the next step end with a checkpoint,
instead of being killed between checkpoints. Ctrl-C (SIGINT) is a person saying the same: it stops the run the same
way (a checkpoint, the run state, the line naming the command that continues it), with the shell's exit status of
an interrupted command, 130 (`INTERRUPTED_STATUS`); a second Ctrl-C before that step ends interrupts at once,
without a checkpoint, for a step that does not end. The handlers are installed only for the training loop and only
in the main thread; outside it (building the feature cache, evaluation) both signals keep their default meaning,
since nothing there is lost.

A scheduler signals every process of the job (Slurm's `scancel`, `kill -- -PGID`), the training data loader's
workers too, and PyTorch's workers die at a SIGTERM that their parent did not send (torch/utils/data/_utils/
signal_handling.py): the main process then failed at its next batch, with no checkpoint. So the training loader's
workers ignore SIGTERM (`WorkersIgnoreStop`): the main process stops the run and ends its workers as it ends them
at every epoch; a worker whose main process is gone ends by itself (PyTorch's watchdog). Ctrl-C reaches them with
the handler they were forked with, which does nothing in a worker.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from transformers import TrainerCallback

from gap_mllm.processing.errors import INTERRUPTED_STATUS, RunStoppedEarly

# the signals that stop a run at its next step end, and how its line names each
STOP_SIGNALS = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class TrainingStoppedAtTimeLimit(RunStoppedEarly):
    """A run stopped at its `time_limit_s` (or a SIGTERM or Ctrl-C) before its last step; its newest checkpoint
    resumes it. `result`: Trainer's output of the stopped run (set by `run_training`); `status`: the command line's
    exit status (`RunStoppedEarly.status`, `INTERRUPTED_STATUS` for Ctrl-C)."""

    result = None


class WorkersIgnoreStop:
    """The `worker_init_fn` of the training data loader while a run trains: SIGTERM is ignored in each worker (module
    docstring), then the loader's own `worker_init_fn` (Trainer's seeding) runs. A top-level class, so that a
    loader whose workers are spawned can pickle it."""

    def __init__(self, worker_init_fn=None):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # after PyTorch's worker handlers, which die at it
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def workers_ignore_stop(loader) -> None:
    """Have the workers of `loader` (a DataLoader, or None) ignore SIGTERM from the next `iter(loader)` on; a loader
    whose `skip_first_batches` copy a resume makes keeps it (accelerate copies `worker_init_fn`)."""
    if loader is None or not getattr(loader, "num_workers", 0) or isinstance(loader.worker_init_fn, WorkersIgnoreStop):
        return
    loader.worker_init_fn = WorkersIgnoreStop(loader.worker_init_fn)


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
        self.terminated = False  # a SIGTERM or SIGINT arrived while training
        self.stop_signal = None  # which one (its STOP_SIGNALS name)
        self._previous_handlers = {}
        self._pid = os.getpid()  # the process whose handlers these are (not a forked data loader worker)

    @property
    def interrupted(self) -> bool:
        """The run was stopped by Ctrl-C (SIGINT): the command line exits with `INTERRUPTED_STATUS`."""
        return self.stop_signal == STOP_SIGNALS[signal.SIGINT]

    def _on_signal(self, signum, frame):
        if os.getpid() != self._pid:
            # a data loader worker forked with this handler: Ctrl-C reaches the whole process group, and the run stops
            # from the main process, which then ends its workers; a worker that stopped by itself would fail the run
            return
        if signum == signal.SIGINT and self.stop_signal == STOP_SIGNALS[signal.SIGINT]:
            raise KeyboardInterrupt  # a second Ctrl-C: a step that does not end is interrupted at once
        self.terminated = True
        self.stop_signal = self.stop_signal or STOP_SIGNALS[signum]
        if signum == signal.SIGINT:
            print("\nCtrl-C: stopping at the end of this step with a checkpoint (Ctrl-C again to stop at once, "
                  "without one)", file=sys.stderr, flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = self.clock()
        self.reached = self.terminated = False
        self.stop_signal = None
        self._pid = os.getpid()
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            self._previous_handlers = {number: signal.signal(number, self._on_signal) for number in STOP_SIGNALS}
        workers_ignore_stop(kwargs.get("train_dataloader"))  # its workers start at the epoch's first batch, after this

    def on_step_end(self, args, state, control, **kwargs):
        late = self.limit_s is not None and self.started is not None and self.clock() - self.started >= self.limit_s
        if (late or self.terminated) and state.global_step < state.max_steps:
            self.reached = True
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.release()

    def release(self) -> None:
        """Give the signals back their handlers from before training (also after a training loop that raised,
        where Trainer calls no `on_train_end`: `run_training` calls this in a `finally`)."""
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def stopped(self, message: str) -> TrainingStoppedAtTimeLimit:
        """The exception of a run this callback stopped, with the exit status its signal asks for (Ctrl-C:
        `INTERRUPTED_STATUS`, the shell's; otherwise `RUN_STOPPED_STATUS`)."""
        error = TrainingStoppedAtTimeLimit(message)
        if self.interrupted:
            error.status = INTERRUPTED_STATUS
        return error
