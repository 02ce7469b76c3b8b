"""Helpers shared by the benchmarks: a throwaway MLflow store and figure printing."""

from __future__ import annotations

import json
import os
import platform
import tempfile
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def use_scratch_store() -> Path:
    """Point MLflow at a fresh sqlite store so benchmarks never touch models/."""
    folder = Path(tempfile.mkdtemp(prefix="leadscore-bench-"))
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    return folder


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def parse_overrides(items: list[str]) -> dict:
    """`KEY=JSON` command-line items (e.g. `tuning.trials=20`) as a dict; ValueError if malformed."""
    return {key: json.loads(value) for key, value in (item.split("=", 1) for item in items)}
