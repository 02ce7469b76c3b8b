"""Every notebook runs top to bottom on small data (nbclient, a real kernel), with a time
bound per cell; a failing cell fails the test and names the notebook and the cell."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

from features.params import PROJECT_ROOT

NOTEBOOKS = PROJECT_ROOT / "notebooks"
CELL_SECONDS = 300
MODEL = "svc-model"  # as trained by the `champion_store` fixture


def run_notebook(name: str, parameters: dict, workdir: Path) -> nbformat.NotebookNode:
    """Execute a notebook with its tagged parameters overridden (papermill-style: a cell of
    assignments right after the `parameters` cell)."""
    book = nbformat.read(NOTEBOOKS / name, as_version=4)
    index = next(i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", []))
    injected = nbformat.v4.new_code_cell("\n".join(f"{key} = {value!r}" for key, value in parameters.items()))
    injected.metadata["tags"] = ["injected-parameters"]
    book.cells.insert(index + 1, injected)
    client = NotebookClient(
        book, timeout=CELL_SECONDS, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        failed = next((i for i, c in enumerate(book.cells) if _has_error(c)), None)
        cell = "?" if failed is None else failed - (failed > index)  # numbered as in the file
        pytest.fail(f"{name}: cell {cell} failed:\n{str(exc)[-3000:]}", pytrace=False)
    return book


def _has_error(cell) -> bool:
    return any(o.get("output_type") == "error" for o in cell.get("outputs", []))


@pytest.fixture
def kernel_env(monkeypatch):
    # The kernel's own backend (inline), as a user's notebook has it: the product's imports must
    # not switch it to a file-only one, or every plot is silently lost.
    monkeypatch.delenv("MPLBACKEND", raising=False)
    return monkeypatch


def _noise(book: nbformat.NotebookNode) -> list[str]:
    """What a reader would take for trouble or clutter: warnings and download bars, as text on
    stderr or as progress widgets (tqdm draws one per model loaded when ipywidgets is there)."""
    outputs = [o for c in book.cells for o in c.get("outputs", [])]
    said = [o.get("text", "") for o in outputs if o.get("name") == "stderr"]
    widgets = [str(o["data"])[:300] for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    return [text[:300] for text in said if re.search(r"Warning|Downloading artifacts", text)] + widgets


def _images(book: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in book.cells for o in c.get("outputs", []))


def test_committed_notebooks_have_no_outputs():
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        book = nbformat.read(path, as_version=4)
        dirty = [i for i, c in enumerate(book.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{path.name}: outputs in cells {dirty}; strip them before committing"


@pytest.mark.slow
def test_explore_notebook(small_crm_dir, tmp_path, kernel_env):
    book = run_notebook("01-explore-leads.ipynb", {"data_dir": str(small_crm_dir)}, tmp_path)
    text = "".join(str(o) for c in book.cells for o in c.get("outputs", []))
    assert "rows quarantined" in text and "flagged as leaking the label" in text
    assert "features changed by the demo request after T: none" in text  # computed from the past alone
    # A month on, the demo request is in the lead's past and counts (the column left it out).
    table = next(o["data"]["text/plain"] for c in book.cells if "month_on" in c.source
                 for o in c.get("outputs", []) if "text/plain" in o.get("data", {}))  # fmt: skip
    # The row's values, over the blocks a wide table is printed in.
    row = [float(v) for line in table.splitlines() if line.startswith("n_demo_request_30d") for v in line.split()[1:]]
    assert len(row) == 3 and row[2] >= row[0] + 1, table
    assert _images(book) >= 1  # conversion by source, industry and seniority


@pytest.mark.slow
def test_retrain_notebook_registers_a_challenger_and_promotes_it(small_crm_dir, champion_store, tmp_path, kernel_env):
    # A copy of the registry, so promoting here leaves the other tests' champion alone.
    store = tmp_path / "mlflow.db"
    shutil.copy(champion_store.removeprefix("sqlite:///"), store)
    uri = f"sqlite:///{store}"
    kernel_env.setenv("MLFLOW_TRACKING_URI", uri)
    before = MlflowClient(uri).get_model_version_by_alias(MODEL, "champion").version
    parameters = {"data_dir": str(small_crm_dir), "model_name": MODEL, "trials": 3, "timeout_seconds": 900,
                  "promote_challenger": True}  # fmt: skip
    book = run_notebook("02-retrain-and-compare.ipynb", parameters, tmp_path)
    assert not _noise(book), _noise(book)
    client = MlflowClient(uri)
    challenger = max(client.search_model_versions(f"name = '{MODEL}'"), key=lambda v: int(v.version))
    text = "".join(str(o) for c in book.cells for o in c.get("outputs", []))
    assert f"champion v{before}" in text and f"challenger v{challenger.version}" in text
    assert re.search(r"\d trials? run", text)  # the tuning's progress is printed, not only logged
    assert "ROC AUC, challenger minus champion" in text and "95% interval" in text
    assert _images(book) >= 2  # the study and the comparison
    # Promoted only through the registration gates, as `leadscore train` promotes.
    passed = client.get_run(challenger.run_id).data.tags["gates_passed"] == "True"
    champion = client.get_model_version_by_alias(MODEL, "champion").version
    aliases = client.get_registered_model(MODEL).aliases
    if passed:
        assert champion == challenger.version != before
        assert client.get_model_version_by_alias(MODEL, "previous").version == before
        # As `leadscore promote` leaves it: the run says so, and @challenger names no champion.
        assert client.get_run(challenger.run_id).data.tags["promoted"] == "True" and "challenger" not in aliases
    else:
        assert champion == before and re.search(r"not promoted: gate \w+ failed", text), text[-2000:]
        assert aliases["challenger"] == challenger.version


@pytest.mark.slow
def test_explain_notebook(small_crm_dir, champion_store, tmp_path, kernel_env):
    kernel_env.setenv("MLFLOW_TRACKING_URI", champion_store)
    parameters = {"data_dir": str(small_crm_dir), "model_name": MODEL, "as_of": "2025-12-20", "sample_leads": 300}
    book = run_notebook("03-explain-leads.ipynb", parameters, tmp_path)
    assert not _noise(book), _noise(book)
    text = "".join(str(o) for c in book.cells for o in c.get("outputs", []))
    assert "To SQL" in text and "<svg" in text
    assert _images(book) >= 2  # the SHAP summary and the score histogram


@pytest.mark.slow
def test_flat_csv_notebook_flags_a_leaking_column_trains_and_explains(tmp_path, kernel_env):
    """A form export of the shape `Leads.csv` has (trailing comma, 'Select' for blank, a note a rep
    writes after the outcome): every column read, the note flagged, a model registered under
    its own name and held-out leads explained."""
    rng = np.random.default_rng(5)
    n = 900
    minutes = rng.gamma(2.0, 300.0, n).round()
    source = rng.choice(["Google", "Referral", "Olark Chat", "Select"], n, p=[0.4, 0.25, 0.2, 0.15])
    odds = -1.5 + minutes / 500 + (source == "Referral") * 1.2
    converted = (rng.random(n) < 1 / (1 + np.exp(-odds))).astype(int)
    note = np.where(converted == 1, "Closed by rep", rng.choice(["No answer", "Not interested"], n))
    columns = {"Prospect ID": [f"p-{i:04d}" for i in range(n)], "Lead Source": source}
    columns.update({"Total Time Spent on Website": minutes, "Sales Note": note, "Converted": converted, "": ""})
    frame = pd.DataFrame(columns)
    data = tmp_path / "form_export.csv"
    frame.to_csv(data, index=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    kernel_env.setenv("MLFLOW_TRACKING_URI", store)
    kernel_env.setenv("LEADSCORE_MODELS_DIR", str(tmp_path / "models"))
    parameters = {"data_file": str(data), "id_column": "Prospect ID", "drop": [], "trials": 3, "timeout_seconds": 900}
    book = run_notebook("04-flat-csv.ipynb", parameters, tmp_path)
    assert not _noise(book), _noise(book)
    text = "".join(str(o) for c in book.cells for o in c.get("outputs", []))
    assert "900 leads" in text and "column Unnamed: 5 (no header) not used: empty" in text
    assert "flagged as leaking the label (AUC alone at least 0.85): ['Sales Note']" in text
    assert "LightGBM defaults" in text and "serve it: leadscore serve --model-name lead-scorer-flat-converted" in text
    (registered,) = MlflowClient(store).search_model_versions("name='lead-scorer-flat-converted'")
    assert f"lead-scorer-flat-converted v{registered.version}: test ECE" in text
    assert text.count("<h3>p-") == 3 and "Total Time Spent on Website" in text  # three leads and their reasons
    assert _images(book) >= 1  # the SHAP summary
