"""Holding SIGTERM and SIGINT back once a promotion is under way, so the records say what happened."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
# A promotion began in this command: from then on a stop signal waits for the command's end
# (seconds), whose output says the champion moved; stopped, it had said "unchanged".
promoting = False
held: int | None = None  # the signal that came meanwhile, if any


def reset() -> None:
    """A command starts: nothing held (a notebook or a test runs several in one process)."""
    global _depth, promoting, held
    _depth, promoting, held = 0, False, None


def holding() -> bool:
    """Whether a stop signal now is to wait (the command's handler asks)."""
    return _depth > 0 or promoting


def note_held(signum: int) -> None:
    global held
    first = held is None
    held = signum
    if first:  # said at once: a Ctrl-C that seems to do nothing is pressed again and again
        name = signal.Signals(signum).name
        os.write(2, f"{name}: a promotion is under way; finishing its records first, then stopping\n".encode())


@contextmanager
def sigterm_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait from the move of `@champion` to the end of the command: stopped
    between the move and the run's and report's records, the command said the champion was
    unchanged and its summary said "stopped". The command then finishes; `held` names the signal."""
    global _depth, promoting
    _depth += 1
    promoting = True
    try:
        yield
    finally:
        _depth -= 1
