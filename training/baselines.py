"""Baselines trained on the same split: logistic regression and LightGBM with defaults."""

from __future__ import annotations

from collections.abc import Mapping

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from features.spec import missing_again


def _as_codes(train: pd.DataFrame, test: pd.DataFrame, categorical: list[str]) -> None:
    """Replace categorical columns by integer codes of train's levels, in place; -1 is missing.

    The one-hot encoder treats integers as levels just as it treats text, several times
    faster. A level train has not seen is missing, as `to_model_frame` already makes it.
    """
    for column in categorical:
        levels = (
            train[column].cat.categories
            if isinstance(train[column].dtype, pd.CategoricalDtype)
            else pd.Index(train[column].dropna().unique())
        )
        train[column] = pd.Categorical(train[column], categories=levels).codes.astype("int64")
        test[column] = pd.Categorical(test[column], categories=levels).codes.astype("int64")


def logistic_regression(categorical: list[str], numeric: list[str], seed: int):
    """Impute, scale, one-hot (rare levels pooled), then L2 logistic regression."""
    numeric_steps = make_pipeline(SimpleImputer(strategy="median", add_indicator=True), StandardScaler())
    categorical_steps = make_pipeline(
        OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=20, sparse_output=True)
    )
    columns = ColumnTransformer(
        [("num", numeric_steps, numeric), ("cat", categorical_steps, categorical)],
        sparse_threshold=0.3,
    )
    # Newton steps reach the L2 optimum in about 5 iterations where lbfgs stopped after 71 short
    # of it, 1.6 times faster on the embedded data's 123,590 rows (BENCHMARKS.md).
    model = LogisticRegression(solver="newton-cholesky", max_iter=2000, C=1.0, random_state=seed)
    return make_pipeline(columns, model)


def fit_baselines(
    x_train: pd.DataFrame,
    y_train: pd.Series,
    x_test: pd.DataFrame,
    categorical: list[str],
    seed: int,
    missing_as: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Fit both baselines on train; return their test probabilities by name.

    `missing_as` (the spec's): numbers the tuned model reads for a missing value. The baselines
    see those values missing, as the features have them: logistic regression imputes and marks
    them, where a day count of a century would dwarf every real one once scaled.
    """
    if missing_as:
        x_train, x_test = missing_again(x_train, missing_as), missing_again(x_test, missing_as)
    numeric = [c for c in x_train.columns if c not in categorical]
    train = x_train.copy()
    test = x_test.copy()
    _as_codes(train, test, categorical)
    usable = [c for c in numeric if train[c].notna().any()]
    lr = logistic_regression(categorical, usable, seed).fit(train[usable + categorical], y_train)
    default = lgb.LGBMClassifier(random_state=seed, verbose=-1, n_jobs=2).fit(x_train, y_train)
    return {
        "logistic_regression": lr.predict_proba(test[usable + categorical])[:, 1],
        "lightgbm_default": default.predict_proba(x_test)[:, 1],
    }
