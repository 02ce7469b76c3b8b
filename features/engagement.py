"""Engagement features of each lead as of a moment T, from its activities strictly before T."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from features.schema import ACTIVITY_TYPES, OTHER_ACTIVITY

# Keys pack (lead code, seconds since 1900) into one sortable int64: exact comparisons,
# and one binary search answers "how many events of this lead happened before T".
_SECONDS_BITS = 34
_EPOCH = pd.Timestamp("1900-01-01")
_DAY_SECONDS = 86400.0
INTENT_TYPES = ("pricing_page", "demo_request", "trial_signup", "meeting", "webinar")


def _seconds(moments: pd.Series | np.ndarray) -> np.ndarray:
    delta = pd.to_datetime(pd.Series(moments)) - _EPOCH
    return (delta // pd.Timedelta(seconds=1)).to_numpy(dtype="int64")


class _Timeline:
    """Activities of one type (or all), sorted by lead then time, searchable by (lead, T)."""

    def __init__(self, codes: np.ndarray, seconds: np.ndarray) -> None:
        order = np.lexsort((seconds, codes))
        self.codes = codes[order]
        self.seconds = seconds[order]
        self.keys = (self.codes << _SECONDS_BITS) + self.seconds
        self.order = order

    def before(self, codes: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        """Index one past the last event of each lead strictly before its moment."""
        return np.searchsorted(self.keys, (codes << _SECONDS_BITS) + seconds, side="left")

    def count_between(self, codes: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        return self.before(codes, end) - self.before(codes, start)

    def days_since_last(self, codes: np.ndarray, seconds: np.ndarray) -> np.ndarray:
        last = self.before(codes, seconds) - 1
        safe = np.clip(last, 0, max(len(self.keys) - 1, 0))
        if len(self.keys) == 0:
            return np.full(len(codes), np.nan)
        same_lead = (last >= 0) & (self.codes[safe] == codes)
        return np.where(same_lead, (seconds - self.seconds[safe]) / _DAY_SECONDS, np.nan)


def engagement_features(
    activities: pd.DataFrame,
    lead_ids: pd.Series,
    as_of: pd.Series,
    *,
    windows_days: Sequence[int],
    half_life_days: float,
    weights: Mapping[str, float],
) -> pd.DataFrame:
    """Counts, recency, frequency, decay and intent signals per (lead, T).

    Only activities with `occurred_at < T` count, so nothing at or after T can change a
    feature.

    Args:
        activities: cleaned activities (`lead_id`, `occurred_at`, `activity_type`).
        lead_ids: the lead of each example.
        as_of: the moment T of each example (aligned with `lead_ids`).
        windows_days: count windows, e.g. (7, 30, 90).
        half_life_days: half-life of the decayed engagement score.
        weights: weight of each activity type in the decayed score (others weigh 0).

    Returns:
        One row per example, in the order given, with float columns.
    """
    lead_ids = pd.Series(lead_ids).reset_index(drop=True)
    as_of_seconds = _seconds(pd.Series(as_of).reset_index(drop=True))
    if len(as_of_seconds) == 1 and len(lead_ids) > 1:
        as_of_seconds = np.repeat(as_of_seconds, len(lead_ids))
    codes_all, _ = pd.factorize(pd.concat([lead_ids, activities["lead_id"]], ignore_index=True))
    codes_all = codes_all.astype("int64")
    example_codes = codes_all[: len(lead_ids)]
    act_codes = codes_all[len(lead_ids) :]
    act_seconds = _seconds(activities["occurred_at"]) if len(activities) else np.zeros(0, "int64")
    act_types = activities["activity_type"].to_numpy()

    columns: dict[str, np.ndarray] = {}
    window_seconds = {w: as_of_seconds - int(w * _DAY_SECONDS) for w in windows_days}
    everything = _Timeline(act_codes, act_seconds)
    lead_start = everything.before(example_codes, np.zeros_like(as_of_seconds))
    upto = everything.before(example_codes, as_of_seconds)
    total = upto - lead_start
    for w in windows_days:
        columns[f"n_activities_{w}d"] = everything.count_between(example_codes, window_seconds[w], as_of_seconds)
    columns["n_activities_total"] = total
    columns["days_since_last_activity"] = everything.days_since_last(example_codes, as_of_seconds)
    month = int(30 * _DAY_SECONDS)
    columns["velocity_30d"] = everything.count_between(
        example_codes, as_of_seconds - month, as_of_seconds
    ) - everything.count_between(example_codes, as_of_seconds - 2 * month, as_of_seconds - month)

    for kind in (*ACTIVITY_TYPES, OTHER_ACTIVITY):
        mask = act_types == kind
        timeline = _Timeline(act_codes[mask], act_seconds[mask])
        for w in windows_days:
            columns[f"n_{kind}_{w}d"] = timeline.count_between(example_codes, window_seconds[w], as_of_seconds)
        columns[f"n_{kind}_total"] = timeline.count_between(example_codes, np.zeros_like(as_of_seconds), as_of_seconds)
        if kind in INTENT_TYPES:
            columns[f"days_since_{kind}"] = timeline.days_since_last(example_codes, as_of_seconds)

    columns["engagement_decayed"] = _decayed_score(
        everything,
        act_types,
        example_codes,
        as_of_seconds,
        lead_start,
        upto,
        half_life_days,
        weights,
    )
    frame = pd.DataFrame(columns)
    return frame.astype("float64")


def _decayed_score(
    timeline: _Timeline,
    act_types: np.ndarray,
    example_codes: np.ndarray,
    as_of_seconds: np.ndarray,
    lead_start: np.ndarray,
    upto: np.ndarray,
    half_life_days: float,
    weights: Mapping[str, float],
) -> np.ndarray:
    """Sum of weight * 2^(-age / half-life) over each lead's activities before T.

    Per lead, the running sum of weight * e^(rate * (t - t0)) is taken once; the score at
    any T is then one lookup scaled by e^(-rate * (T - t0)), with t0 the lead's first
    activity, so no subtraction of large sums loses precision.
    """
    if len(timeline.keys) == 0:
        return np.zeros(len(example_codes))
    rate = np.log(2) / (half_life_days * _DAY_SECONDS)
    sorted_types = pd.Series(act_types[timeline.order])
    sorted_weights = sorted_types.map(dict(weights)).fillna(0.0).to_numpy(dtype="float64")
    first_index = np.r_[0, np.flatnonzero(np.diff(timeline.codes)) + 1]
    first_of_lead = np.repeat(timeline.seconds[first_index], np.diff(np.r_[first_index, len(timeline.codes)]))
    exponent = rate * (timeline.seconds - first_of_lead)
    if exponent.max(initial=0) > 700:
        raise ValueError(
            f"decay half-life of {half_life_days} days is too short for activity histories "
            "this long; raise features.decay_half_life_days"
        )
    running = pd.Series(sorted_weights * np.exp(exponent)).groupby(timeline.codes).cumsum().to_numpy()
    last = upto - 1
    has_any = upto > lead_start
    safe = np.clip(last, 0, len(running) - 1)
    scale = np.exp(-rate * (as_of_seconds - first_of_lead[safe]))
    return np.where(has_any, running[safe] * scale, 0.0)
