"""Fit features: how well a lead matches the ideal customer profile (firmographic,
demographic, technographic, BANT), from the lead's own attributes."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.clean import NOT_ALPHANUMERIC, email_domain
from features.params import IcpParams
from features.schema import BANT_FIELDS, LEAD_CATEGORICAL, LEAD_NUMERIC

FREE_MAIL_DOMAINS = frozenset(
    {
        "gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "hotmail.com", "live.com",
        "aol.com", "icloud.com", "me.com", "mail.com", "gmx.com", "gmx.de", "web.de",
        "yandex.ru", "proton.me", "protonmail.com", "qq.com", "163.com", "rediffmail.com",
    }
)  # fmt: skip
TECH_PREFIX = "uses_"  # a technology's flag column: uses_<technology>
_TECH_SPLIT = re.compile(r"\s*[;,|]\s*")
# The optional lead attributes fit features are built from.
OPTIONAL_LEAD_COLUMNS = (*LEAD_CATEGORICAL, *LEAD_NUMERIC, "email", "do_not_contact", "tech_stack")


def _per_distinct(values: pd.Series, compute: Callable[[Any], Any]) -> list[Any]:
    """`compute` of each row's value, called once per distinct value (missing included).

    Training rows repeat each lead once per snapshot: the Python work runs per lead.
    """
    codes, distinct = pd.factorize(values, use_na_sentinel=False)
    results = [compute(v) for v in distinct]
    return [results[c] for c in codes]


def _business_email(email: Any) -> float:
    """1 for an address at a company's domain, 0 at a free mail provider, NaN without a domain."""
    domain = email_domain(email)
    return np.nan if domain is None else float(domain not in FREE_MAIL_DOMAINS)


def _technologies(cell: Any) -> list[str]:
    """The technologies of one "A; B|C" style cell (missing -> empty list)."""
    return [] if cell is None or pd.isna(cell) else [t for t in _TECH_SPLIT.split(str(cell).strip()) if t]


def split_tech_stack(values: pd.Series) -> pd.Series:
    """Lists of technologies from "A; B|C" style cells (missing -> empty list)."""
    return values.map(_technologies)


def tech_feature(tech: str) -> str:
    """The flag column of a (case-folded) technology: uses_<technology>."""
    return TECH_PREFIX + re.sub(r"\W+", "_", tech).strip("_")


def learn_tech_spellings(leads: pd.DataFrame, vocabulary: Sequence[str]) -> dict[str, str]:
    """Each technology of `vocabulary` as the export writes it most often ("HubSpot", "AWS"):
    the features are case-folded, a rep's reasons are not ("Uses Aws" read as a slip)."""
    if not vocabulary or "tech_stack" not in leads:
        return {}
    written = split_tech_stack(leads["tech_stack"]).explode().dropna().str.strip()
    counts = written[written.str.casefold().isin(set(vocabulary))].value_counts()
    spellings: dict[str, str] = {}
    for spelling, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0])):  # ties: alphabetical
        spellings.setdefault(spelling.casefold(), spelling)
    return spellings


def tech_names(settings: Mapping[str, Any]) -> dict[str, str]:
    """Each technology flag's name as the training export spelt it, by feature (none for a model
    trained before the spellings were kept: its names are title-cased)."""
    return {tech_feature(tech): spelling for tech, spelling in (settings.get("tech_spellings") or {}).items()}


def learn_tech_vocabulary(leads: pd.DataFrame, top_k: int) -> list[str]:
    """The `top_k` most frequent technologies (case-folded), learned on training leads."""
    if "tech_stack" not in leads or top_k == 0:
        return []
    exploded = split_tech_stack(leads["tech_stack"]).explode().dropna().str.casefold()
    counts = exploded.value_counts()
    return sorted(counts.index[:top_k].tolist())


# The lead columns the ideal customer profile lists values of, and the list of each.
ICP_LISTS = (("industry", "industries"), ("seniority", "seniorities"), ("department", "departments"),
             ("country", "countries"))  # fmt: skip


# Spellings of one country a CRM's form or enrichment writes: the profile names it once.
_COUNTRY_SPELLINGS = {"us": "unitedstates", "usa": "unitedstates", "unitedstatesofamerica": "unitedstates",
                      "uk": "unitedkingdom", "gb": "unitedkingdom", "greatbritain": "unitedkingdom",
                      "uae": "unitedarabemirates"}  # fmt: skip


@functools.lru_cache(maxsize=4096)  # a CRM repeats few spellings; the single-lead path calls this per lead
def _spelling_key(text: str) -> str:
    key = NOT_ALPHANUMERIC.sub("", text.casefold())
    return _COUNTRY_SPELLINGS.get(key, key)


def icp_key(value: object, icp: IcpParams) -> str:
    """A value as the profile compares it ("" when missing, which no entry matches): with
    `match_spellings`, case, spaces and punctuation aside ("C Level" is "C-Level") and a
    country's common short forms as its name ("USA", "U.K."); else case aside."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return ""
    return _spelling_key(str(value)) if icp.match_spellings else str(value).casefold()


def icp_wanted(allowed: Sequence[str], icp: IcpParams) -> frozenset[str]:
    """The keys of a profile list's entries (one of only punctuation matches nothing)."""
    return frozenset(key for key in (icp_key(a, icp) for a in allowed) if key)


def unmatched_icp_entries(leads: pd.DataFrame, icp: IcpParams) -> list[str]:
    """Notes on the profile's entries no lead of an export matches (`Sofware`, a typo, matched
    nothing without a word), per list whose column the export has."""
    notes = []
    for column, listed in ICP_LISTS:
        if column not in leads:
            continue
        seen = {icp_key(value, icp) for value in leads[column].dropna().unique()}
        unmatched = [entry for entry in getattr(icp, listed) if icp_key(entry, icp) not in seen]
        if unmatched and seen - {""}:
            notes.append(f"features.icp.{listed}: {', '.join(map(repr, unmatched))} matches no lead's {column} "
                         "in this export (spelt otherwise?)")  # fmt: skip
    return notes


def icp_misses(lead: pd.Series, icp: IcpParams) -> list[str]:
    """The ICP criteria a cleaned lead row misses, as a rep reads them (what `_icp_match`
    counts as not met, a blank field included)."""
    misses = []
    for column, listed in ICP_LISTS:
        value = lead.get(column)
        allowed = getattr(icp, listed)
        if value is None or pd.isna(value):
            misses.append(f"{column} blank")
        elif icp_key(value, icp) not in icp_wanted(allowed, icp):
            misses.append(f"{column} {value} (the profile: {', '.join(allowed)})")
    employees = lead.get("employees")
    if employees is None or pd.isna(employees):
        misses.append("employees blank")
    elif not icp.min_employees <= float(employees) <= icp.max_employees:
        wanted = f"{icp.min_employees:,.0f}-{icp.max_employees:,.0f}"
        misses.append(f"{float(employees):,.0f} employees (the profile: {wanted})")
    return misses


def _icp_match(leads: pd.DataFrame, icp: IcpParams) -> pd.Series:
    """Share of the ICP criteria the lead meets (unknown counts as not met)."""
    checks = []
    for column, listed in ICP_LISTS:
        allowed = getattr(icp, listed)
        if column in leads:
            wanted = icp_wanted(allowed, icp)
            met = _per_distinct(leads[column], lambda v, w=wanted: icp_key(v, icp) in w)
            checks.append(pd.Series(met, index=leads.index, dtype=bool))
    if "employees" in leads:
        checks.append(leads["employees"].between(icp.min_employees, icp.max_employees))
    if not checks:
        return pd.Series(np.nan, index=leads.index)
    return pd.concat(checks, axis=1).astype(float).mean(axis=1)


def fit_features(
    leads: pd.DataFrame,
    as_of: pd.Series,
    *,
    icp: IcpParams,
    tech_vocabulary: Sequence[str],
) -> pd.DataFrame:
    """Fit features of each lead row, with its age at `as_of`.

    Returns:
        One row per lead row: categorical columns as text, the rest as floats.
    """
    leads = leads.reset_index(drop=True)
    # An export without some optional columns says those values are unknown, like a request
    # that leaves them out: the features must be the same either way (batch = service).
    absent = [c for c in OPTIONAL_LEAD_COLUMNS if c not in leads]
    if absent:
        leads = leads.assign(**{c: pd.Series([None] * len(leads), dtype="object") for c in absent})
    out: dict[str, pd.Series] = {}
    for column in LEAD_CATEGORICAL:
        if column in leads:
            out[column] = leads[column].astype("object")
    for column in LEAD_NUMERIC:
        if column in leads:
            out[column] = leads[column].astype("float64")
    if "employees" in leads and "annual_revenue" in leads:
        out["revenue_per_employee"] = leads["annual_revenue"] / leads["employees"].where(leads["employees"] > 0)
    if "email" in leads:
        out["business_email"] = pd.Series(_per_distinct(leads["email"], _business_email), dtype="float64")
    if "do_not_contact" in leads:
        out["do_not_contact"] = leads["do_not_contact"].astype("float64")
    if "tech_stack" in leads:
        # Plain lists, not a pandas map per technology: the vocabulary makes many columns.
        stacks = _per_distinct(leads["tech_stack"], lambda cell: {t.casefold() for t in _technologies(cell)})
        unknown = leads["tech_stack"].isna().to_numpy()
        out["n_technologies"] = pd.Series(np.where(unknown, np.nan, [float(len(s)) for s in stacks]))
        for tech in tech_vocabulary:
            out[tech_feature(tech)] = pd.Series(np.where(unknown, np.nan, [float(tech in s) for s in stacks]))
    out["bant_confirmed"] = (
        sum((leads[c] == "confirmed").astype(float) for c in BANT_FIELDS if c in leads)
        if any(c in leads for c in BANT_FIELDS)
        else pd.Series(np.nan, index=leads.index)
    )
    out["icp_match"] = _icp_match(leads, icp)
    as_of = pd.Series(as_of).reset_index(drop=True)
    if len(as_of) == 1 and len(leads) > 1:
        as_of = pd.Series(np.repeat(as_of.to_numpy(), len(leads)))
    # In microseconds: moments centuries apart (the contract allows 1900-2200) overflow nanoseconds.
    as_of_us = as_of.to_numpy(dtype="datetime64[ns]").astype("datetime64[us]")
    created_us = leads["created_at"].to_numpy(dtype="datetime64[ns]").astype("datetime64[us]")
    age = (as_of_us - created_us).astype(np.int64) / 1e6 / 86400.0
    out["lead_age_days"] = pd.Series(np.where(np.isnat(as_of_us) | np.isnat(created_us), np.nan, age))
    return pd.DataFrame(out)
