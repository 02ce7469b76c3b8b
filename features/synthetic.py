"""Generate a realistic synthetic CRM export (leads, activities, outcomes) with known truth.

The world is simulated in monthly steps of `STEP_DAYS`. At each step boundary T, every open
lead converts within the next step with a probability that depends only on what is
observable at T (its attributes and its activities before T) and on T itself (season,
drift). That probability is written to `truth.csv`, so the best possible ROC AUC of any
model on the same (lead, T) examples can be measured. Activities are driven by a latent
interest that no model sees directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.clean import utc_now
from features.schema import ACTIVITY_TYPES, TABLE_FILES, TRUTH_FILE

STEP_DAYS = 30
EARLIEST_START_YEAR = 1990
HALF_LIFE_DAYS = 14.0
MAX_LEAD_AGE_DAYS = 270

INDUSTRIES = (
    "Software",
    "Financial Services",
    "Healthcare",
    "Manufacturing",
    "Retail",
    "Education",
    "Government",
    "Professional Services",
    "Media",
    "Logistics",
)
INDUSTRY_SHARE = np.array([0.2, 0.12, 0.1, 0.12, 0.1, 0.08, 0.05, 0.11, 0.06, 0.06])
# Buyer mix drifts: by the end of the period healthcare grows and retail shrinks.
INDUSTRY_SHARE_DRIFT = np.array([0.0, 0.0, 0.06, 0.0, -0.05, 0.0, 0.0, 0.0, -0.01, 0.0])
INDUSTRY_EFFECT = np.array([0.45, 0.35, 0.3, 0.05, -0.2, -0.45, -0.55, 0.15, -0.1, 0.0])

COUNTRIES = (
    "United States",
    "United Kingdom",
    "Germany",
    "France",
    "Canada",
    "India",
    "Brazil",
    "Australia",
    "Netherlands",
    "Spain",
)
COUNTRY_SHARE = np.array([0.36, 0.12, 0.1, 0.07, 0.06, 0.1, 0.06, 0.05, 0.04, 0.04])
COUNTRY_EFFECT = np.array([0.2, 0.15, 0.15, 0.0, 0.1, -0.35, -0.3, 0.05, 0.05, -0.1])

SENIORITIES = ("C-Level", "VP", "Director", "Manager", "Individual Contributor", "Student")
SENIORITY_SHARE = np.array([0.06, 0.1, 0.17, 0.3, 0.31, 0.06])
SENIORITY_EFFECT = np.array([0.5, 0.45, 0.35, 0.1, -0.2, -1.3])

DEPARTMENTS = ("Sales", "Marketing", "IT", "Engineering", "Finance", "Operations", "HR")
DEPARTMENT_SHARE = np.array([0.2, 0.24, 0.16, 0.14, 0.09, 0.11, 0.06])
DEPARTMENT_EFFECT = np.array([0.3, 0.35, 0.2, 0.0, -0.05, -0.05, -0.35])

SOURCES = (
    "Organic Search",
    "Paid Search",
    "Paid Social",
    "Referral",
    "Partner",
    "Event",
    "Webinar",
    "Content Syndication",
    "Outbound",
    "Direct",
)
SOURCE_SHARE = np.array([0.2, 0.14, 0.05, 0.07, 0.06, 0.08, 0.09, 0.12, 0.09, 0.1])
SOURCE_SHARE_DRIFT = np.array([-0.03, 0.0, 0.12, 0.0, 0.0, -0.02, 0.0, -0.04, -0.03, 0.0])
SOURCE_EFFECT = np.array([0.1, 0.05, -0.1, 0.7, 0.5, 0.2, 0.15, -0.35, -0.25, 0.25])
PAID_SOCIAL = SOURCES.index("Paid Social")

TECHNOLOGIES = (
    "Salesforce",
    "HubSpot",
    "Marketo",
    "AWS",
    "Azure",
    "Google Cloud",
    "Snowflake",
    "Slack",
    "Zendesk",
    "Shopify",
    "SAP",
    "Tableau",
    "Jira",
    "Segment",
)
TECH_SHARE = np.array([0.3, 0.22, 0.08, 0.35, 0.2, 0.12, 0.08, 0.45, 0.15, 0.08, 0.1, 0.12, 0.3, 0.06])
TECH_EFFECT = np.array([0.25, 0.2, 0.3, 0.05, 0.0, 0.0, 0.25, 0.0, 0.0, -0.1, 0.0, 0.1, 0.0, 0.3])

BANT_CHOICES = ("confirmed", "not", "unknown")
BANT_EFFECT = {
    "budget": (0.6, -0.7),
    "authority": (0.35, -0.3),
    "need": (0.55, -0.8),
    "timeline": (0.45, -0.4),
}

FREE_MAIL = ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com")
OWNERS = (
    "Ana Ruiz",
    "Ben Okafor",
    "Chloe Martin",
    "David Kim",
    "Elena Rossi",
    "Farid Haddad",
    "Grace Liu",
    "Hugo Weber",
    "Isla Brown",
    "Jonas Berg",
)
FIRST_NAMES = ("Alex", "Sam", "Maria", "John", "Priya", "Wei", "Lucas", "Emma", "Omar", "Sofia")
LAST_NAMES = ("Smith", "Garcia", "Müller", "Chen", "Patel", "Silva", "Dubois", "Nowak", "Khan")
COMPANY_WORDS = ("Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne")

# Activity rates per day for an average lead in its first weeks, and how strongly each
# type follows the lead's latent interest.
ACTIVITY_RATE = {
    "web_visit": 0.11,
    "pricing_page": 0.012,
    "content_download": 0.02,
    "email_open": 0.1,
    "email_click": 0.02,
    "webinar": 0.006,
    "demo_request": 0.0022,
    "form_submit": 0.008,
    "trial_signup": 0.0015,
    "meeting": 0.003,
    "unsubscribe": 0.0012,
}
INTEREST_LOADING = {
    "web_visit": 0.6,
    "pricing_page": 0.9,
    "content_download": 0.5,
    "email_open": 0.3,
    "email_click": 0.6,
    "webinar": 0.6,
    "demo_request": 1.1,
    "form_submit": 0.5,
    "trial_signup": 1.0,
    "meeting": 1.0,
    "unsubscribe": -0.8,
}
DECAY_WEIGHT = {
    "web_visit": 1.0,
    "pricing_page": 3.0,
    "content_download": 2.0,
    "email_open": 0.5,
    "email_click": 1.5,
    "webinar": 3.0,
    "demo_request": 8.0,
    "form_submit": 2.0,
    "trial_signup": 6.0,
    "meeting": 6.0,
    "unsubscribe": -4.0,
}
BLANK_SHARE = {
    "industry": 0.05,
    "employees": 0.08,
    "annual_revenue": 0.15,
    "country": 0.05,
    "seniority": 0.06,
    "department": 0.06,
    "lead_source": 0.02,
    "tech_stack": 0.1,
}
FIRST_TOUCH = {
    "Webinar": "webinar",
    "Content Syndication": "content_download",
    "Event": "form_submit",
}
TYPE_INDEX = {name: i for i, name in enumerate(ACTIVITY_TYPES)}


@dataclass(frozen=True)
class SyntheticCrm:
    """A generated CRM export and the true conversion probability of each example."""

    leads: pd.DataFrame
    activities: pd.DataFrame
    outcomes: pd.DataFrame
    truth: pd.DataFrame


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _choose(rng: np.random.Generator, shares: np.ndarray) -> np.ndarray:
    """Draw one category index per row from row-wise probability vectors."""
    shares = np.clip(shares, 1e-6, None)
    cumulative = np.cumsum(shares / shares.sum(axis=1, keepdims=True), axis=1)
    draws = rng.random(len(shares))[:, None]
    return np.minimum((draws > cumulative).sum(axis=1), shares.shape[1] - 1)


def _season(day_of_year: np.ndarray) -> np.ndarray:
    """Activity and lead volume: a dip in August and late December, a peak in autumn."""
    angle = 2 * np.pi * day_of_year / 365.25
    summer_dip = 0.35 * np.exp(-(((day_of_year - 225) / 18) ** 2))
    holiday_dip = 0.45 * np.exp(-(((day_of_year - 360) / 8) ** 2))
    return (1 + 0.12 * np.sin(angle - 1.2)) * (1 - summer_dip - holiday_dip)


class _World:
    """Leads and their hidden state, advanced one step at a time."""

    def __init__(self, n_leads: int, seed: int, start: pd.Timestamp, n_steps: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.start = start
        self.total_days = n_steps * STEP_DAYS
        self.n_steps = n_steps
        self.n = n_leads
        self._make_leads()
        self.status = np.zeros(n_leads, dtype=np.int8)  # 0 open, 1 converted, 2 lost
        self.closed_day = np.full(n_leads, np.nan)
        self.unsubscribed = np.zeros(n_leads, dtype=bool)
        n_types = len(ACTIVITY_TYPES)
        # Activity counts by type: this step, then the three steps before it (30/90 days).
        self.recent_counts = np.zeros((4, n_leads, n_types), dtype=np.int32)
        self.ever_counts = np.zeros((n_leads, n_types), dtype=np.int32)
        self.decayed = np.zeros(n_leads)
        self.last_activity_day = np.full(n_leads, np.nan)
        self.activity_chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.truth_chunks: list[tuple[np.ndarray, float, np.ndarray]] = []

    def _year_day(self, days: np.ndarray) -> np.ndarray:
        return (self.start.day_of_year + days) % 365.25

    def _make_leads(self) -> None:
        rng, n = self.rng, self.n
        days = np.arange(self.total_days)
        weekday = (self.start.day_of_week + days) % 7
        weight = (1 + 0.4 * days / self.total_days) * _season(self._year_day(days))
        weight = weight * np.where(weekday >= 5, 0.3, 1.0)
        chosen = rng.choice(self.total_days, size=n, p=weight / weight.sum())
        hour = np.clip(rng.normal(13, 3, n), 0, 23.99) / 24
        created = np.sort(chosen + hour)
        # The first lead arrives on the first day, so training's snapshot grid (from the first
        # lead's day) is truth.csv's.
        created[0] -= np.floor(created[0])
        self.created_day = created
        u = (created / self.total_days)[:, None]

        self.industry = _choose(rng, INDUSTRY_SHARE + u * INDUSTRY_SHARE_DRIFT)
        self.country = _choose(rng, np.tile(COUNTRY_SHARE, (n, 1)))
        self.seniority = _choose(rng, np.tile(SENIORITY_SHARE, (n, 1)))
        self.department = _choose(rng, np.tile(DEPARTMENT_SHARE, (n, 1)))
        self.source = _choose(rng, SOURCE_SHARE + u * SOURCE_SHARE_DRIFT)
        self.employees = np.clip(np.round(np.exp(rng.normal(5.0, 1.6, n))), 1, 250_000)
        self.revenue = self.employees * np.exp(rng.normal(np.log(160_000), 0.5, n))
        size_factor = np.clip((np.log(self.employees) - 2) / 8, 0, 1)
        self.tech = rng.random((n, len(TECHNOLOGIES))) < TECH_SHARE * (0.4 + 1.2 * size_factor)[:, None]
        free_mail_p = np.where(self.seniority == SENIORITIES.index("Student"), 0.8, 0.32 - 0.25 * size_factor)
        self.free_mail = rng.random(n) < free_mail_p
        senior = self.seniority <= SENIORITIES.index("Director")
        self.bant = {}
        for field in BANT_EFFECT:
            confirmed = 0.18 + (0.25 if field == "authority" else 0.0) * senior
            not_p = np.full(n, 0.12)
            unknown_p = 1 - confirmed - not_p
            self.bant[field] = _choose(rng, np.column_stack([confirmed, not_p, unknown_p]))
        self.do_not_contact = rng.random(n) < 0.03
        self.owner = rng.integers(0, len(OWNERS), n)

        # Fields left blank in the CRM. Conversion depends on what the record shows (a
        # blank field carries no effect), so truth.csv is exactly P(convert | observable).
        self.blank = {column: rng.random(n) < share for column, share in BLANK_SHARE.items()}
        known = {column: ~mask for column, mask in self.blank.items()}
        log_emp = np.log(self.employees)
        size_effect = 0.35 * np.exp(-(((log_emp - 6.5) / 2.2) ** 2)) - 0.15 * (log_emp < 2.5)
        fit = (
            INDUSTRY_EFFECT[self.industry] * known["industry"]
            + COUNTRY_EFFECT[self.country] * known["country"]
            + SENIORITY_EFFECT[self.seniority] * known["seniority"]
            + DEPARTMENT_EFFECT[self.department] * known["department"]
            + SOURCE_EFFECT[self.source] * known["lead_source"]
            + size_effect * known["employees"]
            + (self.tech.astype(float) @ TECH_EFFECT) * known["tech_stack"]
            - 0.5 * self.free_mail
            - 2.2 * self.do_not_contact
        )
        for field, (plus, minus) in BANT_EFFECT.items():
            fit = fit + np.where(self.bant[field] == 0, plus, np.where(self.bant[field] == 1, minus, 0))
        self.fit = fit
        fit_z = (fit - fit.mean()) / (fit.std() + 1e-9)
        self.fit_z = fit_z
        self.interest = rng.normal(0, 1, n) + 0.35 * fit_z
        # Enterprise deals need senior sponsors; small companies buy from anyone.
        enterprise = (self.employees >= 1000) & known["employees"]
        executive = (self.seniority <= SENIORITIES.index("VP")) & known["seniority"]
        self._size_seniority = np.where(enterprise, np.where(executive, 0.45, -0.35), 0.0)

    def _paid_social_effect(self, day: float) -> float:
        """Concept drift: paid social leads start decent and end poor."""
        return 0.1 - 0.5 * day / self.total_days

    def _webinar_weight(self, day: float) -> float:
        """Concept drift: webinar attendance matters more as the market matures."""
        return 0.2 + 0.3 * day / self.total_days

    def _rates(self, idx: np.ndarray, day: np.ndarray) -> np.ndarray:
        """Activity rate per day by type, for leads `idx` at `day`."""
        age = np.maximum(day - self.created_day[idx], 0)
        base = _season(self._year_day(day)) * (0.25 + 0.75 * np.exp(-age / 75))
        drift = day / self.total_days
        rates = np.empty((len(idx), len(ACTIVITY_TYPES)))
        for name, col in TYPE_INDEX.items():
            mix = 1.0
            if name == "webinar":
                mix = 0.7 + 0.8 * drift
            elif name == "content_download":
                mix = 1.2 - 0.5 * drift
            loading = INTEREST_LOADING[name]
            rate = ACTIVITY_RATE[name] * mix * base * np.exp(loading * self.interest[idx] - loading**2 / 2)
            if name in ("email_open", "email_click"):
                rate = rate * np.where(self.unsubscribed[idx], 0.1, 1.0)
            if name == "unsubscribe":
                rate = rate * ~self.unsubscribed[idx]
            rates[:, col] = rate
        return rates

    def _emit(self, idx: np.ndarray, begin: np.ndarray, end: np.ndarray) -> None:
        """Generate activities of leads `idx` in [begin, end) and update their state."""
        span = np.maximum(end - begin, 0)
        keep = span > 0
        idx, begin, span = idx[keep], begin[keep], span[keep]
        if len(idx) == 0:
            return
        counts = self.rng.poisson(self._rates(idx, begin + span / 2) * span[:, None])
        lead_rows, type_cols = np.nonzero(counts)
        repeats = counts[lead_rows, type_cols]
        leads = np.repeat(idx[lead_rows], repeats)
        types = np.repeat(type_cols, repeats)
        offset = self.rng.random(len(leads))
        days = np.repeat(begin[lead_rows], repeats) + offset * np.repeat(span[lead_rows], repeats)
        self._record(leads, days, types)

    def _record(self, leads: np.ndarray, days: np.ndarray, types: np.ndarray) -> None:
        self.activity_chunks.append((leads, days, types))
        np.add.at(self.ever_counts, (leads, types), 1)
        np.add.at(self.recent_counts[0], (leads, types), 1)
        self.unsubscribed[leads[types == TYPE_INDEX["unsubscribe"]]] = True
        last = np.full(self.n, -np.inf)
        np.maximum.at(last, leads, days)
        seen = np.isfinite(last)
        self.last_activity_day[seen] = np.fmax(self.last_activity_day[seen], last[seen])
        self._pending_decay.append((leads, days, types))

    def _truth_logit(self, idx: np.ndarray, day: float) -> np.ndarray:
        last30 = self.recent_counts[1, idx]
        last90 = self.recent_counts[1:, idx].sum(axis=0)
        ever = self.ever_counts[idx]
        age = day - self.created_day[idx]
        last = self.last_activity_day[idx]
        recency = np.where(np.isnan(last), age, day - last)
        demo = TYPE_INDEX["demo_request"]
        good_fit = self.fit_z[idx] > 0
        demo_recent = last30[:, demo] > 0
        # Buying is not additive: a demo request means most from a well-fitting lead,
        # pricing-page visits from a business address, and recency works in steps.
        logit = (
            -4.1
            + self.fit[idx]
            + np.where(
                (self.source[idx] == PAID_SOCIAL) & ~self.blank["lead_source"][idx],
                self._paid_social_effect(day),
                0.0,
            )
            + np.where(demo_recent, np.where(good_fit, 2.0, 0.9), 0.0)
            + 0.5 * ((ever[:, demo] > 0) & ~demo_recent)
            + np.where(self.free_mail[idx], 0.05, 0.5) * np.log1p(last30[:, TYPE_INDEX["pricing_page"]])
            + 0.4 * np.log1p(np.maximum(self.decayed[idx], 0))
            + np.select([recency <= 7, recency > 45], [0.35, -0.6], 0.0)
            + 0.7 * np.minimum(last30[:, TYPE_INDEX["meeting"]], 2)
            + 0.8 * (ever[:, TYPE_INDEX["trial_signup"]] > 0)
            - 1.0 * (ever[:, TYPE_INDEX["unsubscribe"]] > 0)
            + self._webinar_weight(day) * np.log1p(last90[:, TYPE_INDEX["webinar"]])
            + self._size_seniority[idx]
            - 0.003 * age
        )
        return logit

    def _decay_to(self, day: float) -> None:
        """Bring the decayed engagement score of every lead to `day`."""
        rate = np.log(2) / HALF_LIFE_DAYS
        self.decayed *= np.exp(-rate * (day - self._decay_day))
        weights = np.array([DECAY_WEIGHT[name] for name in ACTIVITY_TYPES])
        for leads, days, types in self._pending_decay:
            np.add.at(self.decayed, leads, weights[types] * np.exp(-rate * (day - days)))
        self._pending_decay = []
        self._decay_day = day

    def run(self) -> None:
        self._pending_decay: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._decay_day = 0.0
        rng = self.rng
        for step in range(self.n_steps):
            begin, end = step * STEP_DAYS, (step + 1) * STEP_DAYS
            self.recent_counts = np.roll(self.recent_counts, 1, axis=0)
            self.recent_counts[0] = 0
            self._decay_to(float(begin))
            open_idx = np.flatnonzero((self.status == 0) & (self.created_day < begin))
            if len(open_idx):
                p = _sigmoid(self._truth_logit(open_idx, float(begin)))
                self.truth_chunks.append((open_idx, float(begin), p))
                converted = rng.random(len(open_idx)) < p
                age = begin - self.created_day[open_idx]
                last = self.last_activity_day[open_idx]
                idle = np.where(np.isnan(last), age, begin - last)
                lost_p = _sigmoid(-2.7 + 0.012 * idle + 0.004 * age - 0.3 * self.interest[open_idx])
                lost = ~converted & ((rng.random(len(open_idx)) < lost_p) | (age > MAX_LEAD_AGE_DAYS))
                closing = converted | lost
                closed_idx = open_idx[closing]
                self.status[closed_idx] = np.where(converted[closing], 1, 2)
                self.closed_day[closed_idx] = begin + rng.random(len(closed_idx)) * STEP_DAYS
                active_end = np.where(closing, self.closed_day[open_idx], end)
                self._emit(open_idx, np.full(len(open_idx), float(begin)), active_end)
            new_idx = np.flatnonzero((self.created_day >= begin) & (self.created_day < end))
            if len(new_idx):
                first = np.array([TYPE_INDEX[FIRST_TOUCH.get(SOURCES[s], "form_submit")] for s in range(len(SOURCES))])
                self._record(new_idx, self.created_day[new_idx], first[self.source[new_idx]])
                self._emit(new_idx, self.created_day[new_idx] + 1e-4, np.full(len(new_idx), float(end)))


def _timestamps(start: pd.Timestamp, days: np.ndarray) -> np.ndarray:
    seconds = np.round(days * 86400).astype("int64")
    return (np.datetime64(start.to_datetime64(), "s") + seconds.astype("timedelta64[s]")).astype(str)


def _dirty_text(rng: np.random.Generator, values: np.ndarray, blank: np.ndarray, *, variant: float) -> np.ndarray:
    """Blank the given values (as exports do: empty, "N/A", "-", "Select") and vary the
    spelling of some others (case, stray spaces)."""
    out = values.astype(object)
    draw = rng.random(len(out))
    lower = draw < variant / 3
    upper = (draw >= variant / 3) & (draw < 2 * variant / 3)
    spaced = (draw >= 2 * variant / 3) & (draw < variant)
    out[lower] = np.char.lower(values[lower].astype(str))
    out[upper] = np.char.upper(values[upper].astype(str))
    out[spaced] = np.char.add(values[spaced].astype(str), " ")
    placeholder = rng.choice(np.array(["", "", "", "N/A", "-", "Select"], dtype=object), size=len(out))
    out[blank] = placeholder[blank]
    return out


def _format_number(rng: np.random.Generator, values: np.ndarray, blank: np.ndarray, *, money: bool) -> np.ndarray:
    draw = rng.random(len(values))
    out = np.array([f"{v:.0f}" for v in values], dtype=object)
    grouped = draw < 0.08
    out[grouped] = [(f"${v:,.0f}" if money else f"{v:,.0f}") for v in values[grouped]]
    if money:
        short = (draw >= 0.08) & (draw < 0.14)
        out[short] = [f"{v / 1e6:.1f}M" for v in values[short]]
    out[blank] = ""
    return out


def generate_crm(n_leads: int, seed: int, start: str = "2024-11-01", months: int = 24) -> SyntheticCrm:
    """Simulate a CRM over `months` steps of 30 days.

    Args:
        n_leads: how many leads are created over the period.
        seed: random seed; the same seed gives the same export.
        start: first day of the period (ISO date).
        months: number of 30-day steps.

    Returns:
        The leads, activities and outcomes tables as a CRM would export them (with missing
        and dirty values and a few duplicates and orphans), and the truth table.
    """
    if n_leads < 1:
        raise ValueError("n_leads must be at least 1")
    start_ts = pd.Timestamp(start)
    if start_ts.tz is not None:
        start_ts = start_ts.tz_convert("UTC").tz_localize(None)
    # Training's snapshots fall on midnights from the first lead's day: so do truth.csv's.
    start_ts = start_ts.normalize()
    end = start_ts + pd.Timedelta(days=months * STEP_DAYS)
    if start_ts.year < EARLIEST_START_YEAR:
        raise ValueError(f"start {start_ts.date()} is before {EARLIEST_START_YEAR}: CRM histories begin later")
    if end > utc_now().normalize() + pd.Timedelta(days=1):  # today in UTC, as every moment here, not the machine's
        raise ValueError(
            f"the period {start_ts.date()} to {end.date()} ends after today: an export holds only the past "
            "(pick an earlier --start or fewer --months)"
        )
    world = _World(n_leads, seed, start_ts, months)
    world.run()
    rng = world.rng
    n = n_leads

    lead_ids = np.char.add("L", np.char.zfill((rng.permutation(n) + 100001).astype(str), 7))
    first = rng.choice(FIRST_NAMES, n)
    last = rng.choice(LAST_NAMES, n)
    company = np.char.add(np.char.add(rng.choice(COMPANY_WORDS, n), " "), (rng.integers(1, 5000, n)).astype(str))
    company_domain = np.char.add(np.char.lower(np.char.replace(company, " ", "")), ".com")
    domain = np.where(world.free_mail, rng.choice(FREE_MAIL, n), company_domain)
    local = np.char.lower(np.char.add(np.char.add(first, "."), last))
    email = np.char.add(np.char.add(local, "@"), domain)
    phone = np.array(
        [f"+1 555 {a:03d} {b:04d}" for a, b in zip(rng.integers(0, 1000, n), rng.integers(0, 10000, n), strict=True)]
    )
    tech = np.array([";".join(np.array(TECHNOLOGIES)[row]) for row in world.tech], dtype=object)
    tech[world.blank["tech_stack"]] = ""
    leads = pd.DataFrame(
        {
            "lead_id": lead_ids,
            "created_at": _timestamps(start_ts, world.created_day),
            "first_name": first,
            "last_name": last,
            "email": email,
            "phone": phone,
            "company": company,
            "industry": _dirty_text(rng, np.array(INDUSTRIES)[world.industry], world.blank["industry"], variant=0.04),
            "employees": _format_number(rng, world.employees, world.blank["employees"], money=False),
            "annual_revenue": _format_number(rng, world.revenue, world.blank["annual_revenue"], money=True),
            "country": _dirty_text(rng, np.array(COUNTRIES)[world.country], world.blank["country"], variant=0.03),
            "seniority": _dirty_text(
                rng, np.array(SENIORITIES)[world.seniority], world.blank["seniority"], variant=0.02
            ),
            "department": _dirty_text(
                rng,
                np.array(DEPARTMENTS)[world.department],
                world.blank["department"],
                variant=0.02,
            ),
            "lead_source": _dirty_text(rng, np.array(SOURCES)[world.source], world.blank["lead_source"], variant=0.02),
            "tech_stack": tech,
            **{
                field: _dirty_text(rng, np.array(BANT_CHOICES)[world.bant[field]], np.zeros(n, bool), variant=0.05)
                for field in BANT_EFFECT
            },
            "do_not_contact": np.where(world.do_not_contact, "true", "false"),
            "owner": np.array(OWNERS)[world.owner],
        }
    )

    leads_arr, days_arr, types_arr = (np.concatenate(parts) for parts in zip(*world.activity_chunks, strict=True))
    order = np.lexsort((days_arr, leads_arr))
    leads_arr, days_arr, types_arr = leads_arr[order], days_arr[order], types_arr[order]
    value = np.where(types_arr == TYPE_INDEX["web_visit"], rng.integers(1, 12, len(types_arr)), np.nan)
    type_names = np.array(ACTIVITY_TYPES, dtype=object)[types_arr]
    spelled = rng.random(len(type_names)) < 0.02
    if spelled.any():  # numpy's string functions fail on an empty array (tiny exports)
        type_names[spelled] = np.char.title(np.char.replace(type_names[spelled].astype(str), "_", " "))
    activities = pd.DataFrame(
        {
            "lead_id": lead_ids[leads_arr],
            "occurred_at": _timestamps(start_ts, days_arr),
            "activity_type": type_names,
            "value": value,
        }
    )

    status = np.array(["open", "converted", "lost"], dtype=object)[world.status]
    closed = np.where(world.status > 0, _timestamps(start_ts, np.nan_to_num(world.closed_day)), "")
    outcomes = pd.DataFrame({"lead_id": lead_ids, "status": status, "closed_at": closed})

    truth = pd.DataFrame(
        {
            "lead_id": np.concatenate([lead_ids[idx] for idx, _, _ in world.truth_chunks]),
            "as_of": np.concatenate(
                [np.repeat(_timestamps(start_ts, np.array([day])), len(idx)) for idx, day, _ in world.truth_chunks]
            ),
            "probability": np.concatenate([p for _, _, p in world.truth_chunks]),
        }
    )
    leads, activities = _add_export_defects(rng, leads, activities)
    return SyntheticCrm(leads=leads, activities=activities, outcomes=outcomes, truth=truth)


def _add_export_defects(
    rng: np.random.Generator, leads: pd.DataFrame, activities: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What real exports carry: duplicated rows, orphan activities, unparseable dates."""
    n_dup = max(1, len(leads) // 1000)
    leads = pd.concat([leads, leads.sample(n_dup, random_state=int(rng.integers(1 << 31)))], ignore_index=True)
    n_orphans = max(1, len(activities) // 2000)
    orphans = activities.sample(n_orphans, random_state=int(rng.integers(1 << 31))).copy()
    orphans["lead_id"] = np.char.add("X", np.char.zfill(rng.integers(0, 10**6, n_orphans).astype(str), 7))
    activities = pd.concat([activities, orphans], ignore_index=True)
    bad_dates = rng.choice(len(activities), size=max(1, len(activities) // 5000), replace=False)
    activities.loc[bad_dates, "occurred_at"] = rng.choice(["not recorded", "31/31/2025", "0000-00-00"], len(bad_dates))
    return leads, activities


def write_crm(crm: SyntheticCrm, out_dir: str | Path) -> dict[str, Path]:
    """Write the export as CSV files (leads, activities, outcomes, truth) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tables = {"leads": crm.leads, "activities": crm.activities, "outcomes": crm.outcomes}
    written = {}
    for name, frame in tables.items():
        path = out / TABLE_FILES[name]
        frame.to_csv(path, index=False)
        written[name] = path
    truth_path = out / TRUTH_FILE
    crm.truth.to_csv(truth_path, index=False, float_format="%.6f")
    written["truth"] = truth_path
    return written
