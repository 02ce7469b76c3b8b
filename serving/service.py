"""The scoring service: BentoML 1.4, the champion bundle loaded once at start.

Start it with `leadscore serve` (or `bentoml serve serving.service:LeadScoring`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import gc
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import bentoml
import numpy as np
import pandas as pd
from bentoml.exceptions import ServiceUnavailable
from fastapi import FastAPI, HTTPException
from pydantic import ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError, to_json
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse, Response

from features.clean import CLOCK_SKEW, future_moment, latest_moment, snake_name, tidy_text
from features.flat import field_problems
from features.params import load_params
from features.reasons import value_name
from features.tracking import local_database, tracking_uri
from serving import pages
from serving.batch import model_schema
from serving.direct import DirectScorer
from serving.guards import (
    REQUEST_ID_HEADER,
    ApiKeyGuard,
    ApiPage,
    BodySizeGuard,
    ErrorBodies,
    HeadAsGet,
    HostGuard,
    JsonBodyGuard,
    NoSlashRedirects,
    RealPath,
    RequestIdHeader,
    SecurityHeaders,
    name_requests_by_route,
    redact_request_errors,
    reply,
)
from serving.openapi import MODEL_ROUTES, SpecRoute, documented_spec
from serving.schemas import (
    Contribution,
    Explanation,
    Lead,
    LeadScore,
    Moment,
    flat_fields,
    leads_to_flat,
    leads_to_frames,
    unread_parts,
    utc_naive,
)
from serving.scoring import (
    AliasMissing,
    InvalidLeads,
    LoadedModel,
    ModelNotReady,
    champion_version,
    explain_frame,
    load_champion,
    prepare_crm_leads,
    prepare_flat_rows,
    score_columns,
)

# Set before any registry call (a user's own settings win). MLflow retries a stopped tracking
# server for minutes per call: a worker's start, and a /reload, would hang that long.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
# No sqlite connection is kept between registry calls. A pooled one outlives its file: a registry
# deleted and written anew (`make clean`, a restored backup) was still read from the old file,
# and sqlite took the new file's journal for the old one's, which broke a training run's writes.
os.environ.setdefault("MLFLOW_SQLALCHEMYSTORE_POOLCLASS", "NullPool")
# A log file, not a terminal: no download bar for each model a worker loads (under plain
# `bentoml serve` too).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

logger = logging.getLogger("leadscore.service")
# BentoML passes on warnings only: a champion going live (a promotion, a rollback) is news to
# whoever reads the log, so this logger's own INFO lines are kept.
logger.setLevel(logging.INFO)
redact_request_errors()
PARAMS = load_params()
MODEL_NAME_ENV = "LEADSCORE_MODEL_NAME"
extra = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
# Why the worker has no model, for the readiness guard (BentoML hides the text of 5xx errors).
NOT_READY: dict[str, str] = {"reason": "starting"}


class ReadinessGuard:
    """503 with the reason on the model routes while no model is loaded."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] in MODEL_ROUTES and NOT_READY["reason"]:
            # Each worker looks for a champion again every reload_seconds: a client may retry then
            # (with the watcher off, only a /reload will: no time to give).
            seconds = PARAMS.service.reload_seconds
            retry = [(b"retry-after", str(max(1, round(seconds))).encode())] if seconds > 0 else []
            await reply(send, 503, f"no model loaded: {NOT_READY['reason']}", retry)
            return
        await self.app(scope, receive, send)


def _json(records: list[dict]) -> Response:
    """The scores as JSON, encoded by pydantic-core in one pass.

    BentoML would dump the answer twice in Python and encode it with `json`, and validating
    every record into `LeadScore` models costs a fifth of a 1,000-lead request. The records
    are built column by column, so the first one is checked against `LeadScore`: a missing
    or mistyped column shows there; the tests check every record of every answer.
    """
    if records:
        LeadScore.model_validate(records[0])
    return Response(to_json(records, inf_nan_mode="null"), media_type="application/json")


@contextlib.contextmanager
def _one_worker_at_a_time(registry: str) -> Iterator[None]:
    """Workers start together: the first to open a new sqlite store creates its tables, and
    two doing it at once fail on each other's migration. A file lock per registry takes them
    in turn."""
    name = hashlib.sha256(registry.encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"leadscore-start-{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class Live(NamedTuple):
    model: LoadedModel
    direct: DirectScorer
    loaded_at: str


# The field a cleaning reason is about, by its name in the text ("created_at is after ...").
_CONTRACT_FIELDS = ("created_at", "occurred_at", "activity_type", "lead_id")


def _bad_request(problems: list[tuple[tuple, str]]) -> ValidationError:
    """A 400 in the shape of every other validation error: {"error", "detail": [{loc, msg, type}]}."""
    return ValidationError.from_exception_data(
        "Input",
        [{"type": PydanticCustomError("invalid_lead", "{reason}", {"reason": text}), "loc": loc, "input": None}
         for loc, text in problems],
    )  # fmt: skip


def _moment(as_of: dt.datetime | None, leads: list[Lead] = ()) -> pd.Timestamp:
    """The scoring moment: `as_of`, else now, moved up to just after the newest time the leads
    carry within `CLOCK_SKEW` ahead of now (a later one is still refused as after the moment).
    Just after: features read activities strictly before the moment, and the demo request a
    CRM calls about must count."""
    now = dt.datetime.now(dt.UTC)
    if as_of is not None:
        moment = utc_naive(as_of)
        if moment > latest_moment(utc_naive(now)):
            raise _bad_request([(("as_of",), future_moment(f"as_of {_iso_utc(moment)}", utc_naive(now)))])
        return moment
    newest, horizon = None, now + CLOCK_SKEW
    for lead in leads:
        stamps = (lead.created_at, *(activity["occurred_at"] for activity in lead.activities))
        for stamp in stamps:
            if stamp is not None:
                if stamp.tzinfo is None:  # naive means UTC; aware ones compare across zones as they are
                    stamp = stamp.replace(tzinfo=dt.UTC)
                if stamp <= horizon and (newest is None or stamp > newest):
                    newest = stamp
    return utc_naive(now if newest is None else max(now, newest + dt.timedelta(microseconds=1)))


class _Request(bentoml.IODescriptor):
    # An unknown top-level field is a client's mistake ("asof" for "as_of" would score as of
    # now without a word), as it is inside a lead.
    model_config = ConfigDict(extra="forbid", title="request")


AS_OF_TEXT = (
    "Score as of this moment (default: now; a moment after the end of today in UTC is refused). Activities "
    "at or after it are not read (as in training, a feature sees only the past); a lead created after it is "
    "refused. Each score says the moment it used."
)


class ScoreRequest(_Request):
    leads: list[Lead] = Field(min_length=1, max_length=PARAMS.service.max_batch)
    as_of: Moment | None = Field(default=None, description=AS_OF_TEXT)


class ExplainRequest(_Request):
    lead: Lead
    as_of: Moment | None = Field(default=None, description=AS_OF_TEXT)


def _once_each(leads: list[Lead]) -> tuple[list[Lead], list[int], list[int]]:
    """The leads with exact repeats left out (a CRM retrying part of a batch); for each lead
    sent, the position of its first copy among them; for each of them, its position as sent
    (where a problem with it is reported). Every lead is answered and scored once, as batch
    scoring counts a repeated row once. Every copy of an id whose copies differ in anything
    stays: they are the client's error, refused at their positions."""
    everyone = list(range(len(leads)))
    ids = [tidy_text(lead.lead_id) for lead in leads]
    if len(set(ids)) == len(ids):
        return leads, everyone, everyone
    repeated = {lead_id for lead_id, n in Counter(ids).items() if n > 1}
    contents = {i: _content(lead) for i, (lead, lead_id) in enumerate(zip(leads, ids, strict=True))
                if lead_id in repeated}  # fmt: skip
    first_seen: dict[str, int] = {}
    differing = set()
    for i, lead_id in enumerate(ids):
        if lead_id in repeated:
            first = first_seen.setdefault(lead_id, i)
            if contents[i] != contents[first]:
                differing.add(lead_id)
    kept: list[Lead] = []
    first_of, sent_at, kept_at = [], [], {}
    for position, (lead, lead_id) in enumerate(zip(leads, ids, strict=True)):
        if lead_id in repeated and lead_id not in differing and lead_id in kept_at:
            first_of.append(kept_at[lead_id])
            continue
        kept_at.setdefault(lead_id, len(kept))
        first_of.append(len(kept))
        sent_at.append(position)
        kept.append(lead)
    return kept, first_of, sent_at


DIFFERING_REPEAT = (
    "sent more than once, with other values or activities (a lead sent twice as it is is scored once, whatever "
    "the order of its activities): send each lead once, with all its activities"
)


def _in_order(problems: list[tuple[int, tuple, str]]) -> list[tuple[tuple, str]]:
    """The problems of a request by the place of their lead as sent (the answer lists the first
    `MAX_PROBLEMS_LISTED` and counts the rest: `ErrorBodies`)."""
    return [(where, why) for _, where, why in sorted(problems, key=lambda p: p[0])]


def _content(lead: Lead) -> dict:
    """What a lead says, its activities in any order (they are read by time) and its moments in
    UTC (`15:00Z`, `10:00-05:00` and `15:00` are one moment)."""
    content = lead.model_dump(exclude={"lead_id"})
    if isinstance(content.get("created_at"), dt.datetime):
        content["created_at"] = utc_naive(content["created_at"])

    def key(activity: dict) -> tuple:
        when = activity.get("occurred_at")
        moment = utc_naive(when) if isinstance(when, dt.datetime) else when
        return repr(moment), snake_name(str(activity.get("activity_type"))), repr(activity.get("value"))

    content["activities"] = sorted(key(a) for a in content.get("activities") or [])
    return content


def _iso_utc(moment: pd.Timestamp) -> str:
    """A naive UTC moment as the ISO text a caller can send back as `as_of`."""
    return moment.isoformat() + "Z"


def _not_read(leads: list[Lead], moment: pd.Timestamp) -> list[int]:
    """Each lead's activities dated at or after the moment, which its features do not read; one
    sent twice (the same moment, type and value) counted once, as batch scoring counts it."""
    naive = moment.to_pydatetime()

    def later(activity: dict) -> tuple[dt.datetime, str, float | None] | None:
        when = activity["occurred_at"]
        if when.tzinfo is not None:
            when = when.astimezone(dt.UTC).replace(tzinfo=None)
        kind = snake_name(str(activity.get("activity_type") or ""))
        value = activity.get("value")
        return (when, kind, None if value is None else float(value)) if when >= naive else None

    return [len({seen for activity in lead.activities if (seen := later(activity)) is not None}) for lead in leads]


def _as_of(leads: list[Lead], as_of: dt.datetime | None) -> pd.Series:
    return pd.Series([_moment(as_of, leads)] * len(leads))


@bentoml.service(name="lead_scoring", traffic={"timeout": 120}, workers=PARAMS.service.workers)
@bentoml.asgi_app(pages.app, path="/ui")
@bentoml.asgi_app(extra, path="/")
class LeadScoring:
    """Scores leads for a CRM: probability, grade, stage and reasons."""

    def __init__(self) -> None:
        self.model_name = os.environ.get(MODEL_NAME_ENV) or PARAMS.mlflow.model_name
        # The live model and its direct scorer, swapped together in one assignment, so a
        # request that read `self.live` once never mixes two versions.
        self.live: Live | None = None
        self.not_ready = "starting"
        # Why the last check of @champion failed while a model is live ("" when it did not).
        self.last_check_problem = ""
        # The live version is no longer @champion (the alias was removed, or moved to a version
        # that cannot be loaded): GET /model must not call it the champion.
        self.not_champion = False
        self.checked_at = ""  # when this worker last checked @champion: `alias` is as of then
        self._reload_lock = threading.Lock()
        with _one_worker_at_a_time(tracking_uri()):
            self.reload()
        pages.bind(lambda: self.live.model if self.live else None, self.model_name, lambda: not self.not_champion)
        # The model, pandas and numba make a large, long-lived heap: left to the collector, a
        # full collection walks all of it now and then and stalls requests (the p99 under
        # load). Frozen objects are skipped by every collection.
        gc.collect()
        gc.freeze()
        if PARAMS.service.reload_seconds > 0:
            threading.Thread(target=self._watch, name="champion-watch", daemon=True).start()

    def _watch(self) -> None:
        while True:
            time.sleep(PARAMS.service.reload_seconds)
            self.reload()

    def reload(self) -> dict:
        """Load `@champion` when it points at another version than the live one (a promotion
        or a rollback). A version that cannot be loaded is refused and the live one stays; an
        unreachable registry changes nothing."""
        with self._reload_lock:
            try:
                return self._check_champion()
            finally:  # when the check ended: `alias` in GET /model is as of then
                self.checked_at = pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds")

    def _check_champion(self) -> dict:
        live = self.live.model.version if self.live else None
        try:
            database = local_database()
            if database is not None and not database.is_file():  # sqlite would create an empty one
                raise ModelNotReady(
                    f"the registry database {database} no longer exists (was it removed?)"
                    if live
                    else f"no model registered yet ({database} does not exist); run `leadscore train` first"
                )
            try:
                version = champion_version(self.model_name)
            except AliasMissing:
                self.not_champion = True
                raise
            self.not_champion = live is not None and version != live
            if version == live:
                self.last_check_problem = ""
                return {"live_version": live, "changed": False}
            # The last problem stays said while a version is tried: GET /model during a retry of
            # a broken champion read "no problem" for as long as the load took.
            model = load_champion(self.model_name, version=version)
            try:
                direct = DirectScorer(model)
            except Exception as exc:  # a bundle this code cannot serve must not stop the service
                raise ModelNotReady(f"version {version} cannot be served: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:
            if not isinstance(exc, ModelNotReady):
                # Unforeseen (a bug, a bundle read wrongly): said like any other failed check, and
                # the watcher goes on (an exception ended its thread, and the worker never looked again).
                logger.exception("checking @champion failed")
                exc = ModelNotReady(f"checking @champion failed: {type(exc).__name__}: {exc}")
            self.last_check_problem = str(exc)
            if self.live is None:
                self.not_ready = str(exc)
                NOT_READY["reason"] = self.not_ready
            logger.warning("champion not (re)loaded, %s stays live: %s", live or "no model", exc)
            return {"live_version": live, "changed": False, "error": str(exc)}
        self.live = Live(model, direct, pd.Timestamp.now(tz="UTC").isoformat(timespec="seconds"))
        self.not_champion = False
        self.last_check_problem = ""
        self.not_ready = ""
        NOT_READY["reason"] = ""
        logger.info("now serving %s version %s (was %s)", self.model_name, version, live or "none")
        return {"live_version": version, "changed": True, "previous_live_version": live}

    def __is_ready__(self) -> bool:
        return self.live is not None

    def _require_live(self) -> Live:
        live = self.live
        if live is None:
            raise ServiceUnavailable(f"no model loaded: {self.not_ready}")
        return live

    def _prepare(
        self, live: Live, leads: list[Lead], as_of: pd.Series, field: str = "leads", sent_at: list[int] | None = None
    ):
        """Features and context of the leads, or a 400 naming each problem at its place in the
        request (`sent_at`: each lead's position as sent, when repeats were left out): every
        problem of every lead at once, in the order sent, so that a nightly sync fixes them in
        one round (a missing created_at hid the others)."""
        model = live.model
        at = (lambda i: (field, sent_at[i] if sent_at else i)) if field == "leads" else (lambda i: (field,))
        if field == "leads" and not unread_parts(model.kind, leads):
            # A CRM's batch: cleaned from the request objects, without text cells.
            prepared = live.direct.prepare(leads, as_of.iloc[0])
            if prepared is not None:
                return prepared
        problems: list[tuple[int, tuple, str]] = [(i, (*at(i), part), why) for i, part, why in
                                                  unread_parts(model.kind, leads)]  # fmt: skip
        # Repeats that differ in anything (`_once_each` leaves them in): scored, the CRM would
        # keep either answer.
        ids = Counter(tidy_text(lead.lead_id) for lead in leads)
        problems += [(i, (*at(i), "lead_id"), f"lead_id {lead.lead_id!r}: {DIFFERING_REPEAT}")
                     for i, lead in enumerate(leads) if ids[tidy_text(lead.lead_id)] > 1]  # fmt: skip
        if model.kind == "crm":
            problems += [(i, (*at(i), "created_at"), "required by this model") for i, lead in enumerate(leads)
                         if lead.created_at is None]  # fmt: skip
        flagged = {i for i, _, _ in problems}
        rest = [i for i in range(len(leads)) if i not in flagged]
        if model.kind == "flat":
            wrong = field_problems(model_schema(model), [flat_fields(leads[i]) for i in rest])
            problems += [(rest[j], (*at(rest[j]), "fields", *([key] if key else [])), why) for j, key, why in wrong]
            if problems:
                raise _bad_request(_in_order(problems))
            features, context, _ = prepare_flat_rows(model, leads_to_flat(leads))
            return features, context
        if not rest:
            raise _bad_request(_in_order(problems))
        kept = [leads[i] for i in rest]
        frame, activities = leads_to_frames(kept)
        try:
            features, context, _, _ = prepare_crm_leads(model, frame, activities, as_of.iloc[: len(kept)])
        except InvalidLeads as exc:
            # Point at the lead (and activity) in the request, as every other 400 does.
            owners = [(i, j) for i, lead in zip(rest, kept, strict=True) for j in range(len(lead.activities))]
            for table, row, reason in exc.rows:
                lead = rest[row] if table == "leads" else owners[row][0]
                where = at(lead) if table == "leads" else (*at(lead), "activities", owners[row][1])
                named = next((c for c in _CONTRACT_FIELDS if c in reason), None)
                # The place is said by `where`: the text adds the lead's id, not the position again.
                problems.append(
                    (lead, (*where, named) if named else where, f"lead_id {leads[lead].lead_id!r}: {reason}")
                )
        if problems:
            raise _bad_request(_in_order(problems))
        return features, context

    @bentoml.api(route="/score", input_spec=ScoreRequest)
    def score(self, leads: list[Lead], as_of: Moment | None = None) -> list[LeadScore]:
        """Score up to `service.max_batch` leads; the answer keeps their order."""
        live = self._require_live()
        model = live.model
        if len(leads) == 1 and not unread_parts(model.kind, leads):
            # The CRM's "this lead changed" call: same numbers, without data frames. (A part the
            # model would not read is refused by `_prepare`, as in a batch.)
            moment = _moment(as_of, leads)
            record = live.direct.score(leads[0], moment)
            if record is not None:
                return _json([{"lead_id": leads[0].lead_id, **record, "as_of": _iso_utc(moment),
                               "activities_not_read": _not_read(leads, moment)[0]}])  # fmt: skip
        sent = leads
        leads, first_of, sent_at = _once_each(sent)
        moments = _as_of(leads, as_of)
        features, context = self._prepare(live, leads, moments, sent_at=sent_at)
        columns = {"lead_id": [lead.lead_id for lead in leads], **score_columns(model, features, context, moments),
                   "as_of": [_iso_utc(moments.iloc[0])] * len(leads),
                   "activities_not_read": _not_read(leads, moments.iloc[0])}  # fmt: skip
        # Plain values, one record per lead (no data frame): NumPy columns become lists once.
        names = list(columns)
        values = [column.tolist() if isinstance(column, np.ndarray) else column for column in columns.values()]
        records = [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]
        if len(leads) < len(sent):
            records = [{**records[first], "lead_id": lead.lead_id} for lead, first in zip(sent, first_of, strict=True)]
        return _json(records)

    @bentoml.api(route="/explain", input_spec=ExplainRequest)
    def explain(self, lead: Lead, as_of: Moment | None = None) -> Explanation:
        """Every feature's contribution for one lead (log-odds and score points), and the base value."""
        live = self._require_live()
        model = live.model
        moments = _as_of([lead], as_of)
        features, _ = self._prepare(live, [lead], moments, field="lead")
        contributions, base = explain_frame(model, features)
        margin = contributions.sum(axis=1)
        calibrate = model.scorer.calibrator.apply
        score = float(100 * calibrate(margin)[0])
        base_score = float(100 * calibrate(np.array([base]))[0])
        slope = float(model.scorer.calibrator.points_per_logit(margin, base)[0])
        row = features.reindex(columns=model.scorer.spec.columns).iloc[0]
        items = []
        for j, feature in enumerate(model.scorer.spec.columns):
            value = row[feature]
            value = None if value is None or (isinstance(value, float) and np.isnan(value)) else value
            items.append(
                Contribution(
                    feature=feature,
                    label=value_name(feature, value, model.tech_names),
                    value=value if not isinstance(value, (np.floating, np.integer)) else float(value),
                    log_odds=float(contributions[0, j]),
                    points=round(float(contributions[0, j] * slope), 3),
                )
            )
        items.sort(key=lambda c: -abs(c.log_odds))
        return Explanation(
            lead_id=lead.lead_id,
            base_value=base,
            base_score=round(base_score, 2),
            score=round(score, 1),
            contributions=items,
            model_version=model.version,
            as_of=_iso_utc(moments.iloc[0]),
            activities_not_read=_not_read([lead], moments.iloc[0])[0],
        )

    @extra.get("/model")
    def model_info(self) -> dict:
        """Which model is live: name, version, alias, training window, test metrics,
        thresholds and grade bands."""
        live = self.live
        if live is None:
            raise HTTPException(status_code=503, detail=f"no model loaded: {self.not_ready}")
        model = live.model
        meta = model.scorer.metadata
        return {
            "name": model.name,
            "version": model.version,
            # No longer the champion once the alias is gone, though it keeps serving until one is set.
            "alias": None if self.not_champion else model.alias,
            "loaded_at": live.loaded_at,
            "checked_at": self.checked_at,
            "last_check_problem": self.last_check_problem or None,
            "reload_seconds": PARAMS.service.reload_seconds,
            "kind": model.kind,
            "trained_at": meta.get("trained_at"),
            "training_window": meta.get("training_window"),
            "validation_window": meta.get("validation_window"),
            "test_window": meta.get("test_window"),
            "test_metrics": meta.get("test_metrics"),
            "calibration": meta.get("calibration"),
            "criteria": meta.get("criteria"),
            "stages": model.stages,
            "grade_bands": meta.get("grade_bands"),
            "rules": meta.get("rules"),
            "data_hash": meta.get("data_hash"),
            "git_commit": meta.get("git_commit"),
        }

    @extra.post("/reload")
    def reload_now(self) -> JSONResponse:
        """Check `@champion` now and load it if it moved (each worker also checks every
        `service.reload_seconds`). 503 when the check failed: a scheduler that promoted a model
        learns that it is not live."""
        result = self.reload()
        return JSONResponse(result, status_code=503 if "error" in result else 200)

    @extra.get("/docs")
    def openapi(self) -> dict:
        """The OpenAPI spec of this service (also at /docs.json)."""
        return SPEC


# BentoML derives a response's media type from the output model's JSON schema, which it
# rebuilds on every call (about half the time of a one-lead request); the answers are JSON.
for _api in LeadScoring.apis.values():
    _api.output_spec.media_type = "application/json"

SPEC = documented_spec(LeadScoring.openapi_spec.asdict())

# Outermost first: host, key, then size (a caller without a key gets its 401 before its body is
# read), then readiness (its reason is for authenticated callers).
name_requests_by_route()
LeadScoring.add_asgi_middleware(RealPath)  # first: every other middleware sees the real path
LeadScoring.add_asgi_middleware(RequestIdHeader)  # every answer, the guards' too, names its request
LeadScoring.add_asgi_middleware(SecurityHeaders)  # every answer, the guards' too, refuses framing
LeadScoring.add_asgi_middleware(HostGuard, allowed_hosts=PARAMS.service.allowed_hosts)
if PARAMS.service.cors_origins:
    # Outside the key guard: a browser's preflight carries no key. The calls themselves do, in
    # the Authorization header; no answer allows credentials, so the pages' sign-in cookie
    # opens nothing to another origin's script.
    LeadScoring.add_asgi_middleware(
        CORSMiddleware,
        allow_origins=list(PARAMS.service.cors_origins),
        allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=[REQUEST_ID_HEADER.decode()],
        max_age=600,
    )
LeadScoring.add_asgi_middleware(ApiKeyGuard, failed_key_limit=PARAMS.service.failed_key_limit)
LeadScoring.add_asgi_middleware(BodySizeGuard, max_bytes=PARAMS.service.max_body_bytes)
LeadScoring.add_asgi_middleware(ReadinessGuard)
LeadScoring.add_asgi_middleware(JsonBodyGuard, paths=frozenset({"/score", "/explain"}))
LeadScoring.add_asgi_middleware(SpecRoute, spec=SPEC)
LeadScoring.add_asgi_middleware(NoSlashRedirects)
LeadScoring.add_asgi_middleware(ApiPage)
LeadScoring.add_asgi_middleware(ErrorBodies)
LeadScoring.add_asgi_middleware(HeadAsGet, paths=frozenset({"/model", "/docs"}))
