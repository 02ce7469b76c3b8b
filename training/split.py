"""Split examples: by time (newest period is test, the one before validation), or a
stratified holdout when the data has no timestamps. One lead never sits on two sides."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from features.params import SplitParams

SPLITS = ("train", "valid", "test")
CV_FOLDS = 5


@dataclass(frozen=True)
class SplitReport:
    """Where each example went, and what the split had to leave out."""

    assignment: pd.Series  # "train" / "valid" / "test" / "" (left out), aligned with examples
    description: str
    windows: dict[str, tuple[str, str]]
    left_out: int
    by_time: bool = True


def _moment(start: pd.Timestamp) -> str:
    """The last moment before a period that starts one second after it, as a reader writes it."""
    before = start - pd.Timedelta(seconds=1)
    return str(before.date()) if before == before.normalize() else before.strftime("%Y-%m-%d %H:%M:%S")


def split_by_time(examples: pd.DataFrame, params: SplitParams, horizon_days: int) -> SplitReport:
    """Split leads by cohort: a lead belongs to the period of its first snapshot.

    Test holds the leads first seen in the newest `test_days`, validation those first seen
    in the `valid_days` before; each lead keeps only its snapshots inside its own period,
    and train and validation snapshots whose label horizon reaches the next period are
    left out. Which examples are left out depends on time only, never on an outcome, so
    every split keeps the true conversion rate of its cohort (and calibration holds).
    """
    as_of = examples["as_of"]
    newest = as_of.max()
    test_start = newest - pd.Timedelta(days=params.test_days) + pd.Timedelta(seconds=1)
    valid_start = test_start - pd.Timedelta(days=params.valid_days)
    horizon = pd.Timedelta(days=horizon_days)
    first_seen = as_of.groupby(examples["lead_id"]).transform("min")
    part = pd.Series("", index=examples.index, dtype=object)
    part[(first_seen >= test_start) & (as_of >= test_start)] = "test"
    in_valid = (first_seen >= valid_start) & (first_seen < test_start)
    part[in_valid & (as_of < test_start) & (as_of + horizon <= test_start)] = "valid"
    part[(first_seen < valid_start) & (as_of + horizon <= valid_start)] = "train"
    windows = {
        name: (str(as_of[part == name].min().date()), str(as_of[part == name].max().date()))
        for name in SPLITS
        if (part == name).any()
    }
    left_out = int((part == "").sum())
    description = (
        f"by time and cohort: test = leads first seen after {_moment(test_start)}, validation after "
        f"{_moment(valid_start)}, train before"
    )
    if windows:  # the moments its examples are scored as of, as the model page gives them
        names = {"test": "test", "valid": "validation", "train": "train"}
        description += "; examples as of " + ", ".join(
            f"{windows[name][0]} to {windows[name][1]} ({shown})" for name, shown in names.items() if name in windows
        )
    if left_out:  # a flat export (one row per lead, no horizon) has none to leave out
        description += (
            f"; {left_out:,} later snapshot(s) of earlier leads left out so that no lead and no label horizon "
            "crosses a boundary"
        )
    return SplitReport(part, description, windows, left_out)


def split_stratified(label: pd.Series, params: SplitParams) -> SplitReport:
    """Stratified holdout for data without timestamps (one row per lead)."""
    index = np.arange(len(label))
    rest, test = train_test_split(index, test_size=params.test_share, stratify=label, random_state=params.seed)
    valid_share = params.valid_share / (1 - params.test_share)
    train, valid = train_test_split(rest, test_size=valid_share, stratify=label.iloc[rest], random_state=params.seed)
    part = pd.Series("", index=label.index, dtype=object)
    part.iloc[train], part.iloc[valid], part.iloc[test] = "train", "valid", "test"
    description = (
        f"stratified holdout (no timestamps): {len(test):,} test rows held out; tuning and calibration "
        f"by {CV_FOLDS}-fold cross-validation on the other {len(train) + len(valid):,}"
    )
    return SplitReport(part, description, {}, 0, by_time=False)


def tested_on(split: SplitReport, data_hash: str) -> str:
    """Which examples a model was tested on, in a few words: versions whose periods differ
    were tested on other leads, and their test figures do not compare directly. A holdout is
    named with its data's hash: two files' holdouts of one size are other rows."""
    if "test" in split.windows:
        start, end = split.windows["test"]
        return f"{start} to {end}"
    return f"holdout of {int((split.assignment == 'test').sum()):,} rows of data {data_hash[:8]}"
