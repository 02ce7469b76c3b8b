import numpy as np
import pandas as pd

from features.leakage import audit_leakage, single_column_auc


def test_a_column_that_restates_the_label_is_flagged_and_noise_is_not():
    rng = np.random.default_rng(0)
    y = pd.Series((rng.random(2000) < 0.3).astype(int))
    note = np.where(
        y == 1,
        rng.choice(["closed by rep", "will enrol"], 2000),
        rng.choice(["ringing", "not interested", "closed by rep"], 2000, p=[0.5, 0.45, 0.05]),
    )
    frame = pd.DataFrame({
        "rep_note": note,
        "noise_text": rng.choice(list("abcdefgh"), 2000),
        "noise_number": rng.normal(size=2000),
        "signal": y * 0.5 + rng.normal(size=2000),
        "unique_text": [f"row{i}" for i in range(2000)],
    })  # fmt: skip
    audit = audit_leakage(frame, y, threshold=0.85).set_index("column")
    assert audit.loc["rep_note", "flagged"]
    assert not audit.loc[["noise_text", "noise_number", "signal", "unique_text"], "flagged"].any()
    assert audit.loc["unique_text", "auc"] < 0.6  # out-of-fold encoding cannot memorise rows


def test_missingness_that_tracks_the_label_counts():
    y = pd.Series([0, 1] * 500)
    values = pd.Series(np.where(y == 1, np.nan, 1.0))
    assert single_column_auc(values, y) == 1.0


def test_rank_auc_matches_scikit_learn_with_ties_and_missing_at_either_end():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = pd.Series((rng.random(3000) < 0.2).astype(int))
    values = pd.Series(np.round(rng.normal(size=3000) + 0.6 * y, 1))  # rounding makes ties
    values[rng.random(3000) < 0.15] = np.nan
    x = values.to_numpy()
    expected = max(
        max(a, 1 - a)
        for fill in (np.nanmin(x) - 1, np.nanmax(x) + 1)
        for a in [roc_auc_score(y, np.where(np.isnan(x), fill, x))]
    )
    assert abs(single_column_auc(values, y) - expected) < 1e-12
