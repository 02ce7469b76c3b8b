"""Pages for sales managers and reps: a lead page, the pipeline digest and the model page,
rendered on the server (Jinja2 with autoescaping: CRM text is shown as text, never as
markup) with inline SVG charts. Served under /ui by the scoring service, and written as
static files by `leadscore report`.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError

from features.criteria import STAGES
from features.reasons import plain_name
from serving.charts import beeswarm, calibration, columns, horizontal_bars, waterfall
from serving.guards import KEY_COOKIE, api_keys_from_env, key_matches
from serving.schemas import Lead, leads_to_frames
from serving.scoring import (
    InvalidLeads,
    LoadedModel,
    explain_frame,
    model_matrix,
    points_per_logit,
    prepare_crm_leads,
    prepare_flat_rows,
    score_features,
)
from serving.snapshots import Snapshot, grade_changes, latest_two
from serving.whatif import path_to_sql

TEMPLATES = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(["html"]),
)
WATERFALL_STEPS = 10
DIGEST_ROWS = 200


LIVE_LINKS = {"digest": "/ui/digest", "leads": "/ui/leads", "model": "/ui/model"}
STATIC_LINKS = {"digest": "index.html", "leads": "", "model": "model.html"}


def render(template: str, *, static: bool = False, **context: Any) -> str:
    links = STATIC_LINKS if static else LIVE_LINKS
    return TEMPLATES.get_template(template).render(nav=True, links=links, static_page=static, **context)


def write_report(
    model: LoadedModel, latest: Snapshot, previous: Snapshot | None, lead_ids: list[str], out: Path
) -> list[str]:
    """The pages as static files for a list of leads (index.html = the digest of those leads,
    one page per lead, model.html), to send by mail. Returns the ids not in the snapshot."""
    out.mkdir(parents=True, exist_ok=True)
    wanted = set(lead_ids)
    chosen = Snapshot(latest.path, latest.scores[latest.scores["lead_id"].isin(wanted)], latest.leads,
                      latest.activities, latest.meta)  # fmt: skip
    missing = [i for i in lead_ids if i not in set(chosen.scores["lead_id"])]
    view = digest_view(model, chosen, previous, {}, static=True)
    (out / "index.html").write_text(render("digest.html", static=True, **view), encoding="utf-8")
    (out / "model.html").write_text(
        render("model.html", static=True, title="Model", m=model_view(model, latest)), encoding="utf-8"
    )
    for lead_id in chosen.scores["lead_id"]:
        rows, acts = latest.lead(lead_id)
        page = render("lead.html", static=True, title=lead_id, lead=lead_view(model, rows, acts, latest.as_of))
        (out / lead_href(lead_id, static=True)).write_text(page, encoding="utf-8")
    return missing


def lead_href(lead_id: str, static: bool = False) -> str:
    return f"lead-{_file_safe(lead_id)}.html" if static else f"/ui/leads/{quote(lead_id, safe='')}"


def _file_safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)[:100]


def _display_name(row: pd.Series | dict) -> str:
    parts = [str(row.get(k) or "").strip() for k in ("first_name", "last_name")]
    name = " ".join(p for p in parts if p and p.lower() != "nan")
    company = str(row.get("company") or "").strip()
    company = "" if company.lower() == "nan" else company
    label = f"{name} ({company})" if name and company else name or company
    return label or str(row.get("lead_id"))


# -- the lead page ---------------------------------------------------------------------------


def lead_view(model: LoadedModel, lead: pd.DataFrame, activities: pd.DataFrame, as_of: pd.Timestamp) -> dict:
    """Everything the lead page shows, from the lead's export row and activity rows (text
    cells), scored with the same code as the service and the batch command."""
    moments = pd.Series([as_of])
    if model.kind == "flat":
        features, context, _ = prepare_flat_rows(model, lead)
        problems = pd.DataFrame()
    else:
        # As batch scoring does: an unreadable activity row is left out (and said), not fatal.
        features, context, _, problems = prepare_crm_leads(model, lead, activities, moments, strict=False)
        if features.empty:
            raise InvalidLeads([f"{row.table}[{row.row}]: {row.reason}" for row in problems.itertuples()])
    scored = score_features(model, features, context, moments).iloc[0]
    contributions, base = explain_frame(model, features)
    margin = contributions.sum(axis=1)
    slope = float(points_per_logit(model.scorer, margin, base)[0])
    points = contributions[0, :-1] * slope
    base_score = float(100 * model.scorer.calibrator.apply(np.array([base]))[0])
    order = np.argsort(-np.abs(points))
    steps = [(plain_name(model.scorer.spec.columns[j]), float(points[j])) for j in order[:WATERFALL_STEPS]]
    rest = float(points[order[WATERFALL_STEPS:]].sum())
    if len(order) > WATERFALL_STEPS:
        steps.append(("Other factors", rest))
    row = lead.iloc[0].to_dict()
    if model.kind == "flat":
        to_sql = "This model scores flat exports, which carry no activities to act on."
    else:
        to_sql = path_to_sql(model, lead, activities, as_of).message
    return {
        "lead_id": str(row["lead_id"]).strip(),
        "display_name": _display_name(row),
        "owner": str(row.get("owner") or "").strip(),
        "as_of": as_of.strftime("%Y-%m-%d %H:%M"),
        "model": f"{model.name} v{model.version}",
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
        "reasons": scored["reasons"],
        "to_sql": to_sql,
        "waterfall": waterfall(base_score, steps, float(100 * scored["probability"])),
        "timeline": _timeline(activities, as_of),
        "left_out": [f"{row.table} row {row.row}: {row.reason}" for row in problems.itertuples()],
    }


def _timeline(activities: pd.DataFrame, as_of: pd.Timestamp) -> list[dict]:
    if activities.empty:
        return []
    when = pd.to_datetime(activities["occurred_at"], errors="coerce", utc=True, format="mixed").dt.tz_localize(None)
    frame = pd.DataFrame({"when": when, "what": activities["activity_type"].astype(str)})
    frame = frame[frame["when"] < as_of].sort_values("when", ascending=False)
    return [
        {"when": w.strftime("%Y-%m-%d %H:%M"), "what": plain_activity(t)}
        for w, t in zip(frame["when"], frame["what"], strict=True)
    ]


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
) -> dict:
    if latest is None:
        return {"snapshot": None, "title": "Pipeline digest", "served": _served_name}
    scores = latest.scores
    chosen = scores
    for column in ("owner", "stage", "grade"):
        if filters.get(column):
            chosen = chosen[chosen[column].astype(str) == filters[column]]
    chosen = chosen.sort_values("score", ascending=False)
    rows = [
        {
            "name": _display_name(r),
            "href": lead_href(str(r["lead_id"]), static),
            "score": float(r["score"]),
            "grade": r["grade"],
            "stage": r["stage"],
            "owner": str(r.get("owner") or ""),
            "top_reason": next((x["text"] for x in r["reasons"] if x["points"] > 0), ""),
        }
        for r in chosen.head(DIGEST_ROWS).to_dict(orient="records")
    ]
    changes = grade_changes(latest, previous)
    changes["href"] = changes["lead_id"].map(lambda i: lead_href(str(i), static))
    evaluation = (model.scorer.metadata.get("evaluation") if model else None) or {}
    by_grade = [
        {"grade": g, "share": v["share"], "conversion": "—" if v["conversion"] is None else f"{v['conversion']:.1%}"}
        for g, v in evaluation.get("by_grade", {}).items()
    ]
    deciles = evaluation.get("lift_by_decile", [])
    base_rate = (model.scorer.metadata.get("test_metrics") or {}).get("base_rate") if model else None
    owners = sorted({str(o) for o in scores["owner"] if str(o) and str(o).lower() != "nan"})
    return {
        "title": "Pipeline digest",
        "snapshot": {
            "as_of": latest.as_of.strftime("%Y-%m-%d %H:%M"),
            "model": f"{latest.meta.get('model_name')} v{latest.meta.get('model_version')}",
        },
        "total": len(scores),
        "matching": len(chosen),
        "rows": rows,
        "filters": filters,
        "owners": owners,
        "stages": [s for s in STAGES if s in set(scores["stage"])],
        "grades": sorted(set(scores["grade"])),
        "by_grade": by_grade,
        "decile_chart": _decile_chart(deciles, "rate", "conversion rate", base_rate),
        "test_window": " to ".join(map(str, (model.scorer.metadata.get("test_window") or []))) if model else "",
        "previous": previous.as_of.strftime("%Y-%m-%d %H:%M") if previous else None,
        "rose": changes[changes["rose"]].to_dict(orient="records"),
        "fell": changes[~changes["rose"].astype(bool)].to_dict(orient="records"),
    }


# -- the model page --------------------------------------------------------------------------


SUMMARY_LEADS = 400
SUMMARY_FACTORS = 10


def shap_summary(model: LoadedModel, snapshot: Snapshot | None) -> str:
    """Beeswarm of the champion's SHAP values (score points) on leads of the latest scoring."""
    if snapshot is None or model.kind != "crm" or snapshot.leads.empty:
        return ""
    leads = snapshot.leads.sample(min(SUMMARY_LEADS, len(snapshot.leads)), random_state=0).reset_index(drop=True)
    ids = set(leads["lead_id"].str.strip())
    acts = snapshot.activities[snapshot.activities["lead_id"].str.strip().isin(ids)]
    moments = pd.Series([snapshot.as_of] * len(leads))
    features, _, _, _ = prepare_crm_leads(model, leads, acts, moments, strict=False)
    if features.empty:
        return ""
    contributions, base = explain_frame(model, features)
    points = contributions[:, :-1] * points_per_logit(model.scorer, contributions.sum(axis=1), base)[:, None]
    matrix = model_matrix(model, features)
    top = np.argsort(-np.abs(points).mean(axis=0))[:SUMMARY_FACTORS]
    colours = []
    for j in top:
        column = matrix[:, j]
        finite = column[np.isfinite(column)]
        low, high = (finite.min(), finite.max()) if len(finite) else (0.0, 1.0)
        is_category = model.scorer.spec.columns[j] in model.scorer.spec.categories
        colours.append(np.full(len(column), np.nan) if is_category else (column - low) / ((high - low) or 1))
    names = [plain_name(model.scorer.spec.columns[j]) for j in top]
    return beeswarm(names, [points[:, j] for j in top], colours)


def model_view(model: LoadedModel, snapshot: Snapshot | None = None) -> dict:
    meta = model.scorer.metadata
    evaluation = meta.get("evaluation") or {}
    metrics = meta.get("test_metrics") or {}
    shown = [
        ("roc_auc", "ROC AUC", "{:.3f}"),
        ("ece", "calibration error (ECE)", "{:.3f}"),
        ("lift_top_decile", "lift of the top 10%", "{:.1f}x"),
        ("base_rate", "conversion rate", "{:.1%}"),
    ]
    importance = sorted(evaluation.get("importance", {}).items(), key=lambda kv: -kv[1])[:15]
    curve = evaluation.get("calibration", [])
    return {
        "title": "Model",
        "name": model.name,
        "version": model.version,
        "alias": model.alias,
        "trained_at": str(meta.get("trained_at", ""))[:16].replace("T", " "),
        "training_window": " to ".join(map(str, meta.get("training_window") or [])),
        "test_window": " to ".join(map(str, meta.get("test_window") or [])),
        "metrics": [{"label": label, "value": fmt.format(metrics[k])} for k, label, fmt in shown if k in metrics],
        "importance_chart": (
            horizontal_bars(
                [plain_name(k) for k, _ in importance], [v for _, v in importance], "mean |effect| (log-odds)"
            )
            if importance
            else "<p class='muted'>Not recorded for this model version; retrain to get it.</p>"
        ),
        "calibration_chart": (
            calibration([c["predicted"] for c in curve], [c["observed"] for c in curve]) if curve else ""
        ),
        "lift_chart": _decile_chart(evaluation.get("lift_by_decile", []), "lift", "lift", 1.0),
        "summary_chart": shap_summary(model, snapshot),
        "criteria": _criteria_rows(model),
        "grade_bands": list((meta.get("grade_bands") or {}).items()),
    }


def _decile_chart(deciles: list[dict], key: str, label: str, reference: float | None) -> str:
    if not deciles:
        return ""
    return columns([str(d["decile"]) for d in deciles], [d[key] for d in deciles], label, reference)


def _criteria_rows(model: LoadedModel) -> list[tuple[str, str]]:
    criteria = model.criteria
    mql, sql, out = criteria.mql, criteria.sql, criteria.disqualify
    hand_raise = (
        f", a hand-raise ({', '.join(criteria.hand_raise_types)}) within {criteria.hand_raise_days} days"
        if sql.require_hand_raise
        else ""
    )
    return [
        ("MQL", f"score ≥ {mql.min_score:g}, fit ≥ {mql.min_fit:g}, engagement ≥ {mql.min_engagement:g}"),
        ("SQL", f"score ≥ {sql.min_score:g}{hand_raise}, {sql.min_bant_confirmed} of 4 BANT confirmed"),
        (
            "Disqualified",
            f"do not contact, a competitor's e-mail domain, or under {out.min_icp_match:.0%} ICP match; "
            f"recycled after {out.recycle_after_days} days",
        ),
    ]


# -- the app mounted on the service ----------------------------------------------------------

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
_current_model: Callable[[], LoadedModel | None] = lambda: None  # noqa: E731
_served_name: str | None = None  # the registered model the service serves; its scorings are shown


def bind(current_model: Callable[[], LoadedModel | None], model_name: str | None = None) -> None:
    """Tell the pages where the service keeps its live model, and its registered name."""
    global _current_model, _served_name
    _current_model, _served_name = current_model, model_name


def _kept_scorings() -> tuple[Snapshot | None, Snapshot | None]:
    """The latest two kept scorings of the served model (a flat CSV model's are another table's)."""
    return latest_two(model_name=_served_name)


def _page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(render(template, **context), status_code=status)


def _model_or_page() -> LoadedModel | HTMLResponse:
    model = _current_model()
    if model is None:
        return _page("pick.html", 503, title="Not ready", error="No model is loaded yet; see /readyz.", lead_ids=[])
    return model


@app.get("/", include_in_schema=False)
def home() -> RedirectResponse:
    return RedirectResponse("/ui/digest", status_code=303)


@app.get("/login", response_class=HTMLResponse, include_in_schema=False)
def login_form(next: str = "/ui/digest") -> HTMLResponse:
    return HTMLResponse(TEMPLATES.get_template("login.html").render(title="Sign in", next=_local(next), nav=False))


@app.post("/login", include_in_schema=False)
def login(key: str = Form(...), next: str = Form("/ui/digest")):
    keys = api_keys_from_env()
    if keys and not key_matches(key.encode(), keys):
        page = TEMPLATES.get_template("login.html").render(
            title="Sign in", next=_local(next), error="That key is not valid.", nav=False
        )
        return HTMLResponse(page, status_code=401)
    response = RedirectResponse(_local(next), status_code=303)
    response.set_cookie(KEY_COOKIE, key, httponly=True, samesite="strict", path="/ui")
    return response


def _local(target: str) -> str:
    """Only redirect within the pages (no open redirect to another site)."""
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/digest"


@app.get("/digest", response_class=HTMLResponse, include_in_schema=False)
def digest(owner: str = "", stage: str = "", grade: str = "") -> HTMLResponse:
    latest, previous = _kept_scorings()
    view = digest_view(_current_model(), latest, previous, {"owner": owner, "stage": stage, "grade": grade})
    return _page("digest.html", **view)


@app.get("/model", response_class=HTMLResponse, include_in_schema=False)
def model_page():
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        return model
    latest, _ = _kept_scorings()
    return _page("model.html", title="Model", m=model_view(model, latest))


@app.get("/leads", response_class=HTMLResponse, include_in_schema=False)
def pick(lead: str = "") -> HTMLResponse:
    if lead:
        return RedirectResponse(lead_href(lead), status_code=303)
    latest, _ = _kept_scorings()
    ids = latest.scores.sort_values("score", ascending=False)["lead_id"].head(500).tolist() if latest else []
    return _page("pick.html", title="Open a lead", lead_ids=ids)


@app.get("/leads/{lead_id:path}", response_class=HTMLResponse, include_in_schema=False)
def lead_page(lead_id: str):
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        return model
    latest, _ = _kept_scorings()
    found = latest.lead(lead_id) if latest else None
    if found is None:
        return _page("pick.html", 404, title="Lead not found", lead_ids=[],
                     error=f"Lead {lead_id} is not in the latest kept scoring.")  # fmt: skip
    rows, acts = found
    return _page("lead.html", title=lead_id, lead=lead_view(model, rows, acts, latest.as_of))


@app.post("/leads", response_class=HTMLResponse, include_in_schema=False)
async def pasted_lead(request: Request):
    model = _model_or_page()
    if isinstance(model, HTMLResponse):
        return model
    form = await request.form()
    text = str(form.get("lead", ""))
    try:
        lead = Lead.model_validate(json.loads(text))
        rows, acts = leads_to_frames([lead])
        if lead.created_at is None and model.kind == "crm":
            raise InvalidLeads(["created_at: required by this model"])
        view = lead_view(model, rows.astype(object).where(rows.notna(), "").astype(str),
                         acts.astype(object).where(acts.notna(), "").astype(str), _now())  # fmt: skip
    except json.JSONDecodeError as exc:
        return _page("pick.html", 400, title="Open a lead", lead_ids=[], pasted=text, error=f"Not JSON: {exc}")
    except RecursionError:  # json.loads gives up on deep nesting this way, not as a decode error
        return _page("pick.html", 400, title="Open a lead", lead_ids=[], pasted=text[:2000],
                     error="Not a lead: JSON nested too deeply")  # fmt: skip
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        return _page("pick.html", 400, title="Open a lead", lead_ids=[], pasted=text, error=problems)
    except InvalidLeads as exc:
        return _page("pick.html", 400, title="Open a lead", lead_ids=[], pasted=text, error=str(exc))
    return _page("lead.html", title=view["lead_id"], lead=view)


def _now() -> pd.Timestamp:
    return pd.Timestamp(dt.datetime.now(dt.UTC)).tz_localize(None)
