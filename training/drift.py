"""Drift between a reference period (the training window's new leads) and a recent one (the
newest quarter's): population stability index per feature and for the score, each with the
index sampling noise alone reaches, the shift in the conversion rate, and the steps a broken
export makes. Used by the recalibration to say what moved and to decide whether to act."""

from __future__ import annotations

import numpy as np
import pandas as pd

BINS = 10
# A bin should expect about this many of the smaller side's values: with 130 new leads a quarter,
# ten bins of 13 values each made an unchanged feature's PSI pass 0.2 on most small exports.
MIN_PER_BIN = 20
# A categorical level the smaller side would hold fewer of than this is pooled with the others
# like it (the chi-square reading of the noise needs about five expected per cell).
MIN_EXPECTED = 5
# Shares are floored so an empty bin on one side gives a large, finite index.
SHARE_FLOOR = 1e-4
MISSING = "(missing)"
# Two samples of one population give a PSI of about chi-square(bins - 1) / n_eff (the index is
# the symmetric Kullback-Leibler divergence, whose second-order term is the chi-square
# statistic; n_eff = n1 n2 / (n1 + n2)). A shift counts only beyond this quantile of that noise:
# with ~40 features, one unchanged feature in 25 runs passes it by chance.
NOISE_QUANTILE = 0.999


def _bins(reference: np.ndarray, recent: np.ndarray) -> int:
    present = min(np.count_nonzero(~np.isnan(reference)), np.count_nonzero(~np.isnan(recent)))
    return int(np.clip(present // MIN_PER_BIN, 2, BINS))


def _numeric_shares(reference: np.ndarray, recent: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Shares of each side in bins at the reference's quantiles, missing values as a bin of their own."""
    present = reference[~np.isnan(reference)]
    cuts = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1]) if len(present) else np.array([])
    edges = np.unique(cuts)

    def shares(values: np.ndarray) -> np.ndarray:
        missing = np.isnan(values)
        counts = np.bincount(np.searchsorted(edges, values[~missing], side="right"), minlength=len(edges) + 1)
        return np.append(counts, missing.sum()) / max(len(values), 1)

    return shares(reference), shares(recent)


def numeric_drift(reference: np.ndarray, recent: np.ndarray, bins: int | None = None) -> tuple[float, float]:
    """A numeric column's population stability index, bins at the reference's quantiles (fewer
    than ten when either side has few values) and missing values as a bin of their own, and the
    PSI sampling noise alone stays under (`psi_noise`)."""
    reference = np.asarray(reference, dtype=float)
    recent = np.asarray(recent, dtype=float)
    shares = _numeric_shares(reference, recent, bins or _bins(reference, recent))
    cells = int(np.count_nonzero((shares[0] > 0) | (shares[1] > 0)))
    return _psi(*shares), psi_noise(cells, len(reference), len(recent))


def _levels(values: pd.Series) -> pd.Series:
    return values.astype("object").where(values.notna(), MISSING).value_counts(normalize=True)


def categorical_drift(reference: pd.Series, recent: pd.Series) -> tuple[float, float]:
    """A categorical column's PSI and the PSI sampling noise alone stays under (`psi_noise`).

    Levels the smaller side would hold fewer than MIN_EXPECTED of (at their pooled share) count
    as one: a level seen 2 times out of 130 by chance, or missing, gave a cell of about
    4 x its share through the share floor, far past the chi-square noise (14% of unchanged
    country-like columns read as drifted). A lone such level joins the smallest other one.
    """
    counts = pd.DataFrame({"before": _levels(reference) * len(reference), "after": _levels(recent) * len(recent)})
    counts = counts.fillna(0)
    smaller = min(len(reference), len(recent))
    expected = counts.sum(axis=1) / max(len(reference) + len(recent), 1) * smaller
    rare = expected < MIN_EXPECTED
    if rare.sum() == 1 and (~rare).any():
        rare[expected[~rare].idxmin()] = True
    if rare.sum() > 1:
        counts = pd.concat([counts[~rare], counts[rare].sum().to_frame("(rare levels)").T])
    shares = counts / counts.sum().where(counts.sum() > 0, 1)
    psi = _psi(shares["before"].to_numpy(), shares["after"].to_numpy())
    return psi, psi_noise(len(counts), len(reference), len(recent))


def _psi(expected: np.ndarray, actual: np.ndarray) -> float:
    expected = np.maximum(expected, SHARE_FLOOR)
    actual = np.maximum(actual, SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_noise(cells: int, reference_size: int, recent_size: int) -> float:
    """The PSI two samples of these sizes from one population stay under (NOISE_QUANTILE),
    over `cells` bins or levels."""
    from scipy.stats import chi2

    if reference_size == 0 or recent_size == 0:
        return float("inf")  # nothing can be told from an empty side
    if cells < 2:
        return 0.0
    effective = reference_size * recent_size / (reference_size + recent_size)
    return float(chi2.ppf(NOISE_QUANTILE, cells - 1) / effective)


def _share_text(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 or share == 0 else "<1%"


def number_text(value: float) -> str:
    """27,610,000 rather than 2.761e+07; 0.0123 and 152 as they are."""
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"


def what_moved(reference: pd.Series, recent: pd.Series) -> str:
    """The change in words: blanks, the median of a number, the levels that moved most."""
    parts = []
    blank_before, blank_after = float(reference.isna().mean()), float(recent.isna().mean())
    if abs(blank_after - blank_before) >= 0.05:
        parts.append(f"blank {_share_text(blank_before)} → {_share_text(blank_after)}")
    if pd.api.types.is_numeric_dtype(reference) and pd.api.types.is_numeric_dtype(recent):
        # Counts of activities are mostly zero: the share of zeros says more than a median of 0.
        zero_before, zero_after = float((reference == 0).mean()), float((recent == 0).mean())
        if abs(zero_after - zero_before) >= 0.05:
            parts.append(f"zero {_share_text(zero_before)} → {_share_text(zero_after)}")
        before, after = reference.median(), recent.median()
        if pd.notna(before) and pd.notna(after) and before != after:
            parts.append(f"median {number_text(before)} → {number_text(after)}")
        return ", ".join(parts)
    ref, new = _levels(reference), _levels(recent)  # shares of all leads, as the blanks' share
    levels = ref.index.union(new.index).drop(MISSING, errors="ignore")
    ref, new = ref.reindex(levels, fill_value=0), new.reindex(levels, fill_value=0)
    for level in (new - ref).abs().sort_values(ascending=False).index[:3]:
        if abs(new[level] - ref[level]) >= 0.02:
            was = "new" if ref[level] == 0 else _share_text(ref[level])
            parts.append(f"{level} {was} → {_share_text(new[level])}")
    return ", ".join(parts)


def feature_drift(reference: pd.DataFrame, recent: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """PSI of every column both frames share, largest first, flagged at `threshold` (0.1 is
    commonly read as a moderate shift, 0.25 as a large one) when it is also beyond sampling noise
    (`psi_noise`: on a few hundred leads an unchanged feature reaches 0.2).

    Returns:
        Columns `feature`, `psi`, `noise` (the PSI sampling alone stays under), `drifted` and
        `moved` (the change in words, for drifted features).
    """
    rows = []
    for column in reference.columns.intersection(recent.columns):
        before, after = reference[column], recent[column]
        if pd.api.types.is_numeric_dtype(before) and pd.api.types.is_numeric_dtype(after):
            value, noise = numeric_drift(before.to_numpy(dtype=float), after.to_numpy(dtype=float))
        else:
            value, noise = categorical_drift(before, after)
        rows.append({"feature": column, "psi": value, "noise": noise})
    table = pd.DataFrame(rows, columns=["feature", "psi", "noise"]).sort_values(
        "psi", ascending=False, ignore_index=True
    )
    table["drifted"] = (table["psi"] >= threshold) & (table["psi"] > table["noise"])
    table["moved"] = [
        what_moved(reference[feature], recent[feature]) if drifted else ""
        for feature, drifted in zip(table["feature"], table["drifted"], strict=True)
    ]
    return table


# A step between one quarter's new leads and the next that buyers do not make: a field blank for
# 30 more leads in 100 (a CRM form changed, a sync lost a field), a number 100 times larger or
# smaller (revenue sent in thousands). Below BREAK_MIN_LEADS on either side a step cannot be told.
BREAK_BLANK_RISE = 0.3
BREAK_MEDIAN_FACTOR = 100.0
BREAK_MIN_LEADS = 50


def sudden_breaks(before: pd.DataFrame, after: pd.DataFrame) -> list[str]:
    """Columns whose values changed as an export breaks, not as buyers do, each in words."""
    if min(len(before), len(after)) < BREAK_MIN_LEADS:
        return []
    found = []
    for column in before.columns.intersection(after.columns):
        old, new = before[column], after[column]
        blank_before, blank_after = float(old.isna().mean()), float(new.isna().mean())
        if blank_after - blank_before >= BREAK_BLANK_RISE:
            found.append(f"{column} blank for {blank_after:.0%} of new leads (was {blank_before:.0%})")
        elif (
            pd.api.types.is_numeric_dtype(old)
            and pd.api.types.is_numeric_dtype(new)
            and min(old.notna().sum(), new.notna().sum()) >= BREAK_MIN_LEADS  # a median of a few is noise
        ):
            was, now = old.median(), new.median()
            if was > 0 and now > 0 and max(was / now, now / was) >= BREAK_MEDIAN_FACTOR:
                found.append(f"{column} median {number_text(was)} → {number_text(now)}")
    return found


def conversion_shift(
    reference_label: np.ndarray,
    recent_label: np.ndarray,
    reference_units: int | None = None,
    recent_units: int | None = None,
) -> dict[str, float]:
    """Conversion rate of each period, the change (recent minus reference) and its z statistic
    (two-proportion test, pooled): how many standard errors of sampling noise the change is.
    A quarter of a thousand leads moves its rate by a point or more by chance alone.

    Args:
        reference_units, recent_units: how many independent units each period holds, when
            fewer than its examples (distinct leads: a lead open at several snapshots gives
            examples whose outcomes go together); the standard error counts these.
    """
    before = float(np.mean(reference_label)) if len(reference_label) else float("nan")
    after = float(np.mean(recent_label)) if len(recent_label) else float("nan")
    pooled = (np.sum(reference_label) + np.sum(recent_label)) / max(len(reference_label) + len(recent_label), 1)
    n_before = len(reference_label) if reference_units is None else reference_units
    n_after = len(recent_label) if recent_units is None else recent_units
    error = np.sqrt(pooled * (1 - pooled) * (1 / n_before + 1 / n_after)) if n_before and n_after else 0.0
    z = (after - before) / error if error > 0 else 0.0
    return {"reference_rate": before, "recent_rate": after, "shift": after - before, "z": float(z)}
