"""Where MLflow tracking and the model registry live: $MLFLOW_TRACKING_URI, else a sqlite
store under the models folder (the project's models/, or $LEADSCORE_MODELS_DIR)."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import urllib.parse
from pathlib import Path

from features.params import PROJECT_ROOT

MODELS_DIR_ENV = "LEADSCORE_MODELS_DIR"


def project_path(value: str | Path, base: Path = PROJECT_ROOT) -> Path:
    """A path setting made absolute: a relative one is taken from `base` (the project folder),
    so the CLI, the service and a notebook kernel (each with its own working directory) agree."""
    path = Path(value).expanduser()
    return (path if path.is_absolute() else base / path).resolve()


# What the product writes (the default MLflow store, the embedded data, quarantine files,
# recalibration reports, scoring snapshots, the registry lock) lives here: the project's
# models/ unless the variable moves it out of the checkout (a volume, a data disk).
MODELS_DIR = project_path(os.environ.get(MODELS_DIR_ENV) or "models")


def lock_path(setting: str) -> Path:
    """The registry lock file (`recalibration.lock_file`): a relative one is under the models
    folder, so every process and checkout that shares the folder shares the lock. Older
    params files named it `models/recalibrate.lock` from the project folder: that leading
    `models/` is the models folder too, or two params files would lock two different files."""
    parts = Path(setting).parts
    if len(parts) > 1 and parts[0] == "models":
        setting = str(Path(*parts[1:]))
    return project_path(setting, MODELS_DIR)


_MADE_FOLDERS: list[Path] = []  # the folders this process created for the models folder, deepest first


def tracking_uri() -> str:
    """The tracking URI in force; creates the embedded store's folder when it is used."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    if not MODELS_DIR.exists():
        missing = [MODELS_DIR, *(p for p in MODELS_DIR.parents if not p.exists())]
        MODELS_DIR.mkdir(parents=True, exist_ok=True)
        _MADE_FOLDERS.extend(missing)
    return f"sqlite:///{MODELS_DIR / 'mlflow.db'}"


def remove_unused_models_dir() -> None:
    """Take back the folders `tracking_uri` made for the models folder, if nothing was written
    in them: a command that found no store leaves nothing behind."""
    for folder in _MADE_FOLDERS:
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def artifact_root() -> str | None:
    """Artifacts of a sqlite store go in an `artifacts` folder beside the database (not
    ./mlruns of whatever the current directory is); a tracking server decides for itself."""
    uri = tracking_uri()
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def local_database() -> Path | None:
    """The database file of a sqlite tracking store (it may not exist yet), None for a server."""
    uri = tracking_uri()
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def local_store_folder() -> Path | None:
    """The folder of a sqlite tracking store (database and artifacts), None for a server."""
    database = local_database()
    return None if database is None else database.parent


def check_store_file() -> None:
    """Fail early when the sqlite store's file exists and cannot be written (another user's):
    its folder taking new files says nothing of it, and the first write failed minutes in.

    Raises:
        OSError: naming the file and the reason.
    """
    database = local_database()
    if database is None or not database.is_file():
        return
    try:
        with database.open("r+b"):  # opened for writing, nothing written
            pass
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write the MLflow store {database}: {exc.strerror or exc}") from None


def check_writable(folder: Path, *, what: str, probe_bytes: int = 1 << 20, keep_folders: bool = True) -> None:
    """Fail early, with the reason, when `folder` cannot take new files: a read-only
    filesystem, missing permissions or a full disk (a probe file of `probe_bytes` is written
    and removed), instead of an error from deep inside a long run.

    Args:
        keep_folders: keep the folders created for the probe; False removes them again, for a
            command that may stop before it writes anything (its writer creates them).

    Raises:
        OSError: with a message naming the folder and the reason.
    """
    created = [folder, *folder.parents]
    created = created[: next((i for i, f in enumerate(created) if f.exists()), len(created))]
    in_the_way = next((f for f in (folder, *folder.parents) if f.exists() and not f.is_dir()), None)
    if in_the_way is not None:  # said as such: mkdir's "File exists" read as a folder already there
        raise OSError(errno.ENOTDIR, f"cannot write {what} in {folder}: {in_the_way} is a file, not a folder")
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
            if not keep_folders:
                for made in created:  # innermost first
                    with contextlib.suppress(OSError):
                        made.rmdir()
    except OSError as exc:
        reason = {errno.EROFS: "the filesystem is read-only", errno.ENOSPC: "the disk is full",
                  errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}.get(
            exc.errno, exc.strerror or str(exc))  # fmt: skip
        raise OSError(exc.errno, f"cannot write {what} in {folder}: {reason}") from None


def _password_of(uri: str) -> str | None:
    """The password in a URI's user part: everything between the first `:` after `://` and the
    last `@` before the host. Read by hand, not by `urlsplit`, which ends the user part at an
    unencoded `/`, `#`, `?` or `[` of a generated password and so misses the rest of it."""
    _scheme, found, rest = uri.partition("://")
    if not found or "@" not in rest:
        return None
    _user, colon, password = rest.rpartition("@")[0].partition(":")
    return password if colon and password else None


def shown_uri(uri: str) -> str:
    """The URI with any password masked, fit for a message."""
    return without_password(uri, uri)


def without_password(text: str, uri: str | None = None) -> str:
    """`text` with the tracking URI's password masked wherever it appears in it (MLflow's errors
    quote the URI they failed on, password and all; masked before any cut, which could leave
    part of it without the `@` after it)."""
    # Read as set, not through `tracking_uri()`, which creates the models folder: an error printed
    # because that folder cannot be made must not fail again. The default sqlite URI has no password.
    uri = os.environ.get("MLFLOW_TRACKING_URI", "") if uri is None else uri
    password = _password_of(uri)
    if not password:
        return text
    for written in sorted({password, urllib.parse.quote(password, safe=""), urllib.parse.unquote(password)}, key=len,
                          reverse=True):  # fmt: skip
        text = text.replace(f":{written}@", ":***@")
        if len(written) >= 8:  # alone too (a cut text, a message quoting it); a short one would mask words
            text = text.replace(written, "***")
    return text


def uri_mistake(uri: str) -> str | None:
    """What is wrong with the URI's form, before MLflow reads it some other way (a missing
    `http://` makes it a local folder; `sqlite:///` alone a database in memory, lost at exit)."""
    try:
        parts = urllib.parse.urlsplit(uri)
    except ValueError as exc:
        return f"not a valid URI ({exc})"
    if re.fullmatch(r"[\w.-]+:\d+/?", uri):  # `localhost:5000` parses as the scheme "localhost"
        return f"no scheme, so MLflow cannot read it; did you mean http://{uri.rstrip('/')}?"
    if parts.scheme == "sqlite":
        path = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else ""
        if not path or path == ":memory:":
            return "no database file (the runs would be kept in memory and lost); e.g. sqlite:////abs/path/mlflow.db"
        database = Path(path)
        if database.is_dir():
            return f"{database} is a folder; name the database file in it, e.g. {database / 'mlflow.db'}"
        if not database.parent.is_dir():
            # MLflow would create the folder and an empty registry: a typo's runs would never
            # meet the real champion.
            return f"the folder {database.parent} does not exist; create it first, or correct the path"
        if database.is_file() and database.stat().st_size:
            with database.open("rb") as handle:
                if handle.read(16) != b"SQLite format 3\0":
                    return f"{database} exists and is not an SQLite database"
        return None
    if parts.scheme in ("", "file") and not os.environ.get("MLFLOW_ALLOW_FILE_STORE"):
        host_port = re.match(r"^(?:https?:?/*)?([\w.-]+:\d+)", uri)
        if host_port:
            return f"no scheme, so MLflow would read it as a local folder; did you mean http://{host_port.group(1)}?"
        return (
            "a folder store, which MLflow 3 refuses unless MLFLOW_ALLOW_FILE_STORE=true; "
            "use a database (sqlite:////abs/path/mlflow.db) or a server (http://host:5000)"
        )
    return None


def uri_form_problem() -> str | None:
    """What is wrong with the form of the tracking URI in force, as a one-line message."""
    uri = tracking_uri()
    mistake = uri_mistake(uri)
    return mistake and f"MLFLOW_TRACKING_URI={shown_uri(uri)}: {mistake}"


def tracking_problem(timeout_seconds: int = 10) -> str | None:
    """Why the tracking store in force cannot work, found in seconds; None when it answers.

    MLflow's own client asks it one cheap question, with its login, TLS and proxy settings but
    without retries: by default it retries an unreachable server for minutes, and an unusable
    URI fails only at the first call, after the data is loaded.
    """
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mistake = uri_form_problem()
    if mistake:
        return mistake
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_seconds)}
    saved = {name: os.environ.get(name) for name in quick}
    os.environ.update(quick)
    try:
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # any failure here is the store's, reported in one line
        text = str(exc)
        status = re.search(r"error code (\d{3})", text)
        if status:
            reason = f"the server there is not an MLflow tracking server (HTTP {status.group(1)})"
        elif re.search(r"Connection refused|Max retries exceeded|Name or service not known|timed out", text):
            reason = "no tracking server answers; is `mlflow server` running?"
        else:
            reason = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
        return f"MLFLOW_TRACKING_URI={shown_uri(uri)}: {reason}"
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return None


def server_lost(exc: BaseException, again: str = "Train again") -> str | None:
    """A one-line message when `exc` is the tracking server no longer answering mid-run;
    `again` is what to do once it is back."""
    uri = tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return None
    if not re.search(r"Connection refused|Max retries exceeded|Name or service not known|timed out", str(exc)):
        return None
    # urllib3 names the server it could not reach: an artifact store of its own (`mlflow server
    # --artifacts-only`) is not the tracking server, which recorded the run as failed.
    reached = re.search(r"host='([^']+)', port=(\d+)", str(exc))
    parts = urllib.parse.urlsplit(uri)
    tracking = (parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    if reached and (reached[1], int(reached[2])) != tracking:
        return (
            f"the artifact store at {reached[1]}:{reached[2]} (not the tracking server at {shown_uri(uri)}) stopped "
            f"answering during the run; @champion did not move. {again} once it is back."
        )
    return (
        f"the tracking server at {shown_uri(uri)} stopped answering during the run; the run stays unfinished "
        f"there and @champion did not move. {again} once `mlflow server` is back."
    )


def quiet_tracking() -> None:
    """MLflow's chatter off, as the commands have it: a progress bar per model loaded, a "View
    run ... at" link per (nested) run on a tracking server, INFO lines on stderr."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "alembic", "urllib3", "git"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A failed write to the store (a full disk) is logged there with its traceback, at ERROR, as
    # well as raised: the command says it in one line.
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
