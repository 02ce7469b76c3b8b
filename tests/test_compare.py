"""Comparing a challenger with the champion: the AUC difference comes with its noise."""

from __future__ import annotations

import numpy as np

from training.compare import auc_difference


def test_auc_difference_interval_separates_a_better_model_from_noise():
    rng = np.random.default_rng(3)
    signal = rng.normal(size=4000)
    label = (signal + rng.normal(size=4000) > 1).astype(int)
    sharp = signal + rng.normal(scale=0.3, size=4000)
    blurred = signal + rng.normal(scale=1.5, size=4000)
    better = auc_difference(label, sharp, blurred, rounds=300)
    assert better["low"] > 0 and better["share_above_zero"] > 0.99
    assert better["low"] <= better["difference"] <= better["high"]
    twin = sharp + rng.normal(scale=0.01, size=4000)  # the same model, up to noise
    same = auc_difference(label, sharp, twin, rounds=300)
    assert same["low"] < 0 < same["high"]
    identical = auc_difference(label, sharp, sharp.copy(), rounds=50)  # read "ahead in 0%" alone
    assert identical["share_above_zero"] == 0 and identical["share_tied"] == 1


def test_rank_auc_equals_sklearns_with_ties():
    from sklearn.metrics import roc_auc_score

    from training.compare import _auc

    rng = np.random.default_rng(4)
    label = rng.integers(0, 2, 500)
    score = np.round(rng.normal(size=500) + label, 1)  # many ties
    assert abs(_auc(label, score) - roc_auc_score(label, score)) < 1e-12


def test_grade_table_counts_leads_in_whole_numbers():
    from training.compare import grade_table

    label, p = np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.2, 0.5])
    # Each model by its own bands: notebook 02 graded a recalibrated champion by the params file's.
    bands = {"m": {"A": 60, "B": 35, "D": 0}, "recalibrated": {"A": 45, "B": 15, "D": 0}}
    table = grade_table(label, {"m": p, "recalibrated": p}, bands)
    assert table["leads"].dtype.kind == "i"
    assert table.loc["m", "leads"].tolist() == [1, 1, 2]  # scores 90; 50; 10, 20
    assert table.loc["recalibrated", "leads"].tolist() == [2, 1, 1]  # 90, 50; 20; 10


def test_each_model_is_compared_on_the_features_it_was_trained_to_read(champion, small_crm_dir, params):
    """Notebook 02 scored the champion on the challenger's features: trained with another
    half-life, it came out 0.018 AUC worse than its own test AUC, and the challenger was
    promoted on that."""
    from training.compare import probabilities
    from training.pipeline import prepare_crm

    own = prepare_crm(small_crm_dir, params)
    other = prepare_crm(small_crm_dir, params.model_copy(update={"features": params.features.model_copy(
        update={"decay_half_life_days": 3.0})}))  # fmt: skip
    test = (own.split.assignment == "test").to_numpy()
    assert (test == (other.split.assignment == "test").to_numpy()).all()
    as_trained = champion.scorer.predict_proba(own.features[test].reset_index(drop=True))
    misread = champion.scorer.predict_proba(other.features[test].reset_index(drop=True))
    assert np.abs(as_trained - misread).max() > 1e-3  # the settings matter to this model

    probs, rebuilt = probabilities({"champion": champion.scorer}, other)
    assert rebuilt == ["champion"] and np.allclose(probs["champion"], as_trained)
    probs, rebuilt = probabilities({"champion": champion.scorer}, own)
    assert rebuilt == [] and np.allclose(probs["champion"], as_trained)
