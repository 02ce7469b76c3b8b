"""Holding SIGTERM and SIGINT back once a promotion is under way, so the records say what happened."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn


class Terminated(BaseException):
    """SIGTERM (a CI timeout or cancel, systemd, `timeout` stopping a long command) or SIGINT
    (Ctrl-C; some CI runners cancel with it first). Not an `Exception`, so no handler on the way
    (Optuna's, which logs a failed trial with its traceback) takes it for an error of its own."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        why = "Ctrl-C or a cancel" if signum == signal.SIGINT else "a timeout or a cancel"
        super().__init__(f"stopped by {signal.Signals(signum).name} ({why})")
        self.exit_code = 128 + signum  # what a shell reports for a process the signal stopped


_depth = 0
# A promotion began in this command: from then on a stop signal waits for the command's end
# (seconds), whose output says the champion moved; stopped, it had said "unchanged".
promoting = False
# The command's outcome is recorded (`finish`): a stop signal waits for its output and exit.
finished = False
held: int | None = None  # the signal that came meanwhile, if any
# A stop signal whose `Terminated` was raised: Python drops an exception raised inside a
# weakref or garbage-collection callback, and the command went on to promote.
requested: int | None = None


def reset() -> None:
    """A command starts: nothing held (a notebook or a test runs several in one process)."""
    global _depth, promoting, finished, held, requested
    _depth, promoting, finished, held, requested = 0, False, False, None, None


def stop(signum: int) -> NoReturn:
    """Stop the command (the signal handler's way), remembering that it was asked."""
    global requested
    requested = signum
    raise Terminated(signum)


def check() -> None:
    """Raise the stop a callback swallowed, if any: before a promotion and at the command's end."""
    if requested is not None:
        raise Terminated(requested)


def finish() -> None:
    """The command's outcome is recorded (its run, the registry, its report): a stop signal from
    now on waits for the command's output and exit, whose code must say what was recorded (a
    SIGTERM after a promotion had made it 143, "champion unchanged")."""
    global finished
    check()
    finished = True


def holding() -> bool:
    """Whether a stop signal now is to wait (the command's handler asks)."""
    return _depth > 0 or promoting or finished


def note_held(signum: int) -> None:
    global held
    first = held is None
    held = signum
    if first:  # said at once: a Ctrl-C that seems to do nothing is pressed again and again
        name = signal.Signals(signum).name
        doing = "a promotion is under way; finishing its records" if promoting else "the outcome is recorded; finishing"
        os.write(2, f"{name}: {doing} first, then stopping\n".encode())


@contextmanager
def sigterm_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait from the move of `@champion` to the end of the command: stopped
    between the move and the run's and report's records, the command said the champion was
    unchanged and its summary said "stopped". The command then finishes; `held` names the signal."""
    global _depth, promoting
    check()  # a stop that a callback swallowed: not promoted
    _depth += 1
    promoting = True
    try:
        yield
    finally:
        _depth -= 1
