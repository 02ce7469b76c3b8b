"""Progress of a training run, told as it goes: to the log (tests, library use), printed (a
notebook), or rendered with rich by the CLI (`training.cli.RichReporter`, built on these)."""

from __future__ import annotations

import logging
import time

logger = logging.getLogger("training.pipeline")
LINE_SECONDS = 15  # without a progress bar, a line about the trials this often


class Reporter:
    """Progress of a training run; the CLI renders it with rich, tests stay quiet."""

    def stage(self, text: str) -> None:
        logger.info(text)

    def note(self, text: str) -> None:
        logger.info(text)

    def warn(self, text: str) -> None:
        logger.warning(text)

    def trials_started(self, total: int) -> None:
        pass

    def trial_done(self, number: int, state: str, best: float | None) -> None:
        pass

    def trials_finished(self) -> None:
        pass


class PrintReporter(Reporter):
    """Progress printed as it happens, for a notebook (which shows no log lines): stages, notes,
    and every `LINE_SECONDS` the trials done and the best validation score so far."""

    def __init__(self) -> None:
        self.started = self.last_line = time.perf_counter()
        self.done = self.total = 0

    def _print(self, text: str) -> None:
        print(f"{time.perf_counter() - self.started:6.0f} s  {text}", flush=True)

    def stage(self, text: str) -> None:
        self._print(text)

    def note(self, text: str) -> None:
        self._print(f"  {text}")

    def warn(self, text: str) -> None:
        self._print(f"  ! {text}")

    def trials_started(self, total: int) -> None:
        self.done, self.total, self.last_line = 0, total, time.perf_counter()

    def trial_done(self, number: int, state: str, best: float | None) -> None:
        self.done += 1
        if time.perf_counter() - self.last_line >= LINE_SECONDS:
            self.last_line = time.perf_counter()
            shown = f"; best validation score {best:.4f}" if best is not None else ""
            self.note(f"trials: {self.done} of at most {self.total} done{shown}")

    def trials_finished(self) -> None:
        if self.done:
            trials = f"{self.done} trial{'s' if self.done != 1 else ''}"
            ended = "" if self.done >= self.total else f" of {self.total}: the time budget ended the search"
            self.note(f"{trials} run{ended}")
