"""Compare registered models on the same test period: the numbers and the charts a data
scientist looks at before promoting a challenger (used by the retraining notebook)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import roc_curve

from features.bundle import LeadScorer
from training.evaluate import calibration_table, classification_metrics, conversion_by_grade, lift_by_decile
from training.register import own_reading


def test_period(dataset) -> tuple[pd.DataFrame, np.ndarray]:
    """The test examples of a prepared dataset (features, labels), as training held them out."""
    test = (dataset.split.assignment == "test").to_numpy()
    return dataset.features[test].reset_index(drop=True), dataset.label[test].to_numpy()


def probabilities(scorers: Mapping[str, LeadScorer], dataset) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each model's calibrated probabilities for the test examples of a prepared dataset, each
    reading them as it was trained to: a model trained with other feature settings or
    technologies (a half-life, a window, the ICP) gets the examples built with its own, as the
    champion gate of `train` scores it. Read with the dataset's, a champion's AUC and
    calibration came out worse than its own, and the challenger looked better than it was.

    Returns:
        The probabilities by model, and the names of the models whose features were built anew.
    """
    test = (dataset.split.assignment == "test").to_numpy()
    features = dataset.features[test].reset_index(drop=True)
    probs, rebuilt = {}, []
    for name, scorer in scorers.items():
        settings = own_reading(scorer)
        own = None
        if dataset.features_for is not None and settings is not None and scorer.spec.kind == dataset.kind:
            own = dataset.features_for(settings, list(scorer.spec.settings.get("tech_vocabulary", [])), test)
        if own is not None:
            rebuilt.append(name)
        probs[name] = scorer.predict_proba(features if own is None else own.reset_index(drop=True))
    return probs, rebuilt


def comparison_table(label: np.ndarray, probs: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """ROC AUC, PR AUC, log loss, Brier, ECE and top-decile lift, one row per model."""
    keys = ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "lift_top_decile")
    rows = {name: {k: classification_metrics(label, p)[k] for k in keys} for name, p in probs.items()}
    return pd.DataFrame(rows).T


def auc_difference(
    label: np.ndarray, first: np.ndarray, second: np.ndarray, *, rounds: int = 1000, seed: int = 0
) -> dict[str, float]:
    """ROC AUC of `first` minus that of `second` on the same rows, with a 95% interval from a
    paired bootstrap (the same resampled rows for both): a difference whose interval spans 0 is
    within the noise of this test period.

    Returns:
        `difference`, `low`, `high`, `share_above_zero` (the share of resamples in which
        `first` ranked better) and `share_tied` (in which the two ranked alike: the same model
        twice, say, is ahead in none and tied in all).
    """
    label = np.asarray(label)
    rng = np.random.default_rng(seed)
    differences = []
    for _ in range(rounds):
        rows = rng.integers(0, len(label), len(label))
        if label[rows].min() == label[rows].max():
            continue  # one class only: no AUC
        differences.append(_auc(label[rows], first[rows]) - _auc(label[rows], second[rows]))
    spread = np.asarray(differences)
    return {
        "difference": _auc(label, first) - _auc(label, second),
        "low": float(np.quantile(spread, 0.025)),
        "high": float(np.quantile(spread, 0.975)),
        "share_above_zero": float((spread > 0).mean()),
        "share_tied": float((np.abs(spread) < 1e-12).mean()),
    }


def _auc(label: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC from ranks (ties shared), the Mann-Whitney way: sklearn's checks cost more than the
    sum itself, a thousand times over in a bootstrap."""
    ranks = rankdata(score)
    positives = label == 1
    n_pos = int(positives.sum())
    n_neg = len(label) - n_pos
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def grade_table(
    label: np.ndarray, probs: Mapping[str, np.ndarray], bands: Mapping[str, Mapping[str, float]]
) -> pd.DataFrame:
    """Share of leads and conversion rate per grade, per model, each graded by its own bands
    (`bands[name]`; a recalibrated champion's are not the params file's)."""
    out = {}
    for name, p in probs.items():
        for grade, row in conversion_by_grade(label, p, dict(bands[name])).items():
            out[(name, grade)] = row
    # Built row-wise, every column would come out float: counts are whole.
    return pd.DataFrame(out).T.astype({"share": float, "leads": int, "conversion": float})


def comparison_figure(label: np.ndarray, probs: Mapping[str, np.ndarray]):
    """ROC curves, calibration curves and lift by decile of each model, side by side."""
    fig, (roc, cal, lift) = plt.subplots(1, 3, figsize=(15, 4.5))
    width = 0.8 / max(len(probs), 1)
    for i, (name, p) in enumerate(probs.items()):
        fpr, tpr, _ = roc_curve(label, p)
        roc.plot(fpr, tpr, label=name)
        curve = calibration_table(label, p)
        cal.plot(curve["predicted"], curve["observed"], marker="o", label=name)
        table = lift_by_decile(label, p)
        lift.bar(table["decile"] + i * width - 0.4 + width / 2, table["lift"], width=width, label=name)
    roc.plot([0, 1], [0, 1], color="#bbbbbb", linestyle="--")
    roc.set(title="ROC (test period)", xlabel="false positive rate", ylabel="true positive rate")
    top = max(float(max(p.max() for p in probs.values())), 0.05)
    cal.plot([0, top], [0, top], color="#bbbbbb", linestyle="--")
    cal.set(title="Calibration", xlabel="predicted probability", ylabel="observed conversion")
    lift.axhline(1.0, color="#bbbbbb", linestyle="--")
    lift.set(title="Lift by score decile (1 = best 10%)", xlabel="decile", ylabel="lift")
    for ax in (roc, cal, lift):
        ax.legend(frameon=False)
    fig.tight_layout()
    return fig
