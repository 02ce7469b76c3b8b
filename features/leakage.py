"""Leakage audit: columns that nearly give the label away on their own."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.model_selection import StratifiedKFold

_PRIOR_WEIGHT = 20.0


def _rank_auc(positive: np.ndarray, ranks: np.ndarray) -> float:
    """ROC AUC from average ranks (Mann-Whitney; ties count one half): as scikit-learn's, without its checks."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def single_column_auc(values: pd.Series, label: pd.Series, *, folds: int = 5, seed: int = 0) -> float:
    """How well one column alone ranks conversions (ROC AUC, orientation-free, >= 0.5).

    Numbers rank by value, with missing tried at both ends; text columns by their
    out-of-fold conversion rate (missing is its own value), so a many-valued column
    cannot score by memorising rows.
    """
    y = label.to_numpy()
    if len(np.unique(y)) < 2:
        return 0.5
    positive = y == y.max()
    if pd.api.types.is_numeric_dtype(values):
        x = values.to_numpy(dtype="float64")
        missing = np.isnan(x)
        if missing.all():
            return 0.5
        # One ranking of the known values serves both placements of the missing ones:
        # all below (they share the lowest ranks) or all above.
        known_ranks = rankdata(x[~missing])
        n_missing = int(missing.sum())
        aucs = []
        for missing_first in (True, False):
            ranks = np.empty(len(x))
            ranks[~missing] = known_ranks + (n_missing if missing_first else 0)
            ranks[missing] = (n_missing + 1) / 2 + (0 if missing_first else len(known_ranks))
            aucs.append(_rank_auc(positive, ranks))
        return float(max(max(a, 1 - a) for a in aucs))
    codes, levels = pd.factorize(values.astype("object").where(values.notna(), "\0missing"))
    y_float = y.astype("float64")
    encoded = np.zeros(len(y))
    prior = y_float.mean()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, apply_idx in splitter.split(np.zeros(len(y)), y):
        converted = np.bincount(codes[fit_idx], weights=y_float[fit_idx], minlength=len(levels))
        seen = np.bincount(codes[fit_idx], minlength=len(levels))
        # A value not seen in the other folds gets the prior.
        rate = (converted + _PRIOR_WEIGHT * prior) / (seen + _PRIOR_WEIGHT)
        encoded[apply_idx] = rate[codes[apply_idx]]
    auc = _rank_auc(positive, rankdata(encoded))
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
