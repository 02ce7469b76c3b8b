"""Faults: the tracking server stops under a running service, training is killed half-way,
models/ is read-only or full. Nothing is lost and every failure says what happened."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from mlflow.tracking import MlflowClient

from tests.test_service import CHAMPION_NAME, _free_port, _request, _start, _stop

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
AS_OF = "2025-12-20T12:00:00"


def _copy_store(store: str, tmp_path: Path) -> str:
    """A copy of the test champion's sqlite store (artifacts stay where the original has them)."""
    copy = tmp_path / "mlflow.db"
    shutil.copy(store.removeprefix("sqlite:///"), copy)
    return f"sqlite:///{copy}"


def _registry(store: str) -> tuple[list[str], dict[str, str]]:
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    versions = sorted(v.version for v in client.search_model_versions(f"name='{CHAMPION_NAME}'"))
    return versions, dict(client.get_registered_model(CHAMPION_NAME).aliases)


@contextmanager
def _mlflow_server(store: str, tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "mlflow-server.log").open("w")
    process = subprocess.Popen([str(BIN / "mlflow"), "server", "--backend-store-uri", store, "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1",
                                "--artifacts-destination", str(tmp_path / "served-artifacts")],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.5)
    else:
        _stop(process)
        raise RuntimeError(f"mlflow server did not start: {(tmp_path / 'mlflow-server.log').read_text()[-2000:]}")
    try:
        yield url, process
    finally:
        _stop(process)


def _wait_for_every_worker(log: Path, timeout: float = 120) -> None:
    """Wait until each of the service's workers (one per core) has loaded its model."""
    deadline = time.time() + timeout
    while log.read_text().count("Service lead_scoring initialized") < (os.cpu_count() or 1):
        if time.time() > deadline:
            raise AssertionError(f"not every worker started: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_models_loaded_through_a_tracking_server_leave_no_download_bars(small_crm_dir, tmp_path, monkeypatch):
    """Each model a worker loaded through a tracking server's artifact store wrote MLflow's
    download bar to the service's log: 26 bars in 30 minutes of promotions were 82 KB of 85."""
    import mlflow

    from features.params import load_params
    from training.pipeline import prepare_crm, train_and_register

    with _mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as (tracking, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        params = load_params(**{"tuning.trials": 2, "tuning.max_boost_rounds": 100, "mlflow.shap_sample": 50,
                                "gates.min_auc_gain_vs_baseline": -1.0, "gates.max_test_ece": 1.0})  # fmt: skip
        metrics = train_and_register(prepare_crm(small_crm_dir, params), params, model_name=CHAMPION_NAME)
        mlflow.set_tracking_uri(None)
        assert metrics["promoted"] and any((tmp_path / "served-artifacts").iterdir())  # served, not local files
        # As a service is started by hand: the variable the test run sets is not set.
        unset = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": None}
        service, url, log = _start(tracking, None, log_dir=tmp_path, env_extra=unset, via_leadscore=True)
        try:
            _wait_for_every_worker(log)
            assert httpx.get(f"{url}/model").json()["version"] == metrics["model"]["version"]
        finally:
            _stop(service)
    assert "Downloading artifacts" not in log.read_text(), log.read_text()[-2000:]


def test_the_service_keeps_scoring_when_the_tracking_server_stops(champion_store, small_crm_dir, tmp_path):
    from features.ingest import load_crm

    crm = load_crm(small_crm_dir)
    open_ids = crm.outcomes.loc[crm.outcomes["status"] == "open", "lead_id"]
    leads = crm.leads[crm.leads["lead_id"].isin(open_ids)].head(5).reset_index(drop=True)
    body = _request(leads, crm.activities[crm.activities["lead_id"].isin(leads["lead_id"])])
    store = _copy_store(champion_store, tmp_path)
    with _mlflow_server(store, tmp_path) as (tracking, mlflow_process):
        # No retry storm against a dead server: the service bounds MLflow's retries itself (MLflow's
        # own default held a /reload past BentoML's 120 s request timeout).
        service, url, log = _start(tracking, None, log_dir=tmp_path)
        try:
            _wait_for_every_worker(log)  # a worker still loading when the server stops has no model
            before = httpx.post(f"{url}/score", json=body, timeout=60)
            assert before.status_code == 200, before.text
            version = httpx.get(f"{url}/model").json()["version"]
            _stop(mlflow_process)
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{tracking}/health", timeout=2)
            after = httpx.post(f"{url}/score", json=body, timeout=60)
            assert after.status_code == 200 and after.json() == before.json()
            started = time.monotonic()
            answer = httpx.post(f"{url}/reload", timeout=60)
            assert time.monotonic() - started < 60 and answer.status_code == 503
            reload = answer.json()
            assert reload["changed"] is False and reload["live_version"] == version
            assert "unreachable" in reload["error"]
            assert httpx.get(f"{url}/readyz").status_code == 200
            model = _model_once_checked(url, "unreachable")  # every worker, by its own check or /reload
            assert model["version"] == version
        finally:
            _stop(service)
    assert "Traceback" not in log.read_text()


def _model_once_checked(url: str, problem: str, timeout: float = 90) -> dict:
    """`/model` once the worker answering has seen `problem` (each worker checks the registry on
    its own, every `service.reload_seconds`, or when a /reload reaches it)."""
    deadline = time.time() + timeout
    while True:
        model = httpx.get(f"{url}/model").json()
        if problem in (model["last_check_problem"] or "") or time.time() > deadline:
            assert problem in (model["last_check_problem"] or ""), model
            return model
        httpx.post(f"{url}/reload", timeout=60)
        time.sleep(1)


def test_a_registry_file_replaced_or_removed_under_the_service_is_read_anew(champion_store, tmp_path):
    # A restored backup, or `make clean` then a new training, writes a new file at the same path:
    # a connection kept open on the old file read the old registry for ever.
    store = _copy_store(champion_store, tmp_path)
    database = Path(store.removeprefix("sqlite:///"))
    service, url, log = _start(store, None, log_dir=tmp_path)
    try:
        _wait_for_every_worker(log)
        assert httpx.get(f"{url}/model").json()["alias"] == "champion"
        edited = tmp_path / "edited.db"
        shutil.copy(database, edited)
        MlflowClient(registry_uri=f"sqlite:///{edited}").delete_registered_model_alias(CHAMPION_NAME, "champion")
        os.replace(edited, database)  # a new file (inode) at the service's path
        reload = httpx.post(f"{url}/reload", timeout=60).json()
        assert "none is @champion" in reload["error"] and "or the alias was removed" in reload["error"]
        model = _model_once_checked(url, "none is @champion")  # still serving the last champion, not called one
        assert model["alias"] is None and model["version"] == "1"
        assert httpx.get(f"{url}/readyz").status_code == 200
        database.unlink()
        reload = httpx.post(f"{url}/reload", timeout=60).json()
        assert f"the registry database {database} no longer exists" in reload["error"]
        assert not database.exists()  # no empty registry created in its place
    finally:
        _stop(service)
    assert "Traceback" not in log.read_text()


def test_training_killed_half_way_leaves_the_registry_as_it_was(champion_store, small_crm_dir, tmp_path):
    store = _copy_store(champion_store, tmp_path)
    before = _registry(store)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([str(BIN / "leadscore"), "train", "--data", str(small_crm_dir), "--trials", "200",
                                "--timeout", "600", "--model-name", CHAMPION_NAME],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)  # fmt: skip
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "Tuning LightGBM" in line:
            time.sleep(3)  # some trials logged to MLflow, nothing registered yet
            os.killpg(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    assert _registry(store) == before


@contextmanager
def _mounted(folder: Path, options: str):
    """A tmpfs at `folder` (root only): read-only, or tiny to stand for a full disk."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize(("options", "reason"), [("ro", "read-only"), ("size=64k", "the disk is full")])
def test_a_read_only_or_full_models_folder_is_a_clear_error(small_crm_dir, tmp_path, options, reason):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only or full filesystem needs root (CI runs as root)")
    with _mounted(tmp_path / "models", options) as folder:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}", "COLUMNS": "200",
               "LEADSCORE_SCORES_DIR": str(folder / "scores")}  # fmt: skip
        train = subprocess.run([str(BIN / "leadscore"), "train", "--data", str(small_crm_dir), "--trials", "2"],
                               env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        score = subprocess.run([str(BIN / "leadscore"), "score", str(small_crm_dir), "-o", str(folder / "s.csv")],
                               env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    for done in (train, score):
        text = done.stdout + done.stderr
        assert done.returncode == 2, text  # the CLI's exit code for a refused command
        assert reason in text and str(folder) in text.replace("\n", ""), text
        assert "Traceback" not in text


@pytest.mark.parametrize("damage", ["truncated booster", "metadata not JSON", "feature spec of another model"])
def test_a_corrupted_bundle_is_refused_and_the_live_model_stays(champion_store, tmp_path, damage):
    import json

    import mlflow

    from training.register import promote

    store = _copy_store(champion_store, tmp_path)
    client = MlflowClient(tracking_uri=store, registry_uri=store)
    live = str(client.get_model_version_by_alias(CHAMPION_NAME, "champion").version)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        source = f"models:/{CHAMPION_NAME}/{live}"
        copy = Path(mlflow.artifacts.download_artifacts(source, dst_path=str(tmp_path / "b")))
    finally:
        mlflow.set_tracking_uri(previous)
    files = {p.name: p for p in copy.rglob("*") if p.is_file()}
    if damage == "truncated booster":
        booster = next(p for name, p in files.items() if name.endswith(".txt") and "tree" in p.read_text()[:5000])
        booster.write_text(booster.read_text()[: len(booster.read_text()) // 3])
    elif damage == "metadata not JSON":
        next(p for name, p in files.items() if name == "metadata.json").write_text("{ not json")
    else:
        spec = next(p for name, p in files.items() if name == "spec.json")
        content = json.loads(spec.read_text())
        content["columns"] = [f"other_{c}" for c in content["columns"]]
        spec.write_text(json.dumps(content))
    service, url, log = _start(store, None, log_dir=tmp_path)
    try:
        assert httpx.get(f"{url}/model").json()["version"] == live
        broken = client.create_model_version(CHAMPION_NAME, source=str(copy), run_id=None)
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(store)
        try:
            promote(CHAMPION_NAME, str(broken.version))
        finally:
            mlflow.set_tracking_uri(previous)
        refused = httpx.post(f"{url}/reload", timeout=60).json()
        assert refused["changed"] is False and refused["live_version"] == live, refused
        assert f"version {broken.version} could not be loaded" in refused["error"]
        body = {"leads": [{"lead_id": "x", "created_at": "2025-01-01"}], "as_of": AS_OF}
        assert httpx.post(f"{url}/score", json=body, timeout=30).json()[0]["model_version"] == live
    finally:
        _stop(service)
    assert "could not be loaded" in log.read_text()  # the refusal is logged with its reason


def test_a_tracking_store_that_cannot_work_is_named_before_the_data_is_loaded(champion_store, tmp_path, monkeypatch):
    from features.tracking import tracking_problem

    def train_with(uri: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "COLUMNS": "200"}
        return subprocess.run([str(BIN / "leadscore"), "train", "--trials", "1"], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    with _mlflow_server(_copy_store(champion_store, tmp_path), tmp_path) as (tracking, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
        assert tracking_problem() is None
    stopped = train_with(tracking)  # the same address once its server is gone
    assert stopped.returncode == 2 and "no tracking server answers" in stopped.stderr, stopped.stderr
    assert "Loading" not in stopped.stdout

    port = _free_port()
    web = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        not_mlflow = train_with(f"http://127.0.0.1:{port}")
    finally:
        _stop(web)
    assert not_mlflow.returncode == 2  # http.server answers MLflow's POST with 501
    assert re.search(r"not an MLflow tracking server \(HTTP \d{3}\)", not_mlflow.stderr), not_mlflow.stderr

    folder_store = train_with(f"file://{tmp_path / 'mlruns'}")
    assert folder_store.returncode == 2 and "sqlite:///" in folder_store.stderr
    assert "Traceback" not in stopped.stderr + not_mlflow.stderr + folder_store.stderr


def test_commands_that_read_the_registry_name_a_bad_store_or_params_file_in_one_line(small_crm_dir, tmp_path):
    """score, report and rollback check the store as train does (a stopped server was minutes
    of silence, a folder typo a new empty registry) and a params file as train does; a store
    that does not exist yet holds no model, so they say so without creating it."""
    ids = tmp_path / "ids.txt"
    ids.write_text("L1\n")
    commands = {
        "score": ["score", str(small_crm_dir), "-o", str(tmp_path / "scored" / "s.csv")],
        "report": ["report", "--leads", str(ids), "-o", str(tmp_path / "pages")],
        "rollback": ["rollback"],
    }
    cases = {
        ("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}"): "no tracking server answers",
        ("MLFLOW_TRACKING_URI", f"file://{tmp_path / 'mlruns'}"): "a folder store",
        ("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"): "does not exist",
        ("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'new.db'}"): "no model registered yet",
        ("LEADSCORE_PARAMS", str(tmp_path / "missing.yaml")): "missing.yaml",
    }
    for (variable, value), said in cases.items():
        env = {**os.environ, "COLUMNS": "200", "LEADSCORE_SCORES_DIR": str(tmp_path / "snapshots"), variable: value}
        env.pop("MLFLOW_ALLOW_FILE_STORE", None)
        for command, args in commands.items():
            done = subprocess.run([str(BIN / "leadscore"), *args], env=env, capture_output=True, text=True, timeout=120)
            where = f"{command} with {variable}={value}"
            assert done.returncode == 2 and said in done.stderr, (where, done.stderr)
            assert "Traceback" not in done.stderr, where
    assert not (tmp_path / "typo").exists()  # no registry was started by the typo
    assert not (tmp_path / "new.db").exists()  # nor an empty one by a command that only reads
    # nor the folders score checked it could write to before it found no model
    assert not (tmp_path / "scored").exists() and not (tmp_path / "snapshots").exists()


def _serve_says(serve: list[str], env: dict[str, str], cwd: Path | None = None) -> str:
    """The two lines `leadscore serve` prints before BentoML starts; then it is stopped."""
    with subprocess.Popen(serve, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True) as server:  # fmt: skip
        try:
            return server.stdout.readline() + server.stdout.readline()
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=60)


def test_serve_refuses_a_mistyped_store_and_says_when_no_model_is_registered_yet(tmp_path, champion_store):
    """A typo'd store would serve 503s forever from an empty registry of its own; a store not
    created yet is a new user's first `serve`, which starts and waits for a champion."""
    serve = [str(BIN / "leadscore"), "serve", "--host", "127.0.0.1", "--port", str(_free_port())]
    env = {**os.environ, "COLUMNS": "400", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'typo' / 'mlflow.db'}"}
    done = subprocess.run(serve, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "typo does not exist" in done.stderr, done.stdout + done.stderr
    assert not (tmp_path / "typo").exists()
    # A port another process listens on: one line, not BentoML's traceback.
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = [*serve[:-1], str(taken.getsockname()[1])]
        env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'new.db'}"
        done = subprocess.run(busy, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is in use (another service?)" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr and "Serving" not in done.stdout  # it did not serve
    # Keys asked for but none given (`,`): it said "API keys required" and let every request in.
    no_keys = subprocess.run(
        serve, env={**env, "LEADSCORE_API_KEYS": " , "}, capture_output=True, text=True, timeout=120
    )
    assert no_keys.returncode == 2 and "LEADSCORE_API_KEYS is set but holds no key" in no_keys.stderr, no_keys.stderr
    waits = {
        f"sqlite:///{tmp_path / 'new.db'}": "no model registered yet",
        f"http://leadscore:s3cret@127.0.0.1:{_free_port()}": "no tracking server answers",
        # A store with models, none of this name (a misspelt LEADSCORE_MODEL_NAME): it listed none.
        champion_store: "no registered model named 'lead-scorer' (registered: ",
    }
    for uri, reason in waits.items():
        env["MLFLOW_TRACKING_URI"] = uri
        said = _serve_says(serve, env)
        assert f"Serving models:/lead-scorer@champion from {uri.replace('s3cret', '***')}" in said, said
        assert reason in said and "/readyz and /score answer 503 until" in said, said
        assert "s3cret" not in said  # a supervisor's log keeps what serve prints
    # The default store (no MLFLOW_TRACKING_URI): the names are read from it, not from an empty
    # mlflow.db MLflow would make in the current folder.
    models, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    models.mkdir()
    elsewhere.mkdir()
    shutil.copy(champion_store.removeprefix("sqlite:///"), models / "mlflow.db")
    env = {k: v for k, v in env.items() if k != "MLFLOW_TRACKING_URI"} | {"LEADSCORE_MODELS_DIR": str(models)}
    said = _serve_says(serve, env, cwd=elsewhere)
    assert "no registered model named 'lead-scorer' (registered: " in said and CHAMPION_NAME in said, said
    assert not (elsewhere / "mlflow.db").exists()


def test_a_models_folder_of_its_own_holds_the_default_store(tmp_path):
    """LEADSCORE_MODELS_DIR moves what the product writes out of the checkout; a relative path is
    taken from the project folder, wherever the command runs."""
    from features.params import PROJECT_ROOT

    env = {name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"}
    env.update(COLUMNS="400", LEADSCORE_MODELS_DIR=os.path.relpath(tmp_path / "state", PROJECT_ROOT))
    serve = [str(BIN / "leadscore"), "serve", "--host", "127.0.0.1", "--port", str(_free_port())]
    said = _serve_says(serve, env, cwd=tmp_path)
    assert f"from sqlite:///{tmp_path / 'state' / 'mlflow.db'} on" in said, said
    assert "no model registered yet" in said, said


def test_a_command_that_finds_no_store_leaves_no_models_folder_behind(tmp_path):
    """`score`, `rollback` and `versions` said "no model registered yet" and left the folder made."""
    env = {name: value for name, value in os.environ.items() if name != "MLFLOW_TRACKING_URI"}
    env["LEADSCORE_MODELS_DIR"] = str(tmp_path / "absent" / "models")
    done = subprocess.run([str(BIN / "leadscore"), "rollback"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no model registered yet" in done.stderr, done.stderr
    assert not (tmp_path / "absent").exists()  # nor the folder above it


@pytest.mark.parametrize(
    ("uri", "said"),
    [
        ("sqlite:///", "no database file"),
        ("127.0.0.1:5000", "did you mean http://127.0.0.1:5000"),
        ("localhost:5000", "did you mean http://localhost:5000"),  # parsed as the scheme "localhost"
        ("http//127.0.0.1:5000", "did you mean http://127.0.0.1:5000"),
        ("http://[::1", "not a valid URI"),
        ("file:///tmp/mlruns", "MLFLOW_ALLOW_FILE_STORE"),
        ("sqlite:///{tmp}", "is a folder"),
        ("sqlite:///{tmp}/text.db", "not an SQLite database"),
        ("sqlite:///{tmp}/typo/mlflow.db", "typo does not exist"),
    ],
)
def test_a_mistyped_tracking_uri_is_named_before_mlflow_reads_it_some_other_way(uri, said, tmp_path, monkeypatch):
    from features.tracking import shown_uri, uri_mistake

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    (tmp_path / "text.db").write_text("a text file, not a database")
    uri = uri.format(tmp=tmp_path)
    assert said in (uri_mistake(uri) or ""), uri_mistake(uri)
    assert shown_uri(uri) == uri  # no password to mask, and no error for a malformed one
    assert uri_mistake(f"sqlite:///{tmp_path}/new.db") is None and uri_mistake("http://127.0.0.1:5000") is None


def test_a_tracking_server_lost_mid_run_is_said_in_one_line(monkeypatch, tmp_path):
    from features.tracking import server_lost

    refused = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5077): Max retries exceeded")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5077")
    assert server_lost(refused).startswith("the tracking server at http://127.0.0.1:5077 stopped answering")
    assert server_lost(ValueError("a bug")) is None
    # An artifact store of its own (`mlflow server --artifacts-only`) down is not the tracking server.
    artifacts = ConnectionError("HTTPConnectionPool(host='127.0.0.1', port=5078): Max retries exceeded")
    assert server_lost(artifacts).startswith("the artifact store at 127.0.0.1:5078 (not the tracking server")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    assert server_lost(refused) is None


def test_on_a_shared_server_a_run_whose_heartbeat_stopped_is_ended_from_any_machine(tmp_path, monkeypatch):
    """A run killed in a pod (whose name, so whose host, is new each time) could only be ended by
    the next run on that same host: on a tracking server it stayed RUNNING for ever."""
    import mlflow
    import pandas as pd

    from training.abandoned import ENDED_TAG, HEARTBEAT_TAG, PROCESS_TAG, end_abandoned_runs, heartbeat, process_tags

    now = pd.Timestamp.now(tz="UTC")
    with _mlflow_server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path) as (url, _):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        client = MlflowClient(url)
        experiment = client.create_experiment("shared")

        def run(host: str, **tags: str) -> str:
            return client.create_run(experiment, tags={PROCESS_TAG: f"{host} 7 1.00", **tags}).info.run_id

        gone = run("pod-a1b2", **{HEARTBEAT_TAG: (now - pd.Timedelta(hours=2)).isoformat()})
        trial = client.create_run(experiment, tags={"mlflow.parentRunId": gone}).info.run_id
        beating = run("pod-c3d4", **{HEARTBEAT_TAG: (now - pd.Timedelta(minutes=1)).isoformat()})
        silent = run("pod-e5f6")  # from a release before heartbeats: nothing tells, so left as it is

        ended = end_abandoned_runs(experiment)
        assert [(r.info.run_id, why.split(" since ")[0]) for r, why in ended] == [(gone, "no heartbeat from pod-a1b2")]
        for run_id in (gone, trial):
            assert client.get_run(run_id).info.status == "KILLED"
            assert "no heartbeat from pod-a1b2" in client.get_run(run_id).data.tags[ENDED_TAG]
        assert {client.get_run(r).info.status for r in (beating, silent)} == {"RUNNING"}

        # A run is made with a first beat: one killed before the beats began is ended in time too.
        assert pd.Timestamp(process_tags()[HEARTBEAT_TAG]) >= now
        # A live run beats while it runs.
        live = client.create_run(experiment).info.run_id
        with heartbeat(live, every=0.2):
            beats = set()
            deadline = time.time() + 30
            while len(beats) < 2 and time.time() < deadline:
                beats.add(client.get_run(live).data.tags.get(HEARTBEAT_TAG))
                beats.discard(None)
                time.sleep(0.1)
        assert len(beats) >= 2, beats
    # On a sqlite file (one machine: the process check tells) it does not beat.
    local = f"sqlite:///{tmp_path / 'local.db'}"
    mlflow.set_tracking_uri(local)
    client = MlflowClient(local)
    run_id = client.create_run(client.create_experiment("local")).info.run_id
    with heartbeat(run_id, every=0.05):
        time.sleep(0.5)
    assert HEARTBEAT_TAG not in client.get_run(run_id).data.tags and HEARTBEAT_TAG not in process_tags()
