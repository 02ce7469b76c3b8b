"""Holding SIGTERM back while a promotion and the records that say so are written together."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

_depth = 0
# A SIGTERM arrived while held: the command finished its promotion instead of stopping part way.
held = False


def holding() -> bool:
    """Whether a SIGTERM now is to wait (the command's handler asks)."""
    return _depth > 0


def note_held() -> None:
    global held
    held = True


@contextmanager
def sigterm_held() -> Iterator[None]:
    """SIGTERM waits from the move of `@champion` to the end of the run's and report's records
    (seconds): stopped between them, the champion had moved while the command said it was
    unchanged and its summary said "stopped". The command then finishes; `held` says a signal came."""
    global _depth
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
