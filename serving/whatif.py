"""What would move a lead to SQL: the smallest set of realistic engagement steps (a demo, a
meeting, a trial...) that, added today, lifts the lead over the SQL rule, computed with the
model. Fixed facts (industry, size) are not actionable and never suggested; BANT answers come
from a call, so when they are what is missing the rep is told how many to confirm (each choice
of them scored with the model as well)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from features.clean import tidy_text
from features.fit import icp_misses
from features.ingest import BANT_SYNONYMS, Quarantine
from features.reasons import ACTIVITY_WORDS
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
    score: float | None  # the score with those steps (and answers: the least of their choices); None when out of reach
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
    steps alone do not, each choice of the lead's open BANT answers, fewest first, is scored with
    the model too (confirmed answers raise the score as well as meet the rule).

    Args:
        lead: the lead's export row (one row, text cells).
        activities: its activity rows (text cells).
        day_first: the order of its numeric dates when the model has none (`prepare_crm_leads`).
    """
    base = _score_steps(model, lead, activities, as_of, day_first)
    scored = base.scored
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
    path = _path(model, base, lead, now, day_first)
    if path.score is None or any(step in model.criteria.hand_raise_types for step in path.steps):
        return path
    return PathToSql(path.steps, path.score, path.message + _lapses(model, base.features.iloc[0], as_of),
                     path.bant_needed)  # fmt: skip


def _lapses(model: LoadedModel, features: pd.Series, as_of: pd.Timestamp) -> str:
    """When the hand-raise a path to SQL leans on stops counting within `LAPSE_WARNING_DAYS`:
    advice given on day 29 of a 30-day window ("whichever they are, the lead is then SQL") no
    longer held the next day, when the rep was told to call within three."""
    criteria = model.criteria
    since = {kind: features.get(f"days_since_{kind}", np.nan) for kind in criteria.hand_raise_types}
    since = {kind: float(days) for kind, days in since.items() if days == days}
    if not since or not criteria.sql.require_hand_raise:
        return ""
    kind = min(since, key=since.get)
    left = criteria.hand_raise_days - since[kind]
    if not 0 < left <= LAPSE_WARNING_DAYS:
        return ""
    until = (as_of + pd.Timedelta(days=left)).floor("min")
    return (f" Only until {until:%Y-%m-%d %H:%M} UTC: the {ACTIVITY_WORDS[kind][0]} of "
            f"{as_of - pd.Timedelta(days=since[kind]):%Y-%m-%d} counts for SQL {criteria.hand_raise_days} days; "
            "after that the lead needs a new hand-raise.")  # fmt: skip


LAPSE_WARNING_DAYS = 7


def _path(
    model: LoadedModel, base: _Scenarios, lead: pd.DataFrame, now: pd.Series, day_first: bool | None
) -> PathToSql:
    """`path_to_sql` of a lead not yet SQL nor disqualified, as of the scoring moment."""
    scored = base.scored
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
    features = base.features
    bant = features["bant_confirmed"].iloc[0] if "bant_confirmed" in features else float("nan")
    short = sql.min_bant_confirmed - (0 if bant != bant else int(bant))
    open_fields = _open_bant(lead)
    answered = None
    # BANT answers come from a call, not from engagement. The fewest the rule needs first, then
    # more: each one confirmed also raises the score.
    for count in range(max(short, 1), len(open_fields) + 1):
        chosen = list(combinations(open_fields, count))
        answered = _with_answers(model, base, lead, chosen, day_first)
        found = _bant_path(answered, now, count, len(chosen), _unconfirmed(lead))
        if found is not None:
            return found
    best = (scored if answered is None else answered).sort_values("score", ascending=False).iloc[0]
    with_answers = "" if answered is None else " and every open BANT answer confirmed"
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


@dataclass(frozen=True)
class _Scenarios:
    """The lead with every set of steps: its features, criteria context and moments, and scores."""

    features: pd.DataFrame
    context: pd.DataFrame
    moments: pd.Series
    scored: pd.DataFrame  # with `steps` and `scenario` (the number of the set of steps) columns


def _score_steps(
    model: LoadedModel, lead: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp, day_first: bool | None
) -> _Scenarios:
    """The lead as is with every set of up to `MAX_STEPS` steps, scored in one call; the first
    scenario is the lead with no step."""
    lead_id = str(lead["lead_id"].iloc[0]).strip()
    step_sets: list[tuple[str, ...]] = [()]
    for size in range(1, MAX_STEPS + 1):
        step_sets += list(combinations(ACTIONS, size))
    ids = [f"{lead_id}#{k}" for k in range(len(step_sets))]
    # Built by position, not scenario by scenario: dozens of small frames cost more than the scoring.
    frame = lead.iloc[np.zeros(len(step_sets), dtype=int)].reset_index(drop=True)
    frame["lead_id"] = ids
    own = activities.iloc[np.tile(np.arange(len(activities)), len(step_sets))].reset_index(drop=True)
    own["lead_id"] = np.repeat(ids, len(activities))
    added = [(scenario_id, kind) for scenario_id, steps in zip(ids, step_sets, strict=True) for kind in steps]
    moment = (as_of - pd.Timedelta(hours=1)).isoformat()
    added_rows = pd.DataFrame(added, columns=["lead_id", "activity_type"]).assign(occurred_at=moment)
    acts = pd.concat([own, added_rows], ignore_index=True).fillna("")
    moments = pd.Series([as_of] * len(frame))
    features, context, positions, _ = prepare_crm_leads(model, frame, acts, moments, strict=False, day_first=day_first)
    features, context = features.reset_index(drop=True), context.reset_index(drop=True)
    moments = moments.iloc[positions].reset_index(drop=True)
    scored = score_features(model, features, context, moments, with_reasons=False)
    scored["steps"] = [step_sets[p] for p in positions]
    scored["scenario"] = positions
    return _Scenarios(features, context, moments, scored)


def _with_answers(
    model: LoadedModel, base: _Scenarios, lead: pd.DataFrame, chosen: list[tuple[str, ...]], day_first: bool | None
) -> pd.DataFrame:
    """`base`'s scenarios with each set of BANT answers confirmed, scored in one call, with an
    `answers` column. Only the BANT features differ from `base`'s, so they are built from the
    lead's row alone and put on `base`'s (a lead's whole history once per choice cost seconds)."""
    rows = pd.concat([lead.assign(**dict.fromkeys(fields, "confirmed")) for fields in chosen], ignore_index=True)
    rows["lead_id"] = [f"answers#{i}" for i in range(len(rows))]
    moments = pd.Series([base.moments.iloc[0]] * len(rows))
    own, _, _, _ = prepare_crm_leads(model, rows, pd.DataFrame(columns=["lead_id", "occurred_at", "activity_type"]),
                                     moments, strict=False, day_first=day_first)  # fmt: skip
    bant_columns = [c for c in (*BANT_FIELDS, "bant_confirmed") if c in base.features]
    features = pd.concat([base.features] * len(chosen), ignore_index=True)
    for column in bant_columns:
        features[column] = np.repeat(own[column].to_numpy(dtype=object), len(base.features))
    context = pd.concat([base.context] * len(chosen), ignore_index=True)
    moments = pd.concat([base.moments] * len(chosen), ignore_index=True)
    scored = score_features(model, features, context, moments, with_reasons=False)
    scored["answers"] = [fields for fields in chosen for _ in range(len(base.features))]
    scored["steps"] = list(base.scored["steps"]) * len(chosen)
    scored["scenario"] = list(base.scored["scenario"]) * len(chosen)
    return scored


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


def _bant_path(
    answered: pd.DataFrame, now: pd.Series, count: int, choices: int, open_fields: list[str]
) -> PathToSql | None:
    """The fewest steps that, with `count` more BANT answers confirmed (`choices` ways to pick
    them), make the lead SQL: whichever answers a call confirms if such steps exist, else with the
    answers named; None when no choice of answers and steps does."""
    answers = f"{count} more BANT answer{'s' if count > 1 else ''}"
    still_open = f"(not yet confirmed: {', '.join(open_fields)})"
    sql = answered["stage"].eq("SQL")
    every = sql.groupby(answered["scenario"]).transform("all")
    if every.any() and choices > 1:
        # The score the lead would reach at least, whichever answers get confirmed.
        lowest = answered[every].groupby("scenario")["score"].min()
        candidates = answered[every].drop_duplicates("scenario").assign(score=lambda t: t["scenario"].map(lowest))
        best = _fewest_steps(candidates).iloc[0]
        score = f"score {math.floor(best['score'])} or more"
        if not best["steps"]:
            text = f"Confirm {answers} on a call {still_open}: whichever they are, the lead is then SQL ({score})."
        else:
            text = (f"With {_words(best['steps'])}, plus {answers} confirmed on a call {still_open}, the lead "
                    f"would become SQL whichever they are ({score}; now {now['score']:.0f}, "
                    f"{now['stage']}).")  # fmt: skip
        return PathToSql(tuple(best["steps"]), float(best["score"]), text, bant_needed=count)
    if not sql.any():
        return None
    best = _fewest_steps(answered[sql]).iloc[0]
    named = " and ".join(best["answers"])
    steps = f"With {_words(best['steps'])}, plus" if best["steps"] else "With"
    other = "" if choices == 1 else "; other answers than these might not do"
    text = (f"{steps} {named} confirmed on a call {still_open}, the lead would score {best['score']:.0f} and "
            f"become SQL (now {now['score']:.0f}, {now['stage']}){other}.")  # fmt: skip
    return PathToSql(tuple(best["steps"]), float(best["score"]), text, bant_needed=count)


def _words(steps: tuple[str, ...]) -> str:
    names = [ACTIONS[s] for s in steps]
    if not names:
        return "no step"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
