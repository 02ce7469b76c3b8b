"""Build the model's features for leads as of given moments: one code path for training,
batch scoring and the service."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from features.engagement import engagement_features
from features.fit import fit_features
from features.params import FeatureParams
from features.schema import OTHER_ACTIVITY
from features.spec import FeatureGroup

# "Never" as a number of days: longer ago than any activity a CRM holds (`FeatureSpec.missing_as`).
NEVER_DAYS = 36_500.0


def build_crm_features(
    leads: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Series | pd.Timestamp,
    params: FeatureParams,
    tech_vocabulary: Sequence[str],
) -> pd.DataFrame:
    """Fit and engagement features, one row per row of `leads`.

    Args:
        leads: cleaned lead rows (a lead may repeat, once per moment).
        activities: cleaned activities of these leads (rows at or after a row's moment
            are ignored for that row).
        as_of: the moment T of each row, or one moment for all.
        params: the feature settings (windows, half-life, weights, ICP).
        tech_vocabulary: technologies that get their own feature (learned in training).

    Returns:
        Features in the order of `leads`, index reset.
    """
    if isinstance(as_of, pd.Timestamp):
        # An empty list would make an object column that cannot take part in date arithmetic.
        as_of = pd.Series([as_of] * len(leads)) if len(leads) else pd.Series([], dtype="datetime64[ns]")
    as_of = pd.Series(as_of).reset_index(drop=True)
    fit = fit_features(leads, as_of, icp=params.icp, tech_vocabulary=tech_vocabulary)
    engagement = engagement_features(
        activities,
        leads["lead_id"],
        as_of,
        windows_days=params.windows_days,
        half_life_days=params.decay_half_life_days,
        weights=params.engagement_weights,
    )
    engagement["activities_per_30d"] = engagement["n_activities_total"] / fit["lead_age_days"].clip(lower=1.0) * 30.0
    return pd.concat([fit, engagement], axis=1)


def idle_engagement(params: FeatureParams, columns: Sequence[str]) -> dict[str, float | None]:
    """Each of `columns` (engagement features) as a lead with no activity before T has it:
    where the fit sub-score holds engagement, so that it says what the profile alone is worth
    and no activity moves it."""
    none = pd.DataFrame({"lead_id": pd.Series([], dtype=object), "activity_type": pd.Series([], dtype=object),
                         "occurred_at": pd.Series([], dtype="datetime64[ns]")})  # fmt: skip
    idle = engagement_features(
        none, pd.Series(["idle"]), pd.Series([pd.Timestamp("2000-01-01")]), windows_days=params.windows_days,
        half_life_days=params.decay_half_life_days, weights=params.engagement_weights,
    ).iloc[0]  # fmt: skip
    idle["activities_per_30d"] = 0.0
    return {c: None if pd.isna(idle[c]) else float(idle[c]) for c in columns}


_ENGAGEMENT_PREFIXES = ("n_", "days_since_", "engagement_", "velocity_", "activities_per_")
_FIT_EXCEPTIONS = ("n_technologies",)


def crm_feature_groups(columns: Sequence[str]) -> dict[str, FeatureGroup]:
    """Which sub-score each CRM feature feeds: fit (who the lead is) or engagement (what it did)."""
    return {
        c: "engagement" if c.startswith(_ENGAGEMENT_PREFIXES) and c not in _FIT_EXCEPTIONS else "fit" for c in columns
    }


def engagement_direction(column: str) -> int:
    """How an engagement feature moves a lead's odds by its meaning, as LightGBM's monotone
    constraint: 1 (more of it never lowers the score), -1 (never raises it: days since an
    activity, unsubscribes) or 0 (activities of a type the product does not know)."""
    if column.startswith("days_since_") or "unsubscribe" in column:
        return -1
    if column.startswith(f"n_{OTHER_ACTIVITY}_"):
        return 0
    return 1


def never_as_long_ago(columns: Sequence[str]) -> dict[str, float]:
    """The `missing_as` of CRM features: days since an activity the lead never had."""
    return {c: NEVER_DAYS for c in columns if c.startswith("days_since_")}
