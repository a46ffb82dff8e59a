"""The loss lines a training run prints: numbers as numbers.

Trainer's console callbacks (transformers' `ProgressCallback` above its progress bar, `PrinterCallback` with
`disable_tqdm`) format every float of a log as a string (`f"{v:.4g}"`), so a loss line reads
`{'loss': '2.345', 'grad_norm': '1.27', ...}`: numbers quoted as text. This package's trainers
(`GeometryAlignedTrainer`, `EncoderStageTrainer`) replace them with the same callbacks writing the same 4 significant
digits as numbers: `{'loss': 2.345, 'grad_norm': 1.27, ...}`. What is logged (the run's `log_history`, its
`trainer_state.json`, the reporting integrations) is untouched.
"""

from __future__ import annotations

from transformers import PrinterCallback, ProgressCallback


def readable_logs(logs: dict) -> dict:
    """A log as the console shows it: each float to 4 significant digits, still a number; `total_flos` left out."""
    return {key: float(f"{value:.4g}") if isinstance(value, float) else value
            for key, value in logs.items() if key != "total_flos"}


class NumbersProgressCallback(ProgressCallback):
    """`ProgressCallback` whose log lines (written above the bar) hold numbers, not quoted strings."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and self.training_bar is not None:
            self.training_bar.write(str(readable_logs(logs or {})))


class NumbersPrinterCallback(PrinterCallback):
    """`PrinterCallback` (`disable_tqdm`) whose printed logs hold numbers, not quoted strings."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_local_process_zero and logs is not None:
            print(readable_logs(logs))


def print_numbers(trainer) -> None:
    """Swap `trainer`'s stock console callback for the one printing numbers (module docstring); other callbacks (a
    notebook's progress display, the user's own) stay."""
    for stock, numbers in ((ProgressCallback, NumbersProgressCallback), (PrinterCallback, NumbersPrinterCallback)):
        if any(type(callback) is stock for callback in trainer.callback_handler.callbacks):
            trainer.remove_callback(stock)
            trainer.add_callback(numbers)
