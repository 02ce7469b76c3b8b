"""Drift between a reference period (the training window) and a recent one (the newest
quarter): population stability index per feature and for the score, and the shift in the
conversion rate. Used by the recalibration to say what moved and to decide whether to act."""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 10
# Shares are floored so an empty bin on one side gives a large, finite index.
SHARE_FLOOR = 1e-4
MISSING = "(missing)"


def psi_numeric(reference: np.ndarray, recent: np.ndarray, bins: int = BINS) -> float:
    """Population stability index of a numeric column: bins at the reference's quantiles,
    missing values as a bin of their own."""
    reference = np.asarray(reference, dtype=float)
    recent = np.asarray(recent, dtype=float)
    present = reference[~np.isnan(reference)]
    cuts = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else np.array([])
    edges = np.unique(cuts)

    def shares(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=len(edges) + 1)
        return np.append(counts, missing.sum()) / max(len(values), 1)

    return _psi(shares(reference), shares(recent))


def psi_categorical(reference: pd.Series, recent: pd.Series) -> float:
    """Population stability index of a categorical column (missing is a category)."""
    ref = reference.astype("object").where(reference.notna(), MISSING).value_counts(normalize=True)
    new = recent.astype("object").where(recent.notna(), MISSING).value_counts(normalize=True)
    levels = ref.index.union(new.index)
    return _psi(ref.reindex(levels, fill_value=0).to_numpy(), new.reindex(levels, fill_value=0).to_numpy())


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.maximum(expected, SHARE_FLOOR)
    actual = np.maximum(actual, SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def feature_drift(reference: pd.DataFrame, recent: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """PSI of every column both frames share, largest first, flagged at `threshold`
    (0.1 is commonly read as a moderate shift, 0.25 as a large one).

    Returns:
        Columns `feature`, `psi`, `drifted`.
    """
    rows = []
    for column in reference.columns.intersection(recent.columns):
        if pd.api.types.is_numeric_dtype(reference[column]) and pd.api.types.is_numeric_dtype(recent[column]):
            value = psi_numeric(reference[column].to_numpy(), recent[column].to_numpy())
        else:
            value = psi_categorical(reference[column], recent[column])
        rows.append({"feature": column, "psi": value})
    table = pd.DataFrame(rows, columns=["feature", "psi"]).sort_values("psi", ascending=False, ignore_index=True)
    table["drifted"] = table["psi"] >= threshold
    return table


def conversion_shift(
    reference_label: np.ndarray,
    recent_label: np.ndarray,
    reference_units: int | None = None,
    recent_units: int | None = None,
) -> dict[str, float]:
    """Conversion rate of each period, the change (recent minus reference) and its z statistic
    (two-proportion test, pooled): how many standard errors of sampling noise the change is.
    A quarter of a thousand leads moves its rate by a point or more by chance alone.

    Args:
        reference_units, recent_units: how many independent units each period holds, when
            fewer than its examples (distinct leads: a lead open at several snapshots gives
            examples whose outcomes go together); the standard error counts these.
    """
    before = float(np.mean(reference_label)) if len(reference_label) else float("nan")
    after = float(np.mean(recent_label)) if len(recent_label) else float("nan")
    pooled = (np.sum(reference_label) + np.sum(recent_label)) / max(len(reference_label) + len(recent_label), 1)
    n_before = len(reference_label) if reference_units is None else reference_units
    n_after = len(recent_label) if recent_units is None else recent_units
    error = np.sqrt(pooled * (1 - pooled) * (1 / n_before + 1 / n_after)) if n_before and n_after else 0.0
    z = (after - before) / error if error > 0 else 0.0
    return {"reference_rate": before, "recent_rate": after, "shift": after - before, "z": float(z)}
