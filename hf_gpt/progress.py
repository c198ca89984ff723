"""Progress a person can read and plan with: the step out of the total, the time spent and the time left, and the
logged figures, in one line (under a progress bar on a terminal; alone in a log file or under `make demo`). Every
stage gets it from the skeleton (`Stage.run`); PPO's own loop prints the same line."""

import sys
import time

from transformers.trainer_callback import PrinterCallback, ProgressCallback

HIDDEN = {"epoch", "step", "total_flos"}  # the line already says where the run is


def clock(seconds: float | None) -> str:
    """42s, 3m05s, 1h12m."""
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def progress_line(title: str, step: int, total: int, steps_timed: int, elapsed: float, logs: dict) -> str:
    """`[SFT] step 40/600 · 1m10s spent · ~16m20s left · loss 1.23, ...`: time left from the pace of the
    `steps_timed` steps this process ran in `elapsed` seconds (a resumed run times only its own)."""
    left = elapsed / steps_timed * (total - step) if steps_timed > 0 and total > 0 else None
    shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in logs.items()
                      if k not in HIDDEN)
    return f"[{title}] step {step}/{total} · {clock(elapsed)} spent · ~{clock(left)} left" + (f" · {shown}" if shown
                                                                                             else "")


class ReadableProgress(ProgressCallback):
    """Trainer's progress bar on a terminal only, and every log as a `progress_line` instead of a raw dict."""

    def __init__(self, title: str, bar: bool):
        super().__init__()
        self.title, self.bar = title, bar
        self.start, self.first_step = time.perf_counter(), None  # a rerun that only finishes a save never trains

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.perf_counter(), state.global_step
        if self.bar:
            super().on_train_begin(args, state, control, **kwargs)
            self.current_step = state.global_step  # a resumed run's bar starts where the run is

    def on_step_end(self, *args, **kwargs):
        if self.bar:
            super().on_step_end(*args, **kwargs)

    def on_prediction_step(self, *args, **kwargs):
        if self.bar:
            super().on_prediction_step(*args, **kwargs)

    def on_train_end(self, *args, **kwargs):
        if self.bar:
            super().on_train_end(*args, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        first = state.global_step if self.first_step is None else self.first_step
        line = progress_line(self.title, state.global_step, state.max_steps, state.global_step - first,
                             time.perf_counter() - self.start, logs)
        if self.bar and self.training_bar is not None:
            self.training_bar.write(line)
        else:
            print(line, flush=True)


def use_readable_progress(trainer, title: str) -> None:
    """Replace a transformers Trainer's raw-dict logging (and its bar where no terminal shows it) with
    `ReadableProgress`."""
    if not hasattr(trainer, "callback_handler"):
        return
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(ReadableProgress(title, bar=not trainer.args.disable_tqdm and sys.stderr.isatty()))
