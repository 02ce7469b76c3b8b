"""Qualification criteria: place each scored lead in a stage (disqualified, nurture, MQL, SAL,
SQL) by rules marketing and sales agree on, with the rule that placed it and the next action.

One pure function, used by the service, batch scoring and reports.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from features.clean import email_domains
from features.params import CriteriaParams, MqlParams
from features.reasons import ago

STAGES: tuple[str, ...] = ("disqualified", "nurture", "MQL", "SAL", "SQL")
BANT_TOTAL = 4


def _column(leads: Mapping[str, Any], n: int, name: str, default: float) -> np.ndarray:
    if name not in leads:
        return np.full(n, default, dtype=float)
    values = leads[name]
    if isinstance(values, pd.Series):
        return pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    return np.asarray(values, dtype=float)


def _email_domains(leads: Mapping[str, Any], n: int) -> list[list[str]]:
    if "email" not in leads:
        return [[] for _ in range(n)]
    return [email_domains(v) for v in leads["email"]]


def qualify(leads: pd.DataFrame, criteria: CriteriaParams, as_of: pd.Series | pd.Timestamp) -> pd.DataFrame:
    """Stage, the rule behind it, the next action and (for disqualified leads) a recycle date.

    Args:
        leads: one row per lead with `score` (0-100) and, when known, `fit`, `engagement`
            (0-100), `icp_match` (0-1), `bant_confirmed` (0-4), `days_since_hand_raise`,
            `do_not_contact` (0/1), `sales_accepted` (0/1), `email` and `lead_age_days` (the
            recycle dates count from the creation). Missing values never satisfy a rule.
        criteria: thresholds and actions (params.yaml `criteria`, as saved in the model).
        as_of: the scoring moment of each lead, or one for all.

    Returns:
        Columns `stage`, `stage_reason`, `next_action`, `recycle_on` (ISO date or None), in
        the order of `leads`.
    """
    moments = list(as_of) if isinstance(as_of, pd.Series) else [as_of] * len(leads)
    return pd.DataFrame(qualify_columns(leads, len(leads), criteria, moments), index=leads.index)


def qualify_columns(
    leads: Mapping[str, Any], n: int, criteria: CriteriaParams, moments: Sequence[Any]
) -> dict[str, list]:
    """`qualify` on plain columns (any mapping of name to `n` values, e.g. a data frame or a
    dict of arrays), so one lead is qualified without building a data frame."""
    score = _column(leads, n, "score", np.nan)
    fit = _column(leads, n, "fit", np.nan)
    engagement = _column(leads, n, "engagement", np.nan)
    icp = _column(leads, n, "icp_match", np.nan)
    bant = _column(leads, n, "bant_confirmed", 0.0)
    hand_raise = _column(leads, n, "days_since_hand_raise", np.nan)
    do_not_contact = _column(leads, n, "do_not_contact", 0.0) == 1
    accepted = _column(leads, n, "sales_accepted", 0.0) == 1
    unsubscribed = _column(leads, n, "n_unsubscribe_total", 0.0) > 0
    competitors = {d.casefold() for d in criteria.disqualify.competitor_domains}
    competitor = (
        np.array([any(_is_competitor(d, competitors) for d in ds) for ds in _email_domains(leads, n)], dtype=bool)
        if competitors
        else np.zeros(n, dtype=bool)  # none listed: no address read
    )
    out_of_icp = icp < criteria.disqualify.min_icp_match

    raised = hand_raise <= criteria.hand_raise_days
    sql_rule = (
        (score >= criteria.sql.min_score)
        & (raised | (not criteria.sql.require_hand_raise))
        & (bant >= criteria.sql.min_bant_confirmed)
    )
    mql_rule = (score >= criteria.mql.min_score) & _reaches(fit, criteria.mql.min_fit)
    mql_rule &= _reaches(engagement, criteria.mql.min_engagement)
    # A lead that asked for sales is not left in nurture for ranking low on fit or engagement.
    mql_by_hand = ~mql_rule & raised & (score >= criteria.mql.min_score) & criteria.mql.hand_raise_qualifies
    disqualified = do_not_contact | competitor | out_of_icp
    stage = np.select(
        [disqualified, sql_rule, accepted, mql_rule | mql_by_hand],
        ["disqualified", "SQL", "SAL", "MQL"],
        default="nurture",
    ).astype(object)

    recycle_after = pd.Timedelta(days=criteria.disqualify.recycle_after_days)
    age = _column(leads, n, "lead_age_days", np.nan)
    reasons, actions, recycle_on = [], [], []
    mql, sql = criteria.mql, criteria.sql
    for i in range(n):
        s = stage[i]
        if s == "disqualified":
            # Only a profile can change with time: an opt-out or a competitor is never recycled.
            date = None
            if do_not_contact[i]:
                why, action = "Marked do not contact", criteria.next_actions["do_not_contact"]
            elif competitor[i]:
                why, action = "E-mail domain belongs to a competitor", criteria.next_actions["competitor"]
            else:
                why = (
                    f"Outside the ideal customer profile: meets {icp[i]:.0%} of its criteria "
                    f"(needs {criteria.disqualify.min_icp_match:.0%})"
                )
                date = _recycle_date(pd.Timestamp(moments[i]), age[i], recycle_after)
                action = criteria.next_actions["disqualified"].format(recycle_on=date)
            recycle_on.append(date)
            actions.append(action)
        else:
            recycle_on.append(None)
            # A nurture campaign is e-mail: "Keep in the nurture campaign" of a lead that unsubscribed.
            actions.append(criteria.next_actions[s] + (UNSUBSCRIBED if s == "nurture" and unsubscribed[i] else ""))
            if s == "SQL":
                parts = [f"score {_shown_at_least(score[i], sql.min_score)} ≥ {sql.min_score:g}"]
                if sql.require_hand_raise:
                    parts.append(f"hand raised {ago(float(hand_raise[i]))}")
                parts.append(f"{bant[i]:.0f} of {BANT_TOTAL} BANT confirmed (needs {sql.min_bant_confirmed})")
                why = "SQL: " + ", ".join(parts)
            elif s == "SAL":
                why = "Sales accepted the lead in the CRM"
            elif s == "MQL" and mql_by_hand[i]:
                why = (
                    f"MQL: hand raised {ago(float(hand_raise[i]))}, "
                    f"score {_shown_at_least(score[i], mql.min_score)} ≥ {mql.min_score:g}"
                )
            elif s == "MQL":
                why = "MQL: " + ", ".join(
                    f"{label} {_shown_at_least(value, needed)} ≥ {needed:g}"
                    for label, value, needed in mql_conditions(mql, score[i], fit[i], engagement[i])
                )
            else:
                by_hand = bool(raised[i]) and mql.hand_raise_qualifies
                why = _nurture_reason(score[i], fit[i], engagement[i], criteria, hand_raise[i] if by_hand else None)
        reasons.append(why)
    return {"stage": stage.tolist(), "stage_reason": reasons, "next_action": actions, "recycle_on": recycle_on}


UNSUBSCRIBED = " (not by e-mail: the lead unsubscribed)"


def reachable_stages(kind: str, criteria: CriteriaParams, inputs: Collection[str] = ()) -> list[str]:
    """The stages a model of this kind can give, in `STAGES` order. A flat export's rows carry
    only the rule inputs among its columns (`inputs`: `icp_match`, `bant_confirmed`,
    `do_not_contact`, `days_since_hand_raise`, `email`, `sales_accepted`), most often none: its
    leads are then nurture or MQL by score, and SQL only where its rule asks for neither a
    hand-raise nor BANT."""
    if kind != "flat":
        return list(STAGES)
    given = set(inputs)
    sql = criteria.sql
    reached = {"nurture"}
    if given & {"do_not_contact", "icp_match"} or ("email" in given and criteria.disqualify.competitor_domains):
        reached.add("disqualified")
    if "sales_accepted" in given:
        reached.add("SAL")
    by_score = not sql.require_hand_raise and sql.min_bant_confirmed <= 0
    if by_score or (
        (not sql.require_hand_raise or "days_since_hand_raise" in given)
        and (sql.min_bant_confirmed <= 0 or "bant_confirmed" in given)
    ):
        reached.add("SQL")
    if not by_score or sql.min_score > criteria.mql.min_score:  # SQL by score alone takes the leads above it
        reached.add("MQL")
    return [stage for stage in STAGES if stage in reached]


def _reaches(values: np.ndarray, needed: float | None) -> np.ndarray:
    """Where `values` meet a threshold; everywhere when there is none."""
    return np.ones(len(values), dtype=bool) if needed is None else values >= needed


def mql_conditions(mql: MqlParams, score: float, fit: float, engagement: float) -> list[tuple[str, float, float]]:
    """(name, value, threshold) of each MQL condition the criteria set."""
    conditions = [
        ("score", score, mql.min_score),
        ("fit", fit, mql.min_fit),
        ("engagement", engagement, mql.min_engagement),
    ]
    return [(label, value, needed) for label, value, needed in conditions if needed is not None]


def _recycle_date(moment: pd.Timestamp, age_days: float, every: pd.Timedelta) -> str:
    """The next look at a lead off the profile: every `every` from its creation day, so each
    scoring until then gives the same date (counted from the scoring moment, it moved on with
    every scoring and never came), and a scoring on that day gives that day (counted to the
    moment, a nightly scoring never said "today": the date jumped to the next cycle). Without
    a creation date, `every` after the moment."""
    if not np.isfinite(age_days) or age_days < 0:
        return (moment + every).date().isoformat()
    # The age is a float of days: the creation moment it gives back is off by microseconds, which
    # put a lead created at midnight on the day before for some moments. CRMs keep milliseconds.
    created = min((moment - pd.Timedelta(days=float(age_days))).round("ms"), moment)  # never after the moment
    start, today = created.normalize(), moment.normalize()
    cycles = max(1, -((start - today) // every))  # the first cycle's day not before today
    return (start + cycles * every).date().isoformat()


def _nurture_reason(
    score: float, fit: float, engagement: float, criteria: CriteriaParams, hand_raised: float | None = None
) -> str:
    """Name the MQL thresholds the lead is still below: after a hand-raise `hand_raised` days ago,
    that qualifies (`mql.hand_raise_qualifies`), the score alone (fit and engagement named there
    read as blockers that were none)."""
    if hand_raised is not None:
        needed = criteria.mql.min_score
        return f"Not yet MQL: hand raised {ago(float(hand_raised))}, score {_shown_below(score, needed)} < {needed:g}"
    short = []
    for label, value, needed in mql_conditions(criteria.mql, score, fit, engagement):
        if not value >= needed:
            short.append(f"{label} {'unknown' if np.isnan(value) else _shown_below(value, needed)} < {needed:g}")
    return "Not yet MQL: " + ", ".join(short)


def _shown_below(value: float, needed: float) -> str:
    """`value` rounded, with as many decimals as it takes to read below `needed` (9.7 of 10
    is "9.7", not "10")."""
    return _shown(value, lambda shown: shown < needed)


def _shown_at_least(value: float, needed: float) -> str:
    """`value` rounded, with as many decimals as it takes to read at or above `needed` (12.2
    of a recalibrated 12.1 is "12.2", not "12")."""
    return _shown(value, lambda shown: shown >= needed)


def _shown(value: float, reads_right: Callable[[float], bool]) -> str:
    if value == round(value, 1):  # a score has one decimal: shown as the API shows it ("83.5", not "84")
        return f"{value:g}"
    for decimals in range(4):
        shown = f"{value:.{decimals}f}"
        if reads_right(float(shown)):
            return shown
    return repr(value)


def _is_competitor(domain: str | None, competitors: set[str]) -> bool:
    """The domain or one of its parents is a competitor's (`eu.hubspot.com` is HubSpot's)."""
    if not domain:
        return False
    parts = domain.split(".")
    return any(".".join(parts[i:]) in competitors for i in range(len(parts) - 1))
