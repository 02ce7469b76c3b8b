"""Engagement features of each lead as of a moment T, from its activities strictly before T."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np
import pandas as pd

from features.schema import ACTIVITY_TYPES, OTHER_ACTIVITY

# Keys pack (lead code, seconds since 1900) into one sortable int64: exact comparisons,
# and one binary search answers "how many events of this lead happened before T".
_SECONDS_BITS = 34
_EPOCH_SECONDS = -int(pd.Timestamp("1900-01-01").value // 1_000_000_000)
_NANO_BITS = 30  # nanoseconds within a second: under 2**30
_DAY_SECONDS = 86400.0
INTENT_TYPES = ("pricing_page", "demo_request", "trial_signup", "meeting", "webinar")


def _seconds(moments: pd.Series | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Whole seconds since 1900 (floored), without a nanosecond difference that would overflow
    for moments centuries apart, and the nanoseconds past them (which decide whether an
    activity in the same second as T came before it)."""
    exact = pd.to_datetime(pd.Series(moments)).to_numpy(dtype="datetime64[ns]")
    whole = exact.astype("datetime64[s]")  # floored, before 1970 too
    return whole.astype("int64") + _EPOCH_SECONDS, (exact - whole).astype("int64")


class _Timeline:
    """Activities of one type (or all), sorted by lead then time, searchable by (lead, T).

    Keys hold whole seconds; an activity in the same second as T is placed by its nanoseconds
    (`fine`: the rank of its (lead, second) key, then its nanoseconds), so "before T" is exact:
    a webhook stamped 250 ms before the moment it is scored at counts."""

    def __init__(self, codes: np.ndarray, seconds: np.ndarray, nanos: np.ndarray) -> None:
        order = np.lexsort((nanos, seconds, codes))
        self.codes = codes[order]
        self.seconds = seconds[order]
        self.nanos = nanos[order]
        self.keys = (self.codes << _SECONDS_BITS) + self.seconds
        self.order = order
        self.fine = None
        if self.nanos.any():  # exports of whole seconds (most) need no second search
            rank = np.cumsum(np.r_[True, self.keys[1:] != self.keys[:-1]]) - 1 if len(self.keys) else self.keys
            self.fine = (rank << _NANO_BITS) + self.nanos

    def subset(self, keep: np.ndarray) -> _Timeline:
        """The events where `keep` (in this timeline's sorted order) is true: still sorted,
        ties in their original order, as a timeline of those events alone would be."""
        part = object.__new__(_Timeline)
        part.codes, part.seconds, part.nanos = self.codes[keep], self.seconds[keep], self.nanos[keep]
        part.keys, part.order = self.keys[keep], self.order[keep]
        part.fine = None if self.fine is None else self.fine[keep]  # ranks stay sorted and shared within a key
        return part

    def before(self, codes: np.ndarray, seconds: np.ndarray, nanos: np.ndarray) -> np.ndarray:
        """Index one past the last event of each lead strictly before its moment (`seconds`
        and the `nanos` past them)."""
        if self.fine is None:  # every event on a whole second: one in T's second is before T iff T is past it
            return np.searchsorted(self.keys, (codes << _SECONDS_BITS) + seconds + (nanos > 0), side="left")
        query = (codes << _SECONDS_BITS) + seconds
        index = np.searchsorted(self.keys, query, side="left")
        same = (
            np.flatnonzero(self.keys[np.clip(index, 0, max(len(self.keys) - 1, 0))] == query) if len(self.keys) else []
        )
        if len(same):
            rank = self.fine[index[same]] >> _NANO_BITS
            index[same] = np.searchsorted(self.fine, (rank << _NANO_BITS) + nanos[same], side="left")
        return index

    def count_between(self, codes: np.ndarray, start: np.ndarray, end: np.ndarray, nanos: np.ndarray) -> np.ndarray:
        """Events of each lead from `start` (included) to `end` (excluded), both `nanos` past their second."""
        return self.before(codes, end, nanos) - self.before(codes, start, nanos)

    def days_since_last(self, codes: np.ndarray, seconds: np.ndarray, nanos: np.ndarray) -> np.ndarray:
        last = self.before(codes, seconds, nanos) - 1
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
    as_of_seconds, as_of_nanos = _seconds(pd.Series(as_of).reset_index(drop=True))
    if len(as_of_seconds) == 1 and len(lead_ids) > 1:
        as_of_seconds, as_of_nanos = np.repeat(as_of_seconds, len(lead_ids)), np.repeat(as_of_nanos, len(lead_ids))
    codes_all, _ = pd.factorize(pd.concat([lead_ids, activities["lead_id"]], ignore_index=True))
    codes_all = codes_all.astype("int64")
    example_codes = codes_all[: len(lead_ids)]
    act_codes = codes_all[len(lead_ids) :]
    act_seconds, act_nanos = _seconds(activities["occurred_at"]) if len(activities) else (np.zeros(0, "int64"),) * 2
    act_types = activities["activity_type"].to_numpy()

    columns: dict[str, np.ndarray] = {}
    window_seconds = {w: as_of_seconds - int(w * _DAY_SECONDS) for w in windows_days}
    everything = _Timeline(act_codes, act_seconds, act_nanos)
    lead_start = everything.before(example_codes, np.zeros_like(as_of_seconds), np.zeros_like(as_of_nanos))
    upto = everything.before(example_codes, as_of_seconds, as_of_nanos)
    total = upto - lead_start
    for w in windows_days:
        columns[f"n_activities_{w}d"] = everything.count_between(
            example_codes, window_seconds[w], as_of_seconds, as_of_nanos
        )
    columns["n_activities_total"] = total
    columns["days_since_last_activity"] = everything.days_since_last(example_codes, as_of_seconds, as_of_nanos)
    month = int(30 * _DAY_SECONDS)
    columns["velocity_30d"] = everything.count_between(
        example_codes, as_of_seconds - month, as_of_seconds, as_of_nanos
    ) - everything.count_between(example_codes, as_of_seconds - 2 * month, as_of_seconds - month, as_of_nanos)

    # Types as integer codes, in the timeline's order: one sort serves every type.
    type_codes, type_names = pd.factorize(pd.Series(act_types, dtype=object))
    sorted_type_codes = type_codes[everything.order]
    code_of = {name: code for code, name in enumerate(type_names)}
    for kind in (*ACTIVITY_TYPES, OTHER_ACTIVITY):
        timeline = everything.subset(sorted_type_codes == code_of.get(kind, -2))
        for w in windows_days:
            columns[f"n_{kind}_{w}d"] = timeline.count_between(
                example_codes, window_seconds[w], as_of_seconds, as_of_nanos
            )
        columns[f"n_{kind}_total"] = timeline.before(example_codes, as_of_seconds, as_of_nanos) - timeline.before(
            example_codes, np.zeros_like(as_of_seconds), np.zeros_like(as_of_nanos)
        )  # from the first moment of 1900, not T's fraction of a second past it
        if kind in INTENT_TYPES:
            columns[f"days_since_{kind}"] = timeline.days_since_last(example_codes, as_of_seconds, as_of_nanos)

    type_weights = np.array([weights.get(name, 0.0) for name in type_names], dtype="float64")
    columns["engagement_decayed"] = _decayed_score(
        everything,
        type_weights[sorted_type_codes] if len(type_names) else np.zeros(0),
        example_codes,
        as_of_seconds,
        lead_start,
        upto,
        half_life_days,
    )
    frame = pd.DataFrame(columns)
    return frame.astype("float64")


def _decayed_score(
    timeline: _Timeline,
    sorted_weights: np.ndarray,
    example_codes: np.ndarray,
    as_of_seconds: np.ndarray,
    lead_start: np.ndarray,
    upto: np.ndarray,
    half_life_days: float,
) -> np.ndarray:
    """Sum of weight * 2^(-age / half-life) over each lead's activities before T.

    `sorted_weights` are the activities' weights in the timeline's order. Per lead, the
    running sum of weight * e^(rate * (t - t0)) is taken once; the score at
    any T is then one lookup scaled by e^(-rate * (T - t0)), with t0 the lead's first
    activity, so no subtraction of large sums loses precision. A history too long for one
    t0 (e^(rate * (t - t0)) would overflow) restarts from a new t0 as often as needed, the
    sum so far carried over (`_anchor_segments`).
    """
    if len(timeline.keys) == 0:
        return np.zeros(len(example_codes))
    rate = np.log(2) / (half_life_days * _DAY_SECONDS)
    first_index = np.r_[0, np.flatnonzero(np.diff(timeline.codes)) + 1]
    sizes = np.diff(np.r_[first_index, len(timeline.codes)])
    segment = np.repeat(first_index, sizes)  # index of each activity's t0
    long_leads = rate * (timeline.seconds[first_index + sizes - 1] - timeline.seconds[first_index]) > MAX_DECAY_EXPONENT
    for start, size in zip(first_index[long_leads], sizes[long_leads], strict=True):
        segment[start : start + size] = _anchor_segments(timeline.seconds[start : start + size], rate) + start
    anchor = timeline.seconds[segment]
    terms = pd.Series(sorted_weights * np.exp(rate * (timeline.seconds - anchor)))
    running = terms.groupby(segment).cumsum().to_numpy(copy=True)
    for start, size in zip(first_index[long_leads], sizes[long_leads], strict=True):
        _carry_over(running[start : start + size], segment[start : start + size], anchor[start : start + size], rate)
    last = upto - 1
    has_any = upto > lead_start
    safe = np.clip(last, 0, len(running) - 1)
    scale = np.exp(-rate * (as_of_seconds - anchor[safe]))
    return np.where(has_any, running[safe] * scale, 0.0)


# e^600 keeps a lead's running sum finite (below ~1e300) even with millions of activities.
MAX_DECAY_EXPONENT = 600.0


def _anchor_segments(seconds: np.ndarray, rate: float) -> np.ndarray:
    """For one lead's sorted activity times: the position of each activity's t0, a new t0
    starting wherever e^(rate * (t - t0)) would pass e^MAX_DECAY_EXPONENT."""
    out = np.empty(len(seconds), dtype=np.int64)
    anchor = 0
    for i, moment in enumerate(seconds.tolist()):
        if rate * (moment - seconds[anchor]) > MAX_DECAY_EXPONENT:
            anchor = i
        out[i] = anchor
    return out


def _carry_over(running: np.ndarray, segment: np.ndarray, anchor: np.ndarray, rate: float) -> None:
    """Add to each later segment of one lead the decayed sum of the segments before it,
    rescaled to that segment's t0 (in place)."""
    starts = np.r_[0, np.flatnonzero(np.diff(segment)) + 1]
    for previous, start in pairwise(starts):
        end = start + np.searchsorted(segment[start:], segment[start], side="right")
        running[start:end] += running[start - 1] * np.exp(-rate * (anchor[start] - anchor[previous]))
