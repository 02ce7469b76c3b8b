"""Training examples: (lead, T) snapshots labelled "converted within the horizon after T"."""

from __future__ import annotations

import numpy as np
import pandas as pd

from features.params import FeatureParams


def snapshot_moments(first: pd.Timestamp, export_end: pd.Timestamp, params: FeatureParams) -> pd.DatetimeIndex:
    """Snapshot moments every `snapshot_days` from the first day of data, each with its
    whole horizon observed before the export ends."""
    start = first.floor("D")
    last = export_end - pd.Timedelta(days=params.horizon_days)
    return pd.date_range(start, last, freq=f"{params.snapshot_days}D")


def build_examples(
    leads: pd.DataFrame, outcomes: pd.DataFrame, export_end: pd.Timestamp, params: FeatureParams
) -> pd.DataFrame:
    """One row per lead that is open at a snapshot T, with its label.

    A lead created at or after T, or closed before T, is not an example at T.

    Returns:
        Columns `lead_id`, `as_of`, `label` (1 converted in [T, T + horizon), else 0),
        sorted by `as_of`.
    """
    table = leads[["lead_id", "created_at"]].merge(outcomes, on="lead_id", how="left")
    created = table["created_at"].to_numpy()
    closed = table["closed_at"].to_numpy()
    converted = (table["status"] == "converted").to_numpy()
    horizon = np.timedelta64(params.horizon_days, "D")
    parts = []
    for moment in snapshot_moments(table["created_at"].min(), export_end, params):
        t = np.datetime64(moment, "ns")
        open_at_t = (created < t) & (np.isnat(closed) | (closed >= t))
        rows = np.flatnonzero(open_at_t)
        label = converted[rows] & (closed[rows] >= t) & (closed[rows] < t + horizon)
        parts.append(
            pd.DataFrame(
                {
                    "lead_id": table["lead_id"].to_numpy()[rows],
                    "as_of": moment,
                    "label": label.astype(int),
                }
            )
        )
    if not parts:
        return pd.DataFrame(
            {
                "lead_id": pd.Series(dtype=str),
                "as_of": pd.Series(dtype="datetime64[ns]"),
                "label": pd.Series(dtype=int),
            }
        )
    return pd.concat(parts, ignore_index=True)
