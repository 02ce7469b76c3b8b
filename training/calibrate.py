"""Calibrate: fit isotonic and sigmoid calibration on validation margins, keep the one
with the lower cross-validated log loss."""

from __future__ import annotations

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold

from features.calibration import Calibrator
from features.params import CalibrationParams


def fit_calibrator(method: str, margin: np.ndarray, label: np.ndarray) -> Calibrator:
    """Fit one calibration method on raw margins (log-odds) and 0/1 labels."""
    if method == "isotonic":
        iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(margin, label)
        return Calibrator("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist())
    platt = LogisticRegression(C=1e6, max_iter=1000).fit(margin.reshape(-1, 1), label)
    return Calibrator("sigmoid", slope=float(platt.coef_[0, 0]), intercept=float(platt.intercept_[0]))


def choose_calibrator(
    margin: np.ndarray, label: np.ndarray, params: CalibrationParams, seed: int = 0
) -> tuple[Calibrator, dict[str, float]]:
    """Pick the method with the lowest cross-validated log loss on validation, refit on all of it.

    Returns:
        The chosen calibrator and each method's cross-validated log loss.
    """
    margin = np.asarray(margin, dtype="float64")
    label = np.asarray(label)
    folds = StratifiedKFold(n_splits=params.cv_folds, shuffle=True, random_state=seed)
    scores = {}
    for method in params.methods:
        held_out = np.zeros(len(label))
        for fit_idx, apply_idx in folds.split(margin.reshape(-1, 1), label):
            held_out[apply_idx] = fit_calibrator(method, margin[fit_idx], label[fit_idx]).apply(margin[apply_idx])
        scores[method] = float(log_loss(label, held_out))
    best = min(scores, key=scores.get)
    return fit_calibrator(best, margin, label), scores
