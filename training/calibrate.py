"""Calibrate: fit isotonic and sigmoid calibration on validation margins, keep the one
with the lower cross-validated log loss."""

from __future__ import annotations

from typing import NamedTuple

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


class CalibrationChoice(NamedTuple):
    calibrator: Calibrator
    cv_log_loss: dict[str, float]
    # Each validation row calibrated by the chosen method fitted without it: metrics of these
    # are honest, those of `calibrator` applied to its own rows are not (isotonic fits them).
    held_out: np.ndarray


def choose_calibrator(
    margin: np.ndarray, label: np.ndarray, params: CalibrationParams, seed: int = 0
) -> CalibrationChoice:
    """Pick the method with the lowest cross-validated log loss on validation, refit on all of it."""
    margin = np.asarray(margin, dtype="float64")
    label = np.asarray(label)
    folds = StratifiedKFold(n_splits=params.cv_folds, shuffle=True, random_state=seed)
    scores, held_out = {}, {}
    for method in params.methods:
        held_out[method] = np.zeros(len(label))
        for fit_idx, apply_idx in folds.split(margin.reshape(-1, 1), label):
            calibrator = fit_calibrator(method, margin[fit_idx], label[fit_idx])
            held_out[method][apply_idx] = calibrator.apply(margin[apply_idx])
        scores[method] = float(log_loss(label, held_out[method]))
    best = min(scores, key=scores.get)
    return CalibrationChoice(fit_calibrator(best, margin, label), scores, held_out[best])
