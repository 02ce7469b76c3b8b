"""Where MLflow tracking and the model registry live: $MLFLOW_TRACKING_URI, else a sqlite
store under the project's models/ folder."""

from __future__ import annotations

import errno
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from features.params import PROJECT_ROOT

MODELS_DIR = PROJECT_ROOT / "models"


def tracking_uri() -> str:
    """The tracking URI in force; creates the embedded store's folder when it is used."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    MODELS_DIR.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{MODELS_DIR / 'mlflow.db'}"


def artifact_root() -> str | None:
    """Artifacts of a sqlite store go in an `artifacts` folder beside the database (not
    ./mlruns of whatever the current directory is); a tracking server decides for itself."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def local_store_folder() -> Path | None:
    """The folder of a sqlite tracking store (database and artifacts), None for a server."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return None


def check_writable(folder: Path, *, what: str, probe_bytes: int = 1 << 20) -> None:
    """Fail early, with the reason, when `folder` cannot take new files: a read-only
    filesystem, missing permissions or a full disk (a probe file of `probe_bytes` is written
    and removed), instead of an error from deep inside a long run.

    Raises:
        OSError: with a message naming the folder and the reason.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        try:
            with probe.open("wb") as handle:
                handle.write(b"\0" * probe_bytes)
                handle.flush()
                os.fsync(handle.fileno())
        finally:
            probe.unlink(missing_ok=True)
    except OSError as exc:
        reason = {errno.EROFS: "the filesystem is read-only", errno.ENOSPC: "the disk is full",
                  errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(
            exc.errno, exc.strerror or str(exc))  # fmt: skip
        raise OSError(exc.errno, f"cannot write {what} in {folder}: {reason}") from None


# Database schemes MLflow's SQLAlchemy store takes (a dialect may carry a driver: postgresql+psycopg2).
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_HOSTED_SCHEMES = ("databricks", "databricks-uc", "uc")


def tracking_problem(timeout: float = 10.0) -> str | None:
    """Why the tracking URI in force cannot work, found in seconds; None when it looks usable.

    An MLflow client retries an unreachable server for minutes, and an unusable URI fails
    only at the first call: both are worth saying before the data is even loaded.
    """
    uri = tracking_uri()
    scheme = urllib.parse.urlparse(uri).scheme.lower()
    if scheme.split("+")[0] in _DATABASE_SCHEMES or scheme in _HOSTED_SCHEMES or uri in _HOSTED_SCHEMES:
        return None
    if scheme not in ("http", "https"):
        return (
            f"MLFLOW_TRACKING_URI={uri!r} is not a tracking store this version of MLflow writes to: "
            "give an MLflow server (http://host:port) or a database (sqlite:///path/to/mlflow.db), "
            "or unset it for the store under models/"
        )
    probe = uri.rstrip("/") + "/api/2.0/mlflow/experiments/search?max_results=1"
    try:
        with urllib.request.urlopen(probe, timeout=timeout) as response:
            body = response.read(1 << 16)
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):  # the client sends the credentials the probe has not got
            return None
        return f"MLFLOW_TRACKING_URI={uri}: the server there is not an MLflow tracking server (HTTP {exc.code})"
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"MLFLOW_TRACKING_URI={uri}: no tracking server answers ({reason}); is `mlflow server` running?"
    try:
        json.loads(body)
    except ValueError:
        return f"MLFLOW_TRACKING_URI={uri}: the server there is not an MLflow tracking server (no JSON reply)"
    return None
