"""Train: the LightGBM model factory and the final fit."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import pandas as pd

BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "auc",
    "verbose": -1,
    "n_jobs": 2,
    "bagging_freq": 1,
}


def build_model(hyperparams: dict[str, Any], *, n_estimators: int, seed: int) -> lgb.LGBMClassifier:
    """An unfitted LightGBM classifier from tuned (or trial) hyper-parameters."""
    params = {**BASE_PARAMS, **hyperparams}
    for name in ("num_leaves", "min_child_samples", "max_depth"):
        if name in params:
            params[name] = int(params[name])
    return lgb.LGBMClassifier(n_estimators=n_estimators, random_state=seed, **params)


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
