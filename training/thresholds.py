"""Qualification thresholds and grade bands recomputed from targets, on the scores and
outcomes of a recent period: the MQL score marketing can hand over (a top share of leads),
the SQL score where precision reaches a target, and grade bands whose conversion rates stay
ordered and distinct."""

from __future__ import annotations

import numpy as np


def top_share_threshold(scores: np.ndarray, share: float) -> float:
    """The score above which the top `share` of leads sit (one decimal, rounded down)."""
    scores = np.asarray(scores, dtype=float)
    return float(np.floor(np.quantile(scores, 1 - share) * 10) / 10)


def precision_threshold(scores: np.ndarray, label: np.ndarray, precision: float, min_leads: int) -> float | None:
    """The lowest score at which the leads at or above it convert at `precision` or more,
    with at least `min_leads` of them; None when no score reaches it."""
    scores = np.asarray(scores, dtype=float)
    label = np.asarray(label, dtype=float)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(label[order])
    counts = np.arange(1, len(ranked) + 1)
    # Only cut between distinct scores: all leads with the same score are on the same side.
    last_of_score = np.r_[ranked[1:] != ranked[:-1], True]
    ok = last_of_score & (counts >= min_leads) & (hits / counts >= precision)
    if not ok.any():
        return None
    return float(ranked[np.flatnonzero(ok)[-1]])


def f1_threshold(scores: np.ndarray, label: np.ndarray) -> float:
    """The score cut-off with the best F1 for "converts"."""
    scores = np.asarray(scores, dtype=float)
    label = np.asarray(label, dtype=float)
    order = np.argsort(-scores, kind="stable")
    ranked, hits = scores[order], np.cumsum(label[order])
    counts = np.arange(1, len(ranked) + 1)
    f1 = 2 * hits / (counts + label.sum())
    f1[np.r_[ranked[1:] == ranked[:-1], False]] = -1  # cut only between distinct scores
    return float(ranked[int(np.argmax(f1))])


def grade_bands(scores: np.ndarray, label: np.ndarray, shares: dict[str, float]) -> tuple[dict[str, float], dict]:
    """Lower score bounds per grade so that each grade (best first) holds about its share of
    leads; then merge a grade into the next one down while its conversion rate is not above
    that grade's, so the rates stay ordered and distinct.

    Args:
        shares: share of leads per grade, best first, the last grade taking the rest (its
            share is ignored); e.g. {"A": 0.05, "B": 0.15, "C": 0.3, "D": 0.5}.

    Returns:
        The bands ({grade: lower bound}, the last at 0) and, per grade, its share and
        conversion rate on these leads.
    """
    scores = np.asarray(scores, dtype=float)
    label = np.asarray(label, dtype=float)
    letters = list(shares)
    cumulative = np.cumsum([shares[g] for g in letters[:-1]])
    bounds = [top_share_threshold(scores, min(c, 1.0)) for c in cumulative]
    cuts = [*bounds, 0.0]
    while True:
        bands = dict(zip(letters, cuts, strict=False))  # after a merge, the letters close up
        table = _by_band(scores, label, bands)
        rates = [table[g]["conversion"] for g in bands]
        unordered = [i for i in range(len(rates) - 1) if not _above(rates[i], rates[i + 1])]
        if not unordered or len(cuts) <= 2:
            return bands, table
        del cuts[unordered[0]]  # the grade joins the one below it


def _above(upper: float | None, lower: float | None) -> bool:
    return upper is not None and lower is not None and upper > lower


def _by_band(scores: np.ndarray, label: np.ndarray, bands: dict[str, float]) -> dict[str, dict]:
    out = {}
    upper = np.inf
    for letter, bound in bands.items():
        mask = (scores >= bound) & (scores < upper)
        out[letter] = {
            "share": float(mask.mean()) if len(scores) else 0.0,
            "leads": int(mask.sum()),
            "conversion": float(label[mask].mean()) if mask.any() else None,
        }
        upper = bound
    return out
