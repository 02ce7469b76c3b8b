"""Exploration helpers for the notebooks: data quality and conversion views of a CRM export,
built on the loaders and feature code the model uses."""

from __future__ import annotations

import pandas as pd

from features.build import build_crm_features
from features.fit import learn_tech_vocabulary
from features.ingest import CrmData
from features.params import Params


def quarantine_summary(crm: CrmData) -> pd.DataFrame:
    """Quarantined rows per table and kind of reason (the text before any quoted value)."""
    frame = crm.quarantine.frame()
    if frame.empty:
        return pd.DataFrame(columns=["table", "reason", "rows"])
    kind = frame["reason"].str.split(":").str[0]
    return frame.assign(reason=kind).groupby(["table", "reason"]).size().rename("rows").reset_index()


def missing_share(frame: pd.DataFrame) -> pd.DataFrame:
    """Share of missing values per column, most missing first."""
    return frame.isna().mean().sort_values(ascending=False).rename("missing").to_frame()


def closed_leads(crm: CrmData) -> pd.DataFrame:
    """Leads with a final outcome (converted or lost), with `converted` (bool) and `closed_at`."""
    closed = crm.outcomes[crm.outcomes["status"] != "open"]
    leads = crm.leads.merge(closed, on="lead_id", how="inner")
    return leads.assign(converted=leads["status"] == "converted")


def conversion_by(leads: pd.DataFrame, column: str, min_leads: int = 20) -> pd.DataFrame:
    """Conversion rate and lead count per value of a column (missing shown as "(missing)")."""
    values = leads[column].astype("object").where(leads[column].notna(), "(missing)")
    table = leads.groupby(values)["converted"].agg(leads="size", conversion="mean")
    return table[table["leads"] >= min_leads].sort_values("conversion", ascending=False)


def early_engagement(crm: CrmData, params: Params, days: int = 30) -> pd.DataFrame:
    """Closed leads with their engagement features as of `days` after creation (before most
    closes, so the view does not leak the outcome), and `converted`."""
    leads = closed_leads(crm)
    as_of = leads["created_at"] + pd.Timedelta(days=days)
    leads = leads[leads["closed_at"].isna() | (leads["closed_at"] > as_of)].reset_index(drop=True)
    vocabulary = learn_tech_vocabulary(leads, params.features.tech_stack_top_k)
    features = build_crm_features(leads, crm.activities, leads["created_at"] + pd.Timedelta(days=days),
                                  params.features, vocabulary)  # fmt: skip
    return features.assign(converted=leads["converted"].to_numpy())


def conversion_by_quantile(frame: pd.DataFrame, column: str, bins: int = 5) -> pd.DataFrame:
    """Conversion rate per quantile bin of a numeric column."""
    binned = pd.qcut(frame[column].rank(method="first"), bins, labels=[f"Q{i + 1}" for i in range(bins)])
    return frame.groupby(binned, observed=True).agg(
        leads=("converted", "size"),
        conversion=("converted", "mean"),
        low=(column, "min"),
        high=(column, "max"),
    )
