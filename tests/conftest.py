"""Shared fixtures: small generated CRM data, fast params, an isolated MLflow store."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

# Set before any project module reads it: quarantine files, reports, snapshots and the embedded
# data of a test run go to a folder of their own (subprocesses inherit it), never the project's
# models/, where a developer's own runs live.
TEST_MODELS_DIR = Path(tempfile.mkdtemp(prefix="leadscore-test-models-")).resolve()
os.environ["LEADSCORE_MODELS_DIR"] = str(TEST_MODELS_DIR)
atexit.register(shutil.rmtree, TEST_MODELS_DIR, ignore_errors=True)

from features.params import PROJECT_ROOT, Params, load_params  # noqa: E402
from features.synthetic import generate_crm, write_crm  # noqa: E402

SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
CHAMPION_NAME = "svc-model"
FAST_OVERRIDES = {
    "tuning.trials": 3,
    # The trial count bounds the work; a budget a loaded CI machine can run out of picks another model.
    "tuning.timeout_seconds": 900,
    "tuning.max_boost_rounds": 300,
    "tuning.early_stopping_rounds": 20,
    "mlflow.shap_sample": 200,
}


@pytest.fixture(scope="session", autouse=True)
def isolated_mlflow(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Every test talks to its own sqlite MLflow store, never the project's models/."""
    store = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return uri


@pytest.fixture(autouse=True)
def signal_handlers_restored():
    """A command run in-process (CliRunner, a test of the handlers) installs its SIGTERM and
    SIGINT handlers: restored after each test, so Ctrl-C still stops pytest. Its record of a stop
    is cleared too: a later test's promotion would take it for a stop of its own."""
    import signal

    from training import stopping

    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    yield
    for number, handler in before.items():
        signal.signal(number, handler)
    stopping.reset()


@pytest.fixture(autouse=True)
def mlflow_follows_the_environment():
    """A test that points MLflow's process-wide URI at a store (as `train` does) hands it back:
    `set_tracking_uri` wins over `MLFLOW_TRACKING_URI`, so later tests would talk to that store
    whatever they set, and pass or fail by the order they run in."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    import mlflow

    mlflow.set_tracking_uri(None)  # back to following the environment; this also unsets the variable
    if before is not None:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def params() -> Params:
    return load_params(**FAST_OVERRIDES)


@pytest.fixture(scope="session")
def params_file(tmp_path_factory: pytest.TempPathFactory):
    """Write a params.yaml copy with fast settings and dotted-key overrides; returns its path."""
    folder = tmp_path_factory.mktemp("params")

    def write(name: str = "params.yaml", **overrides: object) -> Path:
        raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
        for dotted, value in {**FAST_OVERRIDES, **overrides}.items():
            node = raw
            *parents, leaf = dotted.split(".")
            for key in parents:
                node = node[key]
            node[leaf] = value
        path = folder / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return write


@pytest.fixture(scope="session")
def small_crm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A year of a small CRM (2,500 leads), written as the raw export files."""
    out = tmp_path_factory.mktemp("crm")
    write_crm(generate_crm(2500, seed=3, start="2025-01-01", months=12), out)
    return out


@pytest.fixture
def shared_file():
    """Find a file of ../shared/data, or skip the test clearly when it is absent."""

    def find(*parts: str) -> Path:
        path = SHARED_DATA.joinpath(*parts)
        if not path.is_file():
            pytest.skip(f"shared data set not present: {path}")
        return path

    return find


@pytest.fixture(scope="session")
def champion_store(small_crm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A registry (its tracking URI) whose `svc-model@champion` was trained on the small CRM."""
    from training.pipeline import prepare_crm, train_and_register

    uri = f"sqlite:///{tmp_path_factory.mktemp('svc-store') / 'mlflow.db'}"
    previous = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        params = load_params(
            **{
                "tuning.trials": 3,
                "tuning.max_boost_rounds": 200,
                "mlflow.shap_sample": 100,
                "gates.min_auc_gain_vs_baseline": -1.0,
                "gates.max_test_ece": 1.0,  # small data: the gates are tested elsewhere
            }
        )
        metrics = train_and_register(prepare_crm(small_crm_dir, params), params, model_name=CHAMPION_NAME)
        assert metrics["promoted"], metrics["gates"]
    finally:
        # Training pointed MLflow's process-wide URI at this store, which wins over the variable:
        # the test this fixture was set up for would otherwise read this store whatever it sets.
        import mlflow

        mlflow.set_tracking_uri(None)
        os.environ["MLFLOW_TRACKING_URI"] = previous
    return uri


@pytest.fixture(scope="session")
def champion(champion_store: str):
    """The loaded `svc-model@champion` of `champion_store`."""
    from serving.scoring import load_champion

    previous = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = champion_store
    try:
        return load_champion(CHAMPION_NAME)
    finally:
        os.environ["MLFLOW_TRACKING_URI"] = previous
