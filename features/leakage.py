"""Leakage audit: columns that nearly give the label away on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

_PRIOR_WEIGHT = 20.0


def single_column_auc(values: pd.Series, label: pd.Series, *, folds: int = 5, seed: int = 0) -> float:
    """How well one column alone ranks conversions (ROC AUC, orientation-free, >= 0.5).

    Numbers rank by value, with missing tried at both ends; text columns by their
    out-of-fold conversion rate (missing is its own value), so a many-valued column
    cannot score by memorising rows.
    """
    y = label.to_numpy()
    if len(np.unique(y)) < 2:
        return 0.5
    if pd.api.types.is_numeric_dtype(values):
        x = values.to_numpy(dtype="float64")
        if np.isnan(x).all():
            return 0.5
        low, high = np.nanmin(x) - 1, np.nanmax(x) + 1
        aucs = [roc_auc_score(y, np.where(np.isnan(x), fill, x)) for fill in (low, high)]
        return float(max(max(a, 1 - a) for a in aucs))
    text = values.astype("object").where(values.notna(), "\0missing")
    encoded = np.zeros(len(y))
    prior = y.mean()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, apply_idx in splitter.split(np.zeros(len(y)), y):
        stats = (
            pd.DataFrame({"v": text.iloc[fit_idx].to_numpy(), "y": y[fit_idx]}).groupby("v")["y"].agg(["sum", "count"])
        )
        rate = (stats["sum"] + _PRIOR_WEIGHT * prior) / (stats["count"] + _PRIOR_WEIGHT)
        encoded[apply_idx] = text.iloc[apply_idx].map(rate).fillna(prior).to_numpy()
    auc = roc_auc_score(y, encoded)
    return float(max(auc, 1 - auc))


def audit_leakage(features: pd.DataFrame, label: pd.Series, threshold: float, seed: int = 0) -> pd.DataFrame:
    """Single-column ROC AUC of every feature, strongest first, flagged at `threshold`.

    Returns:
        Columns `column`, `auc`, `flagged`.
    """
    label = label.reset_index(drop=True)
    rows = [
        {
            "column": c,
            "auc": single_column_auc(features[c].reset_index(drop=True), label, seed=seed),
        }
        for c in features.columns
    ]
    table = pd.DataFrame(rows, columns=["column", "auc"]).sort_values("auc", ascending=False, ignore_index=True)
    table["flagged"] = table["auc"] >= threshold
    return table
