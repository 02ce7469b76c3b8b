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
    """Artifacts of the embedded store go under models/artifacts (not ./mlruns of the
    current directory); a remote tracking server decides for itself."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return None
    return (MODELS_DIR / "artifacts").as_uri()


def champion_uri(model_name: str) -> str:
    return f"models:/{model_name}@champion"


def ensure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
