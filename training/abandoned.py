"""MLflow runs whose process died without ending them (`kill -9`, the out-of-memory killer, a
power cut) stay RUNNING for ever: MLflow cannot tell them from live ones. Each run records which
process started it; the next training run on the same machine ends those whose process is gone."""

from __future__ import annotations

import os
import socket

import mlflow
import psutil
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient

PROCESS_TAG = "leadscore.process"  # "host pid start-time": the process that runs this run
ENDED_TAG = "leadscore.ended_because"


def _process_of(pid: int) -> str:
    # The start time tells a process from a later one given the same pid.
    return f"{socket.gethostname()} {pid} {psutil.Process(pid).create_time():.2f}"


def this_process() -> str:
    """The value of `PROCESS_TAG` for the current process."""
    return _process_of(os.getpid())


def _alive(recorded: str) -> bool | None:
    """Whether the process a run recorded still runs; None when it ran on another machine
    (or was recorded in an unknown form): only that machine can tell."""
    host, _, rest = recorded.partition(" ")
    pid, _, _started = rest.partition(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        return _process_of(int(pid)) == recorded
    except (psutil.NoSuchProcess, psutil.ZombieProcess):  # gone, or dead and not yet reaped
        return False
    except psutil.AccessDenied:  # another user's process: it runs, whatever it is
        return None


def end_abandoned_runs(experiment_id: str) -> list[mlflow.entities.Run]:
    """Mark KILLED the RUNNING runs of the experiment (and their RUNNING trial runs) that a process
    of this machine started and that process no longer runs. Returns the parent runs ended."""
    client = MlflowClient()
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'"):
        if _alive(run.data.tags.get(PROCESS_TAG, "")) is not False:
            continue
        children = client.search_runs(
            [experiment_id],
            filter_string=f"attributes.status = 'RUNNING' and tags.`mlflow.parentRunId` = '{run.info.run_id}'",
        )
        for stopped in [*children, run]:
            client.set_tag(stopped.info.run_id, ENDED_TAG, "its process stopped without ending it")
            client.set_terminated(stopped.info.run_id, RunStatus.to_string(RunStatus.KILLED))
        ended.append(run)
    return ended
