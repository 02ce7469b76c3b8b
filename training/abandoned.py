"""MLflow runs whose process died without ending them (`kill -9`, the out-of-memory killer, a
power cut) stay RUNNING for ever: MLflow cannot tell them from live ones. Each run records which
process started it; the next training run on the same machine ends those whose process is gone.
On a tracking server shared by several machines (pods whose names change each time, say), a run
also refreshes a heartbeat while it lives, and the next run anywhere ends one whose heartbeat
stopped long ago."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

import mlflow
import pandas as pd
import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

PROCESS_TAG = "leadscore.process"  # "host pid start-time": the process that runs this run
ENDED_TAG = "leadscore.ended_because"
HEARTBEAT_TAG = "leadscore.heartbeat"  # UTC time, refreshed while the run's process lives
HEARTBEAT_SECONDS = 60.0
# A heartbeat this much older than this machine's clock: its process is gone (or its machine's
# clock runs that far behind). Many beats missed, so a busy server or a slow call is no reason.
STALE_AFTER = pd.Timedelta(minutes=30)


# psutil's start time is the boot time, read off the wall clock, plus the process's age: it moves
# with the clock by a few milliseconds (more when the clock is stepped), where a later process given
# the same pid starts seconds or days later.
START_TOLERANCE_SECONDS = 2.0


def _process_of(pid: int) -> str:
    # The start time tells a process from a later one given the same pid.
    return f"{socket.gethostname()} {pid} {psutil.Process(pid).create_time():.2f}"


def this_process() -> str:
    """The value of `PROCESS_TAG` for the current process."""
    return _process_of(os.getpid())


def process_tags() -> dict[str, str]:
    """The tags a run is made with so that a later run can tell whether its process is gone: the
    process, and on a shared store a first heartbeat (another machine judges by it alone, and a
    run killed before `heartbeat`'s first beat would otherwise stay RUNNING for ever)."""
    tags = {PROCESS_TAG: this_process()}
    if _shared_store(mlflow.get_tracking_uri()):
        tags[HEARTBEAT_TAG] = _now().isoformat()
    return tags


def _alive(recorded: str) -> bool | None:
    """Whether the process a run recorded still runs; None when it ran on another machine
    (or was recorded in an unknown form): only that machine can tell."""
    host, _, rest = recorded.partition(" ")
    pid, _, started = rest.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        started_at = float(started)
    except ValueError:
        return None
    try:
        # Compared as a number, not as the tag's text: a start time a millisecond off can read
        # ".12" when tagged and ".13" when checked, and a live training's run would be ended.
        return abs(psutil.Process(int(pid)).create_time() - started_at) < START_TOLERANCE_SECONDS
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # gone, or dead and not yet reaped
        return False
    except psutil.AccessDenied:  # another user's process: it runs, whatever it is
        return None


def _shared_store(uri: str) -> bool:
    """A tracking store other machines may share (a server, a database server); not a sqlite file
    or a folder, which live on one machine, where the process check tells."""
    return "://" in uri and not uri.startswith(("sqlite:", "file:"))


def _now() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC")


@contextlib.contextmanager
def heartbeat(run_id: str, every: float = HEARTBEAT_SECONDS) -> Iterator[None]:
    """Refresh the run's `HEARTBEAT_TAG` from a background thread while the block runs, on a
    shared store only (on a sqlite file a second writer would also meet the run's own writes on
    the file's lock). A failed beat is let go: the next one tries again."""
    if not _shared_store(mlflow.get_tracking_uri()):
        yield
        return
    client, stop = MlflowClient(), threading.Event()

    def beat() -> None:
        while True:
            with contextlib.suppress(Exception):  # a server briefly away must not stop the run
                client.set_tag(run_id, HEARTBEAT_TAG, _now().isoformat())
            if stop.wait(every):
                return

    # A daemon, not joined: a beat waiting on a server that went away must not hold up the end.
    threading.Thread(target=beat, name="mlflow-heartbeat", daemon=True).start()
    try:
        yield
    finally:
        stop.set()


def _stopped_because(tags: dict[str, str]) -> str | None:
    """Why a RUNNING run's process is known to be gone, or None while it may live."""
    alive = _alive(tags.get(PROCESS_TAG, ""))
    if alive is False:
        return "its process stopped without ending it"
    beat = tags.get(HEARTBEAT_TAG)
    if alive is None and beat:
        try:
            last = pd.Timestamp(beat)
        except ValueError:
            return None
        if last.tzinfo is not None and _now() - last > STALE_AFTER:
            host = tags.get(PROCESS_TAG, "").partition(" ")[0] or "an unknown machine"
            return f"no heartbeat from {host} since {last:%Y-%m-%d %H:%M} UTC: its process stopped without ending it"
    return None


def end_abandoned_runs(experiment_id: str) -> list[tuple[mlflow.entities.Run, str]]:
    """Mark KILLED the RUNNING runs of the experiment (and their RUNNING trial runs) whose process
    is gone: a process of this machine that no longer runs, or, on a shared store, a run whose
    heartbeat stopped `STALE_AFTER` ago. Returns the parent runs ended, each with why."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        why = _stopped_because(run.data.tags)
        if why is None:
            continue
        children = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        )
        for stopped in [*children, run]:
            client.set_tag(stopped.info.run_id, ENDED_TAG, why)
            client.set_terminated(stopped.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append((run, why))
    return ended
