"""Fast TreeSHAP must equal LightGBM's own exact SHAP values."""

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from serving.treeshap import SERIAL_ROWS, compile_booster, shap_values


def _data(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = pd.DataFrame({
        "visits": rng.poisson(3, n).astype(float),
        "minutes": rng.exponential(10, n),
        "zeros": np.where(rng.random(n) < 0.4, 0.0, rng.normal(size=n)),
        "industry": pd.Categorical(rng.choice(["a", "b", "c", "d", "e"], n)),
        "source": pd.Categorical(rng.choice(["x", "y", "z"], n), categories=["x", "y", "z"]),
    })  # fmt: skip
    for column in ("visits", "minutes", "zeros"):
        x.loc[rng.random(n) < 0.15, column] = np.nan
    x.loc[rng.random(n) < 0.1, "industry"] = np.nan
    logit = (
        0.3 * x["visits"].fillna(0)
        - 0.05 * x["minutes"].fillna(5)
        + (x["industry"] == "a") * 1.0
        + x["zeros"].fillna(0)
    )
    y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@pytest.mark.parametrize(
    ("params", "rounds"),
    [
        ({"num_leaves": 15, "max_depth": 5}, 60),
        ({"num_leaves": 63, "max_depth": 8, "min_child_samples": 5}, 40),
        ({"num_leaves": 7, "zero_as_missing": True}, 30),
        ({"num_leaves": 31, "use_missing": False}, 30),
    ],
)
def test_equals_lightgbm_pred_contrib(params, rounds):
    x, y = _data(4000, seed=rounds)
    booster = lgb.train({"objective": "binary", "verbose": -1, "min_data_per_group": 5, "cat_smooth": 1, **params},
                        lgb.Dataset(x, y), num_boost_round=rounds)  # fmt: skip
    probe, _ = _data(1500, seed=99)
    probe.loc[0, "industry"] = np.nan
    expected = booster.predict(probe, pred_contrib=True)
    trees = compile_booster(booster)
    got = shap_values(trees, probe)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.sum(axis=1), booster.predict(probe, raw_score=True), atol=1e-9)
    # Small requests take the single-threaded kernel: the same numbers, row for row.
    assert np.array_equal(shap_values(trees, probe.head(SERIAL_ROWS - 1)), got[: SERIAL_ROWS - 1])


def test_unseen_category_and_empty_input():
    x, y = _data(2000, seed=1)
    booster = lgb.train({"objective": "binary", "verbose": -1}, lgb.Dataset(x, y), num_boost_round=10)
    trees = compile_booster(booster)
    assert shap_values(trees, x.head(0)).shape == (0, x.shape[1] + 1)
    probe = x.head(5).copy()
    probe["industry"] = pd.Categorical([np.nan] * 5, categories=x["industry"].cat.categories)
    np.testing.assert_allclose(shap_values(trees, probe), booster.predict(probe, pred_contrib=True), atol=1e-9)
