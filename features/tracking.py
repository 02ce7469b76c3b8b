"""Where MLflow tracking and the model registry live: $MLFLOW_TRACKING_URI, else a sqlite
store under the project's models/ folder."""

from __future__ import annotations

import os
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
