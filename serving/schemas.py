"""Request and response bodies of the scoring API, and their conversion to data frames."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, NotRequired

import pandas as pd
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetPydanticSchema, Strict, WithJsonSchema
from typing_extensions import TypedDict  # pydantic needs this one before Python 3.12

from features.clean import FIRST_YEAR, LAST_YEAR  # the moments an export can hold
from features.criteria import STAGES
from features.schema import ACTIVITY_TYPES, BANT_VALUES

Text = Annotated[str, Field(max_length=500)]
Bant = Annotated[
    str,
    Field(
        max_length=500,
        description=f"{', '.join(BANT_VALUES)} (case aside; yes, true, y, 1 read as confirmed, no, false, n, 0 as "
        "not); anything else is unknown",
    ),
]
# As the spec says: a number is not a boolean and `"yes"` is not `true` (pydantic's lax mode
# would take both).
Number = Annotated[float, Strict()]
Flag = Annotated[bool, Strict()]


def one_error(message: str) -> GetPydanticSchema:
    """A union that fails with one error saying what it takes, not one per branch (each with
    pydantic's internal branch name in its `loc`). Checked inside pydantic-core, as before."""
    return GetPydanticSchema(
        lambda source, handler: {**handler(source), "custom_error_type": "union_type", "custom_error_message": message}
    )


TechStack = Annotated[
    list[Text] | Text,
    one_error("Input should be a list of strings or one comma-separated string, each at most 500 characters"),
]
FieldValue = Annotated[str | Number | Flag, one_error("Input should be a string, a number, true, false or null")]


# Checked inside pydantic-core (no Python call per activity: a 1,000-lead body holds ~20,000).
Moment = Annotated[
    dt.datetime,
    Field(ge=dt.datetime(FIRST_YEAR, 1, 1), lt=dt.datetime(LAST_YEAR + 1, 1, 1)),
    WithJsonSchema(
        {
            # No `format`: a string is a date-time or a date, and property-based testers take a
            # value that misses one format of an anyOf for a value the spec refuses.
            "anyOf": [
                {"type": "string", "examples": ["2026-10-22T12:00:00Z", "2026-10-22"]},
                {"type": "number", "description": "Unix time in seconds (milliseconds above 2e10)"},
            ],
            # pydantic's reading of numbers, said rather than changed: a validator in Python per
            # moment doubled the validation time of a 1,000-lead body (20 to 45 ms).
            "description": f"ISO 8601 date-time or date YYYY-MM-DD (UTC if no offset) or Unix time in seconds, "
            f"read as milliseconds above 2e10 (as HubSpot sends); a string of digits is Unix time too, so "
            f"'20260901' is not a date; {FIRST_YEAR}-{LAST_YEAR}",
        }
    ),
]


# Not blank (spaces and invisible characters alone are blank) and no control characters (C0, C1,
# line and paragraph separators, the direction overrides that reorder what a page shows): batch
# scoring quarantines a blank id, and an id must be one the CRM can match and a page can show.
_ID_CONTROL = r"\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ID_INVISIBLE = r"\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u2060-\u2064\u2800\u3164\uffa0\ufeff"
LEAD_ID_PATTERN = rf"^[^{_ID_CONTROL}]*[^\s{_ID_CONTROL}{_ID_INVISIBLE}][^{_ID_CONTROL}]*$"


class _Strict(BaseModel):
    # Unknown fields, NaN and infinity are client errors, not values.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# A typed dict, not a model: a 1,000-lead request holds about 20,000 activities, and validating
# them into model instances cost three times as much (see BENCHMARKS.md).
class Activity(TypedDict):
    """One touch of the lead: a web visit, a demo request, an e-mail click, ..."""

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[misc]
    occurred_at: Moment
    activity_type: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            examples=["demo_request"],
            description=f"One of {', '.join(ACTIVITY_TYPES)} (case, spaces, hyphens and underscores aside: "
            "'Demo Request' and 'DemoRequest' are demo_request); any other type counts as `other`, but one of "
            "only spaces, hyphens, slashes or underscores ('-') is none (400: missing activity_type)",
        ),
    ]
    value: NotRequired[
        Annotated[
            Number | None,
            Field(
                description="A number the CRM keeps with the activity (seconds on a page, a deal size). No "
                "feature reads it, only the type and the moment; it tells two activities of one type at one "
                "moment apart (they count twice, where an exact repeat counts once)"
            ),
        ]
    ]


def _one_value_per_column(fields: dict[str, Any] | None) -> dict[str, Any] | None:
    """Names are read stripped, as a file's header is: two that differ only by spaces around them
    would both name one column, and one value would be lost without a word."""
    seen: dict[str, str] = {}
    for name in fields or {}:
        if (column := name.strip()) in seen:
            raise ValueError(f"{seen[column]!r} and {name!r} name one column once spaces around them go: send one")
        seen[column] = name
    return fields


class Lead(_Strict):
    """A lead as the CRM knows it: attributes plus its recent activities (CRM models), or the
    columns of the flat export in `fields` (flat-CSV models). Every attribute is optional:
    missing is a value the model knows."""

    lead_id: str = Field(min_length=1, max_length=128, pattern=LEAD_ID_PATTERN)
    created_at: Moment | None = Field(
        default=None, description="When the lead was created: required by CRM models (a flat-CSV model takes none)"
    )
    industry: Text | None = None
    country: Text | None = None
    seniority: Text | None = None
    department: Text | None = None
    lead_source: Text | None = None
    employees: Number | None = Field(default=None, ge=0)
    annual_revenue: Number | None = Field(default=None, ge=0)
    budget: Bant | None = None
    authority: Bant | None = None
    need: Bant | None = None
    timeline: Bant | None = None
    tech_stack: TechStack | None = None
    email: Text | None = None
    first_name: Text | None = None
    last_name: Text | None = None
    phone: Text | None = None
    company: Text | None = None
    owner: Text | None = None
    do_not_contact: Flag | None = Field(default=None, description="An opt-out: disqualified, never recycled")
    sales_accepted: Flag | None = Field(
        default=None,
        description="Sales accepted the lead in the CRM: its stage is SAL unless it is disqualified or meets the SQL "
        "rule (never a feature)",
    )
    # null is no activities, as null is no value for every other field (generated clients send it).
    activities: Annotated[list[Activity] | None, AfterValidator(lambda given: [] if given is None else given)] = Field(
        default_factory=list, max_length=20_000
    )
    fields: Annotated[
        dict[Annotated[str, Field(max_length=200)], FieldValue | None] | None, AfterValidator(_one_value_per_column)
    ] = Field(
        default=None,
        description="Flat-CSV models: the export's columns by name, and nothing else of the lead (a CRM model refuses "
        "`fields`, a flat-CSV model the other attributes and activities)",
    )


class Reason(BaseModel):
    feature: str
    value: str | float | None
    points: float = Field(description="Effect on the 0-100 score")
    text: str = Field(examples=["Requested a demo 2 days ago: +18"])


NOT_READ_TEXT = (
    "Activities dated at or after as_of, which the score does not read (a feature sees only the past): a meeting "
    "booked ahead, or a time sent without its offset from a zone ahead of UTC (read as UTC: send the offset, "
    "+09:00). 0 when every activity was read"
)


class LeadScore(BaseModel):
    lead_id: str
    probability: float = Field(ge=0, le=1, description="Calibrated probability of converting within the horizon")
    score: float = Field(ge=0, le=100, description="0-100: the probability in percent")
    grade: str = Field(description="A letter band of the score (params.yaml `grades`: A to D by default)")
    fit: float = Field(ge=0, le=100, description="0-100: rank of the lead's fit among training leads")
    engagement: float = Field(ge=0, le=100, description="0-100: rank of the lead's engagement among training leads")
    stage: str = Field(examples=["SQL"], json_schema_extra={"enum": list(STAGES)})
    stage_reason: str
    next_action: str
    recycle_on: dt.date | None = Field(
        default=None,
        description="When to look again at a lead disqualified for its profile (never for an opt-out or a competitor)",
    )
    reasons: list[Reason]
    model_version: str
    as_of: str = Field(
        examples=["2026-10-22T12:00:00Z"],
        description="The moment scored at, in UTC: the request's as_of, else when it arrived (moved up to a lead's "
        "newest time within 5 minutes of clock skew). Send it as as_of to score the lead the same way again",
    )
    activities_not_read: int = Field(ge=0, description=NOT_READ_TEXT)


class ModelInfo(BaseModel):
    """GET /model: which model is live, how it was trained and tested, and its rules."""

    name: str
    version: str
    alias: str | None = Field(description="champion; null once the alias no longer names the live version")
    loaded_at: str = Field(description="When this worker loaded it (ISO 8601, UTC)")
    checked_at: str = Field(
        description="When this worker last checked @champion (ISO 8601, UTC): `alias` is as of then. Each worker "
        "checks on its own, so two answers may come from workers that checked at different times"
    )
    last_check_problem: str | None = Field(description="Why the last check of @champion failed; null when it did not")
    reload_seconds: float = Field(description="How often each worker checks @champion")
    kind: Literal["crm", "flat"]
    trained_at: str | None
    training_window: list[str] | None = Field(description="First and last day; null without a time split")
    validation_window: list[str] | None
    test_window: list[str] | None
    test_metrics: dict[str, Any] | None = Field(description="roc_auc, pr_auc, log_loss, brier, ece, n, positives, ...")
    calibration: str | None = Field(examples=["sigmoid"])
    criteria: dict[str, Any] | None = Field(description="The MQL/SQL rules and disqualifications (params.yaml)")
    stages: list[str] = Field(
        description="The stages this model can give. A flat model (`kind: flat`) gives those whose inputs its "
        "export's columns carry (hand-raise, BANT, opt-out, e-mail, sales acceptance): most often none, so nurture "
        "and MQL by score, its `criteria` for SQL and disqualification unused",
        examples=[["disqualified", "nurture", "MQL", "SAL", "SQL"]],
    )
    grade_bands: dict[str, float] | None = Field(description="Each grade's lowest score, best first")
    rules: dict[str, Any] | None = Field(
        None,
        description="Set when `leadscore criteria --apply` put these criteria and grade bands on the model of an "
        "earlier version: from_version, applied_at, changes; null for a version as trained",
    )
    data_hash: str | None
    git_commit: str | None


class Contribution(BaseModel):
    feature: str
    label: str
    value: str | float | None
    log_odds: float
    points: float


class Explanation(BaseModel):
    lead_id: str
    base_value: float = Field(description="Log-odds before any feature (SHAP expected value)")
    base_score: float = Field(ge=0, le=100)
    score: float = Field(ge=0, le=100)
    contributions: list[Contribution]
    model_version: str
    as_of: str = Field(examples=["2026-10-22T12:00:00Z"], description="The moment explained at, in UTC (as in a score)")
    activities_not_read: int = Field(ge=0, description=NOT_READ_TEXT)


def utc_naive(moment: dt.datetime) -> pd.Timestamp:
    """Timestamps compare as naive UTC, as in training."""
    ts = pd.Timestamp(moment)
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo else ts


def _utc_text(moment: dt.datetime) -> str:
    """ISO text of a moment as naive UTC (`utc_naive`, without a pandas object per value)."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC).replace(tzinfo=None)
    return moment.isoformat()


def leads_to_frames(leads: list[Lead]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lead rows and activity rows of the raw contract (text cells, as an export has them)."""
    rows: list[dict[str, Any]] = []
    acts: list[dict[str, Any]] = []
    for lead in leads:
        row = lead.model_dump(exclude={"activities", "fields"})
        if row["created_at"] is not None:
            row["created_at"] = _utc_text(row["created_at"])
        if isinstance(row["tech_stack"], list):
            row["tech_stack"] = ";".join(row["tech_stack"])
        rows.append(row)
        for activity in lead.activities:
            acts.append(
                {
                    "lead_id": lead.lead_id,
                    "occurred_at": _utc_text(activity["occurred_at"]),
                    "activity_type": activity["activity_type"],
                    "value": activity.get("value"),
                }
            )
    columns = ["lead_id", "occurred_at", "activity_type", "value"]
    return pd.DataFrame(rows), pd.DataFrame(acts, columns=columns)


def leads_to_flat(leads: list[Lead]) -> pd.DataFrame:
    """Flat-export rows from the leads' `fields` (names stripped, as a file's header is)."""
    return pd.DataFrame([{**flat_fields(lead), "lead_id": lead.lead_id} for lead in leads])


def flat_fields(lead: Lead) -> dict[str, Any]:
    return {name.strip(): value for name, value in (lead.fields or {}).items()}


def unread_parts(kind: str, leads: list[Lead]) -> list[tuple[int, str, str]]:
    """(lead, field, why) for each part of a lead the model would ignore: `fields` sent to a
    CRM model, attributes or activities sent to a flat-CSV model. Scoring without them would
    answer for another lead than the one sent."""
    if kind == "flat":
        return [(i, name, "a flat-CSV model reads only `fields` (the columns of its export); send this there")
                for i, lead in enumerate(leads)
                for name in sorted(lead.model_fields_set - {"lead_id", "fields"})
                if getattr(lead, name) not in (None, [])]  # fmt: skip
    return [(i, "fields", "this model reads the lead's attributes and activities, not `fields` (flat-CSV models)")
            for i, lead in enumerate(leads) if lead.fields]  # fmt: skip
