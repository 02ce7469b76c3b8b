"""Train: the LightGBM model factory and the final fit."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedKFold

BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    "verbose": -1,
    "n_jobs": 2,
    "bagging_freq": 1,
}
# Hyper-parameters LightGBM takes as integers (Optuna suggests them with suggest_int).
INTEGER = frozenset(
    {"num_leaves", "min_child_samples", "max_depth", "min_data_per_group", "max_cat_to_onehot", "max_cat_threshold"}
)


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
