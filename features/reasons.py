"""Plain-language names and sentences for features, so a sales rep reads "Requested a demo
2 days ago: +18" rather than `n_demo_request_7d`."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from functools import lru_cache

ACTIVITY_WORDS: dict[str, tuple[str, str]] = {
    "web_visit": ("web visit", "web visits"),
    "pricing_page": ("pricing-page view", "pricing-page views"),
    "content_download": ("content download", "content downloads"),
    "email_open": ("e-mail opened", "e-mails opened"),
    "email_click": ("e-mail link clicked", "e-mail links clicked"),
    "webinar": ("webinar attended", "webinars attended"),
    "demo_request": ("demo request", "demo requests"),
    "form_submit": ("form submitted", "forms submitted"),
    "trial_signup": ("trial sign-up", "trial sign-ups"),
    "meeting": ("meeting with sales", "meetings with sales"),
    "unsubscribe": ("unsubscribe", "unsubscribes"),
    "other": ("other activity", "other activities"),
}
# What the last event of an intent type means, as a verb phrase.
INTENT_VERBS = {
    "demo_request": "Requested a demo",
    "pricing_page": "Viewed the pricing page",
    "trial_signup": "Started a trial",
    "meeting": "Met with sales",
    "webinar": "Attended a webinar",
}
FIELD_NAMES = {
    "industry": "Industry",
    "country": "Country",
    "seniority": "Seniority",
    "department": "Department",
    "lead_source": "Lead source",
    "budget": "Budget",
    "authority": "Authority",
    "need": "Need",
    "timeline": "Timeline",
    "employees": "Employees",
    "annual_revenue": "Annual revenue",
    "revenue_per_employee": "Revenue per employee",
    "business_email": "E-mail address",
    "do_not_contact": "Do not contact",
    "n_technologies": "Technologies in the stack",
    "bant_confirmed": "BANT fields confirmed",
    "icp_match": "Match with the ideal customer profile",
    "lead_age_days": "Lead age",
    "n_activities_total": "Activities so far",
    "days_since_last_activity": "Days since the last activity",
    "velocity_30d": "Activity trend (last 30 days vs the 30 before)",
    "engagement_decayed": "Recent activity level",  # as a rep's reasons say it
    "activities_per_30d": "Activities per month",
}
_COUNT = re.compile(r"^n_(?P<kind>[a-z_]+?)_(?P<window>\d+d|total)$")
_SINCE = re.compile(r"^days_since_(?P<kind>[a-z_]+)$")


def ago(days: float) -> str:
    """How long before the scoring moment, in whole days. Not "today" or "yesterday": those are
    calendar days, and a scoring as of midnight would call last evening's demo "today"."""
    if days < 1:
        return "in the last 24 hours"
    whole = math.floor(days + 0.5)  # halves up: round() went to even, 2.5 days "2 days", 3.5 "4 days"
    return f"{whole} day{'s' if whole != 1 else ''} ago"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _words(kind: str, count: float) -> str:
    one, many = ACTIVITY_WORDS.get(kind, (kind.replace("_", " "), kind.replace("_", " ")))
    return one if count == 1 else many


def plain_name(feature: str, names: Mapping[str, str] | None = None) -> str:
    """A short readable name of a feature, for tables and charts; a technology as the model's
    export spelt it (`names`, by feature: `LoadedModel.tech_names`)."""
    if feature in FIELD_NAMES:
        return FIELD_NAMES[feature]
    if feature.startswith("uses_"):
        return "Uses " + _technology(feature, names)
    if match := _COUNT.match(feature):
        kind, window = match["kind"], match["window"]
        what = _words(kind, 2) if kind != "activities" else "activities"
        return f"{what.capitalize()} in total" if window == "total" else f"{what.capitalize()}, last {window[:-1]} days"
    if match := _SINCE.match(feature):
        return f"Days since the last {_words(match['kind'], 1)}"
    return feature.replace("_", " ")


def value_name(feature: str, value: object, names: Mapping[str, str] | None = None) -> str:
    """A feature's name beside its effect on one lead (a waterfall step), said with the lead's
    value where the name alone claims one: "Uses Salesforce: -0.7" of a lead without it."""
    if _shape(feature)[0] != "uses":
        return plain_name(feature)
    return describe(feature, None if _missing(value) else value, names)


def _technology(feature: str, names: Mapping[str, str] | None) -> str:
    """A technology flag's technology: as spelt in the export, else title-cased from its name."""
    return (names or {}).get(feature) or feature.removeprefix("uses_").replace("_", " ").title()


@lru_cache(maxsize=4096)
def _shape(feature: str) -> tuple[str, str, str]:
    """What kind of feature this is (parsed once per name): ("count", kind, window),
    ("since", kind, ""), ("uses", "", "") or ("field", feature, "")."""
    if match := _COUNT.match(feature):
        return "count", match["kind"], match["window"]
    if match := _SINCE.match(feature):
        return "since", match["kind"], ""
    if feature.startswith("uses_"):
        return "uses", "", ""
    return "field", feature, ""


def reads_as_yes_no(feature: str) -> bool:
    """Whether a flat export's yes/no column is described by its value alone ("Do Not Email is
    Yes"), not by a sentence of the product's own feature of that name (`do_not_contact`)."""
    return feature not in FIELD_NAMES and _shape(feature)[0] == "field"


def describe(feature: str, value: object, names: Mapping[str, str] | None = None) -> str:
    """What a feature says about a lead, in a sentence fragment.

    Args:
        feature: the model's feature name.
        value: the lead's value of it (number, text or missing).
        names: technologies as the model's export spelt them, by feature (`plain_name`).
    """
    shape, kind, window = _shape(feature)
    if shape == "count":
        # The count only: how long ago the last one was is its `days_since_` feature's sentence,
        # often among the same lead's reasons.
        span = "so far" if window == "total" else f"in the last {window[:-1]} days"
        if kind == "activities":
            return f"{value:.0f} activities {span}" if not _missing(value) else f"Activities {span} unknown"
        if _missing(value) or value == 0:
            return f"No {_words(kind, 1)} {span}"
        return f"{value:.0f} {_words(kind, value)} {span}"
    if shape == "since":
        if _missing(value):
            return f"No {_words(kind, 1)} yet" if kind != "last_activity" else "No activity yet"
        if kind == "last_activity":
            return f"Last activity {ago(float(value))}"
        return f"{INTENT_VERBS.get(kind, 'Last ' + _words(kind, 1))} {ago(float(value))}"
    if shape == "uses":
        tech = _technology(feature, names)
        if _missing(value):
            return f"Tech stack unknown ({tech})"
        return f"Uses {tech}" if value == 1 else f"Does not use {tech}"
    if _missing(value):
        return f"{plain_name(feature)} unknown"
    if feature == "business_email":
        return "Business e-mail address" if value == 1 else "Free e-mail address (gmail, outlook, ...)"
    if feature == "do_not_contact":
        return "Marked do not contact" if value == 1 else "Open to contact"
    if feature == "icp_match":
        return f"Meets {float(value):.0%} of the ideal-customer criteria"
    if feature == "bant_confirmed":
        return f"{value:.0f} of 4 BANT fields confirmed"
    if feature == "lead_age_days":
        return f"Lead created {ago(float(value))}"
    if feature == "velocity_30d":
        change = "up" if value > 0 else "down" if value < 0 else "flat"
        return (
            f"Activity {change} {abs(value):.0f} vs the previous 30 days"
            if value
            else "Activity flat vs the previous 30 days"
        )
    if feature == "engagement_decayed":
        # "Recent engagement score 12.9" read as jargon to a rep; the level of recent activity
        # (touches weighted by type, fading with age) is what it measures.
        level = round(float(value), 1)  # as shown: -0.04 is no activity to speak of, not "-0.0"
        if level < 0:  # only negative weights (an unsubscribe) can take it below zero
            return f"Recent activity level {level:.1f} (an unsubscribe outweighs the rest)"
        return f"Recent activity level {level:.1f}" if level > 0 else "No recent activity"
    if feature == "activities_per_30d":
        return f"{float(value):.1f} activities per month"
    if feature in ("employees", "n_technologies"):
        count = float(value)
        one, many, after = ("employee", "employees", "") if feature == "employees" else (
            "technology", "technologies", " in the stack")  # fmt: skip
        return f"{count:,.0f} {one if round(count) == 1 else many}{after}"
    if feature in ("annual_revenue", "revenue_per_employee"):
        return f"{plain_name(feature)} {float(value):,.0f}"
    if feature in ("budget", "authority", "need", "timeline"):
        return f"{plain_name(feature)} {value}" if value != "not" else f"{plain_name(feature)} not there"
    shown = f"{value:,.4g}" if isinstance(value, float) else value
    if feature not in FIELD_NAMES and _is_question(feature):
        # A form's question as a column ("What is your current occupation"): its answer follows.
        return f"{feature.rstrip(' ?')}? {shown}"
    # A column of the product's own reads "Page views per visit 2.5"; a flat export's column
    # name is its own ("Total Time Spent on Website"), which reads as a value only with "is".
    joiner = " " if feature in FIELD_NAMES and isinstance(value, float) else " is "
    return f"{plain_name(feature)}{joiner}{shown}"


QUESTION_WORDS = frozenset({"what", "which", "how", "who", "whom", "whose", "why", "where", "when"})


def _is_question(name: str) -> bool:
    """A column named as a question: it ends with "?" or starts with a question word."""
    words = name.split()
    return len(words) > 1 and (name.rstrip().endswith("?") or words[0].casefold() in QUESTION_WORDS)


def sentence(
    feature: str, value: object, points: float, average: float | None = None, names: Mapping[str, str] | None = None
) -> str | None:
    """The rep-facing line: what the feature says, and its effect in score points.

    An amount of activity (`amount_of_activity`) that lowers the score is one below the average
    training example's (`average`, kept by models since it was): said so, or, when it is not
    below, None, no reason to show. Its points are its share beside the lead's other activity
    features, against the average lead: "4 web visits in the last 30 days: -0.5" read as if
    visiting had hurt, where taking the visits away lowered the score by 4.7."""
    shown = f"{points:+.0f}" if abs(points) >= 0.95 else f"{points:+.1f}"
    # Some activity as shown (0.04 reads "No recent activity"), of an amount of activity.
    if points < 0 and average is not None and amount_of_activity(feature) and not _missing(value) and value >= 0.05:
        # Below as shown, too: "3.5, below the average of 3.5" read as a slip.
        below = float(f"{float(value):.1f}") < float(f"{average:.1f}")
        return f"{describe(feature, value)}, below the average of {average:.1f}: {shown}" if below else None
    return f"{(points < 0 and _gone_quiet(feature, value)) or describe(feature, value, names)}: {shown}"


def amount_of_activity(feature: str) -> bool:
    """A count of activities or the recent activity level: more is more engagement (an
    unsubscribe's count aside)."""
    shape, kind, _ = _shape(feature)
    return (shape == "count" and kind != "unsubscribe") or feature in ("engagement_decayed", "activities_per_30d")


def _gone_quiet(feature: str, value: object) -> str | None:
    """A recency that lowers the score, said as the quiet since ("No webinar attended for 184
    days"): "Attended a webinar 184 days ago: -0.8" read as if attending had hurt."""
    shape, kind, _ = _shape(feature)
    if shape != "since" or _missing(value) or float(value) < 1.5:
        return None
    days = f"{float(value):.0f} days"
    return f"No activity for {days}" if kind == "last_activity" else f"No {_words(kind, 1)} for {days}"
