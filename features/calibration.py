"""A fitted probability calibration, stored as plain numbers (no pickle) and applied with
NumPy: raw model margin (log-odds) -> calibrated probability."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np

PROBABILITY_FLOOR = 1e-4


@dataclass(frozen=True)
class Calibrator:
    """Isotonic (piecewise-linear through thresholds) or sigmoid (Platt) calibration."""

    method: Literal["isotonic", "sigmoid"]
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    slope: float = 1.0
    intercept: float = 0.0

    def apply(self, margin: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, kept off exact 0 and 1 (log loss stays finite)."""
        margin = np.asarray(margin, dtype="float64")
        if self.method == "isotonic":
            p = np.interp(margin, self.x, self.y)
        else:
            p = 1.0 / (1.0 + np.exp(-(self.slope * margin + self.intercept)))
        return np.clip(p, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)

    def points_per_logit(self, margin: np.ndarray, base: float) -> np.ndarray:
        """Score points (0-100) per unit of log-odds for each margin: the calibration's average
        slope between the base value and the margin (its local slope when they meet), so SHAP
        values times it add up exactly to the score minus the base score."""
        margin = np.asarray(margin, dtype="float64")
        score = 100 * self.apply(margin)
        base_score = 100 * self.apply(np.array([base]))[0]
        delta = margin - base
        step = 1e-3
        local = 100 * (self.apply(margin + step) - self.apply(margin - step)) / (2 * step)
        safe = np.abs(delta) > 1e-6
        return np.where(safe, (score - base_score) / np.where(safe, delta, 1.0), local)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibrator:
        return cls(**data)
