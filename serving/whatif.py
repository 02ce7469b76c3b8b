"""What would move a lead to SQL: the smallest set of realistic engagement steps (a demo, a
meeting, a trial...) that, added today, lifts the lead over the SQL rule, computed with the
model. Fixed facts (industry, size) are not actionable and never suggested; BANT answers come
from a call, so when they are what is missing the rep is told how many to confirm."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from features.clean import tidy_text
from features.criteria import qualify_columns
from features.fit import icp_misses
from features.ingest import BANT_SYNONYMS, Quarantine
from features.schema import BANT_FIELDS
from serving.scoring import (
    LoadedModel,
    clean_lead_rows,
    criteria_inputs,
    model_date_order,
    prepare_crm_leads,
    score_features,
)

# What sales or marketing can make happen, and how a rep would say it.
ACTIONS: dict[str, str] = {
    "demo_request": "a demo request",
    "meeting": "a meeting with sales",
    "trial_signup": "a trial sign-up",
    "pricing_page": "a pricing-page visit",
    "webinar": "a webinar attended",
    "content_download": "a content download",
    "email_click": "an e-mail link clicked",
}
MAX_STEPS = 3


@dataclass(frozen=True)
class PathToSql:
    steps: tuple[str, ...]  # activity types to add, empty when already SQL or out of reach
    score: float | None  # the score with those steps (None when BANT answers are needed too)
    message: str
    bant_needed: int = 0  # BANT answers to confirm on a call as well as the steps


def path_to_sql(
    model: LoadedModel,
    lead: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    day_first: bool | None = None,
) -> PathToSql:
    """Try every set of up to `MAX_STEPS` actions (each added an hour before `as_of`) in one
    scoring call, and return the smallest set that makes the lead SQL (best score first).

    Args:
        lead: the lead's export row (one row, text cells).
        activities: its activity rows (text cells).
        day_first: the order of its numeric dates when the model has none (`prepare_crm_leads`).
    """
    lead_id = str(lead["lead_id"].iloc[0]).strip()
    scenarios: list[tuple[str, ...]] = [()]
    for size in range(1, MAX_STEPS + 1):
        scenarios += list(combinations(ACTIONS, size))
    moment = (as_of - pd.Timedelta(hours=1)).isoformat()
    leads_rows, act_rows = [], []
    for i, steps in enumerate(scenarios):
        scenario_id = f"{lead_id}#{i}"
        leads_rows.append(lead.assign(lead_id=scenario_id))
        act_rows.append(activities.assign(lead_id=scenario_id))
        for kind in steps:
            act_rows.append(pd.DataFrame({"lead_id": [scenario_id], "occurred_at": [moment], "activity_type": [kind]}))
    frame = pd.concat(leads_rows, ignore_index=True)
    acts = pd.concat(act_rows, ignore_index=True).fillna("")
    moments = pd.Series([as_of] * len(frame))
    features, context, positions, _ = prepare_crm_leads(model, frame, acts, moments, strict=False, day_first=day_first)
    scored = score_features(model, features, context, moments.iloc[positions], with_reasons=False)
    scored["steps"] = [scenarios[p] for p in positions]
    now = scored.iloc[0]
    if now["stage"] == "SQL":
        return PathToSql((), float(now["score"]), f"Already SQL: {now['next_action']}")
    if now["stage"] == "disqualified":
        said = f"Disqualified ({now['stage_reason']}); engagement does not change that."
        if "ideal customer profile" in now["stage_reason"]:
            # Which of the profile's criteria the lead misses: a rep can check the CRM's fields.
            _, clean = clean_lead_rows(model, lead, Quarantine(), model_date_order(model.scorer, day_first))
            if not clean.empty:
                said += f" Not met: {'; '.join(icp_misses(clean.iloc[0], model.feature_params.icp))}."
        return PathToSql((), None, said)
    reached = scored[scored["stage"] == "SQL"]
    if reached.empty:
        sql = model.criteria.sql
        bant = features["bant_confirmed"].iloc[0] if "bant_confirmed" in features else float("nan")
        short = sql.min_bant_confirmed - (0 if bant != bant else int(bant))
        if short > 0:
            # BANT answers come from a call, not from engagement: say how many the rep must get,
            # with the fewest steps (none, often) that make the rest of the SQL rule hold.
            with_bant = _sql_with_bant(
                model, features, context, scored, moments.iloc[positions], sql.min_bant_confirmed
            )
            if not with_bant.empty:
                return _bant_path(with_bant, now, short, _unconfirmed(lead))
        best = scored.sort_values("score", ascending=False).iloc[0]
        blocked = []
        if best["score"] < sql.min_score:
            blocked.append(f"the score would reach only {best['score']:.0f} (SQL needs {sql.min_score:g})")
        if short > 0:
            shown = "unknown" if bant != bant else f"{bant:.0f}"
            blocked.append(
                f"{shown} of 4 BANT answers confirmed (SQL needs {sql.min_bant_confirmed}; they come from a "
                "sales conversation, not from engagement)"
            )
        why = "; ".join(blocked) or f"the lead would stay {best['stage']} ({best['stage_reason']})"
        return PathToSql(
            (),
            None,
            f"Nothing is near: even with {_words(best['steps'])}, no SQL within {MAX_STEPS} engagement steps: {why}.",
        )
    reached = reached.assign(size=reached["steps"].map(len)).sort_values(["size", "score"], ascending=[True, False])
    best = reached.iloc[0]
    return PathToSql(
        tuple(best["steps"]),
        float(best["score"]),
        f"With {_words(best['steps'])} the lead would score {best['score']:.0f} and become SQL "
        f"(now {now['score']:.0f}, {now['stage']}).",
    )


def _sql_with_bant(
    model: LoadedModel,
    features: pd.DataFrame,
    context: pd.DataFrame,
    scored: pd.DataFrame,
    moments: pd.Series,
    bant: int,
) -> pd.DataFrame:
    """The scenarios that the SQL rule would take once `bant` BANT answers are confirmed (the
    scores as they are: the rule is re-applied, the model not re-run), fewest steps first."""
    inputs = criteria_inputs(model, features.reset_index(drop=True), context.reset_index(drop=True))
    inputs["bant_confirmed"] = np.full(len(scored), float(bant))
    values = {"score": scored["score"].to_numpy(), "fit": scored["fit"].to_numpy(),
              "engagement": scored["engagement"].to_numpy(), **inputs}  # fmt: skip
    stages = qualify_columns(values, len(scored), model.criteria, list(moments))["stage"]
    chosen = scored[np.asarray(stages) == "SQL"]
    return chosen.assign(size=chosen["steps"].map(len)).sort_values(["size", "score"], ascending=[True, False])


def _unconfirmed(lead: pd.DataFrame) -> list[str]:
    """The BANT fields of the lead's export row not yet confirmed (as the features read them),
    those answered no marked so: a rep asks again about them, not for the first time."""
    written = {f: tidy_text(lead[f].iloc[0]).casefold() if f in lead else "" for f in BANT_FIELDS}
    answers = {f: BANT_SYNONYMS.get(text, text) for f, text in written.items()}  # "Yes" is confirmed, "no" not
    return [f if answers[f] != "not" else f"{f} (answered no)" for f in BANT_FIELDS if answers[f] != "confirmed"]


def _bant_path(candidates: pd.DataFrame, now: pd.Series, short: int, open_fields: list[str]) -> PathToSql:
    best = candidates.iloc[0]
    answers = f"{short} more BANT answer{'s' if short > 1 else ''}"
    still_open = f"(not yet confirmed: {', '.join(open_fields)})"
    if not best["steps"]:
        text = f"Confirm {answers} on a call {still_open}: the lead is then SQL (the rest of its rule already holds)."
    else:
        # No score: the model was not re-run with the answers, and which get confirmed moves it.
        text = (f"With {_words(best['steps'])}, plus {answers} confirmed on a call {still_open}, the lead would "
                f"become SQL (now {now['score']:.0f}, {now['stage']}); its score then depends on which answers "
                "are confirmed.")  # fmt: skip
    return PathToSql(tuple(best["steps"]), None, text, bant_needed=short)


def _words(steps: tuple[str, ...]) -> str:
    names = [ACTIONS[s] for s in steps]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
