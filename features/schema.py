"""The raw data contract: leads, activities and outcomes tables, as a CRM exports them."""

from __future__ import annotations

import re
from collections.abc import Iterable

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
LEAD_COUNTS: tuple[str, ...] = ("employees",)  # whole numbers: "1.104" employees are 1104
# The lead columns whose values become features (e-mail: business or free address).
LEAD_FEATURE_INPUTS: tuple[str, ...] = (*LEAD_CATEGORICAL, *LEAD_NUMERIC, "email", "tech_stack")
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

# Every column each table of the contract can use; others are read, reported and left alone.
CONTRACT_COLUMNS: dict[str, tuple[str, ...]] = {
    "leads": (
        *LEAD_REQUIRED,
        *LEAD_CATEGORICAL,
        *LEAD_NUMERIC,
        *PII_COLUMNS,
        "tech_stack",
        "do_not_contact",
        "sales_accepted",
        "company",
        "owner",
    ),
    "activities": (*ACTIVITY_REQUIRED, "value"),
    "outcomes": (*OUTCOME_REQUIRED, "closed_at"),
}


def contract_clash(columns: Iterable[str], table: str) -> str | None:
    """Two headers that both read as one contract column ('industry' and 'Industry'): which of
    them is meant cannot be told, so the caller refuses the file with this explanation."""
    known = {_name_key(name): name for name in CONTRACT_COLUMNS[table]}
    first: dict[str, str] = {}
    for column in map(str, columns):
        name = known.get(_name_key(column))
        if name is None:
            continue
        if name in first:
            return (
                f"columns {first[name]!r} and {column!r} both read as the contract's {name} (case and spacing "
                "do not count): rename or remove one"
            )
        first[name] = column
    return None


def _name_key(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().casefold())


def contract_names(columns: Iterable[str], table: str) -> tuple[dict[str, str], list[str]]:
    """Match an export's headers to the contract's names regardless of case and spacing.

    `Lead Source`, `LEAD-SOURCE` and ` lead_source` all mean `lead_source`: CRMs export
    display names, and an optional column missed for its spelling would be a feature left
    blank without a word. An exact name wins over a look-alike.

    Returns:
        The renames to apply ({header: contract name}) and the headers the contract does
        not use (including a second look-alike of a name already taken).
    """
    known = {_name_key(name): name for name in CONTRACT_COLUMNS[table]}
    columns = [str(c) for c in columns]
    taken = {c for c in columns if c in CONTRACT_COLUMNS[table]}
    renames: dict[str, str] = {}
    unused: list[str] = []
    for column in columns:
        if column in taken or column.startswith("_"):
            continue
        name = known.get(_name_key(column))
        if name is None or name in taken:
            unused.append(column)
        else:
            renames[column] = name
            taken.add(name)
    return renames, unused
