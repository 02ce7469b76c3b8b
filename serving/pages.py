"""Pages for sales managers and reps: a lead page, the pipeline digest and the model page,
rendered on the server (Jinja2 with autoescaping: CRM text is shown as text, never as
markup) with inline SVG charts. Served under /ui by the scoring service, and written as
static files by `leadscore report`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import numpy as np
import pandas as pd
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import TypeAdapter, ValidationError

from features.clean import TRUE_TOKENS, future_moment, latest_moment, parse_timestamps, snake_case, utc_now
from features.criteria import STAGES, mql_conditions
from features.fit import split_tech_stack
from features.flat import field_problems
from features.params import Params, default_params_path, load_params
from features.reasons import describe, plain_name, value_name
from features.schema import ACTIVITY_TYPES, BANT_FIELDS
from serving.batch import model_schema, remove_abandoned, whole_file
from serving.charts import beeswarm, calibration, columns, horizontal_bars, waterfall, waterfall_rows
from serving.guards import (
    KEY_COOKIE,
    PAGE_SOURCES,
    api_keys_from_env,
    key_matches,
    page_token,
    plain_problem,
    repeated_names,
)
from serving.schemas import Lead, Moment, flat_fields, leads_to_flat, leads_to_frames, unread_parts, utc_naive
from serving.scoring import (
    InvalidLeads,
    LoadedModel,
    explain_frame,
    model_date_order,
    model_matrix,
    prepare_crm_leads,
    prepare_flat_rows,
    score_features,
)
from serving.snapshots import Snapshot, best_first, grade_changes, latest_two
from serving.whatif import path_to_sql

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
WATERFALL_STEPS = 10
OTHER_FACTORS_LISTED = 20
ACTIVITY_LEVEL = plain_name("engagement_decayed")  # as reasons start when they name it
DIGEST_ROWS = 200
CHANGES_SHOWN = 25  # of the leads that rose a grade, and of those that fell, the biggest moves


LIVE_LINKS = {"digest": "/ui/digest", "leads": "/ui/leads", "model": "/ui/model"}
STATIC_LINKS = {"digest": "index.html", "leads": "", "model": "model.html"}
# The header link of the page a template draws, marked as the current one.
CURRENT_LINK = {"digest.html": "digest", "pick.html": "leads", "model.html": "model"}


def render(template: str, *, static: bool = False, **context: Any) -> str:
    links = STATIC_LINKS if static else LIVE_LINKS
    # A sign-out link where there is a key to forget: the live pages with keys configured.
    signed_in = not static and bool(api_keys_from_env())
    return TEMPLATES.get_template(template).render(
        nav=True,
        links=links,
        static_page=static,
        signed_in=signed_in,
        current=CURRENT_LINK.get(template),
        static_policy=PAGE_SOURCES,
        **context,
    )


def write_report(
    model: LoadedModel, latest: Snapshot, previous: Snapshot | None, lead_ids: list[str], out: Path
) -> list[str]:
    """The pages as static files for a list of leads (index.html = the digest of those leads,
    one page per lead, model.html), to send by mail. Returns the ids not in the snapshot.

    Each page is written whole (beside itself, then renamed over), the lead pages before the
    digest that links them, and the lead pages of a report written there before are removed
    once the new digest is in place: a run stopped part way left a digest whose links led
    nowhere, and a second report kept the first's pages. Other files in the folder are left
    alone; ids none of which was scored write nothing."""
    found = set(latest.scores["lead_id"])
    if lead_ids and not any(i in found for i in lead_ids):  # a wrong file or model: the report before stays
        return list(lead_ids)
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(lead_ids)
    chosen = Snapshot(latest.path, latest.scores[latest.scores["lead_id"].isin(wanted)], latest.leads,
                      latest.activities, latest.meta)  # fmt: skip
    missing = [i for i in lead_ids if i not in set(chosen.scores["lead_id"])]
    written = {"index.html", "model.html"}
    _write_whole(out / "model.html", render("model.html", static=True, title="Model", m=model_view(model, latest)))
    for lead_id in chosen.scores["lead_id"]:
        rows, acts = latest.lead(lead_id)
        view = scored_lead_view(model, latest, rows, acts)
        name = lead_href(lead_id, static=True)
        _write_whole(out / name, render("lead.html", static=True, title=view["display_name"], lead=view))
        written.add(name)
    view = digest_view(model, chosen, previous, {}, static=True)
    _write_whole(out / "index.html", render("digest.html", static=True, **view))
    for page in out.glob("lead-*.html"):
        if page.name not in written:
            page.unlink(missing_ok=True)
    remove_abandoned(out, "lead-*.html", "index.html", "model.html")
    return missing


def _write_whole(path: Path, text: str) -> None:
    """A page written beside itself, then renamed over it: never half a page."""
    with whole_file(path, sweep=False) as partial:
        partial.write_text(text, encoding="utf-8")


def lead_href(lead_id: str, static: bool = False) -> str:
    if static:
        return f"lead-{_file_safe(lead_id)}.html"
    if _only_dots(lead_id):  # a browser takes `.` and `..` in a path as "here" and "up", encoded or not
        return f"/ui/leads?{urlencode({'lead': lead_id})}"
    return f"/ui/leads/{quote(lead_id, safe='')}"


def _only_dots(lead_id: str) -> bool:
    return set(lead_id) == {"."}


def _file_safe(lead_id: str) -> str:
    """The id as part of a file name: readable, and distinct for distinct ids once other
    characters are replaced (`A/1`, `A_1`) and where file names ignore case (macOS, Windows,
    where a mailed report is opened): a hash of the id follows."""
    readable = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in lead_id)[:60]
    return f"{readable}-{hashlib.sha256(lead_id.encode()).hexdigest()[:12]}"


def _display_name(row: pd.Series | dict) -> str:
    parts = [str(row.get(k) or "").strip() for k in ("first_name", "last_name")]
    name = " ".join(p for p in parts if p and p.lower() != "nan")
    company = str(row.get("company") or "").strip()
    company = "" if company.lower() == "nan" else company
    label = f"{name} ({company})" if name and company else name or company
    return label or str(row.get("lead_id"))


# -- the lead page ---------------------------------------------------------------------------


def lead_view(
    model: LoadedModel,
    lead: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    day_first: bool | None = None,
) -> dict:
    """Everything the lead page shows, from the lead's export row and activity rows (text
    cells), scored with the same code as the service and the batch command. `day_first`: the
    order its batch scoring read numeric dates in (a snapshot's), which one lead's rows alone
    may not say."""
    moments = pd.Series([as_of])
    day_first = model_date_order(model.scorer, day_first) if model.kind == "crm" else None
    if model.kind == "flat":
        features, context, _ = prepare_flat_rows(model, lead)
        problems = pd.DataFrame()
    else:
        # As batch scoring does: an unreadable activity row is left out (and said), not fatal.
        features, context, _, problems = prepare_crm_leads(
            model, lead, activities, moments, strict=False, day_first=day_first
        )
        if features.empty:
            raise InvalidLeads([f"{row.table}[{row.row}]: {row.reason}" for row in problems.itertuples()])
    scored = score_features(model, features, context, moments).iloc[0]
    contributions, base = explain_frame(model, features)
    margin = contributions.sum(axis=1)
    slope = float(model.scorer.calibrator.points_per_logit(margin, base)[0])
    points = contributions[0, :-1] * slope
    base_score = float(100 * model.scorer.calibrator.apply(np.array([base]))[0])
    order = np.argsort(-np.abs(points))
    columns = model.scorer.spec.columns
    values = features.reindex(columns=columns).iloc[0].tolist()
    names = model.tech_names
    # Each factor's points as the reasons send them (two places), so that the reasons' -0.85,
    # written "-0.8", is not "-0.9" in the chart beside them from its unrounded -0.853.
    sent = np.round(points, 2)
    steps = [(value_name(columns[j], values[j], names), float(sent[j])) for j in order[:WATERFALL_STEPS]]
    rest = float(points[order[WATERFALL_STEPS:]].sum())
    if len(order) > WATERFALL_STEPS:
        steps.append(("Other factors", rest))
    # What "other factors" sums, biggest first (it was at times the longest bar, and unexplained).
    others = [f"{value_name(columns[j], values[j], names)}: {sent[j]:+.1f}"
              for j in order[WATERFALL_STEPS:] if abs(sent[j]) >= 0.05]  # fmt: skip
    if len(others) > OTHER_FACTORS_LISTED:
        others = [*others[:OTHER_FACTORS_LISTED], "and smaller ones"]
    if model.kind == "flat":
        to_sql = "This model scores flat exports, which carry no activities to act on."
    else:
        to_sql = path_to_sql(model, lead, activities, as_of, day_first).message
    return {
        **_lead_basics(lead, activities, as_of, f"{model.name} v{model.version}", day_first, _placeholders(model)),
        **_scored_fields(scored),
        "to_sql": to_sql,
        "waterfall": waterfall(base_score, steps, float(100 * scored["probability"])),
        "waterfall_rows": waterfall_rows(base_score, steps, float(100 * scored["probability"])),
        "other_factors": others,
        "base_score": base_score,
        # Activity factors that share credit, and reasons that leave out one above the training
        # average (models that keep the averages): what the caption may say of this model.
        "activity_factors": model.kind == "crm",
        "weighs_activity": bool(model.scorer.metadata.get("activity_averages")),
        # A CRM model's label is "converted within the horizon"; a flat export's is its label column.
        "horizon_days": model.feature_params.horizon_days if model.kind == "crm" else None,
        "left_out": [f"{row.table} row {row.row}: {row.reason}" for row in problems.itertuples()],
        "activity_level": _activity_level_note(model, scored["reasons"]),
        "reads_activities": model.kind == "crm",  # a flat export's lead has no timeline to show
    }


def _activity_level_note(model: LoadedModel, reasons: list[dict]) -> str:
    """What "Recent activity level 12.9" counts, from the model's own settings: a number with
    no unit told a rep nothing."""
    if model.kind != "crm" or not any(r["feature"] == "engagement_decayed" for r in reasons):
        return ""
    settings = model.feature_params
    weights = sorted(settings.engagement_weights.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{plain_activity(kind).lower()} {weight:g}" for kind, weight in weights if weight)
    return (f"Recent activity level: each activity counts by its type ({shown}), and half as much every "
            f"{settings.decay_half_life_days:g} days after it.")  # fmt: skip


def kept_lead_view(snapshot: Snapshot, lead: pd.DataFrame, activities: pd.DataFrame) -> dict:
    """The lead page from the kept scoring alone, for when the service has no model loaded
    (the registry unreachable, say): score, stage and reasons as the batch run gave them. The
    waterfall and the way to SQL need the model and are left out, and the page says so."""
    basics = _lead_basics(lead, activities, snapshot.as_of, _kept_model(snapshot), snapshot.meta.get("day_first"))
    scored = _kept_fields(snapshot, basics["lead_id"])
    # A flat export's scoring keeps no activities: no timeline to show.
    reads = not snapshot.activities.empty or "created_at" in snapshot.leads
    return {**basics, **scored, "kept_only": True, "horizon_days": None, "left_out": [], "reads_activities": reads}


def scored_lead_view(model: LoadedModel, snapshot: Snapshot, lead: pd.DataFrame, activities: pd.DataFrame) -> dict:
    """`lead_view` of a lead of a kept scoring, as of its moment and with its order of dates. A
    champion promoted since (a recalibration, a rollback) scores the page while the digest
    shows the kept numbers: the page then says why the two differ."""
    view = lead_view(model, lead, activities, snapshot.as_of, snapshot.meta.get("day_first"))
    if str(snapshot.meta.get("model_version")) != str(model.version):
        kept = _kept_fields(snapshot, view["lead_id"])
        view["kept_differs"] = {"model": _kept_model(snapshot), "score": kept["score"], "grade": kept["grade"],
                               "stage": kept["stage"]}  # fmt: skip
    return view


def _kept_model(snapshot: Snapshot) -> str:
    return f"{snapshot.meta.get('model_name')} v{snapshot.meta.get('model_version')}"


def _kept_fields(snapshot: Snapshot, lead_id: str) -> dict:
    """A lead's score, grade, stage and reasons as the kept scoring gave them."""
    return _scored_fields(snapshot.scores[snapshot.scores["lead_id"].astype(str) == lead_id].iloc[0])


# What a rep reaches for before a call, from the CRM export's row, in this order.
PROFILE_FIELDS = (
    ("email", "E-mail"), ("phone", "Phone"), ("seniority", "Seniority"), ("department", "Department"),
    ("company", "Company"), ("industry", "Industry"), ("employees", "Employees"), ("annual_revenue", "Annual revenue"),
    ("country", "Country"), ("lead_source", "Source"), ("tech_stack", "Tech stack"), ("budget", "Budget"),
    ("authority", "Authority"), ("need", "Need"), ("timeline", "Timeline"),
)  # fmt: skip


def _placeholders(model: LoadedModel) -> tuple[str, ...]:
    """The values the model reads as blank, as its training export had them."""
    settings = model.scorer.spec.settings
    return tuple((settings.get("flat") or settings).get("missing_tokens") or ())


def _profile(row: dict, placeholders: Iterable[str] = ()) -> list[dict]:
    """The lead's contact details and profile as the export wrote them (blanks and placeholders
    left out, as scoring reads them: "Industry N/A" beside advice saying "industry blank"; the
    model's placeholders, else the params file's), the e-mail and phone as links a click dials or
    writes to, unless the lead opted out."""
    shown = []
    placeholders = {t.casefold() for t in placeholders or _params_of(default_params_path()).flat.missing_tokens}
    opted_out = str(row.get("do_not_contact") or "").strip().casefold() in TRUE_TOKENS
    for column, label in PROFILE_FIELDS:
        value = str(row.get(column) or "").strip()
        if value.casefold() in placeholders | {"", "nan", "none"}:
            continue
        if column in ("employees", "annual_revenue") and re.fullmatch(r"\d+(?:\.\d+)?", value):
            value = f"{float(value):,.0f}"  # 285128999 as 285,128,999; as written otherwise
        elif column == "tech_stack":
            value = ", ".join(split_tech_stack(pd.Series([value])).iloc[0])
        target = value if column == "email" else re.sub(r"[^0-9+]", "", value) if column == "phone" else ""
        href = {"email": "mailto:", "phone": "tel:"}[column] + quote(target, safe="@+") if target else None
        if target and opted_out:  # no one-click e-mail or call under "Do not contact"
            value, href = f"{value} (opted out: do not contact)", None
        shown.append({"label": label, "value": value, "href": href})
    return shown


def _crm_link(lead_id: str) -> str:
    """The lead's record in the CRM (`service.crm_lead_url`), or "" when none is set."""
    template = _params_of(default_params_path()).service.crm_lead_url
    return template.format(lead_id=quote(lead_id, safe="")) if template else ""


@functools.lru_cache(maxsize=4)
def _params_of(path: Path) -> Params:
    return load_params(path)


def _lead_basics(
    lead: pd.DataFrame,
    activities: pd.DataFrame,
    as_of: pd.Timestamp,
    model: str,
    day_first: bool | None,
    placeholders: Iterable[str] = (),
) -> dict:
    """Who the lead is and what it did: the parts of its page that need no model."""
    row = lead.iloc[0].to_dict()
    timeline, later = _timeline(activities, as_of, day_first)
    lead_id = str(row["lead_id"]).strip()
    return {
        "lead_id": lead_id,
        "display_name": _display_name(row),
        "profile": _profile(row, placeholders),
        "crm_url": _crm_link(lead_id),
        "owner": str(row.get("owner") or "").strip(),
        "as_of": as_of.strftime("%Y-%m-%d %H:%M"),
        "model": model,
        "age": scoring_age(as_of),
        "timeline": timeline,
        "later_activities": later,
    }


def _scored_fields(scored: pd.Series) -> dict:
    """A scored row (the service's or a kept batch scoring's) as the lead page shows it."""
    return {
        "probability": float(scored["probability"]),
        "score": float(scored["score"]),
        "grade": scored["grade"],
        "fit": float(scored["fit"]),
        "engagement": float(scored["engagement"]),
        "stage": scored["stage"],
        # The reason opens with its stage ("SQL: score 93 ≥ 25, ...") so that a CSV cell reads
        # alone; next to the stage on the page that would say it twice.
        "stage_reason": scored["stage_reason"].removeprefix(f"{scored['stage']}: "),
        "next_action": scored["next_action"],
        "reasons": list(scored["reasons"]),
    }


def _timeline(activities: pd.DataFrame, as_of: pd.Timestamp, day_first: bool | None) -> tuple[list[dict], int]:
    """The activities before the scoring moment, newest first, and how many are dated after it
    (not counted: the score is as of that moment); dates read as scoring reads them."""
    if activities.empty:
        return [], 0
    when = parse_timestamps(activities["occurred_at"], day_first)[0]
    kind = activities["activity_type"].astype(str)
    frame = pd.DataFrame({"when": when, "what": kind, "known": snake_case(kind).isin(ACTIVITY_TYPES)})
    later = int((frame["when"] >= as_of).sum())
    frame = frame[frame["when"] < as_of].sort_values("when", ascending=False)
    return [
        {"when": w.strftime("%Y-%m-%d %H:%M"), "what": plain_activity(t), "other": not known}
        for w, t, known in zip(frame["when"], frame["what"], frame["known"], strict=True)
    ], later


def plain_activity(kind: str) -> str:
    return kind.strip().replace("_", " ").capitalize()


# -- the digest ------------------------------------------------------------------------------


def digest_view(
    model: LoadedModel | None,
    latest: Snapshot | None,
    previous: Snapshot | None,
    filters: dict[str, str],
    *,
    static: bool = False,
    page: int = 1,
) -> dict:
    if latest is None:
        return {"snapshot": None, "title": "Pipeline digest", "served": _served_name}
    scores = latest.scores
    chosen = scores
    for column in ("owner", "stage", "grade"):
        if filters.get(column):
            # `?grade=a` is grade A, as the find box ignores case; the list shows the value as kept.
            kept = chosen[column].astype(str)
            values = scores[column].astype(str).unique()
            if filters[column] not in values:  # as kept first: owners "Ann" and "ANN" are two
                spelled = {value.casefold(): value for value in values}
                filters = {**filters, column: spelled.get(filters[column].strip().casefold(), filters[column])}
            chosen = chosen[kept == filters[column]]
    if filters.get("q", "").strip():
        chosen = chosen[_matches(chosen, filters["q"])]
    # Sorting by fit or engagement needs the ranks; a bookmark's unknown order is the score's.
    ranks = [c for c in DIGEST_SORTS if c != "score" and c in scores and scores[c].notna().any()]
    if filters.get("sort") not in ranks:
        filters = {**filters, "sort": ""}
    chosen = _ranked(chosen, filters["sort"] or "score")
    closed = chosen["_closed"]
    pages = max(1, -(-len(chosen) // DIGEST_ROWS))
    page = min(max(page, 1), pages)
    first = (page - 1) * DIGEST_ROWS
    rows = [
        {
            "rank": first + i + 1,
            "name": _display_name(r),
            "href": lead_href(str(r["lead_id"]), static),
            "score": float(r["score"]),
            "grade": r["grade"],
            "stage": r["stage"],
            "owner": str(r.get("owner") or ""),
            "fit": _rank_text(r.get("fit")),
            "engagement": _rank_text(r.get("engagement")),
            # A disqualified lead's first reason is its rule (an opt-out), not what scored it up; a
            # lead with nothing for it shows what holds it down most (its text carries the minus).
            "top_reason": r["stage_reason"]
            if r["stage"] == "disqualified" and r.get("stage_reason")
            else next((x["text"] for x in r["reasons"] if x["points"] > 0), None)
            or next((x["text"] for x in r["reasons"]), ""),
        }
        for i, r in enumerate(chosen.iloc[first : first + DIGEST_ROWS].to_dict(orient="records"))
    ]
    # What "Recent activity level 12.9" counts, said once under the table when a top reason shows it.
    shown_reasons = [x for r in chosen.iloc[first : first + DIGEST_ROWS]["reasons"] for x in r]
    activity_level = _activity_level_note(model, shown_reasons) if model else ""
    # The same filters on the grade changes, the biggest moves first, named as in the table.
    changes = grade_changes(latest, previous)
    changes = changes[changes["lead_id"].isin(set(chosen["lead_id"]))]
    changes = changes.assign(move=(changes["score"] - changes["score_before"]).abs()).sort_values(
        "move", ascending=False
    )
    details = {r["lead_id"]: r for r in chosen[chosen["lead_id"].isin(set(changes["lead_id"]))].to_dict("records")}
    changes["name"] = [_display_name(details[i]) for i in changes["lead_id"]]
    changes["owner"] = [str(details[i].get("owner") or "") for i in changes["lead_id"]]
    changes["href"] = changes["lead_id"].map(lambda i: lead_href(str(i), static))
    rose, fell = changes[changes["rose"].astype(bool)], changes[~changes["rose"].astype(bool)]
    evaluation = (model.scorer.metadata.get("evaluation") if model else None) or {}
    grades_tested = evaluation.get("by_grade", {})
    percents = whole_percents([v["share"] for v in grades_tested.values()])
    by_grade = [
        {"grade": g, "percent": p, "conversion": "—" if v["conversion"] is None else f"{v['conversion']:.1%}"}
        for (g, v), p in zip(grades_tested.items(), percents, strict=True)
    ]
    deciles = evaluation.get("lift_by_decile", [])
    base_rate = (model.scorer.metadata.get("test_metrics") or {}).get("base_rate") if model else None
    owners = sorted({str(o) for o in scores["owner"] if str(o) and str(o).lower() != "nan"})
    stages = [s for s in STAGES if s in set(scores["stage"])]
    grades = sorted(set(scores["grade"]))
    scored_by = _kept_model(latest)
    return {
        "title": _digest_title(filters, page, pages, len(chosen)),
        "snapshot": {
            "as_of": latest.as_of.strftime("%Y-%m-%d %H:%M"),
            "age": scoring_age(latest.as_of),
            "model": scored_by,
        },
        "total": len(scores),
        "matching": len(chosen),
        "rows": rows,
        "activity_level": activity_level if any(r["top_reason"].startswith(ACTIVITY_LEVEL) for r in rows) else "",
        "page": page,
        "pages": pages,
        "page_links": {} if static else _page_links(filters, page, pages),
        "filters": filters,
        "disqualified_last": bool(closed.any() and not closed.all()),
        # A filter value no lead has (a former owner in a bookmark) stays shown as chosen.
        "owners": owners + [v for v in [filters.get("owner")] if v and v not in owners],
        "has_owners": bool(owners),  # a flat export without an owner column: no empty column, no filter
        "has_ranks": bool(ranks),
        "sorts": [(key, DIGEST_SORTS[key]) for key in ("score", *ranks)],
        "order_words": DIGEST_SORTS[filters["sort"] or "score"],
        "stages": stages + [v for v in [filters.get("stage")] if v and v not in stages],
        "grades": grades + [v for v in [filters.get("grade")] if v and v not in grades],
        "model_loaded": model is not None,
        "by_grade": by_grade,
        "decile_chart": _decile_chart(deciles, "rate", "conversion rate", base_rate, "{:.1%}"),
        "test_window": " to ".join(map(str, (model.scorer.metadata.get("test_window") or []))) if model else "",
        # The grade table is the live model's; the leads may have been graded by another version.
        "grades_model": f"{model.name} v{model.version}" if model else "",
        "grades_model_differs": model is not None and f"{model.name} v{model.version}" != scored_by,
        "previous": previous.as_of.strftime("%Y-%m-%d %H:%M") if previous else None,
        # Two scorings as of the same moment (the same export scored again) told apart by their run.
        "previous_run": _run_time(previous) if previous and previous.as_of == latest.as_of else None,
        # Grades moved by a change of model (its own bands and scores) are not the leads' moves.
        "previous_model": _kept_model(previous) if previous and _kept_model(previous) != scored_by else None,
        # ... unless the change was `criteria --apply`: the model before under new rules, so the
        # scores did not move with it (the grades and stages did).
        "previous_rules_only": previous is not None and _holds_model_of(model, scored_by, previous),
        # The scoring before, graded again under rules put on the same model (`leadscore criteria`).
        "rules_rescore": bool(latest.meta.get("rescored_for_rules_of")),
        "rose_count": len(rose),
        "fell_count": len(fell),
        "rose": rose.head(CHANGES_SHOWN).to_dict(orient="records"),
        "fell": fell.head(CHANGES_SHOWN).to_dict(orient="records"),
        "changes_shown": CHANGES_SHOWN,
    }


def _holds_model_of(model: LoadedModel | None, scored_by: str, previous: Snapshot) -> bool:
    """Whether the scoring's model (the champion) is the model of `previous`'s version under
    the rules `leadscore criteria --apply` put on it."""
    if model is None or scored_by != f"{model.name} v{model.version}":
        return False
    rules_from = (model.scorer.metadata.get("rules") or {}).get("from_version")
    return rules_from is not None and _kept_model(previous) == f"{model.name} v{rules_from}"


def _digest_title(filters: dict[str, str], page: int, pages: int, matching: int) -> str:
    """The digest's title says which leads it shows: a tab, a bookmark and a screen reader's first
    words tell one filtered page from another."""
    chosen = [f"{name} {filters[name]}" for name in ("owner", "stage", "grade") if filters.get(name)]
    chosen += [f'"{filters["q"]}"'] if filters.get("q") else []
    chosen += [DIGEST_SORTS[filters["sort"]]] if filters.get("sort") in DIGEST_SORTS else []
    title = "Pipeline digest" + (f": {', '.join(chosen)}" if chosen else "")
    if matching == 0:
        return f"{title}: no lead matches"
    return f"{title}, page {page} of {pages}" if pages > 1 else title


# How the digest can order its leads, as its sort menu and its line above the table say it.
DIGEST_SORTS = {"score": "best first", "fit": "best fit first", "engagement": "most engaged first"}


def _ranked(scores: pd.DataFrame, by: str = "score") -> pd.DataFrame:
    """Best first (or best fit, or most engaged: a manager looks for good fits gone quiet and for
    who is active now), except leads a rep may not work (opted out, a competitor, off profile):
    last, whatever they score. Ties by score, then id."""
    closed = scores["stage"].astype(str).eq("disqualified")
    ranked = best_first(scores.assign(_closed=closed), "_closed")
    if by == "score":
        return ranked
    # Stable, so leads of one rank stay best first; a lead without the rank goes after those with it.
    return ranked.sort_values(["_closed", by], ascending=[True, False], kind="stable", na_position="last")


def _rank_text(value: Any) -> str:
    """A fit or engagement rank (0-100) as the digest shows it; a dash when it has none."""
    number = pd.to_numeric(value, errors="coerce")
    return "—" if pd.isna(number) else f"{number:.0f}"


def _matches(scores: pd.DataFrame, text: str, *, with_id: bool = True) -> pd.Series:
    """Rows whose id, name or company holds the text, in any case (a rep looking a lead up)."""
    haystack = scores["lead_id"].astype(str) if with_id else pd.Series("", index=scores.index)
    for column in ("first_name", "last_name", "company"):
        if column in scores:
            haystack = haystack + " " + scores[column].fillna("").astype(str).str.strip()
    return _unaccented(haystack).str.contains(_unaccented(pd.Series([text.strip()]))[0], regex=False)


def _run_time(snapshot: Snapshot) -> str:
    """When a kept scoring was run (its folder's stamp), as a rep reads it."""
    written = pd.to_datetime(snapshot.meta.get("written_at"), format="%Y%m%dT%H%M%S%fZ", errors="coerce")
    return written.strftime("%Y-%m-%d %H:%M UTC") if pd.notna(written) else "earlier"


def _unaccented(texts: pd.Series) -> pd.Series:
    """Case and accents aside ("Muller" finds "Müller"): a rep types names as they say them."""
    decomposed = texts.str.casefold().str.normalize("NFKD")
    return decomposed.str.replace(r"[\u0300-\u036f]", "", regex=True)


def whole_percents(shares: list[float]) -> list[int]:
    """Shares as whole percents that add up to 100 (largest remainders round up), so a table of
    grades never reads 101%."""
    total = sum(shares)
    if not shares or total <= 0:
        return [round(100 * s) for s in shares]
    exact = [100 * s / total for s in shares]
    percents = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - percents[i], reverse=True)
    for i in by_remainder[: 100 - sum(percents)]:
        percents[i] += 1
    return percents


def _page_links(filters: dict[str, str], page: int, pages: int) -> dict[str, str]:
    """Links to the previous and next page of the digest, with its filters and order; clearing
    the filters keeps the order."""
    chosen = {k: v for k, v in filters.items() if v}
    order = {"sort": chosen["sort"]} if chosen.get("sort") else {}

    def href(number: int) -> str:
        return "/ui/digest?" + urlencode({**chosen, "page": number})

    return {
        **({"previous": href(page - 1)} if page > 1 else {}),
        **({"next": href(page + 1)} if page < pages else {}),
        **({"all": "/ui/digest" + (f"?{urlencode(order)}" if order else "")} if chosen.keys() - {"sort"} else {}),
    }


def scoring_age(as_of: pd.Timestamp, now: pd.Timestamp | None = None) -> str:
    """How old a scoring is, when that matters to a reader ("43 days"), else empty: reasons say
    "in the last 24 hours" and "2 days ago" as of the scoring, not as of reading."""
    now = now if now is not None else utc_now()
    days = (now - as_of).days
    if days < 1:
        return ""
    return f"{days} day{'s' if days > 1 else ''}"


# -- the model page --------------------------------------------------------------------------


SUMMARY_LEADS = 400
SUMMARY_FACTORS = 10


def shap_summary(model: LoadedModel, snapshot: Snapshot | None) -> tuple[str, list[str], int]:
    """Beeswarm of the champion's SHAP values (score points) on leads of the latest scoring, what
    its colours say in words, one sentence per factor (a reader who cannot tell blue from red, or
    hears the page, gets the direction too), and how many leads it shows."""
    if snapshot is None or model.kind != "crm" or snapshot.leads.empty:
        return "", [], 0
    leads = snapshot.leads.sample(min(SUMMARY_LEADS, len(snapshot.leads)), random_state=0).reset_index(drop=True)
    ids = set(leads["lead_id"].str.strip())
    acts = snapshot.activities[snapshot.activities["lead_id"].str.strip().isin(ids)]
    moments = pd.Series([snapshot.as_of] * len(leads))
    features, _, _, _ = prepare_crm_leads(
        model, leads, acts, moments, strict=False, day_first=snapshot.meta.get("day_first")
    )
    if features.empty:
        return "", [], 0
    contributions, base = explain_frame(model, features)
    points = contributions[:, :-1] * model.scorer.calibrator.points_per_logit(contributions.sum(axis=1), base)[:, None]
    matrix = model_matrix(model, features)
    top = np.argsort(-np.abs(points).mean(axis=0))[:SUMMARY_FACTORS]
    colours, words = [], []
    for j in top:
        column, name = matrix[:, j], model.scorer.spec.columns[j]
        if name in model.scorer.spec.missing_as:  # "never" is grey, as missing, not the scale's top
            column = np.where(column == model.scorer.spec.missing_as[name], np.nan, column)
        finite = column[np.isfinite(column)]
        low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
        is_category = name in model.scorer.spec.categories
        colours.append(np.full(len(column), np.nan) if is_category else (column - low) / ((high - low) or 1))
        effect = (
            _category_effect(_level_words(name, features[name]), points[:, j]) if is_category and name in features
            else _numeric_effect(column, points[:, j], name, model.tech_names)
        )  # fmt: skip
        words.append(f"{plain_name(name, model.tech_names)}: {effect}")
    names = [plain_name(model.scorer.spec.columns[j], model.tech_names) for j in top]
    return beeswarm(names, [points[:, j] for j in top], colours), words, len(features)


# The cases of `criteria.next_actions` as a manager reads them (the stages are their own names).
ACTION_CASES = {"disqualified": "Disqualified, off profile", "do_not_contact": "Disqualified, opted out",
                "competitor": "Disqualified, a competitor"}  # fmt: skip

# A factor's values and its effects move together (or against each other) at least this much,
# by rank correlation, before the page says "higher values raise the score".
DIRECTION_MIN_CORRELATION = 0.3
MIN_LEADS_PER_LEVEL = 5


def _numeric_effect(values: np.ndarray, effects: np.ndarray, name: str, names: Mapping[str, str]) -> str:
    known = np.isfinite(values)
    if set(np.unique(values[known])) == {0.0, 1.0}:  # a yes/no factor: its two values in words
        said = [describe(name, v, names) if np.isfinite(v) else None for v in values]
        return _category_effect(pd.Series(said), effects)
    if known.sum() < 2 * MIN_LEADS_PER_LEVEL or np.ptp(values[known]) == 0:
        return "too few different values among these leads to tell a direction"
    rho = pd.Series(values[known]).corr(pd.Series(effects[known]), method="spearman")
    spread = f"from {effects.min():+.1f} to {effects.max():+.1f} points"
    if rho >= DIRECTION_MIN_CORRELATION:
        return f"higher values raise the score ({spread})"
    if rho <= -DIRECTION_MIN_CORRELATION:
        return f"higher values lower the score ({spread})"
    return f"no single direction: its effect depends on the lead's other factors ({spread})"


def _level_words(name: str, values: pd.Series) -> pd.Series:
    """A BANT answer as the lead reasons say it ("not there", not "not"); other levels as written."""
    if name not in BANT_FIELDS:
        return values
    prefix = f"{plain_name(name)} "
    return values.map(lambda v: describe(name, v).removeprefix(prefix) if isinstance(v, str) else v)


def _category_effect(values: pd.Series, effects: np.ndarray) -> str:
    shown = values.astype("string").fillna("(blank)").to_numpy()
    means = pd.Series(effects).groupby(shown).agg(["mean", "size"])
    means = means[means["size"] >= MIN_LEADS_PER_LEVEL].sort_values("mean")
    if len(means) < 2:
        return "too few leads per value among these leads to compare them"
    best, worst = means.index[-1], means.index[0]
    if len(means) == 2:
        return f"{best} {means.loc[best, 'mean']:+.1f} points on average, {worst} {means.loc[worst, 'mean']:+.1f}"
    return (
        f"{best} raises it most ({means.loc[best, 'mean']:+.1f} points on average), "
        f"{worst} lowers it most ({means.loc[worst, 'mean']:+.1f})"
    )


def _training_window(meta: dict[str, Any]) -> str:
    """The training window as the model page says it: a final model refit on the training and
    validation periods together says so (its window then holds the one it was calibrated on)."""
    trained, validation = meta.get("training_window"), meta.get("validation_window")
    if not trained:
        return ""
    shown = " to ".join(map(str, trained))
    if validation and str(trained[1]) >= str(validation[0]):
        shown += " (the validation period included)"
    return shown


def model_view(model: LoadedModel, snapshot: Snapshot | None = None) -> dict:
    meta = model.scorer.metadata
    evaluation = meta.get("evaluation") or {}
    metrics = meta.get("test_metrics") or {}
    shown = [
        ("roc_auc", "ranking quality (ROC AUC)", "{:.3f}"),
        ("ece", "calibration error (ECE)", "{:.3f}"),
        ("lift_top_decile", "lift of the top 10%", "{:.1f}x"),
        ("base_rate", "conversion rate", "{:.1%}"),
    ]
    # In score points as the reasons count them; models trained before that have log-odds only.
    in_points = "importance_points" in evaluation
    importance = evaluation.get("importance_points" if in_points else "importance", {})
    importance = sorted(importance.items(), key=lambda kv: -kv[1])[:15]
    summary_chart, summary_words, summary_leads = shap_summary(model, snapshot)
    curve = evaluation.get("calibration", [])
    return {
        "title": "Model",
        "name": model.name,
        "version": model.version,
        "alias": model.alias,
        "trained_at": str(meta.get("trained_at", ""))[:16].replace("T", " "),
        "training_window": _training_window(meta),
        "validation_window": " to ".join(map(str, meta.get("validation_window") or [])),
        "test_window": " to ".join(map(str, meta.get("test_window") or [])),
        "split": str(meta.get("split") or ""),  # a flat CSV without a time column: no windows
        "flat": model.kind == "flat",  # one row per lead: no horizon, no CRM attributes
        "tested_on": "test period" if meta.get("test_window") else "test rows",
        "importance_in_points": in_points,
        # The same bars as a list a phone shows whole (the chart's labels filled its width).
        "importance_rows": [
            {
                "label": plain_name(k, model.tech_names),
                "value": f"{v:.{1 if in_points else 2}f}",
                "width": round(100 * v / importance[0][1], 1) if importance[0][1] > 0 else 0.0,
            }
            for k, v in importance
        ],
        "metrics": [{"label": label, "value": fmt.format(metrics[k])} for k, label, fmt in shown if k in metrics],
        "importance_chart": (
            horizontal_bars(
                [plain_name(k, model.tech_names) for k, _ in importance],
                [v for _, v in importance],
                "mean absolute effect (score points)" if in_points else "mean absolute effect (log-odds)",
            )
            if importance
            else "<p class='muted'>Not recorded for this model version; retrain to get it.</p>"
        ),
        "calibration_chart": (
            calibration([c["predicted"] for c in curve], [c["observed"] for c in curve]) if curve else ""
        ),
        "lift_chart": _decile_chart(evaluation.get("lift_by_decile", []), "lift", "lift", 1.0, "{:.1f}x"),
        "summary_chart": summary_chart,
        "summary_leads": summary_leads,  # the sample's leads the model could read
        "summary_sampled": snapshot is not None and len(snapshot.leads) > SUMMARY_LEADS,
        "summary_words": summary_words,
        "criteria": _criteria_rows(model),
        "grade_bands": list((meta.get("grade_bands") or {}).items()),
        # Set by `leadscore criteria --apply`: the model of an earlier version under other rules.
        "rules_from": (meta.get("rules") or {}).get("from_version"),
        "rules_applied_at": str((meta.get("rules") or {}).get("applied_at", ""))[:16].replace("T", " "),
    }


def _decile_chart(deciles: list[dict], key: str, label: str, reference: float | None, shown: str) -> str:
    if not deciles:
        return ""
    numbers = [str(d["decile"]) for d in deciles]
    spoken = [f"decile {n}" for n in numbers]
    return columns(numbers, [d[key] for d in deciles], label, reference, spoken=spoken, shown=shown)


def _criteria_rows(model: LoadedModel) -> list[tuple[str, str]]:
    criteria = model.criteria
    mql, sql, out = criteria.mql, criteria.sql, criteria.disqualify
    hand_raise = (
        f", a hand-raise ({', '.join(plain_activity(t).lower() for t in criteria.hand_raise_types)}) within "
        f"{criteria.hand_raise_days} days"
        if sql.require_hand_raise
        else ""
    )
    raised = ", ".join(plain_activity(t).lower() for t in criteria.hand_raise_types)
    by_hand = (
        f"; or a hand-raise ({raised}) within {criteria.hand_raise_days} days at score ≥ {mql.min_score:g}"
        if mql.hand_raise_qualifies
        else ""
    )
    # Fit and engagement are ranks among the training leads, not scores: said so on the page.
    ranked = {"fit": "fit rank", "engagement": "engagement rank"}
    conditions = ", ".join(f"{ranked.get(name, name)} ≥ {needed:g}" for name, _, needed in mql_conditions(mql, 0, 0, 0))
    mql_row = ("MQL", conditions + by_hand)
    sql_row = ("SQL", f"score ≥ {sql.min_score:g}{hand_raise}, {sql.min_bant_confirmed} of 4 BANT confirmed")
    if not sql.require_hand_raise and sql.min_bant_confirmed <= 0:
        sql_row = ("SQL", f"score ≥ {sql.min_score:g}")  # by score alone
    # As a rep reads them: the disqualified action with its date's place named ({{ is a brace).
    shown = {**criteria.next_actions, "disqualified": _filled(criteria.next_actions["disqualified"])}
    actions = ("Next actions", "; ".join(f"{ACTION_CASES.get(case, case)}: {text}" for case, text in shown.items()))
    if model.kind == "flat":
        # One row per lead: no activities, BANT answers or e-mail rules for SQL and disqualified.
        stages = model.stages
        unreached = ", ".join(s for s in ("SQL", "disqualified") if s not in stages)
        unreached = unreached[:1].upper() + unreached[1:]
        return [
            *([mql_row] if "MQL" in stages else []),
            *([sql_row] if "SQL" in stages else []),
            *([(unreached, FLAT_UNREACHED)] if unreached
              else []),
            ("Next actions", "; ".join(f"{stage}: {criteria.next_actions[stage]}" for stage in reversed(stages))),
        ]  # fmt: skip
    competitors = ", ".join(out.competitor_domains) or "none listed"
    return [
        mql_row,
        sql_row,
        (
            "Disqualified",
            f"do not contact, a competitor's e-mail domain ({competitors}), or under {out.min_icp_match:.0%} "
            f"ICP match; recycled after {out.recycle_after_days} days",
        ),
        ("Ideal customer profile", _icp_text(model)),
        actions,
    ]


def _filled(text: str) -> str:
    try:
        return text.format(recycle_on="[recycle date]")
    except (ValueError, KeyError, IndexError, AttributeError):  # a model registered before the check
        return text


def _icp_text(model: LoadedModel) -> str:
    """The profile the model's ICP match was computed against (its own, stored with it), and
    how a lead's share is counted."""
    icp = model.feature_params.icp
    return (
        f"industry {', '.join(icp.industries)}; {icp.min_employees:,.0f}-{icp.max_employees:,.0f} employees; "
        f"seniority {', '.join(icp.seniorities)}; department {', '.join(icp.departments)}; "
        f"country {', '.join(icp.countries)}. A lead's match is the share of these five it meets; a blank field "
        "is not met"
    )


# -- the app mounted on the service ----------------------------------------------------------

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
_current_model: Callable[[], LoadedModel | None] = lambda: None  # noqa: E731
_served_name: str | None = None  # the registered model the service serves; its scorings are shown
_still_champion: Callable[[], bool] = lambda: True  # noqa: E731


def bind(
    current_model: Callable[[], LoadedModel | None],
    model_name: str | None = None,
    still_champion: Callable[[], bool] = lambda: True,
) -> None:
    """Tell the pages where the service keeps its live model, its registered name, and whether
    the live version is still the one its alias names (as `GET /model` says)."""
    global _current_model, _served_name, _still_champion
    _current_model, _served_name, _still_champion = current_model, model_name, still_champion


def _kept_scorings() -> tuple[Snapshot | None, Snapshot | None]:
    """The latest two kept scorings of the served model (a flat CSV model's are another table's)."""
    return latest_two(model_name=_served_name)


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(template, **context), status_code=status)


def _model_or_page() -> LoadedModel | HTMLResponse:
    model = _current_model()
    if model is None:
        return _page("pick.html", 503, title="No model loaded", heading="No model loaded yet", not_ready=True,
                     error="The service has no model to score or explain leads with yet. It loads the champion as "
                     "soon as one is registered (leadscore train registers one). The pipeline digest still lists "
                     "the latest kept scoring.")  # fmt: skip
    return model


def _pick_page(status: int = 200, **context: Any) -> HTMLResponse:
    """The page to open or paste a lead, with the 500 first leads of the digest's order to pick
    from (by id, named). `error_for`: the form ("pick", "paste") an error is about."""
    latest, _ = _kept_scorings()
    first = _ranked(latest.scores).head(500).to_dict(orient="records") if latest else []
    choices = [(str(r["lead_id"]), _display_name(r)) for r in first]
    model = _current_model()
    flat = model is not None and model.kind == "flat"  # a paste is its row's fields, not CRM attributes
    return _page("pick.html", status, lead_choices=choices, flat_model=flat, **{"title": "Open a lead", **context})


def _paste_refused(text: str, error: str) -> HTMLResponse:
    return _pick_page(400, title="Pasted lead not read", pasted=text, error=error, error_for="paste")


@app.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/digest", status_code=303)


@app.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(next: str = "/ui/digest", signed_out: str = ""):
    if not api_keys_from_env():  # no keys, no sign-in: the pages are open
        return RedirectResponse(_local(next), status_code=303)
    title = "Signed out · Sign in" if signed_out else "Sign in"
    page = TEMPLATES.get_template("login.html").render(
        title=title, next=_local(next), nav=False, signed_out=bool(signed_out)
    )
    return HTMLResponse(page)


@app.post("/login", include_in_schema=False)
def login(request: Request, key: str = Form(...), next: str = Form("/ui/digest")):
    keys = api_keys_from_env()
    if keys and not key_matches(key.encode(), keys):
        page = TEMPLATES.get_template("login.html").render(
            title="Sign in: that key is not valid", next=_local(next), error="That key is not valid.", nav=False
        )
        return HTMLResponse(page, status_code=401)
    response = RedirectResponse(_local(next), status_code=303)
    # Secure behind TLS (a proxy says so in X-Forwarded-Proto): the browser then never sends it
    # over plain HTTP. A service on plain HTTP (loopback) could not set it at all.
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()  # the client's hop
    secure = request.url.scheme == "https" or forwarded == "https"
    response.set_cookie(
        KEY_COOKIE,
        page_token(key.encode()).decode(),
        httponly=True,
        samesite="strict",
        path="/ui",
        secure=secure,
    )
    return response


@app.get("/logout", include_in_schema=False)
def logout() -> RedirectResponse:
    """Forget the token this browser keeps (it ends with the browser session, and the service
    refuses it after `PAGE_TOKEN_SECONDS` in any case)."""
    response = RedirectResponse("/ui/login?signed_out=1", status_code=303)
    response.delete_cookie(KEY_COOKIE, path="/ui", httponly=True, samesite="strict")
    return response


# A flat model's rules read its score alone: an opt-out column of its export (`Do Not Call`) only
# moves the score, and a rep must not read "first call" as leave to call.
FLAT_UNREACHED = (
    "not reached: this model reads no hand-raises, BANT answers or opt-outs; an opt-out column of the export "
    "(such as Do Not Call) only moves the score, so check it before contacting a lead"
)


def _local(target: str) -> str:
    """Only redirect within the pages (no open redirect to another site), and not back to the
    sign-out (a "Sign out" link opened without a cookie asks for a key, then signed out again)."""
    within = target.startswith("/ui/") and not target.startswith("//")
    return target if within and target.split("?", 1)[0].rstrip("/") != "/ui/logout" else "/ui/digest"


@app.get("/digest", response_class=HTMLResponse, include_in_schema=False)
def digest(
    owner: str = "", stage: str = "", grade: str = "", q: str = "", sort: str = "", page: str = "1"
) -> HTMLResponse:
    latest, previous = _kept_scorings()
    filters = {"owner": owner, "stage": stage, "grade": grade, "q": q.strip(), "sort": sort.strip().casefold()}
    # A mangled link ("²") shows the first page; a number past the last (even of 5,000 digits) the last.
    digits = page.strip().lstrip("0") or "0"
    number = (int(digits) if len(digits) <= 9 else 10**9) if re.fullmatch(r"[0-9]+", digits) else 1
    view = digest_view(_current_model(), latest, previous, filters, page=number)
    return _page("digest.html", **view)


@app.get("/model", response_class=HTMLResponse, include_in_schema=False)
def model_page():
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        return model
    latest, _ = _kept_scorings()
    view = model_view(model, latest)
    if not _still_champion():  # @champion moved to a version that cannot be loaded, or was removed
        view["alias"] = None
    return _page("model.html", title="Model", m=view)


@app.get("/leads", response_class=HTMLResponse, include_in_schema=False)
def pick(lead: str = "") -> HTMLResponse:
    if _only_dots(lead.strip()):
        return lead_page(lead)
    if lead.strip():  # the form's answer, with or without script in the browser
        return RedirectResponse(_typed_lead(lead.strip()), status_code=303)
    return _pick_page()


def _typed_lead(typed: str) -> str:
    """Where the lead box leads: the lead of that id; else, for a name (not an id: a CRM's link
    to a lead scored next time must not open another), its lead when one name or company holds
    it, the digest's find box when several do; else the id's page, which says it is not there."""
    latest, _ = _kept_scorings()
    if latest is None or latest.lead(typed) is not None:
        return lead_href(typed)
    scores = latest.scores
    # As the digest writes a lead ("Wei Patel (Vandelay 4856)"), then any part of a name or company.
    shown = scores.apply(_display_name, axis=1).str.casefold() == typed.casefold()
    named = scores.loc[shown if shown.any() else _matches(scores, typed, with_id=False), "lead_id"]
    if len(named) == 1:
        return lead_href(str(named.iloc[0]))
    return "/ui/digest?" + urlencode({"q": typed}) if len(named) > 1 else lead_href(typed)


@app.get("/leads/{lead_id:path}", response_class=HTMLResponse, include_in_schema=False)
def lead_page(lead_id: str):
    if not lead_id.strip():  # /ui/leads/ : the page to open one
        return _pick_page()
    latest, _ = _kept_scorings()
    found = latest.lead(lead_id.strip()) if latest else None
    if found is None and latest is not None:
        # An id typed in another case (l0119829 for L0119829) is that lead when only one matches.
        ids = latest.scores["lead_id"].astype(str)
        same = ids[ids.str.casefold() == lead_id.strip().casefold()]
        if len(same) == 1:
            return RedirectResponse(lead_href(same.iloc[0]), status_code=303)
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        if found is None:
            return model
        view = kept_lead_view(latest, *found)
        return _page("lead.html", title=view["display_name"], lead=view)
    if found is None:
        error = f"Lead {lead_id!r} is not in the latest kept scoring."
        # A name or part of one typed as an id: the digest's find box looks for it.
        find = "/ui/digest?" + urlencode({"q": lead_id.strip()})
        return _pick_page(404, title="Lead not found", heading="Lead not found", error=error, error_for="pick",
                          typed=lead_id.strip(), find_href=find)  # fmt: skip
    rows, acts = found
    view = scored_lead_view(model, latest, rows, acts)
    return _page("lead.html", title=view["display_name"], lead=view)


@app.post("/leads", response_class=HTMLResponse, include_in_schema=False)
async def pasted_lead(request: Request):
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        return model
    form = await request.form()
    text = str(form.get("lead", ""))
    repeated = repeated_names(text.encode())
    if repeated:
        return _paste_refused(text, "; ".join(f"{'.'.join(map(str, where))}: {why}" for where, why in repeated[:5]))
    try:
        data, as_of = _pasted(json.loads(text))
        lead = Lead.model_validate(data)
        rows, acts = _pasted_rows(model, lead)
        view = lead_view(model, rows.astype(object).where(rows.notna(), "").astype(str),
                         acts.astype(object).where(acts.notna(), "").astype(str), as_of)  # fmt: skip
    except json.JSONDecodeError as exc:
        return _paste_refused(text, f"Not JSON: {exc}")
    except RecursionError:  # json.loads gives up on deep nesting this way, not as a decode error
        return _paste_refused(text[:2000], "Not a lead: JSON nested too deeply")
    except ValidationError as exc:
        said = [plain_problem(e) for e in exc.errors()[:5]]
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'the lead'}: {e['msg']}" for e in said)
        return _paste_refused(text, problems)
    except InvalidLeads as exc:
        return _paste_refused(text, str(exc))
    return _page("lead.html", title=view["display_name"], lead={**view, "pasted": True})


_MOMENT = TypeAdapter(Moment)


def _pasted_rows(model: LoadedModel, lead: Lead) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The lead's export row and activity rows, refused as `POST /score` refuses them: parts
    its model would not read, and a flat model's `fields` it cannot match."""
    problems = [f"{part}: {why}" for _, part, why in unread_parts(model.kind, [lead])]
    if model.kind == "flat":
        problems += [
            f"fields{'.' + key if key else ''}: {why}"
            for _, key, why in field_problems(model_schema(model), [flat_fields(lead)])
        ]
    elif lead.created_at is None:
        problems.append("created_at: required by this model")
    if problems:
        raise InvalidLeads(problems[:5])
    if model.kind == "flat":
        return leads_to_flat([lead]), pd.DataFrame(columns=["lead_id", "occurred_at", "activity_type", "value"])
    return leads_to_frames([lead])


def _pasted(data: Any) -> tuple[Any, pd.Timestamp]:
    """The lead and the scoring moment in pasted JSON: a lead, a list of one lead, or a
    `POST /score` or `/explain` body with one lead (its `as_of`, else now)."""
    as_of = None
    if isinstance(data, dict) and "lead_id" not in data and ("leads" in data or "lead" in data):
        key = "leads" if "leads" in data else "lead"
        unknown = sorted(set(data) - {key, "as_of"})
        if unknown:  # as POST /score refuses them: a misspelt `asof` would silently score as of now
            named = ", ".join(map(repr, unknown))
            raise InvalidLeads([f"{named}: not a field of a {key!r} body (it takes {key} and as_of)"])
        as_of = data.get("as_of")
        data = data["leads"] if key == "leads" else [data["lead"]]
    if isinstance(data, list):
        if len(data) != 1:
            raise InvalidLeads([f"Paste one lead: this holds {len(data)}"])
        data = data[0]
    if as_of is None:
        return data, utc_now()
    try:
        moment = utc_naive(_MOMENT.validate_python(as_of))
    except ValidationError as exc:
        raise InvalidLeads([f"as_of: {exc.errors()[0]['msg']}"]) from None
    if moment > latest_moment():  # as POST /score refuses it
        raise InvalidLeads([future_moment(f"as_of {moment.isoformat()}")])
    return data, moment


# Last: BentoML hands the pages only the paths one of their routes matches, so a mistyped
# address under /ui got the API's JSON 404; this route takes every other GET there (a POST to a
# page's address keeps its 405 naming the method to use).
@app.get("/{rest:path}", include_in_schema=False)
def no_such_page(rest: str):
    """A page with the navigation, saying the address has none; a page's address with a
    trailing slash (`/ui/digest/`) is that page."""
    if rest.endswith("/") and rest.rstrip("/") in ("digest", "model", "leads"):
        return RedirectResponse(f"/ui/{rest.rstrip('/')}", status_code=308)
    return _page("missing.html", 404, title="No such page", path=f"/ui/{rest}"[:200])
