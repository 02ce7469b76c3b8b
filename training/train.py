"""Train: the LightGBM model factory and the final fit."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.model_selection import StratifiedKFold

from features.params import TuningParams

BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    "verbose": -1,
    "n_jobs": 2,
    "bagging_freq": 1,
}
# Hyper-parameters LightGBM takes as integers (Optuna suggests them with suggest_int).
INTEGER = frozenset(
    {"num_leaves", "min_child_samples", "min_data_in_leaf", "max_depth", "min_data_per_group", "max_cat_to_onehot",
     "max_cat_threshold", "bagging_freq", "max_bin"}
)  # fmt: skip


def monotone_constraints(x: pd.DataFrame, y: np.ndarray, min_abs_correlation: float) -> list[int]:
    """LightGBM's `monotone_constraints`, one per column of `x`: the sign of a numeric column's
    Spearman correlation with the label where it is at least `min_abs_correlation` in size,
    0 (free) for the others and for categories.

    A score that rises with the time a lead spends on the site must not dip where a few
    training rows happen to: the constraint spends no rows learning such dips.
    """
    if min_abs_correlation <= 0:  # the default: nothing to compute on every training run
        return [0] * len(x.columns)
    y = np.asarray(y)
    constraints = []
    for column in x.columns:
        values = x[column]
        known = values.notna().to_numpy()
        if isinstance(values.dtype, pd.CategoricalDtype) or values[known].nunique() < 2:
            constraints.append(0)
            continue
        rho = float(spearmanr(values[known], y[known]).statistic)
        constraints.append(int(np.sign(rho)) if abs(rho) >= min_abs_correlation else 0)
    return constraints


def learned_settings(x: pd.DataFrame, y: np.ndarray, params: TuningParams) -> dict[str, Any]:
    """LightGBM settings of every trial and the final model that come from the training rows."""
    constraints = monotone_constraints(x, y, params.monotone_min_abs_correlation)
    if not any(constraints):
        # Never the method alone: LightGBM 4.7 crashes (segfault) on `advanced` with no constraint.
        return {}
    return {"monotone_constraints": constraints, "monotone_constraints_method": params.monotone_method}


def model_params(hyperparams: dict[str, Any], *, seed: int) -> dict[str, Any]:
    """LightGBM parameters from tuned (or trial) hyper-parameters."""
    params = {**BASE_PARAMS, **hyperparams, "seed": seed}
    for name in INTEGER:
        if name in params:
            params[name] = int(params[name])
    return params


def build_model(hyperparams: dict[str, Any], *, n_estimators: int, seed: int) -> lgb.LGBMClassifier:
    """An unfitted LightGBM classifier from tuned (or trial) hyper-parameters."""
    params = model_params(hyperparams, seed=seed)
    params["random_state"] = params.pop("seed")
    return lgb.LGBMClassifier(n_estimators=n_estimators, **params)


def fit_final(
    x_train: pd.DataFrame,
    y_train: pd.Series,
    hyperparams: dict[str, Any],
    *,
    n_estimators: int,
    seed: int,
) -> lgb.Booster:
    """Refit with the tuned parameters and the early-stopped number of trees."""
    model = build_model(hyperparams, n_estimators=n_estimators, seed=seed)
    model.fit(x_train, y_train)
    return model.booster_


def out_of_fold_margins(
    x: pd.DataFrame, y: np.ndarray, hyperparams: dict[str, Any], *, n_estimators: int, folds: int, seed: int
) -> np.ndarray:
    """Raw margins of each row from a model that did not see it (k-fold), for calibration."""
    margins = np.zeros(len(y))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_idx, apply_idx in splitter.split(np.zeros(len(y)), y):
        model = build_model(hyperparams, n_estimators=n_estimators, seed=seed)
        model.fit(x.iloc[fit_idx], y[fit_idx])
        margins[apply_idx] = model.booster_.predict(x.iloc[apply_idx], raw_score=True)
    return margins
