"""What would move a lead to SQL: the smallest set of realistic engagement steps (a demo, a
meeting, a trial...) that, added today, lifts the lead over the SQL rule, computed with the
model. Fixed facts (industry, size, BANT answers) are not actionable and never suggested."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import pandas as pd

from serving.scoring import LoadedModel, prepare_crm_leads, score_features

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
    score: float | None  # the score with those steps
    message: str


def path_to_sql(model: LoadedModel, lead: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp) -> PathToSql:
    """Try every set of up to `MAX_STEPS` actions (each added an hour before `as_of`) in one
    scoring call, and return the smallest set that makes the lead SQL (best score first).

    Args:
        lead: the lead's export row (one row, text cells).
        activities: its activity rows (text cells).
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
    features, context, positions, _ = prepare_crm_leads(model, frame, acts, moments, strict=False)
    scored = score_features(model, features, context, moments.iloc[positions], with_reasons=False)
    scored["steps"] = [scenarios[p] for p in positions]
    now = scored.iloc[0]
    if now["stage"] == "SQL":
        return PathToSql((), float(now["score"]), "Already SQL: call within the day.")
    if now["stage"] == "disqualified":
        return PathToSql((), None, f"Disqualified ({now['stage_reason']}); engagement does not change that.")
    reached = scored[scored["stage"] == "SQL"]
    if reached.empty:
        best = scored.sort_values("score", ascending=False).iloc[0]
        sql = model.criteria.sql
        blocked = []
        if best["score"] < sql.min_score:
            blocked.append(f"the score would reach only {best['score']:.0f} (SQL needs {sql.min_score:g})")
        bant = features["bant_confirmed"].iloc[0] if "bant_confirmed" in features else float("nan")
        if not bant >= sql.min_bant_confirmed:
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


def _words(steps: tuple[str, ...]) -> str:
    names = [ACTIONS[s] for s in steps]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
