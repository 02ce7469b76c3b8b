"""What would move a lead to SQL: the smallest set of realistic engagement steps (a demo, a
meeting, a trial...) that, added today, lifts the lead over the SQL rule, computed with the
model. Fixed facts (industry, size) are not actionable and never suggested; BANT answers come
from a call, so when they are what is missing the rep is told how many to confirm (each choice
of them scored with the model as well)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from features.clean import tidy_text
from features.fit import icp_misses
from features.ingest import BANT_SYNONYMS, Quarantine
from features.schema import BANT_FIELDS
from serving.scoring import (
    LoadedModel,
    clean_lead_rows,
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
    scoring call, and return the smallest set that makes the lead SQL (best score first). When
    BANT answers are short, each choice of the missing answers is scored with the model too.

    Args:
        lead: the lead's export row (one row, text cells).
        activities: its activity rows (text cells).
        day_first: the order of its numeric dates when the model has none (`prepare_crm_leads`).
    """
    features, scored = _score_scenarios(model, [((), lead)], activities, as_of, day_first)
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
    if not reached.empty:
        best = _fewest_steps(reached).iloc[0]
        return PathToSql(
            tuple(best["steps"]),
            float(best["score"]),
            f"With {_words(best['steps'])} the lead would score {best['score']:.0f} and become SQL "
            f"(now {now['score']:.0f}, {now['stage']}).",
        )
    sql = model.criteria.sql
    bant = features["bant_confirmed"].iloc[0] if "bant_confirmed" in features else float("nan")
    short = sql.min_bant_confirmed - (0 if bant != bant else int(bant))
    open_fields = _open_bant(lead)
    answered = None
    if 0 < short <= len(open_fields):
        # BANT answers come from a call, not from engagement, and confirmed they move the score
        # too: each choice of the missing answers is scored with every set of steps.
        variants = [(chosen, lead.assign(**dict.fromkeys(chosen, "confirmed")))
                    for chosen in combinations(open_fields, short)]  # fmt: skip
        _, answered = _score_scenarios(model, variants, activities, as_of, day_first)
        found = _bant_path(answered, now, short, _unconfirmed(lead))
        if found is not None:
            return found
    best = (scored if answered is None else answered).sort_values("score", ascending=False).iloc[0]
    with_answers = "" if answered is None else f" and {short} more BANT answer{'s' if short > 1 else ''} confirmed"
    blocked = []
    if best["score"] < sql.min_score:
        blocked.append(f"the score would reach only {best['score']:.0f} (SQL needs {sql.min_score:g})")
    if short > 0 and answered is None:
        shown = "unknown" if bant != bant else f"{bant:.0f}"
        blocked.append(
            f"{shown} of 4 BANT answers confirmed (SQL needs {sql.min_bant_confirmed}; they come from a "
            "sales conversation, not from engagement)"
        )
    why = "; ".join(blocked) or f"the lead would stay {best['stage']} ({best['stage_reason']})"
    return PathToSql(
        (),
        None,
        f"Nothing is near: even with {_words(best['steps'])}{with_answers}, no SQL within {MAX_STEPS} engagement "
        f"steps: {why}.",
    )


def _score_scenarios(
    model: LoadedModel,
    variants: list[tuple[tuple[str, ...], pd.DataFrame]],
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    day_first: bool | None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each variant of the lead's row (the BANT answers it confirms, the row) with every set of up
    to `MAX_STEPS` steps, scored in one call: the features and the scores, with `answers`,
    `steps` and `scenario` (the steps' number, alike across variants) columns."""
    lead_id = str(variants[0][1]["lead_id"].iloc[0]).strip()
    step_sets: list[tuple[str, ...]] = [()]
    for size in range(1, MAX_STEPS + 1):
        step_sets += list(combinations(ACTIONS, size))
    keys = [(answers, steps, number) for answers, _ in variants for number, steps in enumerate(step_sets)]
    ids = [f"{lead_id}#{k}" for k in range(len(keys))]
    # Built by position, not scenario by scenario: hundreds of small frames cost more than the scoring.
    rows = pd.concat([row for _, row in variants], ignore_index=True)
    frame = rows.iloc[np.repeat(np.arange(len(rows)), len(step_sets))].reset_index(drop=True)
    frame["lead_id"] = ids
    own = activities.iloc[np.tile(np.arange(len(activities)), len(keys))].reset_index(drop=True)
    own["lead_id"] = np.repeat(ids, len(activities))
    added = [(scenario_id, kind) for scenario_id, (_, steps, _) in zip(ids, keys, strict=True) for kind in steps]
    moment = (as_of - pd.Timedelta(hours=1)).isoformat()
    added_rows = pd.DataFrame(added, columns=["lead_id", "activity_type"]).assign(occurred_at=moment)
    acts = pd.concat([own, added_rows], ignore_index=True).fillna("")
    moments = pd.Series([as_of] * len(frame))
    features, context, positions, _ = prepare_crm_leads(model, frame, acts, moments, strict=False, day_first=day_first)
    scored = score_features(model, features, context, moments.iloc[positions], with_reasons=False)
    for i, column in enumerate(("answers", "steps", "scenario")):
        scored[column] = [keys[p][i] for p in positions]
    return features, scored


def _fewest_steps(scenarios: pd.DataFrame) -> pd.DataFrame:
    """Scenarios by the number of steps, then by score, best first."""
    sized = scenarios.assign(size=scenarios["steps"].map(len))
    return sized.sort_values(["size", "score"], ascending=[True, False], kind="stable")


def _open_bant(lead: pd.DataFrame) -> list[str]:
    """The BANT fields of the lead's export row not yet confirmed, as the features read them."""
    written = {f: tidy_text(lead[f].iloc[0]).casefold() if f in lead else "" for f in BANT_FIELDS}
    return [f for f, text in written.items() if BANT_SYNONYMS.get(text, text) != "confirmed"]


def _unconfirmed(lead: pd.DataFrame) -> list[str]:
    """`_open_bant`, those answered no marked so: a rep asks again about them, not for the first time."""
    written = {f: tidy_text(lead[f].iloc[0]).casefold() if f in lead else "" for f in BANT_FIELDS}
    answers = {f: BANT_SYNONYMS.get(text, text) for f, text in written.items()}  # "Yes" is confirmed, "no" not
    return [f if answers[f] != "not" else f"{f} (answered no)" for f in _open_bant(lead)]


def _bant_path(answered: pd.DataFrame, now: pd.Series, short: int, open_fields: list[str]) -> PathToSql | None:
    """The fewest steps that, with `short` more BANT answers confirmed, make the lead SQL:
    whichever answers a call confirms if such steps exist, else with the answers named; None
    when no choice of answers and steps does."""
    answers = f"{short} more BANT answer{'s' if short > 1 else ''}"
    still_open = f"(not yet confirmed: {', '.join(open_fields)})"
    sql = answered["stage"].eq("SQL")
    every = sql.groupby(answered["scenario"]).transform("all")
    if every.any():
        # The score the lead would reach at least, whichever answers get confirmed.
        lowest = answered[every].groupby("scenario")["score"].min()
        candidates = answered[every].drop_duplicates("scenario").assign(score=lambda t: t["scenario"].map(lowest))
        best = _fewest_steps(candidates).iloc[0]
        score = f"score {best['score']:.0f} or more"
        if not best["steps"]:
            text = f"Confirm {answers} on a call {still_open}: whichever they are, the lead is then SQL ({score})."
        else:
            text = (f"With {_words(best['steps'])}, plus {answers} confirmed on a call {still_open}, the lead "
                    f"would become SQL whichever they are ({score}; now {now['score']:.0f}, "
                    f"{now['stage']}).")  # fmt: skip
        return PathToSql(tuple(best["steps"]), float(best["score"]), text, bant_needed=short)
    if not sql.any():
        return None
    best = _fewest_steps(answered[sql]).iloc[0]
    named = " and ".join(best["answers"])
    steps = f"With {_words(best['steps'])}, plus" if best["steps"] else "With"
    text = (f"{steps} {named} confirmed on a call {still_open}, the lead would score {best['score']:.0f} and "
            f"become SQL (now {now['score']:.0f}, {now['stage']}); not every {short} answers would do.")  # fmt: skip
    return PathToSql(tuple(best["steps"]), float(best["score"]), text, bant_needed=short)


def _words(steps: tuple[str, ...]) -> str:
    names = [ACTIONS[s] for s in steps]
    if not names:
        return "no step"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
