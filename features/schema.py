"""The raw data contract: leads, activities and outcomes tables, as a CRM exports them."""

from __future__ import annotations

ACTIVITY_TYPES: tuple[str, ...] = (
    "web_visit",
    "pricing_page",
    "content_download",
    "email_open",
    "email_click",
    "webinar",
    "demo_request",
    "form_submit",
    "trial_signup",
    "meeting",
    "unsubscribe",
)
OTHER_ACTIVITY = "other"

OUTCOME_STATUSES: tuple[str, ...] = ("converted", "lost", "open")
BANT_FIELDS: tuple[str, ...] = ("budget", "authority", "need", "timeline")
BANT_VALUES: tuple[str, ...] = ("confirmed", "not", "unknown")

LEAD_REQUIRED: tuple[str, ...] = ("lead_id", "created_at")
# Optional attributes: used as features when present, missing values allowed.
LEAD_CATEGORICAL: tuple[str, ...] = (
    "industry",
    "country",
    "seniority",
    "department",
    "lead_source",
    *BANT_FIELDS,
)
LEAD_NUMERIC: tuple[str, ...] = ("employees", "annual_revenue")
# Personal data: read only to derive features (e.g. business vs free e-mail), never a
# feature itself, never logged.
PII_COLUMNS: tuple[str, ...] = ("first_name", "last_name", "email", "phone")

ACTIVITY_REQUIRED: tuple[str, ...] = ("lead_id", "occurred_at", "activity_type")
OUTCOME_REQUIRED: tuple[str, ...] = ("lead_id", "status")

TABLE_FILES: dict[str, str] = {
    "leads": "leads.csv",
    "activities": "activities.csv",
    "outcomes": "outcomes.csv",
}
TRUTH_FILE = "truth.csv"
